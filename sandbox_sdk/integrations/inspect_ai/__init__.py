"""An inspect_ai sandbox provider named ``sandbox-sdk`` (``pip install 'sandbox-sdk[inspect]'``).

Installing the extra registers it through inspect_ai's entry point, so a task runs each
sample in environments of ours with ``eval(task, sandbox="sandbox-sdk")`` or
``sandbox=("sandbox-sdk", "sandbox.yaml")``; see :mod:`.config` for the file.
"""

from sandbox_sdk.integrations.inspect_ai.config import EnvironmentOptions, SandboxSdkConfig
from sandbox_sdk.integrations.inspect_ai.environment import PROVIDER_NAME, SandboxSdkEnvironment

__all__ = ["PROVIDER_NAME", "EnvironmentOptions", "SandboxSdkConfig", "SandboxSdkEnvironment"]
