"""The OrchestratorService servicer: environment calls go to the sandbox layer,
experiment calls to the experiment engine."""

from __future__ import annotations

from typing import cast

import grpc

from sandbox_sdk.api.v1 import orchestrator_service_pb2, orchestrator_service_pb2_grpc
from sandbox_sdk.server.orchestrator.experiments import ExperimentHandlers
from sandbox_sdk.server.orchestrator.sandbox import EnvironmentHandlers

SERVICE = orchestrator_service_pb2.DESCRIPTOR.services_by_name["OrchestratorService"]

ENVIRONMENT_RPCS = frozenset(
    {
        "CreateEnvironment",
        "GetEnvironment",
        "ListEnvironments",
        "UpdateEnvironment",
        "DeleteEnvironment",
        "ExecCommand",
        "WriteFile",
        "ReadFile",
        "ListFiles",
        "GetEnvironmentUsage",
        "StreamEnvironmentUsage",
        "GetCapacity",
    }
)
EXPERIMENT_RPCS = frozenset(
    {
        "CreateExperiment",
        "GetExperiment",
        "ListExperiments",
        "CancelExperiment",
        "GetExperimentResults",
        "StreamExperimentEvents",
        "ListModels",
    }
)


def add_orchestrator_service(
    server: grpc.aio.Server, environments: EnvironmentHandlers, experiments: ExperimentHandlers
) -> None:
    """Serves every OrchestratorService RPC from the handler object that owns it."""
    servicer = _Servicer()
    for name in ENVIRONMENT_RPCS:
        setattr(servicer, name, getattr(environments, name))
    for name in EXPERIMENT_RPCS:
        setattr(servicer, name, getattr(experiments, name))
    unbound = {m.name for m in SERVICE.methods} - ENVIRONMENT_RPCS - EXPERIMENT_RPCS
    if unbound:
        raise RuntimeError(f"OrchestratorService RPCs with no handler: {sorted(unbound)}")
    # The generated servicer's stub is abstract; this duck-typed one has every method.
    orchestrator_service_pb2_grpc.add_OrchestratorServiceServicer_to_server(
        cast(orchestrator_service_pb2_grpc.OrchestratorServiceServicer, servicer), server
    )


class _Servicer:
    """Holds the bound handler methods, one attribute per RPC."""
