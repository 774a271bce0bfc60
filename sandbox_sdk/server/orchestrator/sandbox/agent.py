"""The in-sandbox agent: one long-lived process per environment that starts its commands.

It runs inside the environment's namespaces, cgroups and rlimits as the
sandbox uid (with bubblewrap it is the sandbox's pid 1 and reaps every orphan),
started by the orchestrator as ``python3 -I -S -c <bootstrap> <this file's code>
sandbox-agent [--send-no-fds] <fd>`` with the system interpreter: the bootstrap
(see the orchestrator's ``agent_code``) runs this file compiled ahead by the
same interpreter, or compiles its source when the interpreter is not the one
it was compiled by, and leaves ``sys.argv`` as if this file were the ``-c``
program. It imports nothing outside the standard library, and only cheap
modules before it reports ready, because its start-up is part of environment
creation. ``<fd>`` is its end of a Unix stream socket pair (``0`` when the
runtime passes only stdio into the sandbox, as gVisor does, which also gives the
bootstrap a read-only directory holding the code and the source instead of
them as arguments); ``--send-no-fds`` selects the one-way mode below.

Protocol. A message is a 4-byte big-endian length, then that many bytes of a
UTF-8 JSON object whose ``op`` names it. File descriptors travel as
SCM_RIGHTS with the message's first byte, in the order listed here.

Orchestrator to agent:

* ``spawn {id, argv, cwd, env, rlimits: [[name, soft, hard]], stdin: bool}``
  with fds stdin (only when ``stdin`` is true; else ``/dev/null``), stdout,
  stderr. Starts ``argv`` (``posix_spawnp``, searching the ``PATH`` of
  ``env``) in a new session (so its own process group) with those fds,
  ``cwd`` and ``env``, and lowers its rlimits (``RLIMIT_*`` names) to at
  most the given values right after it started.
* ``spawn {id, argv, cwd, env, rlimits, stdin: false, pty: [rows, cols]}``,
  without fds: a background process under a pseudo-terminal. The agent opens
  the pair itself (``openpty``, so the terminal is one of the sandbox's own
  ``/dev/pts`` and ``tty`` names it), sets its size, and starts the process
  with ``fork`` and ``exec`` rather than ``posix_spawn``, which cannot give a
  process a controlling terminal: the child makes a new session, makes the
  terminal its controlling tty (``TIOCSCTTY``), puts it on fds 0 to 2, lowers
  its rlimits, restores the default signal dispositions and executes.
* ``signal {id, signal}``: signals the command's process group.
* ``connect {id, port}``: connects a TCP socket to ``127.0.0.1:<port>`` in the
  environment's own network namespace (port forwarding: the orchestrator,
  outside it, could not reach that loopback), without blocking the agent.
* ``resize {id, command, rows, cols}``: sets the size of the terminal of pty
  command ``command`` (one-way mode only: otherwise the orchestrator holds the
  terminal and sets it itself); answered by ``resized {id}`` in any case.

Agent to orchestrator:

* ``ready {pid}``, once, first.
* ``started {id, pid}`` with fds a pidfd of the process (``pid`` is in the
  agent's pid namespace; the pidfd names the process in any namespace), and
  for a pty spawn then the terminal's master end (the agent keeps no copy).
* ``failed {id, error}``: no process could be started (EAGAIN or ENOMEM).
* ``connected {id}`` with fds the connected socket.
* ``connect_failed {id, errno, error}``: the connection was refused, timed
  out (after ten seconds) or could not be made; ``errno`` names why.
* ``exited {id, returncode, cpu_seconds, max_rss_bytes}``: ``returncode`` as
  in ``subprocess`` (negative: killed by that signal); CPU and peak resident
  memory from ``wait4`` (the process and the descendants it waited for).
  Sent once the rest of the command's process group, killed when its first
  process exited, is gone too (or after a second). Processes that started
  their own session outlive the command, until the environment ends.

One-way mode (``--send-no-fds``). Some runtimes (gVisor) cannot pass fds
out of the sandbox, only into it: the agent then sends no fds at all, and
whatever the orchestrator would have received comes as a relay instead.

* ``started {id, pid}`` carries no fds (the orchestrator knows the command
  only by ``id`` and this ``pid``, in the agent's namespace).
* A pty ``spawn`` carries one fd, the orchestrator's end of a socket pair:
  the agent makes the pty as above, keeps the master only to serve
  ``resize``, and forks a relay child that copies bytes both ways between the
  master and that socket.
* ``connect`` carries one fd, a socket pair end as well: once connected, a
  relay child copies bytes both ways between the TCP connection and it (end
  of file on one side half-closes the other); ``connected {id}`` carries no fds.

A relay child holds only its two fds, is non-dumpable as the agent is, never
blocks the agent (which goes on serving), and exits when the orchestrator
closes its end (under gVisor, which reports no hang-up of a host socket, once
that end reads end of file or takes no more), when writing fails on either
side, when both directions reached end of file, or for a terminal when either
side closes or, told by the agent with SIGUSR1, once its command ended (a
pty master under gVisor does not report that its slave closed); it is killed
when the agent dies.

A command that cannot be executed (not found, not executable) exits 127 or
126 with a message on its stderr, as in a shell. When the socket closes (the
orchestrator is gone) the agent kills every command's group and exits.

Its commands run with its uid, so before it serves anything the agent makes
itself non-dumpable (no command may ptrace it, open its ``/proc/1/mem`` or
``/proc/1/fd``, or borrow its fds with ``pidfd_getfd``; the seccomp filter
refuses those system calls too) and ignores SIGINT, the one signal Python
would otherwise handle: as the namespace's pid 1 it then gets no signal from
its commands at all. If it cannot become non-dumpable it exits, and the
environment does not start.
"""

from __future__ import annotations

import _socket
import posix
import sys

_HEADER_BYTES = 4
SEND_NO_FDS = "--send-no-fds"
COMMAND_USER = "--command-user="


def _frame(body: bytes) -> bytes:
    return len(body).to_bytes(_HEADER_BYTES, "big") + body


def _connect() -> _socket.socket:
    """The orchestrator's socket (its fd is the last argument), once ready is said on it."""
    fd = int(sys.argv[-1])
    posix.set_inheritable(fd, False)  # commands must not reach the agent
    sock = _socket.socket(fileno=fd)
    sock.setblocking(True)
    sock.sendall(_frame(b'{"op":"ready","pid":%d}' % posix.getpid()))
    return sock


if __name__ == "__main__":
    # Ready is said before the other imports, which cost milliseconds of environment
    # creation; requests wait in the socket meanwhile.
    _SOCKET = _connect()

import errno  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import select  # noqa: E402
import time  # noqa: E402

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs milliseconds of start-up
    from collections.abc import Callable
    from typing import Any, NoReturn

_MAX_FDS = 3
# --command-user: commands switch to this (uid, gid) before they execute (see the docstring).
_COMMAND_USER: tuple[int, int] | None = None
_PR_SET_DUMPABLE = 4
_RECEIVE_BYTES = 1 << 16
_GROUP_GRACE_SECONDS = 1.0
_POLL_SECONDS = 0.01
_INT_BYTES = 4
_CONNECT_TIMEOUT_SECONDS = 10.0
_RELAY_BYTES = 1 << 16
_PR_SET_PDEATHSIG = 1
_MAX_TERMINAL_CELLS = 0xFFFF
# Tells a terminal's relay its command ended (10: SIGUSR1): a pty's master does not
# report its slave's closing under gVisor, as it does under Linux.
_RELAY_DRAIN_SIGNAL = 10
# What posix_spawn fails with when no process could be made (rather than not executed).
_NO_PROCESS_ERRNOS = (errno.EAGAIN, errno.ENOMEM)


class _Command:
    """A spawned command: its first process (which leads its group) and, once it exited, how."""

    def __init__(self, request_id: int, pid: int, terminal: int = -1) -> None:
        self.request_id = request_id
        self.pid = pid
        # One-way mode: the pty's master end, kept to set its size; closed at the exit.
        self.terminal = terminal
        # One-way mode: the pid of its terminal's relay until that is reaped.
        self.relay = -1
        self.exit_message: dict[str, Any] | None = None
        self.deadline = 0.0


class _Connect:
    """A connect in progress: its request, its non-blocking socket, and when it gives up."""

    def __init__(
        self, request_id: int, sock: _socket.socket, deadline: float, relay_end: int
    ) -> None:
        self.request_id = request_id
        self.sock = sock
        self.deadline = deadline
        # One-way mode: the orchestrator's socket to relay the connection to (else -1).
        self.relay_end = relay_end


class Agent:
    """Serves spawn, signal, connect and resize requests on ``sock`` until it closes.

    ``send_fds`` false is the one-way mode (see the module docstring).
    """

    def __init__(self, sock: _socket.socket, send_fds: bool = True) -> None:
        self.sock = sock
        self.send_fds = send_fds
        self.buffer = bytearray()
        self.fds: list[int] = []
        self.by_pid: dict[int, _Command] = {}
        self.by_id: dict[int, _Command] = {}
        self.ending: list[_Command] = []
        # Terminal relays (one-way mode) not reaped yet, by pid.
        self.relays: dict[int, _Command] = {}
        # Connects in progress (port forwarding), by their socket's fd.
        self.connecting: dict[int, _Connect] = {}
        self.wakeup = -1
        self.decode: Callable[[bytes], Any] = _not_ready
        self.encode: Callable[[Any], str] = _not_ready

    def start(self) -> None:
        """Imports and installs what serving needs."""
        # Imported only now (and signal locally where used): together they cost milliseconds.
        import json
        import signal

        _become_untouchable(signal)
        self.decode = json.loads
        self.encode = json.dumps

        read_end, write_end = os.pipe()
        os.set_blocking(write_end, False)
        os.set_blocking(read_end, False)
        self.wakeup = read_end
        signal.set_wakeup_fd(write_end)
        signal.signal(signal.SIGCHLD, lambda *_: None)

    def serve(self) -> None:
        """Handles requests and child exits until the orchestrator closes the socket."""
        while True:
            timeout = _POLL_SECONDS if self.ending or self.connecting else None
            readable, writable, _ = select.select(
                [self.sock.fileno(), self.wakeup], list(self.connecting), [], timeout
            )
            self._finish_connects(writable)
            if self.wakeup in readable:
                _drain(self.wakeup)
            self._reap()
            if self.sock.fileno() in readable and not self._receive():
                self._kill_everything()
                return
            self._finish_ended()

    # --- requests --------------------------------------------------------------------

    def _receive(self) -> bool:
        data, ancillary, _, _ = self.sock.recvmsg(
            _RECEIVE_BYTES, _socket.CMSG_SPACE(_MAX_FDS * _INT_BYTES), _socket.MSG_CMSG_CLOEXEC
        )
        for level, kind, payload in ancillary:
            if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
                usable = len(payload) - len(payload) % _INT_BYTES
                self.fds += [
                    int.from_bytes(payload[i : i + _INT_BYTES], sys.byteorder)
                    for i in range(0, usable, _INT_BYTES)
                ]
        if not data:
            return False
        self.buffer += data
        while len(self.buffer) >= _HEADER_BYTES:
            length = int.from_bytes(self.buffer[:_HEADER_BYTES], "big")
            if len(self.buffer) < _HEADER_BYTES + length:
                break
            body = bytes(self.buffer[_HEADER_BYTES : _HEADER_BYTES + length])
            del self.buffer[: _HEADER_BYTES + length]
            self._handle(self.decode(body))
        return True

    def _handle(self, request: dict[str, Any]) -> None:
        if request["op"] == "spawn":
            if request.get("pty"):
                count = 0 if self.send_fds else 1
            else:
                count = 3 if request["stdin"] else 2
            self._spawn(request, self._take_fds(count))
        elif request["op"] == "signal":
            command = self.by_id.get(request["id"])
            if command is not None:
                _signal_group(command.pid, request["signal"])
        elif request["op"] == "connect":
            relay_end = -1 if self.send_fds else self._take_fds(1)[0]
            self._connect(request["id"], request["port"], relay_end)
        elif request["op"] == "resize":
            self._resize(request)

    def _take_fds(self, count: int) -> list[int]:
        fds, self.fds = self.fds[:count], self.fds[count:]
        if len(fds) < count:
            raise RuntimeError("the orchestrator sent a request without its fds")
        return fds

    def _spawn(self, request: dict[str, Any], fds: list[int]) -> None:
        request_id = request["id"]
        master, relay, executed = -1, -1, -1
        try:
            if request.get("pty"):
                master, pid, executed = _start_terminal_command(request)
            else:
                pid = _start_command(request, fds)
            if master >= 0 and not self.send_fds:
                # Reading before the command can run: a quick one's output must not end up
                # behind the drain its exit sends the relay.
                relay = _start_relay(master, fds[0], half_close=False)
        except OSError as error:
            _wait_executed(executed)
            if master >= 0:  # its command started, but nothing could carry its terminal
                os.close(master)
                master = -1
                _kill_group(pid)
            self._send({"op": "failed", "id": request_id, "error": f"spawn: {error.strerror}"})
            return
        finally:
            for fd in fds:
                os.close(fd)
        _wait_executed(executed)  # its session exists before its start is said
        if not self.send_fds:
            command = _Command(request_id, pid, master)
            if relay > 0:
                command.relay = relay
                self.relays[relay] = command
            self._remember(command)
            self._send({"op": "started", "id": request_id, "pid": pid})
            return
        self._remember(_Command(request_id, pid))
        pidfd = os.pidfd_open(pid)
        try:
            sent = [pidfd] if master < 0 else [pidfd, master]
            self._send({"op": "started", "id": request_id, "pid": pid}, sent)
        finally:
            os.close(pidfd)
            if master >= 0:
                os.close(master)

    def _remember(self, command: _Command) -> None:
        self.by_pid[command.pid] = command
        self.by_id[command.request_id] = command

    def _resize(self, request: dict[str, Any]) -> None:
        import fcntl
        import struct
        import termios

        command = self.by_id.get(request["command"])
        rows, cols = request["rows"], request["cols"]
        sizes_valid = all(type(n) is int and 0 < n <= _MAX_TERMINAL_CELLS for n in (rows, cols))
        if command is not None and command.terminal >= 0 and sizes_valid:
            size = struct.pack("HHHH", rows, cols, 0, 0)
            try:  # noqa: SIM105  (contextlib costs start-up time)
                fcntl.ioctl(command.terminal, termios.TIOCSWINSZ, size)
            except OSError:
                pass
        self._send({"op": "resized", "id": request["id"]})

    # --- connections (port forwarding) -----------------------------------------------

    def _connect(self, request_id: int, port: int, relay_end: int) -> None:
        if type(port) is not int or not 0 < port < 65536:
            self._connect_failed(request_id, errno.EINVAL, relay_end)
            return
        try:
            sock = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)
        except OSError as error:
            self._connect_failed(request_id, error.errno or errno.EMFILE, relay_end)
            return
        sock.setblocking(False)
        result = sock.connect_ex(("127.0.0.1", port))
        pending = _Connect(request_id, sock, time.monotonic() + _CONNECT_TIMEOUT_SECONDS, relay_end)
        if result == errno.EINPROGRESS:
            self.connecting[sock.fileno()] = pending
            return
        self._connect_done(pending, result)

    def _finish_connects(self, writable: list[int]) -> None:
        now = time.monotonic()
        for fd in list(self.connecting):
            pending = self.connecting[fd]
            if fd in writable:
                result = pending.sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_ERROR)
            elif now >= pending.deadline:
                result = errno.ETIMEDOUT
            else:
                continue
            del self.connecting[fd]
            self._connect_done(pending, result)

    def _connect_done(self, pending: _Connect, result: int) -> None:
        request_id, sock, relay_end = pending.request_id, pending.sock, pending.relay_end
        try:
            if result == 0 and relay_end >= 0:
                _start_relay(sock.fileno(), relay_end, half_close=True)
                self._send({"op": "connected", "id": request_id})
            elif result == 0:
                self._send({"op": "connected", "id": request_id}, [sock.fileno()])
            else:
                self._connect_failed(request_id, result)
        except OSError as error:  # no relay could be made
            self._connect_failed(request_id, error.errno or errno.EAGAIN)
        finally:
            sock.close()
            if relay_end >= 0:
                os.close(relay_end)

    def _connect_failed(self, request_id: int, number: int, relay_end: int = -1) -> None:
        if relay_end >= 0:
            os.close(relay_end)
        message = {"op": "connect_failed", "id": request_id, "errno": number}
        self._send({**message, "error": os.strerror(number)})

    # --- exits -----------------------------------------------------------------------

    def _reap(self) -> None:
        """Reaps every exited child; a command's group is killed while its zombie holds it."""
        import signal

        while True:
            try:
                info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                return
            if info is None:
                return
            command = self.by_pid.pop(info.si_pid, None)
            relayed = self.relays.pop(info.si_pid, None)
            if relayed is not None:
                relayed.relay = -1
            if command is not None:
                _signal_group(command.pid, signal.SIGKILL)
            _, status, usage = os.wait4(info.si_pid, 0)
            if command is not None:
                command.exit_message = {
                    "op": "exited",
                    "id": command.request_id,
                    "returncode": os.waitstatus_to_exitcode(status),
                    "cpu_seconds": usage.ru_utime + usage.ru_stime,
                    "max_rss_bytes": usage.ru_maxrss * 1024,
                }
                command.deadline = time.monotonic() + _GROUP_GRACE_SECONDS
                self.ending.append(command)

    def _finish_ended(self) -> None:
        now = time.monotonic()
        for command in list(self.ending):
            if _group_exists(command.pid) and now < command.deadline:
                continue
            self.ending.remove(command)
            self.by_id.pop(command.request_id, None)
            if command.terminal >= 0:
                os.close(command.terminal)
                command.terminal = -1
            if command.relay > 0:  # it passes on what the terminal holds, then ends
                _signal_process(command.relay, _RELAY_DRAIN_SIGNAL)
            if command.exit_message is not None:
                self._send(command.exit_message)

    def _kill_everything(self) -> None:
        import signal

        for command in self.by_id.values():
            _signal_group(command.pid, signal.SIGKILL)

    def _send(self, message: dict[str, Any], fds: list[int] | None = None) -> None:
        data = _frame(self.encode(message).encode())
        ancillary = []
        if fds:
            packed = b"".join(fd.to_bytes(_INT_BYTES, sys.byteorder) for fd in fds)
            ancillary = [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, packed)]
        sent = self.sock.sendmsg([data], ancillary)
        if sent < len(data):
            self.sock.sendall(data[sent:])


def _become_untouchable(signal: Any) -> None:
    """Non-dumpable and deaf to SIGINT (see the module docstring); exits if it cannot."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        sys.stderr.write(f"sandbox agent: prctl failed ({os.strerror(ctypes.get_errno())})\n")
        sys.exit(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _not_ready(_: Any) -> NoReturn:
    raise RuntimeError("the agent has not started")


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 512):
            pass
    except BlockingIOError:
        pass


def _signal_group(pgid: int, number: int) -> None:
    try:  # noqa: SIM105  (contextlib costs start-up time)
        os.killpg(pgid, number)
    except OSError:
        pass


def _signal_process(pid: int, number: int) -> None:
    try:  # noqa: SIM105  (contextlib costs start-up time)
        os.kill(pid, number)
    except OSError:
        pass


def _kill_group(pgid: int) -> None:
    import signal

    _signal_group(pgid, signal.SIGKILL)


def _group_exists(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _start_command(request: dict[str, Any], fds: list[int]) -> int:
    """Starts the command with ``posix_spawnp`` and returns its pid.

    posix_spawn (vfork and exec, no copy of the agent's memory) has no chdir
    before Python 3.13, so the agent, single-threaded, changes its own working
    directory first. The per-command limits (RLIMIT_CPU, which the agent has
    none of) are lowered with ``prlimit`` right after the spawn: for the few
    microseconds in between the command runs under the environment's limits
    only. A command that cannot be executed gets a child that says so on its
    stderr and exits 127 or 126. Raises OSError when no process can be made.
    """
    import signal

    if _COMMAND_USER is not None:
        return _fork_command(request, fds)
    argv: list[str] = request["argv"]
    env: dict[str, str] = request["env"]
    actions: list[tuple[Any, ...]] = [
        (os.POSIX_SPAWN_DUP2, fds[0], 0)
        if request["stdin"]
        else (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
        (os.POSIX_SPAWN_DUP2, fds[-2], 1),
        (os.POSIX_SPAWN_DUP2, fds[-1], 2),
    ]
    try:
        os.chdir(request["cwd"])
        _use_path(env.get("PATH"))
        pid = os.posix_spawnp(
            argv[0],
            argv,
            env,
            file_actions=actions,
            setsid=True,
            # SIGINT too: the agent ignores it, and commands must not inherit that.
            setsigdef=(signal.SIGCHLD, signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT),
        )
    except OSError as error:
        if error.errno in _NO_PROCESS_ERRNOS:
            raise
        return _fork_failure(argv[0], error, fds[-1])
    _lower_rlimits(pid, request["rlimits"])
    return pid


def _start_terminal_command(request: dict[str, Any]) -> tuple[int, int, int]:
    """Starts the command under a new pseudo-terminal; returns (master fd, pid, the fd to
    :func:`_wait_executed` on before its start is said).

    The child (forked from the single-threaded agent, so safe to run Python in
    before exec) leads a new session whose controlling terminal is the pty.
    Raises OSError when no terminal or process can be made.
    """
    import fcntl
    import signal
    import struct
    import termios

    rows, cols = request["pty"]
    master, slave = os.openpty()
    try:
        fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        pid, executed = _fork_watched()
    except BaseException:
        os.close(master)
        os.close(slave)
        raise
    if pid == 0:  # the child: never returns
        code = 126
        try:
            signal.set_wakeup_fd(-1)
            for number in (signal.SIGINT, signal.SIGCHLD, signal.SIGPIPE, signal.SIGXFSZ):
                signal.signal(number, signal.SIG_DFL)
            os.close(master)
            os.setsid()
            fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
            for target in (0, 1, 2):
                os.dup2(slave, target)
            if slave > 2:
                os.close(slave)
            _become_command_user()
            os.chdir(request["cwd"])
            _set_own_rlimits(request["rlimits"])
            argv: list[str] = request["argv"]
            os.execvpe(argv[0], argv, request["env"])  # noqa: S606  (argv as given, no shell)
        except OSError as error:
            code = 127 if isinstance(error, FileNotFoundError) else 126
            message = f"sandbox: cannot run {request['argv'][0]!r}: {error.strerror}\r\n"
            os.write(2, message.encode(errors="replace"))
        finally:
            os._exit(code)
    os.close(slave)
    return master, pid, executed


def _fork_command(request: dict[str, Any], fds: list[int]) -> int:
    """Starts the command as the command user (``fork``, switch, ``exec``); returns its pid.

    posix_spawn cannot switch users, so this is the path under ``--command-user``.
    Returns once the child executed (or failed to), as posix_spawn does: only then does
    its process group exist to be signalled. Raises OSError when no process can be
    made; a command that cannot be executed says so on its stderr and exits 127 or
    126, as with posix_spawn.
    """
    import signal

    pid, executed = _fork_watched()
    if pid != 0:
        _wait_executed(executed)
        return pid
    code = 126
    try:  # the child: never returns
        signal.set_wakeup_fd(-1)
        for number in (signal.SIGINT, signal.SIGCHLD, signal.SIGPIPE, signal.SIGXFSZ):
            signal.signal(number, signal.SIG_DFL)
        os.setsid()
        stdin = fds[0] if request["stdin"] else os.open("/dev/null", os.O_RDONLY)
        for source, target in ((stdin, 0), (fds[-2], 1), (fds[-1], 2)):
            os.dup2(source, target)
        _become_command_user()
        os.chdir(request["cwd"])  # as the command user, who owns the workspace
        _set_own_rlimits(request["rlimits"])
        argv: list[str] = request["argv"]
        os.execvpe(argv[0], argv, request["env"])  # noqa: S606  (argv as given, no shell)
    except OSError as error:
        code = 127 if isinstance(error, FileNotFoundError) else 126
        message = f"sandbox: cannot run {request['argv'][0]!r}: {error.strerror}\n"
        os.write(2, message.encode(errors="replace"))
    finally:
        os._exit(code)
    return -1  # not reached


def _fork_watched() -> tuple[int, int]:
    """``fork``: the parent gets the child's pid and an fd that reads end of file once the
    child executed or exited (see :func:`_wait_executed`); the child gets ``(0, -1)``."""
    executed_read, executed = os.pipe()  # both close on exec
    try:
        pid = os.fork()
    except BaseException:
        os.close(executed_read)
        os.close(executed)
        raise
    if pid == 0:
        os.close(executed_read)
        return 0, -1
    os.close(executed)
    return pid, executed_read


def _wait_executed(executed: int) -> None:
    """Waits until the child of :func:`_fork_watched` executed or exited, and closes ``executed``
    (-1: nothing to wait for). Its setup (its own session) is done by then."""
    if executed < 0:
        return
    try:
        os.read(executed, 1)
    finally:
        os.close(executed)


def _become_command_user() -> None:
    """In a command's child, before it executes: the command user, if the agent has one.

    Changing every uid away from 0 clears all capabilities, so the command keeps none
    of the few the agent holds (to switch users and signal its commands).
    """
    if _COMMAND_USER is None:
        return
    uid, gid = _COMMAND_USER
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)


def _set_own_rlimits(limits: list[list[Any]]) -> None:
    """Lowers the calling process's limits to at most the requested ones."""
    for name, soft, hard in limits:
        limit = getattr(resource, name)
        current = resource.getrlimit(limit)
        new_hard = hard if current[1] == resource.RLIM_INFINITY else min(hard, current[1])
        wanted = (min(soft, new_hard), new_hard)
        if wanted != current:
            resource.setrlimit(limit, wanted)


def _use_path(path: str | None) -> None:
    """Makes ``path`` the agent's PATH, which ``posix_spawnp`` searches."""
    if os.environ.get("PATH") == path:
        return
    if path is None:
        os.environ.pop("PATH", None)
    else:
        os.environ["PATH"] = path


def _fork_failure(program: str, error: OSError, stderr: int) -> int:
    """A child that reports why ``program`` cannot run and exits 127 (not found) or 126."""
    pid = os.fork()
    if pid == 0:
        try:
            os.setsid()
            message = f"sandbox: cannot run {program!r}: {error.strerror}\n"
            os.write(stderr, message.encode(errors="replace"))
        finally:
            os._exit(127 if isinstance(error, FileNotFoundError) else 126)
    return pid


def _lower_rlimits(pid: int, limits: list[list[Any]]) -> None:
    """Lowers the command's limits that are above the requested ones (it inherited the agent's)."""
    for name, soft, hard in limits:
        limit = getattr(resource, name)
        current = resource.getrlimit(limit)
        new_hard = hard if current[1] == resource.RLIM_INFINITY else min(hard, current[1])
        wanted = (min(soft, new_hard), new_hard)
        if wanted == current:
            continue
        try:  # noqa: SIM105  (contextlib costs start-up time)
            resource.prlimit(pid, limit, wanted)
        except ProcessLookupError:  # it exited already
            pass


def _start_relay(inside: int, outside: int, *, half_close: bool) -> int:
    """Forks a child that relays between ``inside`` (a pty master or a TCP connection) and
    ``outside`` (the orchestrator's socket) until either is done; returns its pid.

    The caller keeps its copies of both fds, and closes them. Raises OSError when
    no process can be made.
    """
    import signal

    # Held back until the child can take it: a command that ends at once must not
    # kill its relay with the drain signal's default action.
    drain_signal = {_RELAY_DRAIN_SIGNAL}
    signal.pthread_sigmask(signal.SIG_BLOCK, drain_signal)
    pid = -1
    try:
        pid = os.fork()
    finally:
        if pid != 0:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, drain_signal)
    if pid == 0:  # the child: never returns
        try:
            drain = _become_relay(inside, outside)
            _relay(inside, outside, half_close, drain)
            # Shut, not just closed: the orchestrator sees the end whoever else holds a copy.
            _shut(outside, _socket.SHUT_RDWR)
            if half_close:
                _shut(inside, _socket.SHUT_RDWR)
        finally:
            os._exit(0)
    return pid


def _become_relay(inside: int, outside: int) -> int:
    """Drops all the agent's fds but the two, dies with the agent, and returns the fd that
    turns readable once the agent sends the drain signal.

    It makes itself non-dumpable again, as the agent is: Linux keeps that across
    ``fork``, gVisor does not. It exits if it cannot.
    """
    import ctypes
    import signal

    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    libc = ctypes.CDLL(None)
    if libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        os._exit(1)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    low = 0
    for fd in sorted((inside, outside)):
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, resource.getrlimit(resource.RLIMIT_NOFILE)[0])
    os.set_blocking(inside, False)
    os.set_blocking(outside, False)
    drain, wake = os.pipe()
    os.set_blocking(wake, False)
    signal.set_wakeup_fd(wake)
    signal.signal(_RELAY_DRAIN_SIGNAL, lambda *_: None)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {_RELAY_DRAIN_SIGNAL})
    return drain


def _relay(inside: int, outside: int, half_close: bool, drain: int) -> None:
    """Copies bytes both ways, one bounded chunk in flight per direction.

    It returns when the orchestrator closed ``outside`` (POLLHUP, which Linux
    reports and gVisor does not: there writing to it fails instead), on an
    error writing, when an fd it no longer reads hangs up, and at an end of
    file: with ``half_close`` that direction ends by shutting the other side's
    writing (the relay goes on until both did); without, the relay ends. An
    error or hang-up on ``inside`` is read through first: gVisor reports one on
    a connection whose peer closed while its last bytes still wait to be read.
    ``drain`` readable (the command ended) passes on what ``inside`` still holds
    and ends.
    """
    relay = _Relay(inside, outside)
    relay.poller.register(drain, select.POLLIN)
    while relay.flowing():
        for fd, events in relay.poll():
            if fd == drain:
                relay.drain()
                return
            hung_up = events & (select.POLLERR | select.POLLHUP)
            if events & select.POLLNVAL or (fd == outside and hung_up):
                return
            if events & select.POLLOUT and not relay.write_to(fd):
                return
            if not events & select.POLLIN and not hung_up:
                continue
            if not relay.readable(fd):
                if relay.reading[fd]:
                    continue  # read once its chunk is passed on
                return
            data = _relay_read(fd)
            if data:
                relay.waiting[fd] = data
            elif data is not None:  # its end
                if not half_close:
                    return
                relay.reading[fd] = False
                _shut(relay.other[fd], _socket.SHUT_WR)


class _Relay:
    """The state of a relay: what each fd's reading left waiting, and which are still read."""

    def __init__(self, inside: int, outside: int) -> None:
        self.outside = outside
        self.other = {inside: outside, outside: inside}
        # Bytes read from an fd and not yet written to its other side.
        self.waiting = {inside: b"", outside: b""}
        self.reading = {inside: True, outside: True}
        self.poller = select.poll()

    def flowing(self) -> bool:
        return any(self.reading.values()) or any(self.waiting.values())

    def readable(self, fd: int) -> bool:
        return self.reading[fd] and not self.waiting[fd]

    def poll(self) -> list[tuple[int, int]]:
        """Waits for what there is to do. ``outside`` is always polled, so its closing is
        seen even while nothing flows; ``inside`` only when there is something to do with
        it, so a hang-up it reports while its chunk waits cannot make the relay spin."""
        for fd, other in self.other.items():
            mask = select.POLLIN if self.readable(fd) else 0
            mask |= select.POLLOUT if self.waiting[other] else 0
            if mask or fd == self.outside:
                self.poller.register(fd, mask)
            else:
                try:  # noqa: SIM105  (contextlib costs start-up time)
                    self.poller.unregister(fd)
                except KeyError:
                    pass
        return self.poller.poll()

    def drain(self) -> None:
        """Writes what ``inside`` still holds to ``outside``, waiting for room as needed."""
        os.set_blocking(self.outside, True)
        inside = self.other[self.outside]
        data = self.waiting[inside]
        try:
            while data:
                written = os.write(self.outside, data)
                data = data[written:] or _relay_read(inside) or b""
        except OSError:
            pass

    def write_to(self, fd: int) -> bool:
        """Writes what the other side left waiting into ``fd``; False when it takes no more."""
        source = self.other[fd]
        try:
            written = os.write(fd, self.waiting[source])
        except BlockingIOError:
            return True
        except OSError:
            return False
        self.waiting[source] = self.waiting[source][written:]
        return True


def _relay_read(fd: int) -> bytes | None:
    """The next bytes of ``fd``; empty at its end (or EIO: a pty's last slave closed), None
    when there are none yet."""
    try:
        return os.read(fd, _RELAY_BYTES)
    except BlockingIOError:
        return None
    except OSError:
        return b""


def _shut(fd: int, how: int) -> None:
    """Shuts the socket ``fd`` down (``how``: SHUT_WR, SHUT_RDWR), as far as it still is up."""
    sock = _socket.socket(fileno=fd)
    try:
        sock.shutdown(how)
    except OSError:
        pass
    finally:
        sock.detach()


def main(sock: _socket.socket, send_fds: bool = True) -> None:
    """Runs the agent on ``sock``, on which it said ready (``send_fds``: see the docstring)."""
    agent = Agent(sock, send_fds)
    agent.start()
    agent.serve()


def _command_user(argv: list[str]) -> tuple[int, int] | None:
    """The ``uid:gid`` of ``--command-user=`` in ``argv``, if there is one."""
    for arg in argv:
        if arg.startswith(COMMAND_USER):
            uid, gid = arg[len(COMMAND_USER) :].split(":")
            return int(uid), int(gid)
    return None


if __name__ == "__main__":
    _COMMAND_USER = _command_user(sys.argv)
    main(_SOCKET, send_fds=SEND_NO_FDS not in sys.argv)
