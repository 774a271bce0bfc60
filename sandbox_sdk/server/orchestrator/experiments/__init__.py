"""The Orchestrator's experiment engine: models, fair scheduling, runs, events and results.

``ExperimentEngine`` does the work, ``ExperimentHandlers`` exposes it as the
experiment RPCs, and ``ExperimentSettings`` configures both.
"""

from sandbox_sdk.server.orchestrator.experiments.engine import ExperimentEngine
from sandbox_sdk.server.orchestrator.experiments.handlers import ExperimentHandlers
from sandbox_sdk.server.orchestrator.experiments.settings import ExperimentSettings

__all__ = ["ExperimentEngine", "ExperimentHandlers", "ExperimentSettings"]
