"""Running one command through the environment's agent and streaming its output.

The orchestrator makes the command's pipes, hands their far ends to the agent
with the spawn request, and reads the output with event-loop reader callbacks
while the agent reports the start and the exit. Timeout, cancellation and
closing the stream SIGKILL the command's process group through the agent,
and wait until the agent reports it gone. A command costs no asyncio task
(but one that writes its stdin), since a short command's round trip is
dominated by such overheads.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections import deque
from collections.abc import AsyncGenerator, Callable, Mapping
from dataclasses import dataclass
from typing import Literal

from sandbox_sdk.server.orchestrator.sandbox.agent_client import (
    AgentClient,
    AgentCommand,
    CommandExit,
    SpawnRequest,
)
from sandbox_sdk.server.orchestrator.sandbox.environment_record import ExecOutput, ExecStarted

_DRAIN_AFTER_EXIT_SECONDS = 2.0
_REAP_TIMEOUT_SECONDS = 10.0
# Output chunks held before the pipes are no longer read (and so the command waits).
_MAX_QUEUED_CHUNKS = 16

Stream = Literal["stdout", "stderr"]


@dataclass(frozen=True)
class Launch:
    """What to run, and how long and how much of its output to take."""

    request: SpawnRequest
    stdin: bytes
    timeout_seconds: float
    output_cap_bytes: int
    chunk_bytes: int


@dataclass(frozen=True)
class ProcessExit:
    """How the first process ended.

    ``returncode`` follows ``subprocess``: negative for a signal; CPU and peak
    memory are the process's and its waited-for descendants'; ``lost``: the
    agent went away with the command.
    """

    returncode: int
    cpu_seconds: float
    max_rss_bytes: int
    lost: bool
    timed_out: bool
    cancelled: bool
    duration_seconds: float
    stdout_truncated: bool
    stderr_truncated: bool


ProcessEvent = ExecStarted | ExecOutput | ProcessExit


class Cancellation:
    """A one-shot request to stop a command that, unlike an asyncio.Event, calls back at once."""

    def __init__(self) -> None:
        self.requested = False
        self._callbacks: list[Callable[[], None]] = []

    def set(self) -> None:
        """Requests the stop (again: no effect)."""
        if not self.requested:
            self.requested = True
            for callback in list(self._callbacks):
                callback()

    def subscribe(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Calls ``callback`` on :meth:`set` (now, if it was); returns the unsubscriber."""
        if self.requested:
            callback()
        self._callbacks.append(callback)
        return lambda: self._callbacks.remove(callback)


class _OutputCap:
    """Passes at most ``cap`` bytes of one stream and remembers if it dropped any."""

    def __init__(self, cap: int) -> None:
        self.remaining = cap
        self.truncated = False

    def take(self, chunk: bytes) -> bytes:
        kept = chunk[: max(0, self.remaining)]
        self.remaining -= len(kept)
        if len(kept) < len(chunk):
            self.truncated = True
        return kept


# Output chunks (an empty one is end of file), "exit" once the process ended,
# "timeout" when a wait for the next item ran out.
_Item = ExecOutput | Literal["exit", "timeout"]


class _Output:
    """The command's pipes, read by reader callbacks into one bounded queue with the exit.

    When the consumer is slow the queue fills, the pipes are no longer read,
    they fill, and the command waits: memory stays bounded.
    """

    def __init__(self, fds: Mapping[Stream, int], chunk_bytes: int) -> None:
        self._loop = asyncio.get_running_loop()
        self._fds = dict(fds)
        self._chunk_bytes = chunk_bytes
        self._items: deque[_Item] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._paused = False
        for fd in self._fds.values():
            os.set_blocking(fd, False)
        self._watch()

    def _watch(self) -> None:
        for name, fd in self._fds.items():
            self._loop.add_reader(fd, self._read, name)

    def _unwatch(self) -> None:
        for fd in self._fds.values():
            self._loop.remove_reader(fd)

    def _read(self, name: Stream) -> None:
        fd = self._fds[name]
        try:
            data = os.read(fd, self._chunk_bytes)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._loop.remove_reader(fd)
            os.close(self._fds.pop(name))
        self.push(ExecOutput(name, data))
        if len(self._items) >= _MAX_QUEUED_CHUNKS and not self._paused:
            self._paused = True
            self._unwatch()

    def push(self, item: _Item) -> None:
        """Queues ``item`` and wakes the consumer."""
        self._items.append(item)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _expire(self, waiter: asyncio.Future[None]) -> None:
        if not waiter.done():  # so nothing came, and "timeout" is the only item
            self._items.append("timeout")
            waiter.set_result(None)

    async def get(self, timeout: float | None) -> _Item:
        """The next item; "timeout" if none came within ``timeout`` seconds (None: no limit)."""
        if not self._items:
            waiter = self._waiter = self._loop.create_future()
            timer = None
            if timeout is not None:
                timer = self._loop.call_later(timeout, self._expire, waiter)
            try:
                await waiter
            finally:
                self._waiter = None
                if timer is not None:
                    timer.cancel()
        item = self._items.popleft()
        if self._paused and len(self._items) < _MAX_QUEUED_CHUNKS // 2:
            self._paused = False
            self._watch()
        return item

    def close(self) -> None:
        """Stops reading and closes the pipes still open."""
        self._unwatch()
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()


async def run_process(
    agent: AgentClient,
    launch: Launch,
    *,
    on_started: Callable[[int], None],
    cancel: Cancellation,
) -> AsyncGenerator[ProcessEvent, None]:
    """Runs ``launch`` and yields started, output chunks as they come, then the exit.

    ``on_started(pid)`` learns the command's host pid; a command without one (the
    one-way agent, see :attr:`.AgentCommand.pid`) skips it, and its started event
    says pid 0. Setting ``cancel``, the
    timeout, or closing this generator kills the command's process group.
    Raises :class:`~.agent_client.AgentError` if the agent cannot start it.
    """
    stdout_read, stdout_write = os.pipe()
    stderr_read, stderr_write = os.pipe()
    stdin_read, stdin_write = os.pipe() if launch.stdin else (None, None)
    try:
        command = await agent.spawn(launch.request, stdin_read, stdout_write, stderr_write)
    except BaseException:
        for fd in (stdout_read, stderr_read, stdin_write):
            if fd is not None:
                os.close(fd)
        raise
    output = _Output({"stdout": stdout_read, "stderr": stderr_read}, launch.chunk_bytes)
    feeder = None
    try:
        if command.pid is not None:
            on_started(command.pid)
        started = time.monotonic()
        yield ExecStarted(command.pid if command.pid is not None else 0)
        if stdin_write is not None:
            feeder = asyncio.create_task(_feed(stdin_write, launch.stdin))
            stdin_write = None
        async with contextlib.aclosing(_stream(command, output, launch, cancel)) as events:
            async for event in events:
                if isinstance(event, _Finished):
                    end = command.exited.result()
                    yield ProcessExit(
                        returncode=end.returncode,
                        cpu_seconds=end.cpu_seconds,
                        max_rss_bytes=end.max_rss_bytes,
                        lost=end.lost,
                        timed_out=event.timed_out,
                        cancelled=event.cancelled,
                        duration_seconds=time.monotonic() - started,
                        stdout_truncated=event.stdout_truncated,
                        stderr_truncated=event.stderr_truncated,
                    )
                else:
                    yield event
    finally:
        if not command.exited.done():
            command.signal(signal.SIGKILL)
            await _reap(command)
        if feeder is not None:
            feeder.cancel()
            await asyncio.gather(feeder, return_exceptions=True)
        output.close()
        if stdin_write is not None:
            os.close(stdin_write)


async def _reap(command: AgentCommand) -> CommandExit | None:
    with contextlib.suppress(TimeoutError):
        return await asyncio.wait_for(asyncio.shield(command.exited), _REAP_TIMEOUT_SECONDS)
    return None


@dataclass(frozen=True)
class _Finished:
    timed_out: bool
    cancelled: bool
    stdout_truncated: bool
    stderr_truncated: bool


class _Progress:
    """How the command is ending: by itself, by its timeout, or cancelled."""

    def __init__(self) -> None:
        self.open_streams: set[str] = {"stdout", "stderr"}
        self.exited = self.timed_out = self.cancelled = False

    @property
    def finished(self) -> bool:
        return self.exited and not self.open_streams

    def time_out(self) -> None:
        if not (self.exited or self.cancelled):
            self.timed_out = True

    def cancel(self) -> None:
        if not (self.exited or self.timed_out):
            self.cancelled = True


async def _stream(
    command: AgentCommand, output: _Output, launch: Launch, cancel: Cancellation
) -> AsyncGenerator[ExecOutput | _Finished, None]:
    # Output and the exit come in arrival order. Timeout and cancellation kill
    # the group from their own callbacks, so a stalled consumer cannot stretch either.
    progress = _Progress()

    def kill(record: Callable[[], None]) -> None:
        if not command.exited.done():
            record()
            command.signal(signal.SIGKILL)

    def announce_exit(_: object) -> None:
        output.push("exit")

    command.exited.add_done_callback(announce_exit)
    unsubscribe = cancel.subscribe(lambda: kill(progress.cancel))
    timer = asyncio.get_running_loop().call_later(launch.timeout_seconds, kill, progress.time_out)
    caps: dict[Stream, _OutputCap] = {
        "stdout": _OutputCap(launch.output_cap_bytes),
        "stderr": _OutputCap(launch.output_cap_bytes),
    }
    try:
        while not progress.finished:
            # After the exit, output still buffered drains; a process that
            # left the group and holds the pipes open is not waited for.
            item = await output.get(_DRAIN_AFTER_EXIT_SECONDS if progress.exited else None)
            if item == "timeout":
                break
            if item == "exit":
                progress.exited = True
            elif not item.data:
                progress.open_streams.discard(item.stream)
            elif kept := caps[item.stream].take(item.data):
                yield ExecOutput(item.stream, kept)
        yield _Finished(
            timed_out=progress.timed_out,
            cancelled=progress.cancelled,
            stdout_truncated=caps["stdout"].truncated,
            stderr_truncated=caps["stderr"].truncated,
        )
    finally:
        timer.cancel()
        unsubscribe()
        command.exited.remove_done_callback(announce_exit)


async def _feed(fd: int, data: bytes) -> None:
    """Writes ``data`` to the command's stdin pipe, then closes it."""
    loop = asyncio.get_running_loop()
    os.set_blocking(fd, False)
    view = memoryview(data)
    try:
        while view:
            try:
                view = view[os.write(fd, view) :]
            except BlockingIOError:
                writable = loop.create_future()
                loop.add_writer(fd, writable.set_result, None)
                try:
                    await writable
                finally:
                    loop.remove_writer(fd)
    except (BrokenPipeError, ConnectionResetError):
        pass
    finally:
        os.close(fd)
