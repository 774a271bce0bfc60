"""Starting a sandboxed process, streaming its output, and killing its tree.

The first process is ``/bin/sh`` waiting at a start gate: it reads one line
from its stdin. Meanwhile the orchestrator moves it into its cgroups, then
writes the line (followed by the command's stdin); the shell sets the rlimits
and ``exec``s the real argv (setpriv dropping to the sandbox uid, then
bubblewrap or the command itself). Nothing the command runs can fork before it
is contained, and no Python code runs between fork and exec. The orchestrator
never asks ``subprocess`` to switch uid itself: that forces ``fork()`` instead
of ``vfork()``, which runs gRPC's fork handlers in the child and can crash it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from sandbox_sdk.server.orchestrator.sandbox.model import ExecOutput, ExecStarted

# dash reads a pipe byte by byte, so the command's stdin starts right after the line.
_GATE_SCRIPT = 'read -r _ || exit 125; {limits} || exit 126; exec "$@"'
_DRAIN_AFTER_EXIT_SECONDS = 2.0
_REAP_TIMEOUT_SECONDS = 10.0

Stream = Literal["stdout", "stderr"]


@dataclass(frozen=True)
class Launch:
    """What to start and how; ``limits_script`` holds the shell commands setting rlimits."""

    argv: Sequence[str]
    limits_script: str
    env: Mapping[str, str]
    cwd: Path
    stdin: bytes
    timeout_seconds: float
    output_cap_bytes: int
    chunk_bytes: int


@dataclass(frozen=True)
class ProcessExit:
    """How the first process ended.

    ``returncode`` follows ``subprocess``: negative for a signal.
    """

    returncode: int
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


async def _reap(process: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.shield(process.wait()), _REAP_TIMEOUT_SECONDS)


async def run_process(
    launch: Launch,
    *,
    prepare: Callable[[int], None],
    kill_tree: Callable[[int], None],
    cancel: asyncio.Event,
) -> AsyncGenerator[ProcessEvent, None]:
    """Runs ``launch`` and yields started, output chunks as they come, then the exit.

    ``prepare(pid)`` contains the gated process (moves it into cgroups);
    ``kill_tree()`` kills every process the command started, given the first
    one's pid (which is also its process group). Setting ``cancel``, the
    timeout, or closing this generator kills the tree.
    """
    process = await asyncio.create_subprocess_exec(
        "/bin/sh",
        "-c",
        _GATE_SCRIPT.format(limits=launch.limits_script),
        "sandbox-gate",
        *launch.argv,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=launch.cwd,
        env=dict(launch.env),
        start_new_session=True,
    )

    # The pidfd signals the first process without any risk of hitting a
    # reused pid once it has been reaped.
    pidfd = os.pidfd_open(process.pid)

    def kill() -> None:
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        kill_tree(process.pid)

    try:
        prepare(process.pid)
        started = time.monotonic()
        yield ExecStarted(process.pid)
        async with contextlib.aclosing(_stream(process, launch, cancel, kill)) as events:
            async for event in events:
                if isinstance(event, _Finished):
                    yield ProcessExit(
                        returncode=process.returncode if process.returncode is not None else -9,
                        timed_out=event.timed_out,
                        cancelled=event.cancelled,
                        duration_seconds=time.monotonic() - started,
                        stdout_truncated=event.stdout_truncated,
                        stderr_truncated=event.stderr_truncated,
                    )
                else:
                    yield event
    finally:
        if process.returncode is None:
            kill()
        await _reap(process)
        os.close(pidfd)


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
    process: asyncio.subprocess.Process,
    launch: Launch,
    cancel: asyncio.Event,
    kill: Callable[[], None],
) -> AsyncGenerator[ExecOutput | _Finished, None]:
    # One bounded queue carries output and the exit in arrival order; when the
    # consumer is slow the pumps block, the pipes fill and the command waits,
    # so memory stays bounded. Timeout and cancellation kill the tree from
    # their own tasks, so a stalled consumer cannot stretch either.
    queue: asyncio.Queue[_Item] = asyncio.Queue(maxsize=16)
    progress = _Progress()
    helpers = [
        asyncio.create_task(_pump("stdout", process.stdout, queue, launch.chunk_bytes)),
        asyncio.create_task(_pump("stderr", process.stderr, queue, launch.chunk_bytes)),
        asyncio.create_task(_announce_exit(process, queue, kill)),
        asyncio.create_task(_kill_after(launch.timeout_seconds, process, progress.time_out, kill)),
        asyncio.create_task(_kill_on(cancel, process, progress.cancel, kill)),
    ]
    if process.stdin is not None:
        helpers.append(asyncio.create_task(_feed(process.stdin, b"go\n" + launch.stdin)))
    caps: dict[Stream, _OutputCap] = {
        "stdout": _OutputCap(launch.output_cap_bytes),
        "stderr": _OutputCap(launch.output_cap_bytes),
    }
    try:
        while not progress.finished:
            # After the exit, output still buffered drains; a process that
            # escaped the tree and holds the pipes open is not waited for.
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
        for helper in helpers:
            helper.cancel()
        await asyncio.gather(*helpers, return_exceptions=True)


async def _pump(
    name: Stream,
    reader: asyncio.StreamReader | None,
    queue: asyncio.Queue[_Item],
    chunk_bytes: int,
) -> None:
    if reader is not None:
        while chunk := await reader.read(chunk_bytes):
            await queue.put(ExecOutput(name, chunk))
    await queue.put(ExecOutput(name, b""))


async def _announce_exit(
    process: asyncio.subprocess.Process, queue: asyncio.Queue[_Item], kill: Callable[[], None]
) -> None:
    await process.wait()
    kill()  # background processes die with the command
    await queue.put("exit")


async def _kill_after(
    seconds: float,
    process: asyncio.subprocess.Process,
    record: Callable[[], None],
    kill: Callable[[], None],
) -> None:
    await asyncio.sleep(seconds)
    if process.returncode is None:
        record()
        kill()


async def _kill_on(
    event: asyncio.Event,
    process: asyncio.subprocess.Process,
    record: Callable[[], None],
    kill: Callable[[], None],
) -> None:
    await event.wait()
    if process.returncode is None:
        record()
        kill()


async def _feed(writer: asyncio.StreamWriter, data: bytes) -> None:
    try:
        writer.write(data)
        await writer.drain()
    except (BrokenPipeError, ConnectionResetError):
        pass
    finally:
        writer.close()
