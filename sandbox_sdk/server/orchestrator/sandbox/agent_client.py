"""The orchestrator's side of an environment's agent: starting it, and commands through it.

The agent (:mod:`.agent`, whose docstring defines the protocol) is started once
per environment through a start gate: ``/bin/sh`` runs a fixed script that
reads one line from its stdin while the orchestrator moves it into the
environment's cgroups, then sets the rlimits (numbers passed as positional
parameters) and ``exec``s the rest (setpriv dropping to the sandbox uid,
bubblewrap, the interpreter running the agent). Nothing in the sandbox runs
before it is contained, and ``subprocess`` never switches uid itself (which
would force ``fork()`` over ``vfork()`` in the gRPC server). A gate started
ahead (:mod:`.gate_pool`) is a fixed program instead, in the environment's
cgroups before it is handed out, that reads the same (and the fds) from its
stdin. Its socket is
passed as an inherited fd, or (``socket_on_stdin``, for runtimes that pass only
stdio into the sandbox) as the gate's stdin, from which the gate reads its line
byte by byte, so the agent gets the socket as fd 0 with nothing of it consumed.
The gate and everything up to the agent run with
the fixed host environment (:mod:`.host_env`): nothing a request carried is
seen by a host-side process.

Everything the agent says is untrusted: it runs in the sandbox, next to the
tenant's commands. So the connection takes at most one fd at a time, and only
with the message that carries one (``started``, a pidfd; ``connected``, a
TCP socket, checked to be one); every other fd is closed as soon as it is
read; a message must be one the protocol allows at that point (``ready`` once
and first, ``started`` and ``failed`` for a spawn in flight, ``exited`` for a
running command, ``connected`` and ``connect_failed`` for a connect in
flight, ``resized`` for a resize in flight). Anything else is a protocol
violation: the connection ends, and ``on_violation`` tells the owner, which
ends that environment alone.

In the one-way mode (``fds_from_agent`` false, for runtimes such as gVisor that
cannot pass fds out of the sandbox) the agent sends no fds at all, and any fd
it sends is a violation. A command is then known by its id only (no host pid),
and the orchestrator itself makes a socket pair for each pty spawn and each
connect, sending one end with the request: the agent relays the terminal or
the connection through it, and the other end stands in for the terminal's
master or the TCP socket, so the owners of commands and forwards see no
difference but for resizes, which go through the agent
(:meth:`AgentCommand.resize`).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import itertools
import json
import logging
import os
import signal
import socket
import stat
import struct
import sys
import termios
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Protocol

from sandbox_sdk.server.orchestrator.sandbox import agent

# dash reads a pipe byte by byte, so nothing past the line is consumed. The
# script is a constant; the limits are its positional parameters $1 to $4
# (see ProcessLimits.gate_arguments), validated as numbers before it runs;
# ``-`` leaves one as it is (gVisor applies its limits inside its own kernel,
# and its host processes need more address space and fds than a command).
_GATE_SCRIPT = (
    "read -r _ || exit 125; "
    'if [ "$1" != - ]; then ulimit -v "$1" || exit 126; fi; '
    'if [ "$2" != - ]; then ulimit -f "$2" || exit 126; fi; '
    'if [ "$3" != - ]; then ulimit -n "$3" || exit 126; fi; '
    'if [ "$4" != - ]; then ulimit -p "$4" || exit 126; fi; '
    "ulimit -c 0 || exit 126; "
    'shift 4; exec "$@"'
)
_GATE_LIMITS = 4
_HEADER_BYTES = 4
_MAX_MESSAGE_BYTES = 1 << 20
# The most fds one message may carry, and the most held between messages.
_MAX_FDS = 2  # a pty's started: its pidfd and the terminal
_INT_BYTES = 4
# Pids in the agent's namespace are below the kernel's largest pid_max.
_PID_LIMIT = 1 << 22
_GO_LINE = b"go\n"
_READY_TIMEOUT_SECONDS = 10.0
_EXIT_TIMEOUT_SECONDS = 5.0
_STDERR_DETAIL_BYTES = 2000

log = logging.getLogger(__name__)


class AgentError(Exception):
    """The agent could not start, is gone, or refused a command; the message says which."""


class ProtocolViolation(ValueError):
    """The agent sent what the protocol does not allow at that point."""


class ConnectFailed(AgentError):
    """The agent could not connect to the port; ``errno`` says why (ECONNREFUSED: nothing
    listens there)."""

    def __init__(self, number: int, message: str) -> None:
        super().__init__(message)
        self.errno = number


@dataclass(frozen=True)
class AgentLaunch:
    """How to start an environment's agent.

    ``argv`` ends with the interpreter's options and the agent's source;
    :func:`agent_arguments` (the mode's flag, the socket's fd number) is
    appended, unless ``append_agent_arguments`` is false because ``argv`` starts
    the agent elsewhere (such as a runtime's container spec, which must then
    end the agent's own arguments with ``agent_arguments(fds_from_agent, 0)``
    and set ``socket_on_stdin``). ``limits`` are the start gate's four rlimit
    values (:meth:`.ProcessLimits.gate_arguments`) the agent, and so every
    command, runs under. ``env`` is the fixed host environment. ``pass_fds``
    are inherited by the process (such as bubblewrap's seccomp program);
    :meth:`AgentClient.start` closes them once it started.

    ``fds_from_agent`` false selects the one-way protocol (the agent sends no
    fds; see the module docstring); ``socket_on_stdin`` makes the agent's
    socket the gate's stdin, so fd 0 of every process up to the agent.
    """

    argv: Sequence[str]
    limits: Sequence[str]
    env: Mapping[str, str]
    pass_fds: Sequence[int] = ()
    fds_from_agent: bool = True
    socket_on_stdin: bool = False
    append_agent_arguments: bool = True

    def __post_init__(self) -> None:
        if len(self.limits) != _GATE_LIMITS or not all(
            value == "-" or value.isdigit() for value in self.limits
        ):
            raise ValueError(f"the start gate takes {_GATE_LIMITS} numeric limits")


@dataclass(frozen=True)
class SpawnRequest:
    """One command for the agent; ``rlimits`` are ``(RLIMIT_* name, soft, hard)``.

    ``pty`` (rows, cols): run it under a pseudo-terminal the agent makes; the
    command then gets no other fds, and :attr:`AgentCommand.terminal` is the
    terminal's master end.
    """

    argv: Sequence[str]
    cwd: str
    env: Mapping[str, str]
    rlimits: Sequence[tuple[str, int, int]]
    pty: tuple[int, int] | None = None


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


def agent_arguments(fds_from_agent: bool, fd: int) -> list[str]:
    """What the agent's arguments end with: its mode's flag, then its socket's fd."""
    return ([] if fds_from_agent else [agent.SEND_NO_FDS]) + [str(fd)]


@cache
def agent_source() -> str:
    """The agent module's source, which runs as ``python3 -c`` in the sandbox."""
    return Path(agent.__file__).read_text(encoding="utf-8")


class AgentCommand:
    """A command the agent started, and its exit.

    ``pid`` is its pid as the orchestrator sees it, None in the one-way mode
    (the agent sends no pidfd, and a runtime like gVisor has no host pid for
    it); ``sandbox_pid`` its pid in the agent's namespace, as the agent said.
    """

    def __init__(
        self,
        client: AgentClient,
        request_id: int,
        pid: int | None,
        sandbox_pid: int,
        terminal: int | None = None,
    ) -> None:
        self.request_id = request_id
        self.pid = pid
        self.sandbox_pid = sandbox_pid
        # For a pty command, the terminal's master end or (one-way) the socket the
        # agent relays it through; its owner closes it.
        self.terminal = terminal
        self.exited: asyncio.Future[CommandExit] = asyncio.get_running_loop().create_future()
        self._client = client

    def signal(self, number: int) -> None:
        """Signals the command's process group (it is a no-op once the command exited)."""
        if not self.exited.done():
            self._client.send({"op": "signal", "id": self.request_id, "signal": number})

    async def resize(self, rows: int, cols: int) -> None:
        """Sets its terminal's size: on the master end held here, else through the agent.

        Raises ValueError for a command without a terminal, AgentError when the
        agent is gone.
        """
        if self.terminal is None:
            raise ValueError("the command has no terminal")
        if self._client.fds_from_agent:
            size = struct.pack("HHHH", rows, cols, 0, 0)
            fcntl.ioctl(self.terminal, termios.TIOCSWINSZ, size)
            return
        await self._client.resize(self.request_id, rows, cols)


class AgentClient:
    """The connection to one environment's agent."""

    def __init__(
        self,
        process: asyncio.subprocess.Process,
        sock: socket.socket,
        on_violation: Callable[[str], None] | None = None,
        *,
        fds_from_agent: bool = True,
    ) -> None:
        self.process = process
        self.fds_from_agent = fds_from_agent
        self._sock = sock
        self._on_violation = on_violation
        self.violation = ""
        self._loop = asyncio.get_running_loop()
        self._ids = itertools.count(1)
        self._incoming = bytearray()
        self._fds: list[int] = []
        self._outgoing: list[tuple[bytes, list[int]]] = []
        self._ready: asyncio.Future[None] = self._loop.create_future()
        self._spawning: dict[int, asyncio.Future[AgentCommand]] = {}
        # Spawns whose callers went away before the agent answered.
        self._abandoned: set[int] = set()
        # Spawns under a pty: their started carries the terminal's master end too.
        self._pty_spawns: set[int] = set()
        self._commands: dict[int, AgentCommand] = {}
        # Connects (port forwarding) in flight, and those whose callers went away.
        self._connecting: dict[int, asyncio.Future[socket.socket]] = {}
        self._abandoned_connects: set[int] = set()
        # One-way mode: our ends of the socket pairs sent with pty spawns and
        # connects, until their answers, by request id.
        self._pty_ends: dict[int, int] = {}
        self._connect_ends: dict[int, socket.socket] = {}
        # Resizes (one-way mode) in flight, and those whose callers went away.
        self._resizing: dict[int, asyncio.Future[None]] = {}
        self._abandoned_resizes: set[int] = set()
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
        on_violation: Callable[[str], None] | None = None,
        gate: WaitingGate | None = None,
    ) -> AgentClient:
        """Starts the agent; ``contain(pid)`` puts the gated process into its cgroups.

        ``on_violation(detail)`` is called (once) if the agent ever breaks the
        protocol; the connection is closed by then.

        ``contain`` runs in a thread while ``prepare`` (what the agent needs
        before it may run, such as its workspace) is awaited: moving a process
        into a cgroup v1 waits for an RCU grace period, milliseconds better
        spent making the workspace. ``gate`` is a gate started ahead and already
        contained (see :mod:`.gate_pool`): it takes the launch, when it can, instead
        of a new gate, and ``contain`` is not called. Returns once the agent said it
        is ready; raises what ``prepare`` raises, or :class:`AgentError` if the agent
        does not start.
        """
        try:
            if gate is not None and gate.takes(launch):
                started, contain = gate.open(launch), _already_contained
            else:
                started = await _start_gated(launch)
        except BaseException:
            _close_all(launch.pass_fds)
            if prepare is not None:
                prepare.close()
            raise
        try:
            return await cls._let_go(started, launch, contain, prepare, on_violation)
        finally:
            _close_all(launch.pass_fds)
            os.close(started.stderr_read)

    @classmethod
    async def _let_go(
        cls,
        gate: Gate,
        launch: AgentLaunch,
        contain: Callable[[int], None],
        prepare: Coroutine[Any, Any, None] | None,
        on_violation: Callable[[str], None] | None,
    ) -> AgentClient:
        """Contains the gate's process and awaits ``prepare`` meanwhile, then releases it
        and waits for the agent's ready."""
        client = cls(
            gate.process, gate.agent_socket, on_violation, fds_from_agent=launch.fds_from_agent
        )
        contained = asyncio.ensure_future(asyncio.to_thread(contain, gate.process.pid))
        try:
            if prepare is not None:
                await prepare
        except BaseException:
            await asyncio.gather(contained, return_exceptions=True)
            await gate.abandon()
            await client.close()
            raise
        try:
            await contained
            await gate.release()
            await asyncio.wait_for(asyncio.shield(client._ready), _READY_TIMEOUT_SECONDS)
        except BaseException as error:
            await gate.abandon()
            await client.close()
            if not isinstance(error, Exception):
                raise
            detail = _read_available(gate.stderr_read) or str(error)
            raise AgentError(f"the sandbox agent did not start ({detail})") from error
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
        if request.pty is not None and fds:
            for fd in fds:
                os.close(fd)
            raise ValueError("a pty command takes no fds")
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
        if request.pty is not None:
            message["pty"] = list(request.pty)
            if self.fds_from_agent:
                self._pty_spawns.add(request_id)
            else:
                ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
                self._pty_ends[request_id] = ours.detach()
                fds = [theirs.detach()]
        self.send(message, fds)
        try:
            return await future
        finally:
            if self._spawning.pop(request_id, None) is not None:  # not answered yet
                self._abandoned.add(request_id)

    async def connect(self, port: int) -> socket.socket:
        """A TCP connection to ``127.0.0.1:<port>`` in the environment's network namespace,
        made by the agent; raises ConnectFailed, or AgentError when the agent is gone."""
        if not 0 < port < 65536:
            raise ValueError(f"port {port} is not a TCP port")
        if self.closed:
            raise AgentError("the environment's agent is gone")
        request_id = next(self._ids)
        future: asyncio.Future[socket.socket] = self._loop.create_future()
        self._connecting[request_id] = future
        fds = []
        if not self.fds_from_agent:
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            self._connect_ends[request_id] = ours
            fds = [theirs.detach()]
        self.send({"op": "connect", "id": request_id, "port": port}, fds)
        try:
            return await future
        finally:
            if self._connecting.pop(request_id, None) is not None:  # not answered yet
                self._abandoned_connects.add(request_id)

    async def resize(self, command_id: int, rows: int, cols: int) -> None:
        """One-way mode: has the agent set the size of command ``command_id``'s terminal;
        returns once it did. Raises AgentError when the agent is gone."""
        if self.fds_from_agent:
            raise ValueError("the agent resizes terminals in the one-way mode only")
        if self.closed:
            raise AgentError("the environment's agent is gone")
        request_id = next(self._ids)
        future: asyncio.Future[None] = self._loop.create_future()
        self._resizing[request_id] = future
        message = {"op": "resize", "id": request_id, "command": command_id}
        self.send({**message, "rows": rows, "cols": cols})
        try:
            await future
        finally:
            if self._resizing.pop(request_id, None) is not None:  # not answered yet
                self._abandoned_resizes.add(request_id)

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
                data, ancillary, flags, _ = self._sock.recvmsg(
                    1 << 16, socket.CMSG_SPACE(_MAX_FDS * _INT_BYTES), socket.MSG_CMSG_CLOEXEC
                )
                self._take_fds(ancillary, flags)
                if not data:
                    self._lose()
                    return
                self._incoming += data
                self._parse()
        except BlockingIOError:
            return
        except OSError as error:
            log.warning("lost the connection to sandbox agent %d: %r", self.pid, error)
            self._lose(f"{type(error).__name__}: {error}")
        except (ValueError, KeyError, TypeError, IndexError) as error:
            detail = f"{type(error).__name__}: {error}"[:300]
            log.warning("sandbox agent %d broke the protocol: %s", self.pid, detail)
            self.violation = detail
            self._lose(f"protocol violation: {detail}")
            if self._on_violation is not None:
                self._on_violation(detail)

    def _take_fds(self, ancillary: list[tuple[int, int, bytes]], flags: int) -> None:
        """Keeps the fds that came (closing them all if there are too many, or in the
        one-way mode, any)."""
        received: list[int] = []
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                usable = len(payload) - len(payload) % _INT_BYTES
                received += [
                    int.from_bytes(payload[i : i + _INT_BYTES], sys.byteorder)
                    for i in range(0, usable, _INT_BYTES)
                ]
        self._fds += received
        if self._fds and not self.fds_from_agent:
            self._close_fds()
            raise ProtocolViolation("a file descriptor from an agent that sends none")
        if flags & socket.MSG_CTRUNC or len(self._fds) > _MAX_FDS:
            # The kernel already closed what did not fit; these go now.
            self._close_fds()
            raise ProtocolViolation("more file descriptors than one message may carry")

    def _close_fds(self) -> None:
        for fd in self._fds:
            os.close(fd)
        self._fds.clear()

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

    def _dispatch(self, message: dict[str, Any]) -> None:  # noqa: PLR0912
        op = message.get("op")
        if op == "ready":
            if self._ready.done():
                raise ProtocolViolation("ready said twice")
            self._ready.set_result(None)
            return
        if not self._ready.done():
            raise ProtocolViolation(f"{op!r} before ready")
        if op == "started":
            request_id = _message_id(message)
            sandbox_pid = _sandbox_pid(message)
            if self.fds_from_agent:
                terminal = self._take_terminal(request_id)
                try:
                    pid: int | None = self._take_pidfd()
                except BaseException:
                    if terminal is not None:
                        os.close(terminal)
                    raise
            else:
                terminal, pid = self._pty_ends.pop(request_id, None), None
            self._started(request_id, pid, sandbox_pid, terminal)
        elif op == "failed":
            self._spawn_failed(_message_id(message), message)
        elif op == "exited":
            self._exited(_message_id(message), message)
        elif op == "connected":
            request_id = _message_id(message)
            if self.fds_from_agent:
                self._connected(request_id, _socket_of(self._take_fd(op)))
            else:
                self._connected(request_id, self._connect_end(request_id))
        elif op == "connect_failed":
            self._connect_failed(_message_id(message), message)
        elif op == "resized":
            future = self._resize_in_flight(_message_id(message))
            if future is not None and not future.done():
                future.set_result(None)
        else:
            raise ProtocolViolation(f"an unknown op {str(op)[:40]!r}")
        if self._fds:
            raise ProtocolViolation(f"a file descriptor with {op!r}")

    def _take_terminal(self, request_id: int) -> int | None:
        """A pty spawn's terminal, the last fd of its started (None for other spawns)."""
        if request_id not in self._pty_spawns:
            return None
        self._pty_spawns.discard(request_id)
        if len(self._fds) < 2:
            raise ProtocolViolation("a pty's started without its terminal")
        terminal = self._fds.pop()
        if not os.isatty(terminal):
            os.close(terminal)
            raise ProtocolViolation("a pty's started without a terminal")
        return terminal

    def _spawn_failed(self, request_id: int, message: Mapping[str, Any]) -> None:
        self._pty_spawns.discard(request_id)
        end = self._pty_ends.pop(request_id, None)
        if end is not None:
            os.close(end)
        future = self._spawn_in_flight(request_id)
        if future is not None:
            future.set_exception(AgentError(f"could not start: {message['error']}"[:500]))

    def _connect_end(self, request_id: int) -> socket.socket:
        """One-way mode: our end of the pair sent with a connect in flight."""
        end = self._connect_ends.pop(request_id, None)
        if end is None:
            raise ProtocolViolation(f"an answer for connect {request_id}, which is not in flight")
        return end

    def _resize_in_flight(self, request_id: int) -> asyncio.Future[None] | None:
        """The answered resize's future; None if its caller went away meanwhile."""
        future = self._resizing.pop(request_id, None)
        if future is not None:
            return future
        if request_id in self._abandoned_resizes:
            self._abandoned_resizes.discard(request_id)
            return None
        raise ProtocolViolation(f"an answer for resize {request_id}, which is not in flight")

    def _take_pidfd(self) -> int:
        """The pid, in the orchestrator's namespace, of the pidfd the message carried."""
        if not self._fds:
            raise ProtocolViolation("started without its pidfd")
        pidfd = self._fds.pop()
        try:
            return _pid_of(pidfd)
        finally:
            os.close(pidfd)

    def _take_fd(self, op: str) -> int:
        if not self._fds:
            raise ProtocolViolation(f"{op} without its file descriptor")
        return self._fds.pop()

    def _connect_in_flight(self, request_id: int) -> asyncio.Future[socket.socket] | None:
        """The answered connect's future; None if its caller went away meanwhile."""
        future = self._connecting.pop(request_id, None)
        if future is not None:
            return future
        if request_id in self._abandoned_connects:
            self._abandoned_connects.discard(request_id)
            return None
        raise ProtocolViolation(f"an answer for connect {request_id}, which is not in flight")

    def _connected(self, request_id: int, sock: socket.socket) -> None:
        try:
            future = self._connect_in_flight(request_id)
        except ProtocolViolation:
            sock.close()
            raise
        if future is None or future.done():
            sock.close()
            return
        future.set_result(sock)

    def _connect_failed(self, request_id: int, message: Mapping[str, Any]) -> None:
        number = message["errno"]
        if type(number) is not int:
            raise ProtocolViolation("a connect_failed errno that is not an integer")
        future = self._connect_in_flight(request_id)
        end = self._connect_ends.pop(request_id, None)
        if end is not None:
            end.close()
        if future is not None and not future.done():
            detail = str(message["error"])[:200]
            future.set_exception(ConnectFailed(number, f"could not connect: {detail}"))

    def _spawn_in_flight(self, request_id: int) -> asyncio.Future[AgentCommand] | None:
        """The answered spawn's future; None if its caller went away meanwhile."""
        future = self._spawning.pop(request_id, None)
        if future is not None:
            return future
        if request_id in self._abandoned:
            self._abandoned.discard(request_id)
            return None
        raise ProtocolViolation(f"an answer for spawn {request_id}, which is not in flight")

    def _started(
        self, request_id: int, pid: int | None, sandbox_pid: int, terminal: int | None
    ) -> None:
        try:
            future = self._spawn_in_flight(request_id)
        except ProtocolViolation:
            if terminal is not None:
                os.close(terminal)
            raise
        command = AgentCommand(self, request_id, pid, sandbox_pid, terminal)
        self._commands[request_id] = command
        if future is None or future.done():  # its caller went away: nobody would end it
            command.signal(signal.SIGKILL)
            if terminal is not None:
                os.close(terminal)
            return
        future.set_result(command)

    def _exited(self, request_id: int, message: Mapping[str, Any]) -> None:
        command = self._commands.pop(request_id, None)
        if command is None:
            raise ProtocolViolation(f"an exit of command {request_id}, which is not running")
        if not command.exited.done():
            command.exited.set_result(
                CommandExit(
                    returncode=int(message["returncode"]),
                    cpu_seconds=float(message["cpu_seconds"]),
                    max_rss_bytes=int(message["max_rss_bytes"]),
                )
            )

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
        self._close_fds()
        self._close_relay_ends()
        gone = AgentError(f"the environment's agent is gone{f' ({detail})' if detail else ''}")
        if not self._ready.done():
            self._ready.set_exception(gone)
        pending: list[asyncio.Future[Any]] = [
            *self._spawning.values(),
            *self._connecting.values(),
            *self._resizing.values(),
        ]
        for future in pending:
            if not future.done():
                future.set_exception(gone)
        for command in self._commands.values():
            if not command.exited.done():
                command.exited.set_result(CommandExit(-signal.SIGKILL, 0.0, 0, lost=True))
        self._commands.clear()

    def _close_relay_ends(self) -> None:
        for end in self._pty_ends.values():
            os.close(end)
        self._pty_ends.clear()
        for connect_end in self._connect_ends.values():
            connect_end.close()
        self._connect_ends.clear()

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


@dataclass(frozen=True)
class Gate:
    """A started agent's process waiting at its gate: ``agent_socket`` is our end of
    the agent's socket, ``stderr_read`` the read end of its stderr (both the caller's
    to close), ``release`` lets it go on, ``abandon`` makes it exit if it never was."""

    process: asyncio.subprocess.Process
    agent_socket: socket.socket
    stderr_read: int
    release: Callable[[], Awaitable[None]]
    abandon: Callable[[], Awaitable[None]]


class WaitingGate(Protocol):
    """A gate started ahead (see :mod:`.gate_pool`), to take one launch."""

    def takes(self, launch: AgentLaunch) -> bool:
        """Whether it can run ``launch`` (else a gate is started for it as usual)."""
        ...

    def open(self, launch: AgentLaunch) -> Gate:
        """The gate for ``launch``, released with its argv, environment, limits and fds."""
        ...


async def _start_gated(launch: AgentLaunch) -> Gate:
    """Starts the agent's process, which waits at its gate (the fixed shell script) for
    a line on its stdin."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    # The gate's and the agent's stderr, read only to say why the agent did not start.
    stderr_read, stderr_write = os.pipe()
    fd = 0 if launch.socket_on_stdin else theirs.fileno()
    tail = agent_arguments(launch.fds_from_agent, fd) if launch.append_agent_arguments else []
    try:
        process = await asyncio.create_subprocess_exec(
            "/bin/sh",
            "-c",
            _GATE_SCRIPT,
            "sandbox-gate",
            *launch.limits,
            *launch.argv,
            *tail,
            stdin=theirs.fileno() if launch.socket_on_stdin else asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=stderr_write,
            cwd="/",  # the workspace may not exist yet; the agent changes directory per command
            env=dict(launch.env),
            start_new_session=True,
            pass_fds=[*([] if launch.socket_on_stdin else [theirs.fileno()]), *launch.pass_fds],
        )
    except BaseException:
        ours.close()
        os.close(stderr_read)
        raise
    finally:
        theirs.close()
        os.close(stderr_write)

    async def release() -> None:
        if process.stdin is not None:
            process.stdin.write(_GO_LINE)
            process.stdin.close()
        else:  # the socket is the gate's stdin; nothing else was sent on it yet
            ours.send(_GO_LINE)

    async def abandon() -> None:
        pass  # closing the agent's socket or its stdin (AgentClient.close) ends it

    return Gate(process, ours, stderr_read, release, abandon)


def _already_contained(pid: int) -> None:
    """A gate started ahead is in its cgroups before it is handed out."""


def _close_all(fds: Sequence[int]) -> None:
    for fd in fds:
        os.close(fd)


def _message_id(message: Mapping[str, Any]) -> int:
    value = message["id"]
    if type(value) is not int:
        raise ProtocolViolation("a message id that is not an integer")
    return value


def _sandbox_pid(message: Mapping[str, Any]) -> int:
    value = message["pid"]
    if type(value) is not int or not 0 < value < _PID_LIMIT:
        raise ProtocolViolation("a started pid that is not a pid")
    return value


def _socket_of(fd: int) -> socket.socket:
    """The TCP socket ``fd`` names (which this then owns); ProtocolViolation, with ``fd``
    closed, when it is anything else: the agent is not trusted to send what it says."""
    try:
        if not stat.S_ISSOCK(os.fstat(fd).st_mode):
            raise ProtocolViolation("connected with a file descriptor that is not a socket")
        sock = socket.socket(fileno=fd)
    except OSError as error:
        os.close(fd)
        raise ProtocolViolation(f"connected with an unusable socket ({error.strerror})") from None
    except BaseException:
        os.close(fd)
        raise
    if sock.family not in (socket.AF_INET, socket.AF_INET6) or sock.type != socket.SOCK_STREAM:
        sock.close()
        raise ProtocolViolation("connected with a socket that is not a TCP socket")
    return sock


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
