"""gRPC client interceptors adding bearer credentials, for channels built by hand.

:class:`~sandbox_sdk.SandboxClient` does not need them: it sends the same
metadata directly, which costs less per call. Use these to call the generated
stubs yourself::

    channel = grpc.intercept_channel(grpc.insecure_channel(target), AuthInterceptor(auth))

Both retry a unary call once with a fresh token when the server answers
UNAUTHENTICATED and the token comes from a refreshable :class:`TokenProvider`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

import grpc
import grpc.aio

from sandbox_sdk.auth.credentials import AUTHORIZATION_KEY, BearerAuth, Metadata

if TYPE_CHECKING:  # grpc-stubs makes the interceptor bases generic; the runtime classes are not
    _UnaryBase = grpc.UnaryUnaryClientInterceptor[Any, Any]
    _StreamBase = grpc.UnaryStreamClientInterceptor[Any, Any]
    _AioUnaryBase = grpc.aio.UnaryUnaryClientInterceptor[Any, Any]
    _AioStreamBase = grpc.aio.UnaryStreamClientInterceptor[Any, Any]
else:
    _UnaryBase = grpc.UnaryUnaryClientInterceptor
    _StreamBase = grpc.UnaryStreamClientInterceptor
    _AioUnaryBase = grpc.aio.UnaryUnaryClientInterceptor
    _AioStreamBase = grpc.aio.UnaryStreamClientInterceptor


class _CallDetails(NamedTuple):
    method: str
    timeout: float | None
    metadata: Metadata | None
    credentials: grpc.CallCredentials | None
    wait_for_ready: bool | None
    compression: Any


def _merged(existing: Any, auth: Metadata) -> Metadata:
    kept = tuple(item for item in existing or () if item[0] != AUTHORIZATION_KEY)
    return kept + auth


def _with_auth(details: grpc.ClientCallDetails, auth: Metadata) -> grpc.ClientCallDetails:
    return _CallDetails(  # type: ignore[return-value]  # grpc-stubs declares no constructor
        details.method,
        details.timeout,
        _merged(details.metadata, auth),
        details.credentials,
        getattr(details, "wait_for_ready", None),
        getattr(details, "compression", None),
    )


class AuthInterceptor(_UnaryBase, _StreamBase):
    """Adds ``authorization: Bearer <token>`` to unary and server-streaming calls."""

    def __init__(self, auth: BearerAuth) -> None:
        self._auth = auth

    def intercept_unary_unary(
        self,
        continuation: Callable[[grpc.ClientCallDetails, Any], Any],
        client_call_details: grpc.ClientCallDetails,
        request: Any,
    ) -> Any:
        """Sends the call with credentials; once more with a new token if rejected."""
        outcome = continuation(_with_auth(client_call_details, self._auth.metadata()), request)
        if self._auth.refreshable and outcome.code() == grpc.StatusCode.UNAUTHENTICATED:
            self._auth.invalidate()
            outcome = continuation(_with_auth(client_call_details, self._auth.metadata()), request)
        return outcome

    def intercept_unary_stream(
        self,
        continuation: Callable[[grpc.ClientCallDetails, Any], Any],
        client_call_details: grpc.ClientCallDetails,
        request: Any,
    ) -> Any:
        """Opens the stream with credentials."""
        return continuation(_with_auth(client_call_details, self._auth.metadata()), request)


def _aio_with_auth(
    details: grpc.aio.ClientCallDetails, auth: Metadata
) -> grpc.aio.ClientCallDetails:
    return grpc.aio.ClientCallDetails(
        details.method,
        details.timeout,
        grpc.aio.Metadata(*_merged(details.metadata, auth)),
        details.credentials,
        details.wait_for_ready,
    )


class AsyncAuthInterceptor(_AioUnaryBase, _AioStreamBase):
    """The ``grpc.aio`` counterpart of :class:`AuthInterceptor`."""

    def __init__(self, auth: BearerAuth) -> None:
        self._auth = auth

    async def intercept_unary_unary(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Any],
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        """Sends the call with credentials; once more with a new token if rejected."""
        metadata = await self._auth.metadata_async()
        call = await continuation(_aio_with_auth(client_call_details, metadata), request)
        if self._auth.refreshable and await call.code() == grpc.StatusCode.UNAUTHENTICATED:
            self._auth.invalidate()
            metadata = await self._auth.metadata_async()
            call = await continuation(_aio_with_auth(client_call_details, metadata), request)
        return call

    async def intercept_unary_stream(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Any],
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        """Opens the stream with credentials."""
        metadata = await self._auth.metadata_async()
        return await continuation(_aio_with_auth(client_call_details, metadata), request)
