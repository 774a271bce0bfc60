"""How an orchestrator knows a call comes from its gateway, and refuses to start when it cannot.

The orchestrator believes the tenant named in ``x-sandbox-tenant``, so a caller
it has not authenticated could act as any tenant. It therefore serves only
with internal authentication:

* ``internal_token``: every call carries ``authorization: Bearer <token>``
  (checked here by :class:`InternalTokenInterceptor`; a call without it is
  UNAUTHENTICATED and never reaches a handler), and/or
* ``tls`` with ``client_ca_file``: mutual TLS, so a peer without a certificate
  from that CA is refused at the handshake.

The one exception is ``insecure_dev_loopback_only: true``, a development
instance that binds only to 127.0.0.1 or [::1]. The embedded server
(``sandbox-sdk serve``) links its gateway in-process and gives its loopback
port a random token.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import grpc

from sandbox_sdk.errors import ErrorReason
from sandbox_sdk.server.status import MethodHandler, ServerInterceptorBase, ServiceError
from sandbox_sdk.server.tls import TlsConfig

MIN_TOKEN_LENGTH = 32
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "[::1]"})
_UNCHECKED_PREFIX = "/grpc."  # health checking and reflection


class InternalAuthSettings(Protocol):
    """The part of ``OrchestratorConfig`` that says how callers are authenticated."""

    listen: str
    internal_token: str | None
    tls: TlsConfig | None
    insecure_dev_loopback_only: bool


def listen_host(listen: str) -> str:
    """The host part of a ``host:port`` listen address (``[::1]`` keeps its brackets)."""
    return listen.rsplit(":", 1)[0] if ":" in listen else listen


def internal_authentication_problem(settings: InternalAuthSettings) -> str | None:
    """Why these settings must not serve, or ``None`` when they may."""
    token = settings.internal_token
    if token and len(token) < MIN_TOKEN_LENGTH:
        return (
            f"orchestrator.internal_token has {len(token)} characters; use a random secret of"
            f" at least {MIN_TOKEN_LENGTH} (e.g. `openssl rand -hex 32`), the same on the gateway"
        )
    if settings.insecure_dev_loopback_only:
        if listen_host(settings.listen) not in LOOPBACK_HOSTS:
            return (
                "orchestrator.insecure_dev_loopback_only serves without authentication, so it"
                f" binds only to 127.0.0.1 or [::1], and listen is {settings.listen!r}: use"
                " listen: 127.0.0.1:<port>, or set internal_token or tls.client_ca_file to"
                " serve beyond this machine"
            )
        return None
    mutual_tls = settings.tls is not None and settings.tls.authenticates_clients
    if token or mutual_tls:
        return None
    return (
        "this orchestrator has no internal authentication: anyone reaching"
        f" {settings.listen} could act as any tenant. Set orchestrator.internal_token (at"
        f" least {MIN_TOKEN_LENGTH} random characters, e.g. `openssl rand -hex 32`, and the"
        " same gateway.internal_token), or orchestrator.tls with client_ca_file for mutual"
        " TLS (and gateway.orchestrator_tls with cert_file and key_file); for a development"
        " instance on this machine only, set insecure_dev_loopback_only: true with"
        " listen: 127.0.0.1:<port>"
    )


def require_internal_authentication(settings: InternalAuthSettings) -> None:
    """Raises ``ValueError`` saying what to configure when the settings may not serve."""
    problem = internal_authentication_problem(settings)
    if problem is not None:
        raise ValueError(problem)


class InternalTokenInterceptor(ServerInterceptorBase):
    """Admits only callers that present the gateway's internal token."""

    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}".encode()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[MethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> MethodHandler:
        """Passes the call on with the right token (or for health and reflection)."""
        if handler_call_details.method.startswith(_UNCHECKED_PREFIX):
            return await continuation(handler_call_details)
        if self._presents_token(handler_call_details.invocation_metadata or ()):
            return await continuation(handler_call_details)
        return _refuse_handler()

    def _presents_token(self, metadata: Any) -> bool:
        values = [value for key, value in metadata if key == "authorization"]
        if len(values) != 1:
            return False
        value = values[0].encode() if isinstance(values[0], str) else values[0]
        return hmac.compare_digest(value, self._expected)


def _refuse_handler() -> MethodHandler:
    error = ServiceError(
        grpc.StatusCode.UNAUTHENTICATED,
        ErrorReason.API_KEY_INVALID,
        "this orchestrator serves only its gateway, and the call did not carry its internal"
        " token: configure the same internal_token on the gateway and the orchestrator",
    )

    async def refuse(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        await context.abort(error.code, error.message)

    return grpc.unary_unary_rpc_method_handler(refuse)
