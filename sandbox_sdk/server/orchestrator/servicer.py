"""The OrchestratorService servicer: environment calls go to the sandbox layer,
experiment calls to the experiment engine, as each RPC's ``owner`` option says.

An RPC that declares no owner fails at import, so a new RPC in the contract
cannot go unserved."""

from __future__ import annotations

from typing import cast

import grpc
from google.protobuf.descriptor import MethodDescriptor

from sandbox_sdk.api.v1 import options_pb2, orchestrator_service_pb2, orchestrator_service_pb2_grpc
from sandbox_sdk.server.orchestrator.experiments import ExperimentHandlers
from sandbox_sdk.server.orchestrator.sandbox import EnvironmentHandlers

SERVICE = orchestrator_service_pb2.DESCRIPTOR.services_by_name["OrchestratorService"]


def owner_of(method: MethodDescriptor) -> options_pb2.MethodRules.Owner.ValueType:
    """Which handler object serves an RPC; ValueError when the contract names none."""
    owner = method.GetOptions().Extensions[options_pb2.rules].owner
    if owner == options_pb2.MethodRules.OWNER_UNSPECIFIED:
        raise ValueError(f"OrchestratorService.{method.name} declares no owner in sandbox.v1.rules")
    return owner


def _owned_by(owner: options_pb2.MethodRules.Owner.ValueType) -> frozenset[str]:
    return frozenset(m.name for m in SERVICE.methods if owner_of(m) == owner)


# Which handler object serves each RPC, as the contract's sandbox.v1.rules option declares.
ENVIRONMENT_RPCS = _owned_by(options_pb2.MethodRules.OWNER_ENVIRONMENTS)
EXPERIMENT_RPCS = _owned_by(options_pb2.MethodRules.OWNER_EXPERIMENTS)


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
