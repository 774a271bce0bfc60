"""The in-sandbox agent: one long-lived process per environment that starts its commands.

It runs inside the environment's namespaces, cgroups and rlimits as the
sandbox uid (with bubblewrap it is the sandbox's pid 1 and reaps every orphan),
started by the orchestrator as ``python3 -I -S -c <this file> sandbox-agent <fd>``
with the system interpreter: it imports nothing outside the standard library,
and only cheap modules before it reports ready, because its start-up is part
of environment creation. ``<fd>`` is its end of a Unix stream socket pair.

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
_PR_SET_DUMPABLE = 4
_RECEIVE_BYTES = 1 << 16
_GROUP_GRACE_SECONDS = 1.0
_POLL_SECONDS = 0.01
_INT_BYTES = 4
_CONNECT_TIMEOUT_SECONDS = 10.0
# What posix_spawn fails with when no process could be made (rather than not executed).
_NO_PROCESS_ERRNOS = (errno.EAGAIN, errno.ENOMEM)


class _Command:
    """A spawned command: its first process (which leads its group) and, once it exited, how."""

    def __init__(self, request_id: int, pid: int) -> None:
        self.request_id = request_id
        self.pid = pid
        self.exit_message: dict[str, Any] | None = None
        self.deadline = 0.0


class _Connect:
    """A connect in progress: its request, its non-blocking socket, and when it gives up."""

    def __init__(self, request_id: int, sock: _socket.socket, deadline: float) -> None:
        self.request_id = request_id
        self.sock = sock
        self.deadline = deadline


class Agent:
    """Serves spawn, signal and connect requests on ``sock`` until it closes."""

    def __init__(self, sock: _socket.socket) -> None:
        self.sock = sock
        self.buffer = bytearray()
        self.fds: list[int] = []
        self.by_pid: dict[int, _Command] = {}
        self.by_id: dict[int, _Command] = {}
        self.ending: list[_Command] = []
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
            count = 0 if request.get("pty") else 3 if request["stdin"] else 2
            fds, self.fds = self.fds[:count], self.fds[count:]
            self._spawn(request, fds)
        elif request["op"] == "signal":
            command = self.by_id.get(request["id"])
            if command is not None:
                _signal_group(command.pid, request["signal"])
        elif request["op"] == "connect":
            self._connect(request["id"], request["port"])

    def _spawn(self, request: dict[str, Any], fds: list[int]) -> None:
        request_id = request["id"]
        master = -1
        try:
            if request.get("pty"):
                master, pid = _start_terminal_command(request)
            else:
                pid = _start_command(request, fds)
        except OSError as error:
            self._send({"op": "failed", "id": request_id, "error": f"spawn: {error.strerror}"})
            return
        finally:
            for fd in fds:
                os.close(fd)
        command = _Command(request_id, pid)
        self.by_pid[pid] = command
        self.by_id[request_id] = command
        pidfd = os.pidfd_open(pid)
        try:
            sent = [pidfd] if master < 0 else [pidfd, master]
            self._send({"op": "started", "id": request_id, "pid": pid}, sent)
        finally:
            os.close(pidfd)
            if master >= 0:
                os.close(master)

    # --- connections (port forwarding) -----------------------------------------------

    def _connect(self, request_id: int, port: int) -> None:
        if type(port) is not int or not 0 < port < 65536:
            self._connect_failed(request_id, errno.EINVAL)
            return
        try:
            sock = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)
        except OSError as error:
            self._connect_failed(request_id, error.errno or errno.EMFILE)
            return
        sock.setblocking(False)
        result = sock.connect_ex(("127.0.0.1", port))
        if result == errno.EINPROGRESS:
            deadline = time.monotonic() + _CONNECT_TIMEOUT_SECONDS
            self.connecting[sock.fileno()] = _Connect(request_id, sock, deadline)
            return
        self._connect_done(request_id, sock, result)

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
            self._connect_done(pending.request_id, pending.sock, result)

    def _connect_done(self, request_id: int, sock: _socket.socket, result: int) -> None:
        try:
            if result == 0:
                self._send({"op": "connected", "id": request_id}, [sock.fileno()])
            else:
                self._connect_failed(request_id, result)
        finally:
            sock.close()

    def _connect_failed(self, request_id: int, number: int) -> None:
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


def _start_terminal_command(request: dict[str, Any]) -> tuple[int, int]:
    """Starts the command under a new pseudo-terminal; returns (master fd, pid).

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
        os.chdir(request["cwd"])
        pid = os.fork()
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
    return master, pid


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


def main(sock: _socket.socket) -> None:
    """Runs the agent on ``sock``, on which it said ready."""
    agent = Agent(sock)
    agent.start()
    agent.serve()


if __name__ == "__main__":
    main(_SOCKET)
