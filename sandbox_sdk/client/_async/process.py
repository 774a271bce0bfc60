"""A handle on one background process: its output, its stdin, signals, its end."""

from __future__ import annotations

import signal as signals
from collections.abc import AsyncIterator

from sandbox_sdk.api.v1 import process_pb2, requests_pb2
from sandbox_sdk.client._async import glue
from sandbox_sdk.client._async.streams import AsyncServerStream
from sandbox_sdk.client._async.transport import AsyncTransport
from sandbox_sdk.client.output_lines import LineSplitter
from sandbox_sdk.client.process_requests import MAX_INPUT_CHUNK, pty_size, signal_number
from sandbox_sdk.client.request_messages import seconds
from sandbox_sdk.client.retry import RetryPolicy
from sandbox_sdk.client.stream_state import ProcessOutputCursor
from sandbox_sdk.errors import SandboxTimeoutError
from sandbox_sdk.models.execution import OutputChunk
from sandbox_sdk.models.processes import ProcessInfo, ProcessState
from sandbox_sdk.utils.units import DurationLike

WAIT_SLICE = 50.0
"""Seconds one WaitProcess call waits at most; a longer wait is several calls, so no
proxy or retry deadline cuts it short."""

NO_PROGRESS_PAUSE = 1.0
"""Seconds to pause when WaitProcess answered with a process still running."""


class AsyncProcess:
    """A command running in the background of an environment (``sandbox.start(...)``).

    ``info`` is the last snapshot, :meth:`refresh` a new one. Any number of
    clients may attach to the same process with ``sandbox.process(id)``.
    """

    def __init__(self, transport: AsyncTransport, process: process_pb2.Process) -> None:
        self._transport = transport
        self._info = ProcessInfo.from_proto(process)

    @property
    def info(self) -> ProcessInfo:
        """The last snapshot of the process."""
        return self._info

    @property
    def id(self) -> str:
        """The process's id, unique within its environment."""
        return self._info.id

    @property
    def environment_id(self) -> str:
        """The environment it runs in."""
        return self._info.environment_id

    @property
    def pid(self) -> int:
        """Its process id inside the environment (0 if it never started)."""
        return self._info.pid

    @property
    def state(self) -> ProcessState:
        """The state in the last snapshot."""
        return self._info.state

    def _keys(self) -> dict[str, str]:
        return {"environment_id": self.environment_id, "process_id": self.id}

    def _set(self, process: process_pb2.Process) -> ProcessInfo:
        self._info = ProcessInfo.from_proto(process)
        return self._info

    async def refresh(
        self, *, timeout: float | None = None, retry: RetryPolicy | None = None
    ) -> ProcessInfo:
        """Fetches the latest snapshot into ``info`` and returns it."""
        request = requests_pb2.GetProcessRequest(**self._keys())
        response = await self._transport.call("GetProcess", request, timeout=timeout, retry=retry)
        return self._set(response.process)

    def output(
        self,
        *,
        after_sequence: int = 0,
        follow: bool = True,
        timeout: float | None = None,
        retry: RetryPolicy | None = None,
    ) -> AsyncServerStream[OutputChunk]:
        """Its output after ``after_sequence``, chunk by chunk, each exactly once and in order.

        With ``follow`` the stream lasts until the process ends (``info`` then
        holds its final state); otherwise it stops after what was written so
        far. A broken connection is resumed from the last chunk seen. Each
        chunk's ``sequence`` lets another call resume after it.
        """
        cursor = ProcessOutputCursor(self.environment_id, self.id, after_sequence, follow)

        def convert(message: requests_pb2.StreamProcessOutputResponse) -> OutputChunk | None:
            chunk = cursor.convert(message)
            if cursor.final is not None and cursor.final.id == self.id:
                self._info = cursor.final
            return chunk

        return AsyncServerStream(
            self._transport,
            self._transport.rpcs["StreamProcessOutput"],
            cursor.request,
            convert,
            timeout=timeout,
            retry=retry,
            resumable=True,
        )

    async def stdout_lines(self, *, after_sequence: int = 0) -> AsyncIterator[str]:
        """Its standard output (everything, for a pty process) as text lines without their
        line endings, until it ends; close the iterator to stop early."""
        splitter = LineSplitter()
        async with self.output(after_sequence=after_sequence) as stream:
            async for chunk in stream:
                if chunk.stream == "stdout":
                    for line in splitter.feed(chunk.data):
                        yield line
        for line in splitter.flush():
            yield line

    async def write(self, data: bytes | str, *, timeout: float | None = None) -> None:
        """Writes to its stdin (the terminal, for a pty process).

        Needs a process started with ``stdin=True`` or ``pty=``; a closed
        stdin is :class:`FailedPreconditionError`. Not retried by itself: a
        repeat would write the bytes twice.
        """
        payload = data.encode() if isinstance(data, str) else bytes(data)
        for start in range(0, len(payload), MAX_INPUT_CHUNK):
            await self._write_input(payload[start : start + MAX_INPUT_CHUNK], False, timeout)

    async def close_stdin(self, *, timeout: float | None = None) -> None:
        """Closes its stdin: the process reads end of file (a pty process, the terminal's
        end-of-file character)."""
        await self._write_input(b"", True, timeout)

    async def _write_input(self, data: bytes, close: bool, timeout: float | None) -> None:
        request = requests_pb2.WriteProcessInputRequest(**self._keys(), data=data, close=close)
        await self._transport.call("WriteProcessInput", request, timeout=timeout)

    async def signal(
        self, sig: int | str | signals.Signals, *, timeout: float | None = None
    ) -> ProcessInfo:
        """Sends a signal to the process's group (``signal.SIGTERM``, ``"INT"``, ``15``...).

        Returns the snapshot right after; the process may still be running.
        Signalling a process that has ended changes nothing.
        """
        request = requests_pb2.SignalProcessRequest(**self._keys(), signal=signal_number(sig))
        response = await self._transport.call("SignalProcess", request, timeout=timeout)
        return self._set(response.process)

    async def kill(self, *, timeout: float | None = None) -> ProcessInfo:
        """Sends SIGKILL; :meth:`wait` then returns its final state."""
        return await self.signal(signals.SIGKILL, timeout=timeout)

    async def resize(self, rows: int, cols: int, *, timeout: float | None = None) -> None:
        """Changes the size of a pty process's terminal (it gets SIGWINCH)."""
        request = requests_pb2.ResizeProcessTerminalRequest(
            **self._keys(), size=pty_size(rows, cols)
        )
        await self._transport.call("ResizeProcessTerminal", request, timeout=timeout)

    async def wait(self, timeout: DurationLike | None = None) -> ProcessInfo:
        """Waits until the process ends and returns its final state: ``exit_code``,
        ``signal``, ``reason`` and ``usage``.

        Without ``timeout`` it waits as long as the process runs; when
        ``timeout`` runs out first, :class:`SandboxTimeoutError` is raised and
        the process goes on.
        """
        limit = seconds(timeout)
        clock = self._transport.retry.clock
        ends_at = None if limit is None else clock() + limit
        request = requests_pb2.WaitProcessRequest(**self._keys())
        while True:
            window = WAIT_SLICE if ends_at is None else min(WAIT_SLICE, ends_at - clock())
            if window <= 0:
                raise self._still_running(limit)
            try:
                response = await self._transport.call("WaitProcess", request, timeout=window)
            except SandboxTimeoutError:
                continue  # this slice ran out; the loop checks the caller's own limit
            info = self._set(response.process)
            if info.state.is_final:
                return info
            await glue.sleep(NO_PROGRESS_PAUSE)

    def _still_running(self, limit: float | None) -> SandboxTimeoutError:
        return SandboxTimeoutError(
            f"process {self.id} in {self.environment_id} still runs after {limit:g}s; "
            "wait again, or stop it with kill()",
            metadata=self._keys(),
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(id={self.id!r}, pid={self.pid}, state={self.state.value})"
