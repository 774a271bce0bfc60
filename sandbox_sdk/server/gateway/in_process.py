"""A link to an orchestrator in the gateway's own process: its handlers are called directly.

gRPC Java and Go have an in-process transport for a client and a server in one
process; grpc.aio has none, and a loopback call costs about as much as the
orchestrator's own work. The embedded server (``sandbox-sdk serve``) uses this
link instead of a channel to its orchestrator:

* Requests and responses stay serialized at the link, as over a channel, so the
  gateway forwards the same bytes either way (parsing a request and serializing
  a response cost microseconds).
* Handlers get an :class:`InProcessContext`: the metadata the gateway sends
  (tenant, request id), the caller's deadline, and ``abort``.
* A :class:`ServiceError` becomes the ``AioRpcError`` the orchestrator's
  ErrorInterceptor would have sent (code, message, details trailer), so the
  gateway's retries, fan-out and quota counts treat it as a remote error. Any
  other exception propagates: the gateway's own ErrorInterceptor logs it and
  answers INTERNAL with the request id, as the orchestrator's would have.
* A client stream hands the handler the requests as the gateway reads them
  from its caller, each parsed as it is read; so does a bidirectional stream,
  whose responses are read as a stream's are.
* A stream runs the handler's async generator one message per read, without
  buffering; cancelling the call closes the generator, so its cleanup runs
  (a command's process tree is killed).
"""

from __future__ import annotations

import asyncio
import logging
import types
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Coroutine, Generator, Mapping
from typing import Any, NoReturn, cast

import grpc
from google.protobuf.message import DecodeError, Message
from google.protobuf.message_factory import GetMessageClass

from sandbox_sdk.server.gateway.methods import ORCHESTRATOR_SERVICE
from sandbox_sdk.server.gateway.orchestrators import (
    BidiStreamCallable,
    CallMetadata,
    ClientStreamCallable,
    LinkState,
    StreamCall,
    StreamCallable,
    UnaryCallable,
)
from sandbox_sdk.server.response_page import StreamItem
from sandbox_sdk.server.status import ServiceError, invalid_argument, request_id_of

log = logging.getLogger(__name__)

RpcHandler = Callable[[Any, Any], Any]
"""A bound orchestrator handler: ``(request, context)`` to a response or an async generator."""
Response = Message | bytes
"""A handler's response: a message, or one it serialized already, which goes through as
it is."""
Responses = AsyncGenerator[Message | StreamItem, None]
"""A streaming handler's responses: messages, or responses it serialized already, alone
or a page of them (an experiment's stored events), which go through as they are."""


class InProcessContext:
    """The part of ``grpc.aio.ServicerContext`` the orchestrator's handlers use.

    They read the invocation metadata (``tenant_of``, ``request_id_of``), may ask
    how long the caller still waits, and may abort; nothing else is provided.
    """

    __slots__ = ("_deadline", "_metadata")

    def __init__(self, metadata: CallMetadata, deadline: float | None) -> None:
        self._metadata = metadata
        self._deadline = deadline

    def invocation_metadata(self) -> CallMetadata:
        """The metadata the gateway sent: tenant and request id."""
        return self._metadata

    def time_remaining(self) -> float | None:
        """Seconds until the caller's deadline, ``None`` without one."""
        if self._deadline is None:
            return None
        return max(0.0, self._deadline - asyncio.get_running_loop().time())

    async def abort(
        self, code: grpc.StatusCode, details: str = "", trailing_metadata: CallMetadata = ()
    ) -> NoReturn:
        """Ends the call with this status: the gateway gets it as a failed gRPC call."""
        raise _rpc_error(code, details, trailing_metadata)


class InProcessLink(LinkState):
    """An orchestrator in this process, reached by calling its handlers.

    ``handlers`` maps every OrchestratorService RPC name to its bound handler.
    Health is SERVING until :meth:`close`: the link lives as long as the server
    that made it, which stops the gateway before the orchestrator.
    """

    def __init__(
        self, orchestrator_id: str, address: str, handlers: Mapping[str, RpcHandler]
    ) -> None:
        super().__init__(orchestrator_id)
        self.address = address
        self.internal_metadata: tuple[tuple[str, str], ...] = ()
        missing = sorted(set(ORCHESTRATOR_SERVICE.methods_by_name) - set(handlers))
        if missing:
            raise ValueError(f"OrchestratorService RPCs with no handler: {missing}")
        self._unary: dict[str, UnaryCallable] = {}
        self._stream: dict[str, StreamCallable] = {}
        self._client_stream: dict[str, ClientStreamCallable] = {}
        self._bidi_stream: dict[str, BidiStreamCallable] = {}
        for method in ORCHESTRATOR_SERVICE.methods:
            path = f"/{ORCHESTRATOR_SERVICE.full_name}/{method.name}"
            request_type = GetMessageClass(method.input_type)
            if method.client_streaming and method.server_streaming:
                self._bidi_stream[path] = self._bidirectional(request_type, handlers[method.name])
            elif method.client_streaming:
                self._client_stream[path] = _client_streaming(request_type, handlers[method.name])
            elif method.server_streaming:
                self._stream[path] = self._streaming(request_type, handlers[method.name])
            else:
                self._unary[path] = self._unary_call(request_type, handlers[method.name])
        self._closing: set[asyncio.Task[None]] = set()
        self._closed = False

    def unary(self, path: str) -> UnaryCallable:
        """The unary callable for ``path``."""
        return self._unary[path]

    def stream(self, path: str) -> StreamCallable:
        """The server-streaming callable for ``path``."""
        return self._stream[path]

    def client_stream(self, path: str) -> ClientStreamCallable:
        """The client-streaming callable for ``path``."""
        return self._client_stream[path]

    def bidi_stream(self, path: str) -> BidiStreamCallable:
        """The bidirectional-streaming callable for ``path``."""
        return self._bidi_stream[path]

    async def check_health(self, timeout: float) -> bool:
        """Serving until the link is closed."""
        return not self._closed

    def connection_lost(self) -> bool:
        """Never: there is no connection to lose."""
        return False

    async def close(self) -> None:
        """Waits for cancelled streams to finish closing."""
        self._closed = True
        await asyncio.gather(*self._closing)

    @staticmethod
    def _unary_call(request_type: type[Message], handler: RpcHandler) -> UnaryCallable:
        # A plain function handing back _one_response's coroutine: no coroutine of its own
        # wrapped around it, on the path of every unary call.
        def call(
            request: bytes, timeout: float | None = None, metadata: CallMetadata | None = None
        ) -> Coroutine[Any, Any, bytes]:
            return _one_response(handler, _parse, (request_type, request), timeout, metadata)

        return call

    def _streaming(self, request_type: type[Message], handler: RpcHandler) -> StreamCallable:
        def call(
            request: bytes, timeout: float | None = None, metadata: CallMetadata | None = None
        ) -> StreamCall:
            return self._stream_call(
                handler, lambda: _parse(request_type, request), timeout, metadata
            )

        return call

    def _bidirectional(
        self, request_type: type[Message], handler: RpcHandler
    ) -> BidiStreamCallable:
        def call(
            request_iterator: AsyncIterator[bytes],
            timeout: float | None = None,
            metadata: CallMetadata | None = None,
        ) -> StreamCall:
            return self._stream_call(
                handler, lambda: _parsed(request_type, request_iterator), timeout, metadata
            )

        return call

    def _stream_call(
        self,
        handler: RpcHandler,
        request: Callable[[], Any],
        timeout: float | None,
        metadata: CallMetadata | None,
    ) -> StreamCall:
        """A call answered by a stream: the handler's generator, started on the first read
        with the request ``request()`` makes (a message, or the parsed client stream)."""
        deadline = _deadline(timeout)
        context = InProcessContext(metadata or (), deadline)

        def start() -> Responses:
            generator: Responses = handler(request(), context)
            return generator

        return _InProcessStream(start, context, deadline, self._close_later)

    def _close_later(self, messages: Responses) -> None:
        task = asyncio.get_running_loop().create_task(_close(messages))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)


def _client_streaming(request_type: type[Message], handler: RpcHandler) -> ClientStreamCallable:
    """The handler fed the requests as they arrive, each parsed when it is read."""

    def call(
        request_iterator: AsyncIterator[bytes],
        timeout: float | None = None,
        metadata: CallMetadata | None = None,
    ) -> Coroutine[Any, Any, bytes]:
        return _one_response(handler, _parsed, (request_type, request_iterator), timeout, metadata)

    return call


async def _one_response(
    handler: RpcHandler,
    make_request: Callable[..., Any],
    request_args: tuple[Any, ...],
    timeout: float | None,
    metadata: CallMetadata | None,
) -> bytes:
    """The serialized response of a call answered once (unary or client stream): the
    handler awaited within the deadline with the request ``make_request(*request_args)``,
    its ServiceError turned into the remote error the orchestrator would have sent.

    The handler's first step runs at once; a deadline timer is armed only if it then
    waits. Most reads answer from memory without waiting, and nothing can pass a
    deadline while the loop is not running anything else.
    """
    deadline = _deadline_ahead(timeout)
    context = InProcessContext(metadata or (), deadline)
    try:
        call = handler(make_request(*request_args), context)
        try:
            waiting_on = call.send(None)
        except StopIteration as answered:
            response: Response = answered.value
        else:
            response = await _rest_within_deadline(call, waiting_on, deadline)
    except ServiceError as error:
        raise _remote_error(error, context) from None
    return response if isinstance(response, bytes) else response.SerializeToString()


async def _rest_within_deadline(
    call: Coroutine[Any, Any, Response], waiting_on: Any, deadline: float | None
) -> Response:
    """The rest of a handler's call that is waiting on ``waiting_on``, cut at the deadline."""
    timer = _DeadlineTimer(deadline)
    timer.watch()
    try:
        return await _Resumed(call, waiting_on)
    except asyncio.CancelledError:
        if timer.cancelled_the_task():
            raise _deadline_exceeded() from None
        raise
    finally:
        timer.stop()


class _Resumed:
    """Awaits the rest of a coroutine whose first step already ran and yielded
    ``waiting_on``: what ``await`` does after that step, done by hand."""

    __slots__ = ("_call", "_waiting_on")

    def __init__(self, call: Coroutine[Any, Any, Response], waiting_on: Any) -> None:
        self._call = call
        self._waiting_on = waiting_on

    def __await__(self) -> Generator[Any, Any, Response]:
        call, waiting_on = self._call, self._waiting_on
        while True:
            try:
                sent = yield waiting_on
            except GeneratorExit:
                call.close()
                raise
            except BaseException as error:  # thrown in by the task (a cancellation)
                try:
                    waiting_on = call.throw(error)
                except StopIteration as answered:
                    return cast(Response, answered.value)
            else:
                try:
                    waiting_on = call.send(sent)
                except StopIteration as answered:
                    return cast(Response, answered.value)


async def _parsed(
    request_type: type[Message], request_iterator: AsyncIterator[bytes]
) -> AsyncIterator[Message]:
    async for request in request_iterator:
        yield _parse(request_type, request)


class _InProcessStream:
    """One server-streaming call: the handler's generator, advanced once per read.

    The deadline is one timer for the whole call, not a timeout scope per message:
    when it passes during a read, the read raises DEADLINE_EXCEEDED; when it passed
    between reads, the next read does.
    """

    def __init__(
        self,
        start: Callable[[], Responses],
        context: InProcessContext,
        deadline: float | None,
        close_later: Callable[[Responses], None],
    ) -> None:
        self._start = start
        self._context = context
        self._deadline = deadline
        self._timer = _DeadlineTimer(deadline)
        self._close_later = close_later
        self._messages: Responses | None = None
        self._cancelled = False

    def __aiter__(self) -> _InProcessStream:
        return self

    async def __anext__(self) -> StreamItem:
        if self._cancelled:
            raise _rpc_error(grpc.StatusCode.CANCELLED, "Locally cancelled by application!")
        timer = self._timer
        if timer.expired:
            raise _deadline_exceeded()
        messages = self._messages
        if messages is None:
            _require_time_left(self._deadline)
            messages = self._messages = self._start()
        timer.watch()
        try:
            message = await anext(messages)
        except BaseException as error:  # the end of the stream, or of the call
            by_deadline = isinstance(error, asyncio.CancelledError) and timer.cancelled_the_task()
            timer.stop()
            if isinstance(error, ServiceError):
                raise _remote_error(error, self._context) from None
            if by_deadline:
                raise _deadline_exceeded() from None
            raise
        timer.pause()
        return message if not isinstance(message, Message) else message.SerializeToString()

    def cancel(self) -> bool:
        """Stops the call; a generator paused at a message is closed in a task.

        The gateway cancels from the task that reads the stream, between
        reads, so the generator is never running then.
        """
        if self._cancelled:
            return False
        self._cancelled = True
        self._timer.stop()
        messages = self._messages
        if messages is not None and _paused(messages):
            self._close_later(messages)
        return True


class _DeadlineTimer:
    """A call's deadline as one timer: it cancels the task it watches when the deadline
    passes, and the call then tells that cancellation (which it turns into
    DEADLINE_EXCEEDED) from one that came from elsewhere, as ``asyncio.timeout`` does,
    without a timeout scope (a timer scheduled and cancelled) per message of a stream.
    """

    __slots__ = ("_cancelled_task", "_cancelling", "_deadline", "_handle", "_task", "expired")

    def __init__(self, deadline: float | None) -> None:
        self._deadline = deadline
        self._handle: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[Any] | None = None
        self._cancelled_task = False
        self._cancelling = 0
        self.expired = False

    def watch(self) -> None:
        """Watches the current task (arming the timer the first time)."""
        self._task = asyncio.current_task()
        if self._handle is None and self._deadline is not None and not self.expired:
            loop = asyncio.get_running_loop()
            self._handle = loop.call_at(self._deadline, self._expire)

    def pause(self) -> None:
        """Watches no task until the next :meth:`watch`; the deadline keeps running."""
        self._task = None

    def stop(self) -> None:
        """Disarms the timer: the call is over."""
        self._task = None
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def cancelled_the_task(self) -> bool:
        """Whether the CancelledError the watched task got is the deadline's own, which
        is then withdrawn; a cancellation from elsewhere is kept."""
        task = self._task
        self._task = None
        if not self._cancelled_task or task is None:
            return False
        self._cancelled_task = False
        return task.uncancel() <= self._cancelling

    def _expire(self) -> None:
        self._handle = None
        self.expired = True
        task = self._task
        if task is not None and not task.done():
            self._cancelled_task = True
            self._cancelling = task.cancelling()
            task.cancel()


def _paused(messages: Responses) -> bool:
    # A generator that returned or raised has no frame left to close.
    return cast(types.AsyncGeneratorType[Message | bytes, None], messages).ag_frame is not None


async def _close(messages: Responses) -> None:
    try:
        await messages.aclose()
    except Exception:
        log.exception("closing a cancelled in-process stream failed")


def _deadline(timeout: float | None) -> float | None:
    return None if timeout is None else asyncio.get_running_loop().time() + timeout


def _deadline_ahead(timeout: float | None) -> float | None:
    """:func:`_deadline`, raising DEADLINE_EXCEEDED if it has already passed: such a call
    is not started, as gRPC does not send it."""
    if timeout is not None and timeout <= 0:
        raise _deadline_exceeded()
    return _deadline(timeout)


def _require_time_left(deadline: float | None) -> None:
    # A call whose deadline has passed is not started, as gRPC does not send it.
    if deadline is not None and deadline <= asyncio.get_running_loop().time():
        raise _deadline_exceeded()


def _parse(request_type: type[Message], request: bytes) -> Message:
    try:
        return request_type.FromString(request)
    except DecodeError:
        raise invalid_argument(
            [("request", f"not a serialized {request_type.DESCRIPTOR.name}")]
        ) from None


def _rpc_error(
    code: grpc.StatusCode, details: str, trailing_metadata: CallMetadata = ()
) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(
        code, grpc.aio.Metadata(), grpc.aio.Metadata(*trailing_metadata), details, None
    )


def _remote_error(error: ServiceError, context: InProcessContext) -> grpc.aio.AioRpcError:
    """What a gRPC client of the orchestrator gets for ``error``: its rich status."""
    # request_id_of reads only invocation_metadata, which InProcessContext has.
    request_id = request_id_of(cast("grpc.aio.ServicerContext[Any, Any]", context))
    status = error.to_status(request_id)
    return _rpc_error(status.code, status.details, tuple(status.trailing_metadata))


def _deadline_exceeded() -> grpc.aio.AioRpcError:
    return _rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
