"""Rich ``google.rpc.Status`` errors raised by service code.

Handlers raise :class:`ServiceError`; :class:`ErrorInterceptor` turns it into
a status with ``ErrorInfo``, ``BadRequest``, ``QuotaFailure``, ``RetryInfo``
and ``RequestInfo`` details. Any other exception becomes INTERNAL with only
the request id sent to the client and the traceback logged. A stream handler's
:class:`~sandbox_sdk.server.response_page.ResponsePage` is sent message by message.

Messages and details often echo what the caller sent (an id, a path). Every
status is clipped here, in one place, so whatever a caller sends, the
trailer stays well under gRPC's metadata limit (8 KiB by default): see
:mod:`sandbox_sdk.server.clipping`.
"""

from __future__ import annotations

import errno
import logging
import os
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar, cast

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from sandbox_sdk.errors import ERROR_DOMAIN, REQUEST_ID_KEY, ErrorReason
from sandbox_sdk.server.clipping import (
    clip,
    clip_metadata,
    clip_violations,
    fit_details,
    valid_request_id,
)
from sandbox_sdk.server.response_page import ResponsePage

log = logging.getLogger(__name__)

_DISK_FULL_RETRY_SECONDS = 5.0


class ServiceError(Exception):
    """An error a handler wants the client to see, with its rich details."""

    def __init__(
        self,
        code: grpc.StatusCode,
        reason: ErrorReason | str,
        message: str,
        *,
        field_violations: Sequence[tuple[str, str]] = (),
        quota_violations: Sequence[tuple[str, str]] = (),
        retry_after: float | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = str(reason)
        self.message = message
        self.field_violations = tuple(field_violations)
        self.quota_violations = tuple(quota_violations)
        self.retry_after = retry_after
        self.metadata = dict(metadata or {})

    def to_status(self, request_id: str = "") -> grpc.Status:
        """Builds the ``grpc.Status`` sent to the client, clipped to fit a trailer."""
        details: list[Any] = [
            error_details_pb2.ErrorInfo(
                reason=clip(self.reason, 64),
                domain=ERROR_DOMAIN,
                metadata=clip_metadata(self.metadata),
            )
        ]
        if self.field_violations:
            details.append(
                error_details_pb2.BadRequest(
                    field_violations=[
                        error_details_pb2.BadRequest.FieldViolation(field=f, description=d)
                        for f, d in clip_violations(self.field_violations)
                    ]
                )
            )
        if self.quota_violations:
            details.append(
                error_details_pb2.QuotaFailure(
                    violations=[
                        error_details_pb2.QuotaFailure.Violation(subject=s, description=d)
                        for s, d in clip_violations(self.quota_violations)
                    ]
                )
            )
        if self.retry_after is not None:
            delay = duration_pb2.Duration()
            delay.FromNanoseconds(int(self.retry_after * 1e9))
            details.append(error_details_pb2.RetryInfo(retry_delay=delay))
        if request_id:
            details.append(error_details_pb2.RequestInfo(request_id=request_id))
        return status_from(self.code, self.message, details)


def status_from(code: grpc.StatusCode, message: str, details: Sequence[Any]) -> grpc.Status:
    """Packs protobuf detail messages into a ``grpc.Status``, clipped to fit a trailer.

    The message is cut to a bounded size, and details that would take the
    status past its budget are dropped from the end (ErrorInfo comes first
    and always fits).
    """
    packed = []
    for detail in details:
        wrapper = any_pb2.Any()
        wrapper.Pack(detail)
        packed.append(wrapper)
    proto = status_pb2.Status(
        code=getattr(code_pb2, code.name), message=clip(message), details=fit_details(packed)
    )
    return rpc_status.to_status(proto)


def invalid_argument(violations: Sequence[tuple[str, str]], message: str = "") -> ServiceError:
    """An INVALID_ARGUMENT error listing each bad field and what to do about it."""
    summary = message or "; ".join(f"{f}: {d}" for f, d in violations)
    return ServiceError(
        grpc.StatusCode.INVALID_ARGUMENT,
        ErrorReason.INVALID_ARGUMENT,
        summary,
        field_violations=violations,
    )


def not_found(reason: ErrorReason, message: str) -> ServiceError:
    """A NOT_FOUND error."""
    return ServiceError(grpc.StatusCode.NOT_FOUND, reason, message)


def metadata_value(context: grpc.aio.ServicerContext[Any, Any], key: str) -> str:
    """The first value of an invocation metadata key, or ``""``."""
    return _value_in(context.invocation_metadata() or (), key)


def _value_in(metadata: Iterable[tuple[str, Any]], key: str) -> str:
    for item_key, value in metadata:
        if item_key == key:
            return value if isinstance(value, str) else value.decode()
    return ""


def request_id_of(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    """The caller's ``x-request-id`` when it is a short printable token, else a new one.

    The id is echoed in trailers and RequestInfo, so an overlong or binary
    one is replaced rather than sent back.
    """
    return _read_call(context).request_id


@dataclass(frozen=True)
class ServedCall:
    """What the error-status wrapper read of the call being served: its invocation
    metadata and its request id (see :func:`request_id_of`)."""

    metadata: Sequence[tuple[str, Any]]
    request_id: str


# Set by the wrappers below in the call's own task: grpc.aio serves every call in a task
# of its own, so a call never sees another's. Reading metadata from grpc's context builds
# it anew each time, which costs more than the rest of a cheap call's bookkeeping.
_SERVED_CALL: ContextVar[ServedCall | None] = ContextVar("sandbox_served_call", default=None)


def served_call(context: grpc.aio.ServicerContext[Any, Any]) -> ServedCall:
    """The metadata and request id of the call ``context`` serves, read once per call."""
    call = _SERVED_CALL.get()
    return call if call is not None else _read_call(context)


def _read_call(context: grpc.aio.ServicerContext[Any, Any]) -> ServedCall:
    metadata: Sequence[tuple[str, Any]] = tuple(context.invocation_metadata() or ())
    presented = _value_in(metadata, REQUEST_ID_KEY)
    request_id = presented if presented and valid_request_id(presented) else new_request_id()
    return ServedCall(metadata, request_id)


def _serve(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    """Reads the call's metadata for the handlers, echoes its request id in the trailers,
    and returns the request id."""
    call = _read_call(context)
    _SERVED_CALL.set(call)
    context.set_trailing_metadata(((REQUEST_ID_KEY, call.request_id),))
    return call.request_id


def new_request_id() -> str:
    """A fresh request id: 32 random hex digits."""
    return os.urandom(16).hex()  # secrets.token_hex(16), in two calls instead of five


if TYPE_CHECKING:
    MethodHandler = grpc.RpcMethodHandler[Any, Any]
    ServerInterceptorBase = grpc.aio.ServerInterceptor[Any, Any]
    GenericRpcHandlerBase = grpc.GenericRpcHandler[Any, Any]
else:  # grpc's classes are generic only in grpc-stubs
    MethodHandler = grpc.RpcMethodHandler
    ServerInterceptorBase = grpc.aio.ServerInterceptor
    GenericRpcHandlerBase = grpc.GenericRpcHandler
_UnaryHandler = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]
_StreamHandler = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], AsyncIterator[Any]]


async def _abort(
    context: grpc.aio.ServicerContext[Any, Any], error: BaseException, request_id: str, method: str
) -> None:
    if out_of_space(error):
        log.error("out of disk space in %s (request id %s): %s", method, request_id, error)
        error = disk_full()
    if isinstance(error, ServiceError):
        status = error.to_status(request_id)
    else:
        log.exception("internal error in %s (request id %s)", method, request_id, exc_info=error)
        status = status_from(
            grpc.StatusCode.INTERNAL,
            f"internal error; quote request id {request_id} when reporting it",
            [
                error_details_pb2.ErrorInfo(reason=ErrorReason.INTERNAL, domain=ERROR_DOMAIN),
                error_details_pb2.RequestInfo(request_id=request_id),
            ],
        )
    # grpc-stubs lacks aio's abort_with_status.
    await cast(Any, context).abort_with_status(status)


def disk_full() -> ServiceError:
    """RESOURCE_EXHAUSTED (DISK_FULL): the server's own disk is full, so nothing was written."""
    return ServiceError(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        ErrorReason.DISK_FULL,
        "the server's disk is full, so nothing was written; delete environments you no "
        "longer need to free space (deleting always works), or retry later",
        retry_after=_DISK_FULL_RETRY_SECONDS,
    )


def out_of_space(error: BaseException) -> bool:
    """Whether ``error`` says a disk is full (SQLite's SQLITE_FULL, ENOSPC, EDQUOT)."""
    if isinstance(error, sqlite3.Error):
        return getattr(error, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or (
            "disk is full" in str(error)
        )
    return isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)


def _wrap_unary(handler: _UnaryHandler, method: str) -> _UnaryHandler:
    async def wrapped(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        request_id = _serve(context)
        try:
            return await handler(request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as error:  # every failure must become a status
            await _abort(context, error, request_id, method)
            raise  # unreachable: abort raises

    return wrapped


def _wrap_stream(handler: _StreamHandler, method: str) -> _StreamHandler:
    async def wrapped(
        request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        request_id = _serve(context)
        try:
            # each_response's loop, inline: a generator of its own would be one more
            # layer for every message of every stream.
            async for item in handler(request, context):
                if type(item) is ResponsePage:
                    for message in item:
                        yield message
                else:
                    yield item
        except grpc.aio.AbortError:
            raise
        except Exception as error:  # every failure must become a status
            await _abort(context, error, request_id, method)

    return wrapped


class ErrorInterceptor(ServerInterceptorBase):
    """Turns exceptions escaping every kind of handler into rich statuses.

    It caches the wrapped handler per method, so it must come last in a
    server's interceptor list: whatever runs after it has to return the same
    handler for a method every time.
    """

    def __init__(self) -> None:
        self._wrapped: dict[str, MethodHandler] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[MethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> MethodHandler:
        method: str = handler_call_details.method
        cached = self._wrapped.get(method)
        if cached is not None:
            return cached
        handler = await continuation(handler_call_details)
        if handler is None or method.startswith("/grpc."):
            # Health and reflection write their streams with context.write
            # instead of yielding; they raise no ServiceError to translate.
            return handler
        wrapped = self._wrap(handler, method)
        self._wrapped[method] = wrapped
        return wrapped

    @staticmethod
    def _wrap(handler: MethodHandler, method: str) -> MethodHandler:
        # The request is parsed inside the wrapper, not by grpc: grpc answers a
        # request it cannot parse with UNKNOWN, this answers INVALID_ARGUMENT.
        parse = _parser(handler.request_deserializer, method)
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                _wrap_unary(_parsing(cast(_UnaryHandler, handler.unary_unary), parse), method),
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                _wrap_stream(_parsing(cast(_StreamHandler, handler.unary_stream), parse), method),
                response_serializer=handler.response_serializer,
            )
        if handler.stream_unary is not None:
            # A client stream's requests are parsed one by one as the handler reads them.
            return grpc.stream_unary_rpc_method_handler(
                _wrap_unary(
                    _parsing_each(cast(_UnaryHandler, handler.stream_unary), parse), method
                ),
                response_serializer=handler.response_serializer,
            )
        if handler.stream_stream is not None:
            # A bidirectional stream (ForwardPort): requests parsed as they are read.
            return grpc.stream_stream_rpc_method_handler(
                _wrap_stream(
                    cast(
                        _StreamHandler,
                        _parsing_each(cast(_UnaryHandler, handler.stream_stream), parse),
                    ),
                    method,
                ),
                response_serializer=handler.response_serializer,
            )
        return handler


class ErrorStatusHandlers(GenericRpcHandlerBase):
    """Another generic handler's methods wrapped as :class:`ErrorInterceptor` wraps them,
    once per method: a server whose handlers all come from it needs no interceptor, which
    grpc.aio would run on every call."""

    def __init__(self, handlers: GenericRpcHandlerBase) -> None:
        self._handlers = handlers
        # Only methods ``handlers`` serves are remembered, so unknown paths cannot grow it.
        self._wrapped: dict[str, MethodHandler] = {}

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> MethodHandler | None:
        """The wrapped handler for a method path, or ``None`` for paths not served."""
        method: str = handler_call_details.method
        wrapped = self._wrapped.get(method)
        if wrapped is None:
            handler = self._handlers.service(handler_call_details)
            if handler is None:
                return None
            wrapped = self._wrapped[method] = ErrorInterceptor._wrap(handler, method)
        return wrapped


def _parser(
    deserializer: Callable[[bytes], Any] | None, method: str
) -> Callable[[bytes], Any] | None:
    """Parses a request, raising INVALID_ARGUMENT (not grpc's UNKNOWN) for corrupt bytes;
    ``None`` for a handler that takes the bytes as they came."""
    if deserializer is None:
        return None
    name = method.rsplit("/", 1)[-1]

    def parse(raw: bytes) -> Any:
        try:
            return deserializer(raw)
        except Exception:  # protobuf's DecodeError and its relatives
            raise invalid_argument(
                [
                    (
                        "request",
                        f"is not a valid serialized {name} request; send the protobuf message",
                    )
                ]
            ) from None

    return parse


_H = TypeVar("_H", _UnaryHandler, _StreamHandler)


def _parsing_each(handler: _UnaryHandler, parse: Callable[[bytes], Any] | None) -> _UnaryHandler:
    """A client-streaming ``handler`` taking raw requests, each parsed by ``parse``
    (``handler`` itself when ``parse`` is ``None``)."""
    if parse is None:
        return handler

    async def parsed(requests: AsyncIterator[bytes]) -> AsyncIterator[Any]:
        async for raw in requests:
            yield parse(raw)

    return cast(_UnaryHandler, lambda requests, context: handler(parsed(requests), context))


def _parsing(handler: _H, parse: Callable[[bytes], Any] | None) -> _H:
    """``handler`` taking raw bytes, parsed first by ``parse``; ``handler`` itself when
    it takes the bytes (``parse`` is ``None``)."""
    if parse is None:
        return handler
    return cast(_H, lambda raw, context: handler(parse(raw), context))
