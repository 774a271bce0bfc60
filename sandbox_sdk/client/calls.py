"""The gateway's methods as the SDK calls them, and turning failures into SDK errors.

Which calls are safe to retry is read from the contract's method options
(``idempotency_level`` and ``sandbox.v1.rules``), not kept here by hand.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import grpc
from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import MethodDescriptor

from sandbox_sdk.api.v1 import gateway_service_pb2, options_pb2
from sandbox_sdk.errors import SandboxError, from_rpc_error

GATEWAY_SERVICE = gateway_service_pb2.DESCRIPTOR.services_by_name["GatewayService"]


def declared_idempotent(method: MethodDescriptor) -> bool:
    """Whether the contract's ``idempotency_level`` says a repeat changes nothing more."""
    level = method.GetOptions().idempotency_level
    return level != descriptor_pb2.MethodOptions.IDEMPOTENCY_UNKNOWN


def deduplicated_by_request_id(method: MethodDescriptor) -> bool:
    """Whether the server answers a repeated ``request_id`` with the first call's result."""
    rules = method.GetOptions().Extensions[options_pb2.rules]
    return rules.idempotent_by_request_id


# The retry module's docstring says why each call is, or is not, retried.
ALL_METHODS = frozenset(m.name for m in GATEWAY_SERVICE.methods)
IDEMPOTENT_METHODS = frozenset(m.name for m in GATEWAY_SERVICE.methods if declared_idempotent(m))
# Safe to retry because the SDK gives every create a request_id.
RETRY_SAFE_CREATES = frozenset(
    m.name
    for m in GATEWAY_SERVICE.methods
    if deduplicated_by_request_id(m) and not declared_idempotent(m)
)
RETRY_SAFE_METHODS = IDEMPOTENT_METHODS | RETRY_SAFE_CREATES
NOT_RETRY_SAFE = ALL_METHODS - RETRY_SAFE_METHODS


class Rpc(NamedTuple):
    """One gateway method: its name, the stub's callable and whether retries are safe."""

    name: str
    call: Any
    retry_safe: bool


def method_table(stub: object) -> dict[str, Rpc]:
    """Every GatewayService method of a generated stub (sync or aio)."""
    return {
        name: Rpc(name, getattr(stub, name), name in RETRY_SAFE_METHODS) for name in ALL_METHODS
    }


_HINTS: dict[grpc.StatusCode, str] = {
    grpc.StatusCode.UNAVAILABLE: (
        "the gateway at {target} cannot be reached or the connection to it broke; check that "
        "it runs (`sandbox-sdk serve` starts a local one) and that target / SANDBOX_TARGET is "
        "right"
    ),
    grpc.StatusCode.DEADLINE_EXCEEDED: (
        "the call did not finish within its timeout; pass a larger timeout= or set SANDBOX_TIMEOUT"
    ),
    grpc.StatusCode.UNAUTHENTICATED: (
        "the gateway rejected the API key; set SANDBOX_API_KEY to a valid key "
        "(`sandbox-sdk keys create` makes one)"
    ),
    grpc.StatusCode.UNIMPLEMENTED: (
        "the server at {target} does not implement this call; is target pointing at a "
        "sandbox-sdk gateway of a matching version?"
    ),
}


# Added to the hint of a call that is never retried, when its connection failed.
_NOT_RETRIED_HINT = (
    "; {method} is not retried by itself, as running a command twice may do its work "
    "twice: the command may have run, so check the environment before running it again"
)


def translate(error: grpc.RpcError, target: str, method: str) -> SandboxError:
    """The typed SDK error for a failed call, with advice when the server gave none."""
    converted = from_rpc_error(error)
    hint = _HINTS.get(converted.code) if converted.code is not None else None
    if hint and converted.code == grpc.StatusCode.UNAVAILABLE and method in NOT_RETRY_SAFE:
        hint += _NOT_RETRIED_HINT.format(method=method)
    if hint and not converted.reason:
        # No ErrorInfo: the failure came from the transport, not from a handler.
        converted.message = f"{method}: {converted.message}; {hint.format(target=target)}"
        converted.args = (converted.message,)
    return converted
