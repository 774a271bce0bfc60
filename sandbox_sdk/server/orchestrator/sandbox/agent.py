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
  stderr. Starts ``argv`` in a new session (so its own process group) with
  those fds, ``cwd`` and ``env``, after lowering the rlimits (``RLIMIT_*``
  names) to at most the given values.
* ``signal {id, signal}``: signals the command's process group.

Agent to orchestrator:

* ``ready {pid}``, once, first.
* ``started {id, pid}`` with fds a pidfd of the process (``pid`` is in the
  agent's pid namespace; the pidfd names the process in any namespace).
* ``failed {id, error}``: no process could be started (fork failed).
* ``exited {id, returncode, cpu_seconds, max_rss_bytes}``: ``returncode`` as
  in ``subprocess`` (negative: killed by that signal); CPU and peak resident
  memory from ``wait4`` (the process and the descendants it waited for).
  Sent once the rest of the command's process group, killed when its first
  process exited, is gone too (or after a second). Processes that started
  their own session outlive the command, until the environment ends.

A command that cannot be executed (not found, not executable) exits 127 or
126 with a message on its stderr, as in a shell. When the socket closes (the
orchestrator is gone) the agent kills every command's group and exits.
"""

from __future__ import annotations

import _socket
import os
import resource
import select
import sys
import time

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs milliseconds of start-up
    from collections.abc import Callable
    from typing import Any, NoReturn

_HEADER_BYTES = 4
_MAX_FDS = 3
_RECEIVE_BYTES = 1 << 16
_GROUP_GRACE_SECONDS = 1.0
_POLL_SECONDS = 0.01
_INT_BYTES = 4


class _Command:
    """A spawned command: its first process (which leads its group) and, once it exited, how."""

    def __init__(self, request_id: int, pid: int) -> None:
        self.request_id = request_id
        self.pid = pid
        self.exit_message: dict[str, Any] | None = None
        self.deadline = 0.0


class Agent:
    """Serves spawn and signal requests on ``sock`` until it closes."""

    def __init__(self, sock: _socket.socket) -> None:
        self.sock = sock
        self.buffer = bytearray()
        self.fds: list[int] = []
        self.by_pid: dict[int, _Command] = {}
        self.by_id: dict[int, _Command] = {}
        self.ending: list[_Command] = []
        self.wakeup = -1
        self.decode: Callable[[bytes], Any] = _not_ready
        self.encode: Callable[[Any], str] = _not_ready

    def start(self) -> None:
        """Reports ready, then imports and installs what serving needs."""
        self.sock.sendall(_frame(b'{"op":"ready","pid":%d}' % os.getpid()))
        # Imported only now (and signal locally where used): together they cost milliseconds.
        import json
        import signal

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
            timeout = _POLL_SECONDS if self.ending else None
            readable, _, _ = select.select([self.sock.fileno(), self.wakeup], [], [], timeout)
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
            count = 3 if request["stdin"] else 2
            fds, self.fds = self.fds[:count], self.fds[count:]
            self._spawn(request, fds)
        elif request["op"] == "signal":
            command = self.by_id.get(request["id"])
            if command is not None:
                _signal_group(command.pid, request["signal"])

    def _spawn(self, request: dict[str, Any], fds: list[int]) -> None:
        request_id = request["id"]
        try:
            pid = os.fork()
        except OSError as error:
            self._send({"op": "failed", "id": request_id, "error": f"fork: {error.strerror}"})
            return
        if pid == 0:
            _exec_child(request, fds)
        for fd in fds:
            os.close(fd)
        command = _Command(request_id, pid)
        self.by_pid[pid] = command
        self.by_id[request_id] = command
        pidfd = os.pidfd_open(pid)
        try:
            self._send({"op": "started", "id": request_id, "pid": pid}, [pidfd])
        finally:
            os.close(pidfd)

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


def _not_ready(_: Any) -> NoReturn:
    raise RuntimeError("the agent has not started")


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 512):
            pass
    except BlockingIOError:
        pass


def _frame(body: bytes) -> bytes:
    return len(body).to_bytes(_HEADER_BYTES, "big") + body


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


def _exec_child(request: dict[str, Any], fds: list[int]) -> NoReturn:
    """In the forked child: becomes the command, or exits 126/127 saying why it cannot."""
    import signal

    argv: list[str] = request["argv"]
    try:
        os.setsid()
        stdin = fds[0] if request["stdin"] else os.open("/dev/null", os.O_RDONLY)
        os.dup2(stdin, 0)
        os.dup2(fds[-2], 1)
        os.dup2(fds[-1], 2)
        signal.set_wakeup_fd(-1)
        for number in (signal.SIGCHLD, signal.SIGPIPE, signal.SIGXFSZ):
            signal.signal(number, signal.SIG_DFL)
        for name, soft, hard in request["rlimits"]:
            _lower_rlimit(getattr(resource, name), soft, hard)
        os.chdir(request["cwd"])
        os.execvpe(argv[0], argv, request["env"])  # noqa: S606  (argv as given, no shell)
    except OSError as error:
        message = f"sandbox: cannot run {argv[0]!r}: {error.strerror}\n"
        os.write(2, message.encode(errors="replace"))
        os._exit(127 if isinstance(error, FileNotFoundError) else 126)
    except BaseException:
        os._exit(126)


def _lower_rlimit(limit: int, soft: int, hard: int) -> None:
    """Sets a limit no higher than it is now (which needs no privilege)."""
    _, current_hard = resource.getrlimit(limit)
    if current_hard != resource.RLIM_INFINITY:
        hard = min(hard, current_hard)
    resource.setrlimit(limit, (min(soft, hard), hard))


def main() -> None:
    """Runs the agent on the socket whose fd is the last argument."""
    sock = _socket.socket(fileno=int(sys.argv[-1]))
    sock.setblocking(True)
    agent = Agent(sock)
    agent.start()
    agent.serve()


if __name__ == "__main__":
    main()
