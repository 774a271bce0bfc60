"""Start gates made ahead, each already in a cgroup of its own, so a create does not wait
for its agent's process to be moved into the environment's cgroups.

Moving a process into a cgroup v1 waits for an RCU grace period, milliseconds
of every create. So, with cgroup v1 and for bubblewrap environments, the pool
keeps a few gates started ahead: each a host-side process of the orchestrator's
own (:data:`GATE_PROGRAM`, run by the orchestrator's interpreter) that was moved
into a cgroup set of its own (``pool-<orchestrator>-<pid>.<start time>-<hex>``
under the environments' parent, in every hierarchy, naming the orchestrator's
process) once idle, before it was pooled, and that waits on its stdin, a
socket, for the one launch it will ever run.

A create takes one (:meth:`GatePool.take`; a gate that died is not handed out,
and with none ready the create starts a gate of its own as before), renames its
cgroups to the environment's (:meth:`PooledGate.adopt`; ``rename(2)`` within
the parent, which cgroup v1 allows, so its process stays in them) and writes
the environment's limits, then sends it the launch: the argv, the host
environment and the rlimits that the shell gate gets as arguments, and the fds
(the agent's socket, bubblewrap's seccomp program, the egress pipe). The gate
sets the rlimits, puts the fds in place and executes the argv (setpriv,
bubblewrap, the agent), exactly what the shell gate does. Nothing of the
sandbox runs before that, and by then the process is in the environment's
cgroups, under its limits.

Each gate and its cgroups serve one environment only: taken from the pool they
are the environment's, renamed, and end with it. The pool refills in the
background once the create that took one is done; stop kills the gates and
removes their cgroups, and the start-up sweep does the same for what a
previous run left, those whose process is gone (gates left without their
orchestrator also see their stdin close and exit by themselves). Under cgroup
v2 or without cgroups there is no pool: creates start their gates as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import select
import signal
import socket
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

from sandbox_sdk.server.orchestrator.sandbox.agent_client import (
    AgentLaunch,
    Gate,
    agent_arguments,
)
from sandbox_sdk.server.orchestrator.sandbox.cgroups import CgroupV1Driver, V1EnvironmentCgroup
from sandbox_sdk.server.orchestrator.sandbox.host_env import host_process_env

log = logging.getLogger(__name__)

_PREFIX = "pool-"
_HEADER_BYTES = 4
_MAX_LAUNCH_FDS = 8
_REMOVE_ATTEMPTS = 100

# The pooled gate. Once its imports are done it says so with one byte on its stdin (a
# socket), so that it is moved into its cgroups idle, none of its start-up counted
# there, and waits. It reads one launch (a 4-byte length, a JSON object; the fds with
# its first byte), sets the rlimits as the shell gate's ulimit does (the same four
# values: KiB, 512-byte blocks, counts; "-" leaves one as it is; no core files), moves
# the fds to the numbers the argv names, makes its stdin /dev/null and executes the
# argv. End of file before a launch: its orchestrator is gone, or discarded it.
GATE_PROGRAM = """
import fcntl, json, os, resource, socket
def fail(why, status=126):
    os.write(2, b"sandbox-gate: " + why.encode() + b"\\n")
    os._exit(status)
control = socket.socket(fileno=0)
control.sendall(b"w")
try:
    data, fds, _, _ = socket.recv_fds(control, 1 << 16, MAX_FDS)
except OSError as error:
    fail(str(error), 125)
if not data:
    os._exit(125)
length = int.from_bytes(data[:4], "big")
body = bytearray(data[4:])
while len(body) < length:
    more = control.recv(length - len(body))
    if not more:
        fail("the launch was cut short", 125)
    body += more
launch = json.loads(body)
units = ((resource.RLIMIT_AS, 1024), (resource.RLIMIT_FSIZE, 512),
         (resource.RLIMIT_NOFILE, 1), (resource.RLIMIT_NPROC, 1))
try:
    for (limit, unit), value in zip(units, launch["limits"], strict=True):
        if value != "-":
            resource.setrlimit(limit, (int(value) * unit,) * 2)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
except (OSError, ValueError) as error:
    fail("could not set the limits: " + str(error))
targets = launch["fds"]
if len(targets) != len(fds) or min(targets, default=3) < 3:
    fail("the launch's fds are not the ones it names")
top = max(targets, default=2) + 1
moved = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, top) for fd in fds]
for fd in fds:
    os.close(fd)
for fd, target in zip(moved, targets):
    os.dup2(fd, target)
for fd in moved:
    os.close(fd)
control.detach()
null = os.open(os.devnull, os.O_RDONLY)
os.dup2(null, 0)
os.close(null)
argv = launch["argv"]
try:
    os.execvpe(argv[0], argv, launch["env"])
except OSError as error:
    fail("could not execute " + argv[0] + ": " + str(error.strerror), 127)
""".replace("MAX_FDS", str(_MAX_LAUNCH_FDS))
_WAITING = b"w"
_WAITING_TIMEOUT_SECONDS = 30.0


@dataclass
class PooledGate:
    """A gate started ahead, in the cgroups ``cgroup`` (its pool name until adopted).

    ``control`` is our end of its stdin; ``pidfd`` names its process. Used once:
    :meth:`open` hands it over, :meth:`discard` ends it.
    """

    process: asyncio.subprocess.Process
    control: socket.socket
    stderr_read: int
    pidfd: int
    cgroup: V1EnvironmentCgroup
    opened: bool = field(default=False)
    # Its cgroups are the environment's: they end with it, not with the gate.
    adopted: bool = field(default=False)

    def alive(self) -> bool:
        """Whether its process still waits (a pidfd reads ready once it exited)."""
        readable, _, _ = select.select([self.pidfd], [], [], 0)
        return not readable and self.process.returncode is None

    def adopt(
        self,
        driver: CgroupV1Driver,
        environment_id: str,
        cpu_cores: float,
        memory_bytes: int,
        max_pids: int,
    ) -> V1EnvironmentCgroup:
        """Renames its cgroups to the environment's and writes its limits (blocking: on
        a thread); the environment's cgroup. Raises OSError if it cannot, the cgroups
        then keeping whichever name they have."""
        self.cgroup = driver.rename(self.cgroup, environment_id)
        self.adopted = True
        self.cgroup.write_limits(cpu_cores, memory_bytes, max_pids)
        if not self.alive() or self.process.pid not in self.cgroup.pids():
            raise OSError(f"the pooled gate {self.process.pid} is gone or not in its cgroup")
        return self.cgroup

    def takes(self, launch: AgentLaunch) -> bool:
        """Whether it can run ``launch``: one that appends the agent's arguments and
        passes its socket as an fd (bubblewrap's), once its cgroups are adopted."""
        return (
            self.adopted
            and not self.opened
            and launch.append_agent_arguments
            and not launch.socket_on_stdin
        )

    def open(self, launch: AgentLaunch) -> Gate:
        """The gate for ``launch`` (see :meth:`takes`); from here on its process, stderr
        and control socket belong to the :class:`Gate`."""
        if not self.takes(launch):
            raise ValueError("a pooled gate takes one launch it can run, once adopted")
        self.opened = True
        os.close(self.pidfd)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        fds = [theirs.fileno(), *launch.pass_fds]
        body = json.dumps(
            {
                "argv": [*launch.argv, *agent_arguments(launch.fds_from_agent, theirs.fileno())],
                "env": dict(launch.env),
                "limits": list(launch.limits),
                "fds": fds,
            }
        ).encode()
        control = self.control

        async def release() -> None:
            try:
                await _send(control, len(body).to_bytes(_HEADER_BYTES, "big") + body, fds)
            finally:
                theirs.close()
                control.close()

        async def abandon() -> None:
            theirs.close()
            control.close()  # a gate still waiting reads end of file and exits

        return Gate(self.process, ours, self.stderr_read, release, abandon)

    async def discard(self) -> None:
        """Ends the gate (never opened) and removes its cgroups, unless an environment
        adopted them (they are its own then, and go with it)."""
        self.control.close()
        os.close(self.stderr_read)
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
        os.close(self.pidfd)
        await self.process.wait()
        if not self.adopted:
            await remove_cgroup(self.cgroup)


async def _waiting(control: socket.socket) -> None:
    """Returns once the gate said it waits; raises OSError if it did not."""
    loop = asyncio.get_running_loop()
    control.setblocking(False)
    said = await asyncio.wait_for(loop.sock_recv(control, 1), _WAITING_TIMEOUT_SECONDS)
    if said != _WAITING:
        raise OSError("the gate exited before it waited")


async def _send(sock: socket.socket, data: bytes, fds: Sequence[int]) -> None:
    """Sends ``data`` with ``fds`` on its first byte, without blocking the loop."""
    loop = asyncio.get_running_loop()
    sock.setblocking(False)
    while True:
        try:
            sent = socket.send_fds(sock, [data], list(fds))
            break
        except BlockingIOError:
            await _writable(loop, sock)
    if sent < len(data):  # (sending nothing to a gate that already went on fails)
        await loop.sock_sendall(sock, data[sent:])


async def _writable(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_writer(sock.fileno(), wake)
    try:
        await ready
    finally:
        loop.remove_writer(sock.fileno())


async def remove_cgroup(cgroup: V1EnvironmentCgroup) -> None:
    """Kills what is in ``cgroup`` and removes it (giving up, logged, after a second)."""
    for _ in range(_REMOVE_ATTEMPTS):
        if await asyncio.to_thread(cgroup.remove):
            return
        await asyncio.to_thread(cgroup.signal_all)
        await asyncio.sleep(0.01)
    log.error("pooled gate cgroup %s could not be removed", cgroup.dirs)


class GatePool:
    """At most ``depth`` gates started ahead for bubblewrap environments; see the module
    docstring. ``driver`` None (cgroup v2, no cgroups) or ``depth`` 0: no pool."""

    def __init__(self, driver: CgroupV1Driver | None, orchestrator_id: str, depth: int) -> None:
        self._driver = driver
        self._prefix = f"{_PREFIX}{orchestrator_id}-"
        # Names this process in its cgroups' names, for the sweep of another's.
        self._owner = _process_identity(os.getpid())
        self._depth = depth
        self._ready: list[PooledGate] = []
        self._refill: asyncio.Task[None] | None = None
        self._discarding: set[asyncio.Task[None]] = set()
        self._closed = driver is None or depth == 0

    @property
    def driver(self) -> CgroupV1Driver | None:
        """The cgroup v1 driver its gates' cgroups are made with (None: no pool)."""
        return self._driver

    def start(self) -> None:
        """Starts filling the pool in the background."""
        self._schedule_refill()

    def take(self) -> PooledGate | None:
        """A live pooled gate (the caller's from now on, to open or discard), or None:
        the pool is empty (or off), and the caller starts a gate of its own."""
        while self._ready and not self._closed:
            gate = self._ready.pop(0)
            if gate.alive():
                return gate
            log.warning("a pooled start gate (%d) died; not handing it out", gate.process.pid)
            self.discard_later(gate)
        return None

    def discard_later(self, gate: PooledGate) -> None:
        """Discards ``gate`` in the background (stop waits for it)."""
        task = asyncio.ensure_future(gate.discard())
        self._discarding.add(task)
        task.add_done_callback(self._discarding.discard)

    def refill(self) -> None:
        """Makes up for the gates taken, in the background."""
        self._schedule_refill()

    def ready_count(self) -> int:
        """How many gates wait in the pool now."""
        return len(self._ready)

    def _schedule_refill(self) -> None:
        if self._closed or (self._refill is not None and not self._refill.done()):
            return
        self._refill = asyncio.create_task(self._fill(), name="gate-pool-refill")

    async def _fill(self) -> None:
        while not self._closed and len(self._ready) < self._depth:
            try:
                gate = await self._start_one()
            except Exception as error:
                log.warning("starting a gate ahead failed (%s); creates start theirs", error)
                return
            if self._closed:
                await gate.discard()
                return
            self._ready.append(gate)

    async def _start_one(self) -> PooledGate:
        driver = self._driver
        if driver is None:
            raise RuntimeError("no cgroup v1 driver")
        cgroup = driver.v1_cgroup(f"{self._prefix}{self._owner}-{secrets.token_hex(8)}")
        await asyncio.to_thread(cgroup.make_directories)
        try:
            process, control, stderr_read = await _spawn_gate()
        except BaseException:
            await remove_cgroup(cgroup)
            raise
        gate = PooledGate(process, control, stderr_read, os.pidfd_open(process.pid), cgroup)
        try:
            await _waiting(control)
            await asyncio.to_thread(cgroup.attach, process.pid)
        except BaseException:
            await gate.discard()
            raise
        return gate

    async def close(self) -> None:
        """Stops refilling and ends every pooled gate, removing its cgroups."""
        self._closed = True
        if self._refill is not None:
            await asyncio.gather(self._refill, return_exceptions=True)
        ready, self._ready = self._ready, []
        ended = await asyncio.gather(
            *(gate.discard() for gate in ready), *self._discarding, return_exceptions=True
        )
        for error in ended:
            if isinstance(error, BaseException):
                log.error("ending a pooled start gate failed: %r", error)

    async def sweep(self) -> None:
        """Kills the gates and removes the cgroups a previous run of this orchestrator left
        in its pool (``pool-<orchestrator id>-<owner>-…`` under the parent, in any
        hierarchy, whose owning process is gone: another process of the same id, a test
        beside this one, keeps its own)."""
        driver = self._driver
        if driver is None:
            return
        names = await asyncio.to_thread(self._leftover_names, driver)
        for name in sorted(names):
            log.warning("removing start gate cgroup %s left by a previous run", name)
            await remove_cgroup(driver.v1_cgroup(name))

    def _leftover_names(self, driver: CgroupV1Driver) -> set[str]:
        names: set[str] = set()
        for directory in driver.v1_cgroup("any").dirs:
            with contextlib.suppress(OSError), os.scandir(directory.parent) as entries:
                names.update(e.name for e in entries if e.name.startswith(self._prefix))
        return {name for name in names if not _owner_alive(name[len(self._prefix) :])}


def _process_identity(pid: int) -> str:
    """``<pid>.<start time>``: names one process for as long as the machine runs (a pid
    alone may be reused); empty if there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return ""
    return f"{pid}.{fields[19]}"  # starttime, field 22 of stat


def _owner_alive(tail: str) -> bool:
    """Whether the process a pool cgroup's name (``<pid>.<start time>-<hex>``) names runs."""
    owner = tail.rsplit("-", 1)[0]
    pid = owner.split(".", 1)[0]
    return pid.isdigit() and _process_identity(int(pid)) == owner


async def _spawn_gate() -> tuple[asyncio.subprocess.Process, socket.socket, int]:
    """Starts a gate program waiting on its stdin: its process, our end of its stdin and
    the read end of its stderr (which the agent inherits, as from the shell gate)."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    stderr_read, stderr_write = os.pipe()
    try:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-I",
            "-S",
            "-c",
            GATE_PROGRAM,
            "sandbox-gate",
            stdin=theirs.fileno(),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=stderr_write,
            cwd="/",
            env=host_process_env(),
            start_new_session=True,
        )
    except BaseException:
        ours.close()
        os.close(stderr_read)
        raise
    finally:
        theirs.close()
        os.close(stderr_write)
    return process, ours, stderr_read
