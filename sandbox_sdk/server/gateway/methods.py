"""What the gateway does for each GatewayService RPC, read from the service descriptor.

The contract declares each RPC's rules as method options: whether a repeat is
safe (``idempotency_level``), and the scope, routing and quota
(``sandbox.v1.rules``). An RPC without a scope or a routing rule fails at
import, so a new RPC in the contract cannot be served by accident.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass

from sandbox_sdk.api.v1 import gateway_service_pb2, options_pb2, orchestrator_service_pb2
from sandbox_sdk.server.gateway.api_keys import Scope

GATEWAY_SERVICE = gateway_service_pb2.DESCRIPTOR.services_by_name["GatewayService"]
ORCHESTRATOR_SERVICE = orchestrator_service_pb2.DESCRIPTOR.services_by_name["OrchestratorService"]


class Routing(enum.Enum):
    """Where a call goes."""

    PLACE = "place"  # a new environment or template: see MethodRules.Routing.ROUTING_PLACE
    ENVIRONMENT = "environment"  # the owner of request.environment_id
    EXPERIMENT = "experiment"  # the owner of request.experiment_id
    FAN_OUT = "fan_out"  # every healthy orchestrator, results merged
    ANY = "any"  # any healthy orchestrator
    LOCAL = "local"  # served by the gateway itself (API keys)
    TEMPLATE = "template"  # the owner of request.template_id; a public name: any orchestrator

    # Members are singletons compared by identity, so identity is a valid hash; Enum's own
    # hashes the name in Python, and every routed call looks its routing up in a dict.
    __hash__ = object.__hash__


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
    client_streaming: bool
    idempotent: bool
    request_id_field: int | None
    quota: Quota | None
    request_type: type[Message]
    response_type: type[Message]
    # Where the routed resource id is: field 1 of the request, or (1, 1) when
    # field 1 is a header message whose field 1 is the id (ForwardPort).
    id_path: tuple[int, ...] = (1,)

    def retryable(self, request_id: str) -> bool:
        """Whether an UNAVAILABLE attempt may be repeated toward the orchestrator."""
        return self.idempotent or bool(request_id)


_Rules = options_pb2.MethodRules
_SCOPES = {
    _Rules.SCOPE_READ: Scope.READ,
    _Rules.SCOPE_WRITE: Scope.WRITE,
    _Rules.SCOPE_ADMIN: Scope.ADMIN,
}
_ROUTINGS = {
    _Rules.ROUTING_PLACE: Routing.PLACE,
    _Rules.ROUTING_ENVIRONMENT: Routing.ENVIRONMENT,
    _Rules.ROUTING_EXPERIMENT: Routing.EXPERIMENT,
    _Rules.ROUTING_FAN_OUT: Routing.FAN_OUT,
    _Rules.ROUTING_ANY: Routing.ANY,
    _Rules.ROUTING_LOCAL: Routing.LOCAL,
    _Rules.ROUTING_TEMPLATE: Routing.TEMPLATE,
}
_QUOTAS = {
    _Rules.QUOTA_ENVIRONMENTS: Quota.ENVIRONMENTS,
    _Rules.QUOTA_EXPERIMENTS: Quota.EXPERIMENTS,
}
# The resource id a routing reads from the request's field 1.
_ROUTED_BY_FIELD_1 = {
    Routing.ENVIRONMENT: "environment_id",
    Routing.EXPERIMENT: "experiment_id",
    Routing.TEMPLATE: "template_id",
}


def rules_of(method: MethodDescriptor) -> options_pb2.MethodRules:
    """The ``sandbox.v1.rules`` option the contract declares on an RPC (empty when none)."""
    return method.GetOptions().Extensions[options_pb2.rules]


def _scope_of(method: MethodDescriptor) -> Scope:
    scope = _SCOPES.get(rules_of(method).scope)
    if scope is None:
        raise ValueError(f"GatewayService.{method.name} declares no scope in sandbox.v1.rules")
    return scope


def _routing_of(method: MethodDescriptor) -> Routing:
    routing = _ROUTINGS.get(rules_of(method).routing)
    if routing is None:
        raise ValueError(f"GatewayService.{method.name} declares no routing in sandbox.v1.rules")
    _id_path_of(method, routing)
    return routing


def _id_path_of(method: MethodDescriptor, routing: Routing) -> tuple[int, ...]:
    """Where the request carries the id its routing reads: field 1, or the field 1 of a
    header message in field 1 (a bidirectional stream's first message)."""
    id_field = _ROUTED_BY_FIELD_1.get(routing)
    if id_field is None:
        return (1,)
    first_field = method.input_type.fields_by_number.get(1)
    if first_field is not None and first_field.name == id_field:
        return (1,)
    header = first_field.message_type if first_field is not None else None
    inner = header.fields_by_number.get(1) if header is not None else None
    if method.client_streaming and inner is not None and inner.name == id_field:
        return (1, 1)
    raise ValueError(
        f"GatewayService.{method.name} is routed by {id_field}, which is not its request's"
        " field 1 (nor its header's field 1)"
    )


def _idempotent(method: MethodDescriptor) -> bool:
    level = method.GetOptions().idempotency_level
    return level != descriptor_pb2.MethodOptions.IDEMPOTENCY_UNKNOWN


def _request_id_field(method: MethodDescriptor) -> int | None:
    """The request's ``request_id`` field number, when the contract deduplicates by it."""
    if not rules_of(method).idempotent_by_request_id:
        return None
    field = method.input_type.fields_by_name.get("request_id")
    if field is None:
        raise ValueError(
            f"GatewayService.{method.name} is idempotent by request_id, which its request lacks"
        )
    return field.number


def spec_of(method: MethodDescriptor) -> MethodSpec:
    """The gateway's rules for one GatewayService RPC; ValueError when the contract lacks some."""
    routing = _routing_of(method)
    id_path = _id_path_of(method, routing)
    if routing is not Routing.LOCAL and method.name not in ORCHESTRATOR_SERVICE.methods_by_name:
        raise ValueError(f"GatewayService.{method.name} has no OrchestratorService counterpart")
    return MethodSpec(
        name=method.name,
        path=f"/{GATEWAY_SERVICE.full_name}/{method.name}",
        upstream_path=f"/{ORCHESTRATOR_SERVICE.full_name}/{method.name}",
        scope=_scope_of(method),
        routing=routing,
        server_streaming=method.server_streaming,
        client_streaming=method.client_streaming,
        idempotent=_idempotent(method),
        request_id_field=_request_id_field(method),
        quota=_QUOTAS.get(rules_of(method).quota),
        request_type=GetMessageClass(method.input_type),
        response_type=GetMessageClass(method.output_type),
        id_path=id_path,
    )


METHODS: dict[str, MethodSpec] = {m.name: spec_of(m) for m in GATEWAY_SERVICE.methods}
