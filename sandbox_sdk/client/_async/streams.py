"""Server streams as closable iterators that resume after a broken connection."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from typing import Any, Generic, TypeVar

import grpc

from sandbox_sdk.auth.credentials import RefreshOnce
from sandbox_sdk.client._async import glue
from sandbox_sdk.client._async.transport import AsyncTransport
from sandbox_sdk.client.calls import Rpc, translate
from sandbox_sdk.client.retry import Attempts, RetryPolicy
from sandbox_sdk.client.stream_state import ExecCollector
from sandbox_sdk.errors import SandboxError, SandboxTimeoutError
from sandbox_sdk.models.execution import ExecResult, OutputChunk

T = TypeVar("T")


class AsyncServerStream(Generic[T]):
    """Iterates over one server-streaming call, converting each message.

    ``convert`` may return ``None`` to skip a message. When ``resumable``, a
    retryable failure (per the retry policy; UNAVAILABLE by default) reopens the
    call with ``request()`` (which should ask to continue where the stream
    stopped) until the policy's deadline passes without progress. ``timeout``
    bounds the whole stream. The call starts with the first item asked for;
    closing the stream (``close``, leaving a ``with`` block, or garbage
    collection) cancels it.
    """

    def __init__(
        self,
        transport: AsyncTransport,
        rpc: Rpc,
        request: Callable[[], Any],
        convert: Callable[[Any], T | None],
        *,
        timeout: float | None = None,
        retry: RetryPolicy | None = None,
        resumable: bool = False,
    ) -> None:
        self._transport = transport
        self._rpc = rpc
        self._request = request
        self._convert = convert
        self._policy = transport.retry if retry is None else retry
        self._resumable = resumable
        self._timeout = timeout
        self._ends_at = None if timeout is None else self._policy.clock() + timeout
        self._attempts: Attempts | None = None
        self._refresh = RefreshOnce(transport.auth)
        self._closed = False
        self._reconnects = 0
        self._started = time.perf_counter()
        self._call: Any = None

    def __aiter__(self) -> AsyncIterator[T]:
        return self

    async def __anext__(self) -> T:
        if self._call is None and not self._closed:
            self._call = await self._transport.open_stream(
                self._rpc, self._request(), timeout=self._timeout
            )
        while True:
            if self._closed:
                raise StopAsyncIteration
            try:
                message = await glue.next_message(self._call)
            except grpc.RpcError as error:
                await self._reopen_or_raise(error)
                continue
            if message is None:
                self._finish("OK")
                raise StopAsyncIteration
            self._attempts = None  # progress: a later outage gets a fresh deadline
            item = self._convert(message)
            if item is not None:
                return item

    async def _reopen_or_raise(self, error: grpc.RpcError) -> None:
        if self._closed:
            raise StopAsyncIteration from None
        converted = translate(error, self._transport.target, self._rpc.name)
        delay = self._retry_delay(converted)
        if delay is None:
            self._finish(converted.code.name if converted.code else "UNKNOWN")
            attempts = self._attempts
            raise (attempts.annotate(converted) if attempts else converted) from error
        if delay:
            await self._policy.async_sleep(delay)
        self._reconnects += 1
        self._call = await self._transport.open_stream(
            self._rpc, self._request(), timeout=self._remaining()
        )

    def _retry_delay(self, error: SandboxError) -> float | None:
        if self._refresh(error):
            return 0.0
        if not self._resumable:
            return None
        if self._attempts is None:
            self._attempts = self._policy.start(stream=True)
        return self._attempts.next_delay(error)

    def _remaining(self) -> float | None:
        if self._ends_at is None:
            return None
        remaining = self._ends_at - self._policy.clock()
        if remaining <= 0:
            raise SandboxTimeoutError(
                f"{self._rpc.name}: the stream's timeout ran out while reconnecting; "
                "pass a larger timeout"
            )
        return remaining

    def _finish(self, code: str) -> None:
        observer = self._transport.observer
        if observer is not None and not self._closed:
            elapsed = time.perf_counter() - self._started
            observer.record(self._rpc.name, code, elapsed, self._reconnects)
        self._closed = True

    async def aclose(self) -> None:
        """Cancels the call; iteration stops."""
        if not self._closed:
            self._finish("CANCELLED")
            if self._call is not None:
                self._call.cancel()

    async def __aenter__(self) -> AsyncServerStream[T]:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __del__(self) -> None:
        call = getattr(self, "_call", None)
        if call is not None and not getattr(self, "_closed", True):
            call.cancel()


class AsyncExecStream(AsyncServerStream[OutputChunk]):
    """The output of a running command, chunk by chunk; ``result()`` once it has ended.

    ``result()`` holds the exit status and the whole output (capped by the server).
    """

    def __init__(self, transport: AsyncTransport, request: Any, *, timeout: float | None) -> None:
        self._collector = ExecCollector(tuple(request.argv))
        super().__init__(
            transport,
            transport.rpcs["ExecCommand"],
            lambda: request,
            self._collector.convert,
            timeout=timeout,
        )

    @glue.was_a_sync_property
    async def result(self) -> ExecResult:
        """The command's result, reading any output left first."""
        if not self._collector.finished:
            async for _ in self:
                pass
        return self._collector.result
