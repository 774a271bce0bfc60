"""Background processes (StartProcess and its RPCs): a table per environment.

A process is started through the environment's agent like a command, but
nobody has to read it: the orchestrator reads its stdout and stderr pipes (or,
under a pty, the terminal's master end, which the agent made inside the
sandbox, or with a one-way agent the socket the agent relays that terminal
through: :attr:`.AgentCommand.terminal` either way, and resizes go through
:meth:`.AgentCommand.resize`) with event-loop reader callbacks into a bounded
buffer of numbered events. Any number of clients read that buffer from a
sequence of their choice; the oldest events are dropped when it is full. The
process's stdin is a pipe (or the terminal) that WriteProcessInput writes to.

Policy. A process obeys the environment's cgroup, rlimits and seccomp filter
(the agent starts it as it starts commands) but has no wall-clock timeout: it
runs until it exits, is signalled, or the environment ends (its agent then
kills it, and it is reported KILLED, reason CANCELLED). While one runs, the
environment is not idle (the process is in ``runtime.execs``, which the idle
reaper and the environment's release look at), and its output postpones idle
expiry too. The table lives in memory, with a row per process in the
orchestrator's SQLite database (:mod:`.processes_store`): an orchestrator
restart ends the environments and their processes, which GetProcess and
ListProcesses then report KILLED (reason CANCELLED), without their output.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from typing import Literal

import grpc

from sandbox_sdk.errors import ErrorReason
from sandbox_sdk.server.database import Database
from sandbox_sdk.server.orchestrator.sandbox.activity import Activity
from sandbox_sdk.server.orchestrator.sandbox.agent_client import (
    AgentCommand,
    AgentError,
    CommandExit,
    SpawnRequest,
)
from sandbox_sdk.server.orchestrator.sandbox.commands import (
    RunningCommand,
    exit_event,
    spawn_request,
)
from sandbox_sdk.server.orchestrator.sandbox.environment_record import Command, ExitReason
from sandbox_sdk.server.orchestrator.sandbox.environments import LiveEnvironments
from sandbox_sdk.server.orchestrator.sandbox.execution import Execution
from sandbox_sdk.server.orchestrator.sandbox.process import ProcessExit
from sandbox_sdk.server.orchestrator.sandbox.processes_store import ProcessStore
from sandbox_sdk.server.orchestrator.sandbox.runtime import Runtime
from sandbox_sdk.server.orchestrator.sandbox.settings import SandboxSettings
from sandbox_sdk.server.orchestrator.sandbox.statuses import file_errors
from sandbox_sdk.server.orchestrator.sandbox.workspace import split_path
from sandbox_sdk.server.status import ServiceError, not_found

State = Literal["RUNNING", "EXITED", "KILLED", "FAILED_TO_START"]
Kind = Literal["stdout", "stderr", "exited"]

# The signals SignalProcess may send: job control, interrupts and ends, nothing
# that dumps core on purpose or means something else to the sandbox.
ALLOWED_SIGNALS = frozenset(
    {
        signal.SIGHUP,
        signal.SIGINT,
        signal.SIGQUIT,
        signal.SIGKILL,
        signal.SIGUSR1,
        signal.SIGUSR2,
        signal.SIGTERM,
        signal.SIGCONT,
        signal.SIGSTOP,
        signal.SIGTSTP,
        signal.SIGWINCH,
    }
)
MAX_INPUT_BYTES = 1 << 20
MAX_TERMINAL_CELLS = 1000
_READ_BYTES = 64 * 1024
# After the first process exited, how long output still left in the pipes is read.
_DRAIN_SECONDS = 2.0
_CANNOT_RUN = b"sandbox: cannot run "
_EOF = b"\x04"


@dataclass(frozen=True)
class OutputEvent:
    """One numbered event of a process's output: bytes of a stream, or its end."""

    sequence: int
    time: float
    kind: Kind
    data: bytes = b""


@dataclass
class ManagedProcess:
    """A background process and what is kept of its output."""

    id: str
    environment_id: str
    argv: tuple[str, ...]
    cwd: str
    pty: bool
    buffer_limit: int
    pid: int = 0
    state: State = "RUNNING"
    exit_code: int = -1
    signal: int = 0
    reason: ExitReason = ExitReason.UNSPECIFIED
    cpu_seconds: float = 0.0
    max_rss_bytes: int = 0
    start_time: float = field(default_factory=time.time)
    end_time: float | None = None
    start_error: str = ""
    stdin_fd: int | None = None
    terminal: int | None = None
    events: deque[OutputEvent] = field(default_factory=deque)
    buffered_bytes: int = 0
    next_sequence: int = 1
    dropped: bool = False
    done: asyncio.Event = field(default_factory=asyncio.Event)
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    write_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    command: AgentCommand | None = None
    killed_by_environment: bool = False

    @property
    def stdin_open(self) -> bool:
        """Whether WriteProcessInput still accepts data."""
        return self.state == "RUNNING" and (self.stdin_fd is not None or self._terminal_input)

    _terminal_input: bool = False

    @property
    def oldest_sequence(self) -> int:
        """The sequence of the oldest event kept (the next one when none are)."""
        return self.events[0].sequence if self.events else self.next_sequence

    def append(self, kind: Kind, data: bytes = b"") -> None:
        """Adds an event, dropping the oldest output to stay within the buffer."""
        event = OutputEvent(self.next_sequence, time.time(), kind, data)
        self.next_sequence += 1
        self.events.append(event)
        self.buffered_bytes += len(data)
        while self.buffered_bytes > self.buffer_limit and len(self.events) > 1:
            dropped = self.events.popleft()
            self.buffered_bytes -= len(dropped.data)
            self.dropped = True
        asyncio.get_running_loop().create_task(self._notify())

    async def _notify(self) -> None:
        async with self.changed:
            self.changed.notify_all()

    def events_after(self, after_sequence: int) -> list[OutputEvent]:
        """The kept events with a larger sequence; OUT_OF_RANGE when some are gone."""
        if after_sequence and self.dropped and after_sequence + 1 < self.oldest_sequence:
            raise output_expired(self, after_sequence)
        return [event for event in self.events if event.sequence > after_sequence]


def output_expired(process: ManagedProcess, after_sequence: int) -> ServiceError:
    """Resuming from a sequence whose successors were dropped from the buffer."""
    oldest = process.oldest_sequence
    return ServiceError(
        grpc.StatusCode.OUT_OF_RANGE,
        ErrorReason.OUTPUT_EXPIRED,
        f"process {process.id} no longer keeps the output after sequence {after_sequence}: "
        f"the oldest kept is {oldest} (the buffer holds the newest output only); resume "
        f"from after_sequence={oldest - 1}, or 0 for all that is kept",
        metadata={"oldest_sequence": str(oldest)},
    )


class EnvironmentProcesses:
    """Every environment's background processes, and the process RPCs' operations."""

    def __init__(
        self,
        environments: LiveEnvironments,
        activity: Activity,
        execution: Execution,
        settings: SandboxSettings,
        db: Database | None = None,
    ) -> None:
        self._environments = environments
        self._store = ProcessStore(db) if db is not None else None
        if self._store is not None:
            self._store.mark_lost()
        self._activity = activity
        self._execution = execution
        self._settings = settings
        self._tables: dict[str, dict[str, ManagedProcess]] = {}
        self._by_request: dict[tuple[str, str], str] = {}
        self._keys = 0

    def _runtime(self, tenant: str, environment_id: str) -> Runtime:
        runtime = self._environments.live(environment_id, tenant)
        if runtime is None:
            runtime = self._environments.running(tenant, environment_id)[1]
        return runtime

    def _table(self, tenant: str, environment_id: str) -> dict[str, ManagedProcess]:
        """The environment's processes; NOT_FOUND for another tenant's environment.

        An ended environment's come from the database once none is running here.
        """
        if self._environments.live(environment_id, tenant) is not None:
            return self._tables.setdefault(environment_id, {})
        self._environments.get(tenant, environment_id)  # NOT_FOUND unless the tenant's
        table = self._tables.get(environment_id, {})
        if self._store is None or any(not p.done.is_set() for p in table.values()):
            return table
        self._tables.pop(environment_id, None)
        limit = self._settings.process_output_buffer_bytes
        return {p.id: p for p in self._store.for_environment(environment_id, limit)}

    def get(self, tenant: str, environment_id: str, process_id: str) -> ManagedProcess:
        """One process of the tenant's environment; NOT_FOUND when there is none."""
        process = self._table(tenant, environment_id).get(process_id)
        if process is None:
            raise not_found(
                ErrorReason.PROCESS_NOT_FOUND,
                f"environment {environment_id} has no process {process_id!r}; use an id "
                "StartProcess or ListProcesses returned",
            )
        return process

    def list(
        self, tenant: str, environment_id: str, include_finished: bool
    ) -> list[ManagedProcess]:
        """The environment's processes, oldest first."""
        processes = list(self._table(tenant, environment_id).values())
        if include_finished:
            return processes
        return [p for p in processes if p.state == "RUNNING"]

    async def start(
        self,
        tenant: str,
        environment_id: str,
        command: Command,
        *,
        keep_stdin: bool,
        pty: tuple[int, int] | None,
        request_id: str,
    ) -> ManagedProcess:
        """Starts a background process; a repeated request_id returns the first one."""
        runtime = self._runtime(tenant, environment_id)
        table = self._tables.setdefault(environment_id, {})
        if request_id:
            first = self._by_request.get((environment_id, request_id))
            if first is not None and first in table:
                return table[first]
        self._check_limit(table, environment_id)
        workspace = runtime.files()
        cwd = split_path(command.cwd, allow_root=True) if command.cwd else ()
        if cwd:
            with file_errors("cwd", command.cwd, workspace.quota_bytes):
                workspace.require_directory(cwd)
        request = spawn_request(
            self._environments.isolation,
            command,
            environment_id=environment_id,
            spec=runtime.spec,
            layout=workspace.layout,
            cwd=cwd,
            limits=self._execution.process_limits(runtime),
        )
        if pty is not None:
            request = _under_terminal(request, pty)
        process = ManagedProcess(
            id=self._new_id(table),
            environment_id=environment_id,
            argv=command.argv,
            cwd=request.cwd,
            pty=pty is not None,
            buffer_limit=self._settings.process_output_buffer_bytes,
        )
        self._remember(table, process)
        if request_id:
            self._by_request[(environment_id, request_id)] = process.id
        self._activity.touch(environment_id)
        try:
            agent = await self._execution._agent(environment_id, runtime)
            if pty is not None:
                started = await agent.spawn(request, None, None, None)  # type: ignore[arg-type]
                fds: dict[Kind, int] = {}
            else:
                started, fds = await self._spawn_with_pipes(agent, request, keep_stdin, process)
        except AgentError as error:
            process.state = "FAILED_TO_START"
            process.start_error = str(error)
            process.end_time = time.time()
            process.done.set()
            process.append("exited")
            self._save(process)
            return process
        process.command = started
        process.pid = started.sandbox_pid
        if started.terminal is not None:
            process.terminal = started.terminal
            process._terminal_input = True
            os.set_blocking(started.terminal, False)
            fds = {"stdout": started.terminal}
        running_command = RunningCommand()
        running_command.pid = started.pid
        self._keys += 1
        key = -self._keys  # commands count up from 1; processes down from -1
        runtime.execs[key] = running_command
        running_command.cancel.subscribe(lambda: self._end_with_environment(process))
        asyncio.get_running_loop().create_task(self._watch(process, started, fds, runtime, key))
        self._save(process)
        return process

    def _save(self, process: ManagedProcess) -> None:
        if self._store is not None:
            self._store.save(process)

    def _check_limit(self, table: dict[str, ManagedProcess], environment_id: str) -> None:
        """RESOURCE_EXHAUSTED when the environment runs as many processes as it may."""
        running = sum(1 for p in table.values() if p.state == "RUNNING")
        limit = self._settings.max_processes_per_environment
        if running >= limit:
            raise ServiceError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                ErrorReason.QUOTA_EXCEEDED,
                f"environment {environment_id} has {running} processes running, its limit: "
                "wait for or signal some of them before starting another",
                quota_violations=[("processes", f"at most {limit} running per environment")],
            )

    async def _spawn_with_pipes(
        self, agent: object, request: object, keep_stdin: bool, process: ManagedProcess
    ) -> tuple[AgentCommand, dict[Kind, int]]:
        from sandbox_sdk.server.orchestrator.sandbox.agent_client import AgentClient, SpawnRequest

        if not isinstance(agent, AgentClient) or not isinstance(request, SpawnRequest):
            raise TypeError("an agent client and a spawn request")
        stdout_read, stdout_write = os.pipe()
        stderr_read, stderr_write = os.pipe()
        stdin_read, stdin_write = os.pipe() if keep_stdin else (None, None)
        try:
            started = await agent.spawn(request, stdin_read, stdout_write, stderr_write)
        except BaseException:
            for fd in (stdout_read, stderr_read, stdin_write):
                if fd is not None:
                    os.close(fd)
            raise
        if stdin_write is not None:
            os.set_blocking(stdin_write, False)
            process.stdin_fd = stdin_write
        for fd in (stdout_read, stderr_read):
            os.set_blocking(fd, False)
        return started, {"stdout": stdout_read, "stderr": stderr_read}

    def _new_id(self, table: dict[str, ManagedProcess]) -> str:
        while True:
            candidate = f"p-{secrets.token_hex(6)}"
            if candidate not in table:
                return candidate

    def _remember(self, table: dict[str, ManagedProcess], process: ManagedProcess) -> None:
        table[process.id] = process
        finished = [p for p in table.values() if p.state != "RUNNING" and p.done.is_set()]
        for old in finished[
            : max(0, len(finished) - self._settings.max_finished_processes_per_environment)
        ]:
            del table[old.id]

    def _end_with_environment(self, process: ManagedProcess) -> None:
        process.killed_by_environment = True
        if process.command is not None:
            process.command.signal(signal.SIGKILL)

    async def _watch(
        self,
        process: ManagedProcess,
        command: AgentCommand,
        fds: dict[Kind, int],
        runtime: Runtime,
        key: int,
    ) -> None:
        """Reads the output into the buffer until the process ended, then records how."""
        loop = asyncio.get_running_loop()
        open_streams = dict(fds)
        drained = loop.create_future()
        terminal = process.terminal

        def read(kind: Kind, fd: int) -> None:
            try:
                data = os.read(fd, _READ_BYTES)
            except BlockingIOError:
                return
            except OSError:  # EIO: the terminal's last slave end closed
                data = b""
            if data:
                process.append(kind, data)
                self._activity.touch(process.environment_id)
                return
            loop.remove_reader(fd)
            open_streams.pop(kind, None)
            if fd != terminal:
                os.close(fd)
            if not open_streams and not drained.done():
                drained.set_result(None)

        for kind, fd in fds.items():
            loop.add_reader(fd, read, kind, fd)
        if not fds:
            drained.set_result(None)
        try:
            end = await asyncio.shield(command.exited)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(drained), _DRAIN_SECONDS)
        except asyncio.CancelledError:
            end = CommandExit(
                returncode=-signal.SIGKILL, cpu_seconds=0.0, max_rss_bytes=0, lost=True
            )
        finally:
            for fd in list(open_streams.values()):
                loop.remove_reader(fd)
                if fd != terminal:
                    os.close(fd)
            runtime.execs.pop(key, None)
        self._finish(process, end, runtime)

    def _finish(self, process: ManagedProcess, end: CommandExit, runtime: Runtime) -> None:
        limits = self._execution.process_limits(runtime)
        exited = exit_event(
            ProcessExit(
                returncode=end.returncode,
                cpu_seconds=end.cpu_seconds,
                max_rss_bytes=end.max_rss_bytes,
                lost=end.lost,
                timed_out=False,
                cancelled=end.lost or process.killed_by_environment,
                duration_seconds=time.time() - process.start_time,
                stdout_truncated=False,
                stderr_truncated=False,
            ),
            0,
            limits,
        )
        process.exit_code = exited.exit_code
        process.signal = exited.signal
        process.reason = exited.reason
        process.cpu_seconds = exited.cpu_seconds
        process.max_rss_bytes = exited.memory_peak_bytes
        process.end_time = time.time()
        if exited.reason is ExitReason.EXITED:
            process.state = "FAILED_TO_START" if self._could_not_run(process) else "EXITED"
        else:
            process.state = "KILLED"
        self._close_input(process)
        if process.terminal is not None:
            os.close(process.terminal)
            process.terminal = None
        process.append("exited")
        process.done.set()
        self._save(process)
        self._activity.touch(process.environment_id)

    @staticmethod
    def _could_not_run(process: ManagedProcess) -> bool:
        """Whether the agent's stand-in said the program cannot be executed (126, 127)."""
        if process.exit_code not in (126, 127):
            return False
        output = [e for e in process.events if e.kind != "exited"]
        if len(output) == 1 and output[0].sequence == 1 and output[0].data.startswith(_CANNOT_RUN):
            process.start_error = output[0].data.decode(errors="replace").strip()
            return True
        return False

    @staticmethod
    def _close_input(process: ManagedProcess) -> None:
        if process.stdin_fd is not None:
            os.close(process.stdin_fd)
            process.stdin_fd = None
        process._terminal_input = False

    async def write_input(self, process: ManagedProcess, data: bytes, close: bool) -> None:
        """Writes ``data`` to the process's stdin (or terminal), in call order."""
        async with process.write_lock:
            if process.state != "RUNNING":
                raise ServiceError(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    ErrorReason.PROCESS_NOT_RUNNING,
                    f"process {process.id} has ended ({process.state}); nothing reads its input",
                )
            fd = process.stdin_fd if process.stdin_fd is not None else process.terminal
            if fd is None or not process.stdin_open:
                raise ServiceError(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    ErrorReason.STDIN_CLOSED,
                    f"process {process.id}'s stdin is closed (or it was started without "
                    "stdin=true); start it with stdin to write to it",
                )
            payload = data + (_EOF if close and process.terminal is not None else b"")
            await _write_all(fd, payload, lambda: process.state != "RUNNING")
            if close:
                self._close_input(process)
        self._activity.touch(process.environment_id)

    def signal(self, process: ManagedProcess, number: int) -> None:
        """Sends an allowed signal to the process's group; nothing once it ended."""
        if process.state == "RUNNING" and process.command is not None:
            process.command.signal(number)
            self._activity.touch(process.environment_id)

    async def resize(self, process: ManagedProcess, rows: int, cols: int) -> None:
        """Sets the terminal's size (the kernel tells the foreground group with SIGWINCH);
        returns once it is set."""
        if not process.pty:
            raise ServiceError(
                grpc.StatusCode.FAILED_PRECONDITION,
                ErrorReason.NOT_A_TERMINAL,
                f"process {process.id} runs without a pty; start it with pty set to resize it",
            )
        ended = ServiceError(
            grpc.StatusCode.FAILED_PRECONDITION,
            ErrorReason.PROCESS_NOT_RUNNING,
            f"process {process.id} has ended ({process.state}); start a new one to resize",
        )
        if process.terminal is None or process.command is None:
            raise ended
        try:
            await process.command.resize(rows, cols)
        except (AgentError, OSError):
            raise ended from None

    async def output(
        self, process: ManagedProcess, after_sequence: int, follow: bool
    ) -> AsyncIterator[OutputEvent]:
        """The events after ``after_sequence``; with ``follow``, until the process's end."""
        cursor = after_sequence
        while True:
            async with process.changed:
                events = process.events_after(cursor)
                if not events and follow and not process.done.is_set():
                    await process.changed.wait()
                    continue
            for event in events:
                cursor = event.sequence
                yield event
                if event.kind == "exited":
                    return
            if not follow:
                return
            if process.done.is_set() and not events:
                return


async def _write_all(fd: int, data: bytes, gone: Callable[[], bool]) -> None:
    """Writes everything to a non-blocking fd, waiting while its pipe is full."""
    loop = asyncio.get_running_loop()
    view = memoryview(data)
    while view:
        try:
            written = os.write(fd, view)
        except BlockingIOError:
            ready: asyncio.Future[None] = loop.create_future()
            loop.add_writer(fd, _set_done, ready)
            try:
                await asyncio.wait_for(ready, 1.0)
            except TimeoutError:
                if gone():
                    raise _not_running_error() from None
            finally:
                loop.remove_writer(fd)
            continue
        except BrokenPipeError:
            raise _not_running_error() from None
        view = view[written:]


def _under_terminal(request: SpawnRequest, pty: tuple[int, int]) -> SpawnRequest:
    """``request`` under a pty of that size, with a TERM its programs understand."""
    env = {**request.env, "TERM": request.env.get("TERM", "xterm-256color")}
    return replace(request, env=env, pty=pty)


def _set_done(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _not_running_error() -> ServiceError:
    return ServiceError(
        grpc.StatusCode.FAILED_PRECONDITION,
        ErrorReason.PROCESS_NOT_RUNNING,
        "the process no longer reads its input (it closed its stdin or ended)",
    )


def terminal_size(rows: int, cols: int) -> tuple[int, int] | None:
    """A checked (rows, cols), or None when out of range."""
    if 1 <= rows <= MAX_TERMINAL_CELLS and 1 <= cols <= MAX_TERMINAL_CELLS:
        return rows, cols
    return None
