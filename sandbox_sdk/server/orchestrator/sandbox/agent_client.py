"""The orchestrator's side of an environment's agent: starting it, and commands through it.

The agent (:mod:`.agent`, whose docstring defines the protocol) is started once
per environment through a start gate: ``/bin/sh`` reads one line from its
stdin while the orchestrator moves it into the environment's cgroups, then
sets the rlimits and ``exec``s the rest (setpriv dropping to the sandbox uid,
bubblewrap, the interpreter running the agent). Nothing in the sandbox runs
before it is contained, and ``subprocess`` never switches uid itself (which
would force ``fork()`` over ``vfork()`` in the gRPC server). Its socket is
passed as an inherited fd.

Everything the agent says is untrusted: it runs in the sandbox. Its pids
are only used through pidfds it sends (which name processes it can see),
and a malformed message ends the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from sandbox_sdk.server.orchestrator.sandbox import agent

# dash reads a pipe byte by byte, so nothing past the line is consumed.
_GATE_SCRIPT = 'read -r _ || exit 125; {limits} || exit 126; exec "$@"'
_HEADER_BYTES = 4
_MAX_MESSAGE_BYTES = 1 << 20
_MAX_FDS = 4
_INT_BYTES = 4
_READY_TIMEOUT_SECONDS = 10.0
_EXIT_TIMEOUT_SECONDS = 5.0
_STDERR_DETAIL_BYTES = 2000

log = logging.getLogger(__name__)


class AgentError(Exception):
    """The agent could not start, is gone, or refused a command; the message says which."""


@dataclass(frozen=True)
class AgentLaunch:
    """How to start an environment's agent.

    ``argv`` ends with the interpreter's options and the agent's source; the
    socket's fd number is appended. ``limits_script`` holds the shell commands
    setting the rlimits the agent (and so every command) runs under.
    """

    argv: Sequence[str]
    limits_script: str
    env: Mapping[str, str]


@dataclass(frozen=True)
class SpawnRequest:
    """One command for the agent; ``rlimits`` are ``(RLIMIT_* name, soft, hard)``."""

    argv: Sequence[str]
    cwd: str
    env: Mapping[str, str]
    rlimits: Sequence[tuple[str, int, int]]


@dataclass(frozen=True)
class CommandExit:
    """How a command's first process ended.

    ``returncode`` follows ``subprocess`` (negative: killed by that signal);
    ``lost`` means the agent went away first, so the command was killed with it.
    """

    returncode: int
    cpu_seconds: float
    max_rss_bytes: int
    lost: bool = False


@cache
def agent_source() -> str:
    """The agent module's source, which runs as ``python3 -c`` in the sandbox."""
    return Path(agent.__file__).read_text(encoding="utf-8")


class AgentCommand:
    """A command the agent started: its pid as the orchestrator sees it, and its exit."""

    def __init__(self, client: AgentClient, request_id: int, pid: int) -> None:
        self.request_id = request_id
        self.pid = pid
        self.exited: asyncio.Future[CommandExit] = asyncio.get_running_loop().create_future()
        self._client = client

    def signal(self, number: int) -> None:
        """Signals the command's process group (it is a no-op once the command exited)."""
        if not self.exited.done():
            self._client.send({"op": "signal", "id": self.request_id, "signal": number})


class AgentClient:
    """The connection to one environment's agent."""

    def __init__(self, process: asyncio.subprocess.Process, sock: socket.socket) -> None:
        self.process = process
        self._sock = sock
        self._loop = asyncio.get_running_loop()
        self._ids = itertools.count(1)
        self._incoming = bytearray()
        self._fds: list[int] = []
        self._outgoing: list[tuple[bytes, list[int]]] = []
        self._ready: asyncio.Future[None] = self._loop.create_future()
        self._spawning: dict[int, asyncio.Future[AgentCommand]] = {}
        self._commands: dict[int, AgentCommand] = {}
        self.closed = False
        sock.setblocking(False)
        self._loop.add_reader(sock.fileno(), self._on_readable)

    @classmethod
    async def start(
        cls,
        launch: AgentLaunch,
        *,
        contain: Callable[[int], None],
        prepare: Coroutine[Any, Any, None] | None = None,
    ) -> AgentClient:
        """Starts the agent; ``contain(pid)`` puts the gated process into its cgroups.

        ``contain`` runs in a thread while ``prepare`` (what the agent needs
        before it may run, such as its workspace) is awaited: moving a process
        into a cgroup v1 waits for an RCU grace period, milliseconds better
        spent making the workspace. Returns once the agent said it is ready;
        raises what ``prepare`` raises, or :class:`AgentError` if the agent does not start.
        """
        try:
            process, ours, stderr_read = await _start_gated(launch)
        except BaseException:
            if prepare is not None:
                prepare.close()
            raise
        client = cls(process, ours)
        contained = asyncio.ensure_future(asyncio.to_thread(contain, process.pid))
        try:
            if prepare is not None:
                await prepare
        except BaseException:
            await asyncio.gather(contained, return_exceptions=True)
            await client.close()
            os.close(stderr_read)
            raise
        try:
            await contained
            if process.stdin is not None:
                process.stdin.write(b"go\n")
                process.stdin.close()
            await asyncio.wait_for(asyncio.shield(client._ready), _READY_TIMEOUT_SECONDS)
        except BaseException as error:
            await client.close()
            if not isinstance(error, Exception):
                raise
            detail = _read_available(stderr_read) or str(error)
            raise AgentError(f"the sandbox agent did not start ({detail})") from error
        finally:
            os.close(stderr_read)
        return client

    @property
    def pid(self) -> int:
        """The host pid of the agent's outermost process (bubblewrap's, or the agent's)."""
        return self.process.pid

    async def spawn(
        self, request: SpawnRequest, stdin: int | None, stdout: int, stderr: int
    ) -> AgentCommand:
        """Starts a command with these fds, which this closes; raises AgentError if it cannot."""
        fds = [fd for fd in (stdin, stdout, stderr) if fd is not None]
        if self.closed:
            for fd in fds:
                os.close(fd)
            raise AgentError("the environment's agent is gone")
        request_id = next(self._ids)
        future: asyncio.Future[AgentCommand] = self._loop.create_future()
        self._spawning[request_id] = future
        message = {
            "op": "spawn",
            "id": request_id,
            "argv": list(request.argv),
            "cwd": request.cwd,
            "env": dict(request.env),
            "rlimits": [list(limit) for limit in request.rlimits],
            "stdin": stdin is not None,
        }
        self.send(message, fds)
        try:
            return await future
        finally:
            self._spawning.pop(request_id, None)

    def send(self, message: Mapping[str, Any], fds: Sequence[int] = ()) -> None:
        """Queues a message (and fds, closed once sent) and sends what the socket takes now."""
        if self.closed:
            for fd in fds:
                os.close(fd)
            return
        body = json.dumps(message).encode()
        self._outgoing.append((len(body).to_bytes(_HEADER_BYTES, "big") + body, list(fds)))
        if len(self._outgoing) == 1:
            self._flush()

    def _flush(self) -> None:
        try:
            while self._outgoing:
                data, fds = self._outgoing[0]
                ancillary = []
                if fds:
                    packed = b"".join(fd.to_bytes(_INT_BYTES, sys.byteorder) for fd in fds)
                    ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, packed)]
                sent = self._sock.sendmsg([data], ancillary)
                for fd in fds:
                    os.close(fd)
                if sent < len(data):
                    self._outgoing[0] = (data[sent:], [])
                    break
                self._outgoing.pop(0)
        except BlockingIOError:
            pass
        except OSError:
            self._lose()
            return
        if self._outgoing:
            self._loop.add_writer(self._sock.fileno(), self._on_writable)

    def _on_writable(self) -> None:
        self._loop.remove_writer(self._sock.fileno())
        self._flush()

    def _on_readable(self) -> None:
        try:
            while True:
                data, ancillary, _, _ = self._sock.recvmsg(
                    1 << 16, socket.CMSG_SPACE(_MAX_FDS * _INT_BYTES), socket.MSG_CMSG_CLOEXEC
                )
                self._take_fds(ancillary)
                if not data:
                    self._lose()
                    return
                self._incoming += data
                self._parse()
        except BlockingIOError:
            return
        except (OSError, ValueError, KeyError, TypeError, IndexError) as error:
            # A broken socket or a message the protocol does not allow: the agent is lost.
            log.warning("dropping the connection to sandbox agent %d: %r", self.pid, error)
            self._lose(f"{type(error).__name__}: {error}")

    def _take_fds(self, ancillary: list[tuple[int, int, bytes]]) -> None:
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                usable = len(payload) - len(payload) % _INT_BYTES
                self._fds += [
                    int.from_bytes(payload[i : i + _INT_BYTES], sys.byteorder)
                    for i in range(0, usable, _INT_BYTES)
                ]

    def _parse(self) -> None:
        while len(self._incoming) >= _HEADER_BYTES:
            length = int.from_bytes(self._incoming[:_HEADER_BYTES], "big")
            if length > _MAX_MESSAGE_BYTES:
                raise ValueError(f"a message of {length} bytes")
            if len(self._incoming) < _HEADER_BYTES + length:
                return
            body = bytes(self._incoming[_HEADER_BYTES : _HEADER_BYTES + length])
            del self._incoming[: _HEADER_BYTES + length]
            message = json.loads(body)
            if not isinstance(message, dict):
                raise ValueError("a message that is not an object")
            self._dispatch(message)

    def _dispatch(self, message: dict[str, Any]) -> None:
        op = message["op"]
        if op == "ready":
            if not self._ready.done():
                self._ready.set_result(None)
        elif op == "started":
            pidfd = self._fds.pop(0)
            try:
                pid = _pid_of(pidfd)
            finally:
                os.close(pidfd)
            self._started(int(message["id"]), pid)
        elif op == "failed":
            future = self._spawning.get(int(message["id"]))
            if future is not None and not future.done():
                future.set_exception(AgentError(f"could not start: {message['error']}"[:500]))
        elif op == "exited":
            command = self._commands.pop(int(message["id"]), None)
            if command is not None and not command.exited.done():
                command.exited.set_result(
                    CommandExit(
                        returncode=int(message["returncode"]),
                        cpu_seconds=float(message["cpu_seconds"]),
                        max_rss_bytes=int(message["max_rss_bytes"]),
                    )
                )
        else:
            raise ValueError(f"an unknown op {op!r}")

    def _started(self, request_id: int, pid: int) -> None:
        future = self._spawning.get(request_id)
        command = AgentCommand(self, request_id, pid)
        if future is None or future.done():  # its caller went away: nobody would end it
            command.signal(signal.SIGKILL)
            return
        self._commands[request_id] = command
        future.set_result(command)

    def _lose(self, detail: str = "") -> None:
        """Ends the connection: pending spawns fail, running commands end as killed."""
        if self.closed:
            return
        self.closed = True
        self._loop.remove_reader(self._sock.fileno())
        self._loop.remove_writer(self._sock.fileno())
        self._sock.close()
        for _, fds in self._outgoing:
            for fd in fds:
                os.close(fd)
        self._outgoing.clear()
        for fd in self._fds:
            os.close(fd)
        self._fds.clear()
        gone = AgentError(f"the environment's agent is gone{f' ({detail})' if detail else ''}")
        if not self._ready.done():
            self._ready.set_exception(gone)
        for future in self._spawning.values():
            if not future.done():
                future.set_exception(gone)
        for command in self._commands.values():
            if not command.exited.done():
                command.exited.set_result(CommandExit(-signal.SIGKILL, 0.0, 0, lost=True))
        self._commands.clear()

    async def close(self) -> None:
        """Disconnects (the agent then kills its commands and exits) and waits for it."""
        self._lose()
        if self.process.stdin is not None and not self.process.stdin.is_closing():
            self.process.stdin.close()  # a process still at its gate exits
        try:
            await asyncio.wait_for(asyncio.shield(self.process.wait()), _EXIT_TIMEOUT_SECONDS)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
            await self.process.wait()


async def _start_gated(
    launch: AgentLaunch,
) -> tuple[asyncio.subprocess.Process, socket.socket, int]:
    """Starts the agent's process, which waits at its gate: the process, our end of its
    socket, and the read end of its stderr."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    # The gate's and the agent's stderr, read only to say why the agent did not start.
    stderr_read, stderr_write = os.pipe()
    try:
        process = await asyncio.create_subprocess_exec(
            "/bin/sh",
            "-c",
            _GATE_SCRIPT.format(limits=launch.limits_script),
            "sandbox-gate",
            *launch.argv,
            str(theirs.fileno()),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=stderr_write,
            cwd="/",  # the workspace may not exist yet; the agent changes directory per command
            env=dict(launch.env),
            start_new_session=True,
            pass_fds=[theirs.fileno()],
        )
    except BaseException:
        ours.close()
        os.close(stderr_read)
        raise
    finally:
        theirs.close()
        os.close(stderr_write)
    return process, ours, stderr_read


def _read_available(fd: int) -> str:
    os.set_blocking(fd, False)
    with contextlib.suppress(OSError):
        return os.read(fd, _STDERR_DETAIL_BYTES).decode(errors="replace").strip()
    return ""


def _pid_of(pidfd: int) -> int:
    """The pid, in the orchestrator's pid namespace, of the process a pidfd names."""
    fd = os.open(f"/proc/self/fdinfo/{pidfd}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        fdinfo = os.read(fd, 4096)
    finally:
        os.close(fd)
    for line in fdinfo.splitlines():
        if line.startswith(b"Pid:"):
            return int(line.split()[1])
    raise ValueError("a started message whose fd is not a pidfd")
