"""Attacks on an environment's agent: from its commands, and from a compromised agent.

Commands run with the agent's uid in its pid namespace. They must not trace
it, read or write its memory, borrow its fds, read its environment or signal
it. The orchestrator, in turn, treats whatever the agent says as hostile:
bounded fds, only expected messages, and a misbehaving agent ends only its
own environment, with a reason that says so.
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import os
import socket
from pathlib import Path

import pytest
from sandbox_attack_support import (
    TENANT,
    create,
    eventually,
    needs_isolation,
    python_in_sandbox,
    run,
    running_manager,
    under_gvisor,
)

# isort: off
# On the path once sandbox_attack_support put tests/sandbox there.
from agent_modes import AGENT_MODES, agent_mode, launch_agents_one_way
# isort: on

from sandbox_sdk.server.orchestrator.sandbox.agent_client import (
    AgentClient,
    AgentError,
    SpawnRequest,
)
from sandbox_sdk.server.orchestrator.sandbox.environment_record import (
    EnvironmentState,
    TerminationReason,
)

pytestmark = needs_isolation
__all__ = ["agent_mode"]  # a fixture: the attacks run against either agent mode

_NO_COMMAND = SpawnRequest(argv=["true"], cwd="/", env={}, rlimits=[])

_ATTACKS_ON_PID_1 = python_in_sandbox(
    """
    import ctypes, os, signal
    libc = ctypes.CDLL(None, use_errno=True)
    def attempt(name, call):
        try:
            result = call()
            print(name, "SUCCEEDED", result)
        except OSError as error:
            print(name, "denied", error.errno)
    def syscall(number, *args):
        result = libc.syscall(number, *args)
        if result < 0:
            raise OSError(ctypes.get_errno(), "")
        return result
    attempt("ptrace-attach", lambda: syscall(101, 16, 1, 0, 0))
    attempt("ptrace-seize", lambda: syscall(101, 0x4206, 1, 0, 0))
    try:
        pidfd = os.pidfd_open(1)
    except OSError as error:  # gVisor's kernel has no pidfds at all
        print("pidfd_open denied", error.errno)
    else:
        for fd in range(12):  # fd 0 too: the one-way agent's socket
            attempt(f"pidfd_getfd-{fd}", lambda fd=fd: syscall(438, pidfd, fd, 0))
    buffer = ctypes.create_string_buffer(64)
    local = (ctypes.c_void_p * 2)(ctypes.addressof(buffer), 64)
    remote = (ctypes.c_void_p * 2)(0x400000, 64)
    attempt("process_vm_readv", lambda: syscall(310, 1, local, 1, remote, 1, 0))
    attempt("mem-write", lambda: open("/proc/1/mem", "wb"))
    attempt("mem-read", lambda: open("/proc/1/mem", "rb").read(1))
    attempt("environ", lambda: open("/proc/1/environ", "rb").read())
    attempt("fd-list", lambda: os.listdir("/proc/1/fd"))
    attempt("fd-open", lambda: open("/proc/1/fd/0", "rb"))
    attempt("map_files", lambda: os.listdir("/proc/1/map_files"))
    for number in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL, signal.SIGSTOP,
                   signal.SIGHUP, signal.SIGUSR1, signal.SIGSEGV):
        try:
            os.kill(1, number)
        except OSError:
            pass
    print("done")
    """
)


@pytest.mark.usefixtures("agent_mode")
@pytest.mark.parametrize("repeat", range(2))
async def test_commands_cannot_trace_read_borrow_from_or_kill_the_agent(
    tmp_path: Path, repeat: int
) -> None:
    del repeat  # twice: the signals of the first round must not have hurt the agent
    async with running_manager(tmp_path) as manager:
        environment = await create(manager)
        agent = manager._environments.runtimes[environment.id].agent
        assert agent is not None
        result = await run(manager, environment.id, _ATTACKS_ON_PID_1)
        lines = result.out.splitlines()
        assert lines[-1] == "done", result.out + result.err
        # gVisor's kernel lets another uid list a non-dumpable process's fd numbers and
        # read its environment (the agent's holds PATH, LANG and the environment's id);
        # opening those fds, its memory, tracing and signalling it are refused there too.
        harmless = ("fd-list SUCCEEDED", "environ SUCCEEDED") if under_gvisor() else ()
        succeeded = [line for line in lines if "SUCCEEDED" in line]
        assert not [line for line in succeeded if not line.startswith(harmless)], result.out
        await asyncio.sleep(0.2)  # a signal that killed it would have by now
        assert manager._environments.runtimes[environment.id].agent is agent
        assert not agent.closed
        after = await run(manager, environment.id, ["echo", "still here"])
        assert after.out == "still here\n"


@pytest.mark.usefixtures("agent_mode")
async def test_another_commands_secrets_cannot_be_taken_from_the_agent(tmp_path: Path) -> None:
    # Commands of one environment are one trust domain (one uid, like the processes
    # of one container); what the agent carries for them must not leak through it.
    async with running_manager(tmp_path) as manager:
        environment = await create(manager)
        victim = asyncio.create_task(
            run(
                manager,
                environment.id,
                ["sh", "-c", "read line; sleep 3; echo done"],
                stdin=b"the victim's stdin\n",
                env_vars={"VICTIM_TOKEN": "s3cr3t-token"},
            )
        )
        await asyncio.sleep(0.5)
        thief = await run(
            manager,
            environment.id,
            python_in_sandbox(
                """
                import os
                for name in ("environ", "mem", "fd/3", "fd/4", "fd/5", "syscall", "stack"):
                    try:
                        print(open(f"/proc/1/{name}", "rb").read(1 << 16))
                    except OSError as error:
                        print(name, "denied", error.errno)
                """
            ),
        )
        assert "s3cr3t-token" not in thief.out  # argv/env of the agent and its messages
        assert "victim's stdin" not in thief.out
        assert (await victim).out == "done\n"


_ATTACKS_ON_RELAYS = python_in_sandbox(
    """
    import ctypes, os, signal
    libc = ctypes.CDLL(None, use_errno=True)
    def attempt(name, call):
        try:
            result = call()
            print(name, "SUCCEEDED", result)
        except OSError as error:
            print(name, "denied", error.errno)
    def syscall(number, *args):
        result = libc.syscall(number, *args)
        if result < 0:
            raise OSError(ctypes.get_errno(), "")
        return result
    relays = []
    for name in os.listdir("/proc"):
        try:
            argv = open(f"/proc/{name}/cmdline").read().split("\\0")
        except OSError:
            continue
        if name.isdigit() and int(name) > 1 and "sandbox-agent" in argv:
            relays.append(int(name))
    print("relays", len(relays))
    for pid in relays:
        attempt("ptrace-attach", lambda: syscall(101, 16, pid, 0, 0))
        try:
            pidfd = os.pidfd_open(pid)
        except OSError as error:
            print("pidfd_open denied", error.errno)
        else:
            for fd in range(12):
                attempt(f"pidfd_getfd-{fd}", lambda fd=fd: syscall(438, pidfd, fd, 0))
        attempt("mem-read", lambda: open(f"/proc/{pid}/mem", "rb").read(1))
        attempt("fd-list", lambda: os.listdir(f"/proc/{pid}/fd"))
        attempt("fd-open", lambda: open(f"/proc/{pid}/fd/0", "rb"))
    print("done")
    """
)


async def test_commands_cannot_trace_or_borrow_from_the_one_way_agents_relays(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A relay holds a terminal's master or a forwarded connection, and the socket to
    # the orchestrator: it is a fork of the agent, as untouchable as the agent.
    launch_agents_one_way(monkeypatch)
    async with running_manager(tmp_path) as manager:
        environment = await create(manager)
        agent = manager._environments.runtimes[environment.id].agent
        assert agent is not None
        terminal = await agent.spawn(
            SpawnRequest(["sleep", "30"], cwd="/", env={}, rlimits=[], pty=(24, 80)),
            None,
            None,  # type: ignore[arg-type]
            None,  # type: ignore[arg-type]
        )
        result = await run(manager, environment.id, _ATTACKS_ON_RELAYS)
        lines = result.out.splitlines()
        assert lines[0] == "relays 1", result.out + result.err
        assert lines[-1] == "done", result.out + result.err
        # gVisor's kernel lets another uid list a non-dumpable process's fd numbers and
        # read its environment (the agent's holds PATH, LANG and the environment's id);
        # opening those fds, its memory, tracing and signalling it are refused there too.
        harmless = ("fd-list SUCCEEDED", "environ SUCCEEDED") if under_gvisor() else ()
        succeeded = [line for line in lines if "SUCCEEDED" in line]
        assert not [line for line in succeeded if not line.startswith(harmless)], result.out
        terminal.signal(9)
        await terminal.exited
        assert terminal.terminal is not None
        os.close(terminal.terminal)


# --- a compromised agent: the orchestrator's side ------------------------------------


class _PeerAgent:
    """The agent's end of an AgentClient's socket, played by the test."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def say(self, message: object, fds: list[int] | None = None) -> None:
        body = json.dumps(message).encode()
        data = len(body).to_bytes(4, "big") + body
        ancillary = []
        if fds:
            packed = b"".join(fd.to_bytes(4, "little") for fd in fds)
            ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, packed)]
        self.sock.sendmsg([data], ancillary)


async def _client(mode: str = "two-way") -> tuple[AgentClient, _PeerAgent, list[str]]:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    process = await asyncio.create_subprocess_exec("sleep", "30")
    violations: list[str] = []
    client = AgentClient(process, ours, violations.append, fds_from_agent=mode == "two-way")
    peer = _PeerAgent(theirs)
    peer.say({"op": "ready", "pid": 1})
    await asyncio.sleep(0.05)
    return client, peer, violations


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


_HOSTILE_MESSAGES: list[tuple[str, object, int]] = [
    ("unknown op", {"op": "shell", "argv": ["sh"]}, 0),
    ("ready twice", {"op": "ready", "pid": 1}, 0),
    ("exit of nothing", {"op": "exited", "id": 7, "returncode": 0, "cpu_seconds": 0,
                         "max_rss_bytes": 0}, 0),
    ("start of nothing", {"op": "started", "id": 99, "pid": 5}, 1),
    ("failure of nothing", {"op": "failed", "id": 3, "error": "x"}, 0),
    ("fd with the wrong message", {"op": "exited", "id": 1}, 1),
    ("string id", {"op": "exited", "id": "1"}, 0),
    ("not an object", [1, 2, 3], 0),
    ("many fds", {"op": "started", "id": 1, "pid": 2}, 4),
]  # fmt: skip


@pytest.mark.parametrize("mode", AGENT_MODES)
@pytest.mark.parametrize(
    ("message", "fd_count"),
    [(message, fds) for _, message, fds in _HOSTILE_MESSAGES],
    ids=[name for name, _, _ in _HOSTILE_MESSAGES],
)
async def test_a_hostile_agent_is_cut_off_and_its_fds_closed(
    message: object, fd_count: int, mode: str
) -> None:
    before = _open_fds()
    client, peer, violations = await _client(mode)
    sent = [os.open("/dev/null", os.O_RDONLY) for _ in range(fd_count)]
    peer.say(message, sent)
    for fd in sent:
        os.close(fd)
    await eventually(lambda: client.closed, what="the connection dropped")
    assert violations
    assert violations[0]
    assert client.violation
    with pytest.raises(AgentError, match="gone"):
        await client.spawn(_NO_COMMAND, None, *os.pipe())
    peer.sock.close()
    client.process.kill()
    await client.close()
    assert _open_fds() <= before


@pytest.mark.parametrize("mode", AGENT_MODES)
async def test_an_fd_flood_does_not_exhaust_the_orchestrator(mode: str) -> None:
    before = _open_fds()
    client, peer, violations = await _client(mode)
    spare = os.open("/dev/null", os.O_RDONLY)
    try:
        for _ in range(200):
            try:
                peer.say({"op": "failed", "id": 1, "error": "x"}, [spare] * 8)
            except OSError:
                break  # the orchestrator hung up
    finally:
        os.close(spare)
    await eventually(lambda: client.closed, what="the connection dropped")
    assert violations
    peer.sock.close()
    client.process.kill()
    await client.close()
    assert _open_fds() <= before


@pytest.mark.usefixtures("agent_mode")
@pytest.mark.bubblewrap_only(
    reason="forges the agent's messages with its socket taken from its host process, which under "
    "gVisor is gVisor's kernel; test_sandbox_agent_one_way forges the one-way protocol"
)
async def test_a_compromised_agent_ends_only_its_own_environment(tmp_path: Path) -> None:
    async with running_manager(tmp_path) as manager:
        victim = await create(manager)
        bystander = await create(manager)
        runtime = manager._environments.runtimes[victim.id]
        assert runtime.agent is not None
        # Take the agent's own socket from outside (root on the host can) and forge
        # what a tampered agent would send: an exit for a command that never ran.
        agent_pid = _sandbox_pid_1(runtime.agent.pid)
        # One owner closes it once: the orchestrator makes fds meanwhile (its gate pool
        # refills), which a second close of a reused number would hit.
        forged = socket.socket(fileno=_steal_fd(agent_pid, _agent_socket_fd(agent_pid)))
        try:
            _PeerAgent(forged).say(
                {"op": "exited", "id": 4242, "returncode": 0, "cpu_seconds": 0,
                 "max_rss_bytes": 0}
            )  # fmt: skip
            await eventually(
                lambda: (
                    manager.get_environment(TENANT, victim.id).state is EnvironmentState.TERMINATED
                ),
                what="the victim environment ended",
            )
        finally:
            forged.close()
        ended = manager.get_environment(TENANT, victim.id)
        assert ended.termination_reason is TerminationReason.SANDBOX_VIOLATION
        assert "create a new one" in ended.termination_message
        assert (await run(manager, bystander.id, ["echo", "fine"])).out == "fine\n"


def _sandbox_pid_1(outer_pid: int) -> int:
    """The agent's host pid: bubblewrap's only child."""
    children = Path(f"/proc/{outer_pid}/task/{outer_pid}/children").read_text().split()
    assert len(children) == 1, children
    return int(children[0])


def _agent_socket_fd(pid: int) -> int:
    for name in os.listdir(f"/proc/{pid}/fd"):
        if os.readlink(f"/proc/{pid}/fd/{name}").startswith("socket:"):
            return int(name)
    raise AssertionError("the agent holds no socket")


def _steal_fd(pid: int, fd: int) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    pidfd = os.pidfd_open(pid)
    try:
        stolen = libc.syscall(438, pidfd, fd, 0)
        if stolen < 0:
            raise OSError(ctypes.get_errno(), "pidfd_getfd")
        return int(stolen)
    finally:
        os.close(pidfd)
