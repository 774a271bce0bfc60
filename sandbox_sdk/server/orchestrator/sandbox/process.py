"""Running one command through the environment's agent and streaming its output.

The orchestrator makes the command's pipes, hands their far ends to the agent
with the spawn request, and reads the output with asyncio while the agent
reports the start and the exit. Timeout, cancellation and closing the stream
SIGKILL the command's process group through the agent, and wait until the
agent reports it gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncGenerator, Callable, Coroutine
from dataclasses import dataclass
from typing import Literal

from sandbox_sdk.server.orchestrator.sandbox.agent_client import (
    AgentClient,
    AgentCommand,
    CommandExit,
    SpawnRequest,
)
from sandbox_sdk.server.orchestrator.sandbox.model import ExecOutput, ExecStarted

_DRAIN_AFTER_EXIT_SECONDS = 2.0
_REAP_TIMEOUT_SECONDS = 10.0

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


async def run_process(
    agent: AgentClient,
    launch: Launch,
    *,
    on_started: Callable[[int], None],
    cancel: asyncio.Event,
) -> AsyncGenerator[ProcessEvent, None]:
    """Runs ``launch`` and yields started, output chunks as they come, then the exit.

    ``on_started(pid)`` learns the command's pid. Setting ``cancel``, the
    timeout, or closing this generator kills the command's process group.
    Raises :class:`~.agent_client.AgentError` if the agent cannot start it.
    """
    loop = asyncio.get_running_loop()
    stdout_read, stdout_write = os.pipe()
    stderr_read, stderr_write = os.pipe()
    stdin_read, stdin_write = os.pipe() if launch.stdin else (None, None)
    readers: list[asyncio.ReadTransport] = []
    try:
        command = await agent.spawn(launch.request, stdin_read, stdout_write, stderr_write)
    except BaseException:
        for fd in (stdout_read, stderr_read, stdin_write):
            if fd is not None:
                os.close(fd)
        raise
    try:
        stdout = await _reader(loop, stdout_read, readers)
        stderr = await _reader(loop, stderr_read, readers)
        on_started(command.pid)
        started = time.monotonic()
        yield ExecStarted(command.pid)
        feeder = _feed(stdin_write, launch.stdin) if stdin_write is not None else None
        stdin_write = None
        async with contextlib.aclosing(
            _stream(command, stdout, stderr, launch, cancel=cancel, feeder=feeder)
        ) as events:
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
        for transport in readers:
            transport.close()
        if stdin_write is not None:
            os.close(stdin_write)


async def _reader(
    loop: asyncio.AbstractEventLoop, fd: int, transports: list[asyncio.ReadTransport]
) -> asyncio.StreamReader:
    reader = asyncio.StreamReader()
    pipe = os.fdopen(fd, "rb", buffering=0)
    try:
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), pipe
        )
    except BaseException:
        pipe.close()
        raise
    transports.append(transport)
    return reader


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


# Output chunks (an empty one is end of file), and "exit" once the process ended.
_Item = ExecOutput | Literal["exit"]


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
    command: AgentCommand,
    stdout: asyncio.StreamReader,
    stderr: asyncio.StreamReader,
    launch: Launch,
    *,
    cancel: asyncio.Event,
    feeder: Coroutine[None, None, None] | None,
) -> AsyncGenerator[ExecOutput | _Finished, None]:
    # One bounded queue carries output and the exit in arrival order; when the
    # consumer is slow the pumps block, the pipes fill and the command waits,
    # so memory stays bounded. Timeout and cancellation kill the group from
    # their own callbacks, so a stalled consumer cannot stretch either.
    queue: asyncio.Queue[_Item] = asyncio.Queue(maxsize=16)
    progress = _Progress()

    def kill(record: Callable[[], None]) -> None:
        if not command.exited.done():
            record()
            command.signal(signal.SIGKILL)

    helpers = [
        asyncio.create_task(_pump("stdout", stdout, queue, launch.chunk_bytes)),
        asyncio.create_task(_pump("stderr", stderr, queue, launch.chunk_bytes)),
        asyncio.create_task(_announce_exit(command, queue)),
        asyncio.create_task(_call_on(cancel, lambda: kill(progress.cancel))),
    ]
    if feeder is not None:
        helpers.append(asyncio.create_task(feeder))
    timer = asyncio.get_running_loop().call_later(launch.timeout_seconds, kill, progress.time_out)
    caps: dict[Stream, _OutputCap] = {
        "stdout": _OutputCap(launch.output_cap_bytes),
        "stderr": _OutputCap(launch.output_cap_bytes),
    }
    try:
        while not progress.finished:
            # After the exit, output still buffered drains; a process that
            # left the group and holds the pipes open is not waited for.
            drain = _DRAIN_AFTER_EXIT_SECONDS if progress.exited else None
            try:
                item = await asyncio.wait_for(queue.get(), drain)
            except TimeoutError:
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
        for helper in helpers:
            helper.cancel()
        await asyncio.gather(*helpers, return_exceptions=True)


async def _pump(
    name: Stream,
    reader: asyncio.StreamReader,
    queue: asyncio.Queue[_Item],
    chunk_bytes: int,
) -> None:
    while chunk := await reader.read(chunk_bytes):
        await queue.put(ExecOutput(name, chunk))
    await queue.put(ExecOutput(name, b""))


async def _announce_exit(command: AgentCommand, queue: asyncio.Queue[_Item]) -> None:
    await asyncio.shield(command.exited)
    await queue.put("exit")


async def _call_on(event: asyncio.Event, action: Callable[[], None]) -> None:
    await event.wait()
    action()


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
