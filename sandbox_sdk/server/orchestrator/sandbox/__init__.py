"""Isolated environments: bubblewrap, cgroups, rlimits and disk quotas; their RPCs.

``SandboxManager`` owns the environments (and implements
``orchestrator.ports.SandboxPort``); ``EnvironmentHandlers`` serves the
environment RPCs on top of it.
"""

from sandbox_sdk.server.orchestrator.sandbox.handlers import EnvironmentHandlers
from sandbox_sdk.server.orchestrator.sandbox.manager import SandboxManager
from sandbox_sdk.server.orchestrator.sandbox.settings import SandboxSettings

__all__ = ["EnvironmentHandlers", "SandboxManager", "SandboxSettings"]
