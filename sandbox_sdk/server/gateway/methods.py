"""What the gateway does for each GatewayService RPC, derived from the service descriptor.

Every RPC gets a scope, a routing rule and a retry rule here. The rules are
by name and request shape, and an RPC that matches none of them fails at
import, so a new RPC in the contract cannot be served by accident.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass

from sandbox_sdk.api.v1 import gateway_service_pb2, orchestrator_service_pb2
from sandbox_sdk.server.gateway.api_keys import Scope

GATEWAY_SERVICE = gateway_service_pb2.DESCRIPTOR.services_by_name["GatewayService"]
ORCHESTRATOR_SERVICE = orchestrator_service_pb2.DESCRIPTOR.services_by_name["OrchestratorService"]

_READ_PREFIXES = ("Get", "List", "Read", "Stream")
_WRITE_PREFIXES = ("Create", "Update", "Delete")
_OTHER_WRITES = frozenset({"ExecCommand", "WriteFile", "CancelExperiment"})
# Writes that leave the same state when repeated, so a lost answer can be retried.
_IDEMPOTENT_WRITES = frozenset(
    {"UpdateEnvironment", "DeleteEnvironment", "WriteFile", "CancelExperiment"}
)
_FAN_OUT = frozenset({"ListEnvironments", "ListExperiments"})


class Routing(enum.Enum):
    """Where a call goes."""

    PLACE = "place"  # a new environment: the orchestrator with the most free capacity
    ENVIRONMENT = "environment"  # the owner of request.environment_id
    EXPERIMENT = "experiment"  # the owner of request.experiment_id
    FAN_OUT = "fan_out"  # every healthy orchestrator, results merged
    ANY = "any"  # any healthy orchestrator
    LOCAL = "local"  # served by the gateway itself (API keys)


class Quota(enum.Enum):
    """Which per-tenant quota a call consumes."""

    ENVIRONMENTS = "environments"
    EXPERIMENTS = "experiments"


@dataclass(frozen=True)
class MethodSpec:
    """One GatewayService RPC and the rules the gateway applies to it."""

    name: str
    path: str
    upstream_path: str
    scope: Scope
    routing: Routing
    server_streaming: bool
    idempotent: bool
    request_id_field: int | None
    quota: Quota | None
    request_type: type[Message]
    response_type: type[Message]

    def retryable(self, request_id: str) -> bool:
        """Whether an UNAVAILABLE attempt may be repeated toward the orchestrator."""
        return self.idempotent or bool(request_id)


def scope_of(name: str) -> Scope:
    """The scope an RPC needs, by its name."""
    if "ApiKey" in name:
        return Scope.ADMIN
    if name.startswith(_READ_PREFIXES):
        return Scope.READ
    if name.startswith(_WRITE_PREFIXES) or name in _OTHER_WRITES:
        return Scope.WRITE
    raise ValueError(f"GatewayService.{name} has no scope rule in {__name__}")


def _routing_of(method: MethodDescriptor) -> Routing:
    name = method.name
    if "ApiKey" in name:
        return Routing.LOCAL
    if name == "CreateEnvironment":
        return Routing.PLACE
    if name in _FAN_OUT:
        return Routing.FAN_OUT
    if name == "ListModels":
        return Routing.ANY
    first_field = method.input_type.fields_by_number.get(1)
    if first_field is not None and first_field.name == "environment_id":
        return Routing.ENVIRONMENT
    if first_field is not None and first_field.name == "experiment_id":
        return Routing.EXPERIMENT
    raise ValueError(f"GatewayService.{name} has no routing rule in {__name__}")


def _spec(method: MethodDescriptor) -> MethodSpec:
    scope = scope_of(method.name)
    routing = _routing_of(method)
    if routing is not Routing.LOCAL and method.name not in ORCHESTRATOR_SERVICE.methods_by_name:
        raise ValueError(f"GatewayService.{method.name} has no OrchestratorService counterpart")
    request_id = method.input_type.fields_by_name.get("request_id")
    quota = {"CreateEnvironment": Quota.ENVIRONMENTS, "CreateExperiment": Quota.EXPERIMENTS}
    return MethodSpec(
        name=method.name,
        path=f"/{GATEWAY_SERVICE.full_name}/{method.name}",
        upstream_path=f"/{ORCHESTRATOR_SERVICE.full_name}/{method.name}",
        scope=scope,
        routing=routing,
        server_streaming=method.server_streaming,
        idempotent=scope is Scope.READ or method.name in _IDEMPOTENT_WRITES,
        request_id_field=request_id.number if request_id is not None else None,
        quota=quota.get(method.name),
        request_type=GetMessageClass(method.input_type),
        response_type=GetMessageClass(method.output_type),
    )


METHODS: dict[str, MethodSpec] = {m.name: _spec(m) for m in GATEWAY_SERVICE.methods}
