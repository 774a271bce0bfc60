"""The gateway's methods as the SDK calls them, and turning failures into SDK errors."""

from __future__ import annotations

from typing import Any, NamedTuple

import grpc

from sandbox_sdk.errors import SandboxError, from_rpc_error

# Methods whose repetition changes nothing the first attempt did not: reads,
# lists, streams, and mutations that set a state or a value. The retry module's
# docstring says why each mutation is here and why ExecCommand is not.
IDEMPOTENT_METHODS = frozenset(
    {
        "GetEnvironment",
        "ListEnvironments",
        "UpdateEnvironment",
        "DeleteEnvironment",
        "WriteFile",
        "ReadFile",
        "ListFiles",
        "GetEnvironmentUsage",
        "StreamEnvironmentUsage",
        "GetExperiment",
        "ListExperiments",
        "CancelExperiment",
        "GetExperimentResults",
        "StreamExperimentEvents",
        "ListModels",
        "ListApiKeys",
        "RevokeApiKey",
    }
)
RETRY_SAFE_CREATES = frozenset({"CreateEnvironment", "CreateExperiment", "CreateApiKey"})
# Running a command again may do its work twice.
NOT_RETRY_SAFE = frozenset({"ExecCommand"})


class Rpc(NamedTuple):
    """One gateway method: its name, the stub's callable and whether retries are safe."""

    name: str
    call: Any
    retry_safe: bool


RETRY_SAFE_METHODS = IDEMPOTENT_METHODS | RETRY_SAFE_CREATES
ALL_METHODS = RETRY_SAFE_METHODS | NOT_RETRY_SAFE


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
