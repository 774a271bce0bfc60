"""The agent's one-way mode (#17): the agent sends no fds, and relays terminals and
connections through socket pairs the orchestrator sends it.

First a compromised agent, played by the test on the agent's end of a real
AgentClient's socket: in this mode any fd it sends, and any answer to a request
not in flight, ends it. Then the real agent, started by AgentClient as the
orchestrator starts it (its socket on its stdin) but without a sandbox around
it: its relays must never hold up its other requests, and must end when
either side closes. Last, the real agent under gVisor (``runsc do``), where
fds cannot leave the sandbox at all (skipped without ``runsc``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import psutil
import pytest
from peer_agent import open_fd_count, peer_client
from sandbox_support import eventually

from sandbox_sdk.server.orchestrator.sandbox.agent_client import (
    AgentClient,
    AgentCommand,
    AgentError,
    AgentLaunch,
    SpawnRequest,
    agent_source,
)

pytestmark = pytest.mark.timeout(120)

CALL_TIMEOUT = 30.0
_PATH = {"PATH": "/usr/bin:/bin"}
# Generous start-gate limits: gVisor's own memory needs a large address space and
# file size (these are the runsc process's, not the commands').
_LIMITS = ["4294967296", "68719476736", "1024", "-"]


# --- a compromised agent ----------------------------------------------------------------


def _dev_null() -> int:
    return os.open("/dev/null", os.O_RDONLY)


_PTY = SpawnRequest(argv=["sh"], cwd="/", env={}, rlimits=[], pty=(24, 80))


async def test_a_pty_spawn_sends_a_socket_and_its_end_stands_in_for_the_terminal() -> None:
    before = open_fd_count()
    async with peer_client(fds_from_agent=False) as (client, peer, violations):
        spawning = asyncio.ensure_future(client.spawn(_PTY, None, None, None))  # type: ignore[arg-type]
        request, fds = await peer.request()
        assert request["op"] == "spawn"
        assert len(fds) == 1
        peer.say({"op": "started", "id": request["id"], "pid": 2})
        command = await asyncio.wait_for(spawning, CALL_TIMEOUT)
        assert (command.pid, command.sandbox_pid) == (None, 2)
        assert command.terminal is not None
        os.write(fds[0], b"from the terminal")
        assert os.read(command.terminal, 100) == b"from the terminal"
        resizing = asyncio.ensure_future(command.resize(40, 132))
        resize, _ = await peer.request()
        assert resize == {
            "op": "resize",
            "id": resize["id"],
            "command": request["id"],
            "rows": 40,
            "cols": 132,
        }
        peer.say({"op": "resized", "id": resize["id"]})
        await asyncio.wait_for(resizing, CALL_TIMEOUT)
        os.close(command.terminal)
        os.close(fds[0])
        assert not violations
    assert open_fd_count() <= before


async def test_a_connect_sends_a_socket_and_returns_its_other_end() -> None:
    async with peer_client(fds_from_agent=False) as (client, peer, violations):
        connecting = asyncio.ensure_future(client.connect(8080))
        request, fds = await peer.request()
        assert (request["op"], request["port"], len(fds)) == ("connect", 8080, 1)
        peer.say({"op": "connected", "id": request["id"]})
        connection = await asyncio.wait_for(connecting, CALL_TIMEOUT)
        os.write(fds[0], b"relayed")
        assert connection.recv(100) == b"relayed"
        connection.close()
        os.close(fds[0])
        assert not violations


async def test_a_failed_pty_spawn_and_a_failed_connect_close_their_ends() -> None:
    before = open_fd_count()
    async with peer_client(fds_from_agent=False) as (client, peer, _):
        spawning = asyncio.ensure_future(client.spawn(_PTY, None, None, None))  # type: ignore[arg-type]
        request, fds = await peer.request()
        peer.say({"op": "failed", "id": request["id"], "error": "EAGAIN"})
        with pytest.raises(AgentError, match="could not start"):
            await asyncio.wait_for(spawning, CALL_TIMEOUT)
        for fd in fds:
            os.close(fd)
        connecting = asyncio.ensure_future(client.connect(8080))
        request, fds = await peer.request()
        peer.say({"op": "connect_failed", "id": request["id"], "errno": 111, "error": "refused"})
        with pytest.raises(AgentError, match="could not connect"):
            await asyncio.wait_for(connecting, CALL_TIMEOUT)
        for fd in fds:
            os.close(fd)
        assert not client.closed
    assert open_fd_count() <= before


_HOSTILE: list[tuple[str, str, dict[str, Any], int]] = [
    ("a pidfd with started", "spawn", {"op": "started", "pid": 2}, 1),
    ("a terminal with started", "pty", {"op": "started", "pid": 2}, 2),
    ("a socket with connected", "connect", {"op": "connected"}, 1),
    ("an fd with exited", "spawn", {"op": "exited", "returncode": 0, "cpu_seconds": 0,
                                     "max_rss_bytes": 0}, 1),
    ("an fd with failed", "spawn", {"op": "failed", "error": "x"}, 1),
    ("a pid that is a string", "spawn", {"op": "started", "pid": "2"}, 0),
    ("a pid past any pid", "spawn", {"op": "started", "pid": 1 << 40}, 0),
    ("a negative pid", "spawn", {"op": "started", "pid": -1}, 0),
    ("a resize answer never asked", "spawn", {"op": "resized"}, 0),
    ("a connect answer never asked", "spawn", {"op": "connected"}, 0),
]  # fmt: skip


@pytest.mark.parametrize(
    ("asked", "answer", "fd_count"),
    [(asked, answer, fds) for _, asked, answer, fds in _HOSTILE],
    ids=[name for name, _, _, _ in _HOSTILE],
)
async def test_a_one_way_agent_sending_an_fd_or_a_forged_answer_is_cut_off(
    asked: str, answer: dict[str, Any], fd_count: int
) -> None:
    before = open_fd_count()
    async with peer_client(fds_from_agent=False) as (client, peer, violations):
        if asked == "connect":
            pending: asyncio.Future[Any] = asyncio.ensure_future(client.connect(8080))
        else:
            request = _PTY if asked == "pty" else SpawnRequest(["true"], "/", {}, [])
            pipes = (None, None) if asked == "pty" else os.pipe()
            pending = asyncio.ensure_future(client.spawn(request, None, *pipes))  # type: ignore[arg-type]
        request_message, sent_to_agent = await peer.request()
        for fd in sent_to_agent:
            os.close(fd)
        sent = [_dev_null() for _ in range(fd_count)]
        peer.say({**answer, "id": request_message["id"]}, sent)
        for fd in sent:
            os.close(fd)
        await eventually(lambda: client.closed, what="the connection dropped")
        assert violations
        with pytest.raises(AgentError, match="gone"):
            await asyncio.wait_for(pending, CALL_TIMEOUT)
    assert open_fd_count() <= before


# --- the real agent, without a sandbox -------------------------------------------------


@contextlib.asynccontextmanager
async def _agent(runtime: Sequence[str] = ()) -> AsyncIterator[AgentClient]:
    """The real agent in the one-way mode, its socket on its stdin, under ``runtime``."""
    launch = AgentLaunch(
        argv=[*runtime, "/usr/bin/python3", "-I", "-S", "-c", agent_source(), "sandbox-agent"],
        limits=_LIMITS,
        env=_PATH,
        fds_from_agent=False,
        socket_on_stdin=True,
    )
    client = await AgentClient.start(launch, contain=lambda _: None)
    try:
        yield client
    finally:
        await client.close()


async def _run(client: AgentClient, argv: list[str]) -> tuple[int, bytes]:
    """Runs a command through the agent: its exit status and its stdout."""
    read, write = os.pipe()
    command = await client.spawn(SpawnRequest(argv, "/", _PATH, []), None, write, os.dup(write))
    returncode = (await asyncio.wait_for(command.exited, CALL_TIMEOUT)).returncode
    output = await asyncio.to_thread(_read_all, read)
    return returncode, output


def _read_all(fd: int) -> bytes:
    chunks = []
    try:
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks)


def _send_then_half_close(connection: socket.socket, data: bytes) -> None:
    connection.sendall(data)
    connection.shutdown(socket.SHUT_WR)


def _read_until(fd: int, wanted: bytes) -> bytes:
    """What ``fd`` (blocking) says up to and with ``wanted``; fails at its end before it."""
    said = b""
    while wanted not in said:
        chunk = os.read(fd, 1 << 16)
        assert chunk, said
        said += chunk
    return said


async def _terminal_until_end(command: AgentCommand) -> bytes:
    """Everything the command's terminal says until its relay ends."""
    assert command.terminal is not None
    os.set_blocking(command.terminal, True)
    return await asyncio.to_thread(_read_all, command.terminal)


def _relays(client: AgentClient) -> list[psutil.Process]:
    """The agent's children: with no command running, its relays."""
    return psutil.Process(client.pid).children()


async def test_relays_never_hold_up_the_agent() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        async with _agent() as client:
            # A server that never reads, fed until every buffer on the way is full...
            connection = await client.connect(server.getsockname()[1])
            accepted, _ = server.accept()
            connection.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                while True:
                    connection.send(b"x" * (1 << 16))
            # ...and a terminal nobody reads, fed without end by its command.
            flooding = await client.spawn(
                SpawnRequest(["yes"], "/", _PATH, [], pty=(24, 80)),
                None,
                None,
                None,  # type: ignore[arg-type]
            )
            assert await _run(client, ["echo", "still serving"]) == (0, b"still serving\n")
            flooding.signal(9)
            await asyncio.wait_for(flooding.exited, CALL_TIMEOUT)
            assert flooding.terminal is not None
            os.close(flooding.terminal)
            connection.close()
            accepted.close()
            await eventually(lambda: not _relays(client), what="the relays ended")


async def test_a_connection_relay_ends_when_either_side_closes() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        async with _agent() as client:
            port = server.getsockname()[1]
            # The orchestrator closes: the server reads the end of the connection.
            connection = await client.connect(port)
            accepted, _ = server.accept()
            connection.sendall(b"ping")
            assert accepted.recv(4) == b"ping"
            connection.close()
            assert await asyncio.to_thread(accepted.recv, 100) == b""
            accepted.close()
            await eventually(lambda: not _relays(client), what="the relay ended")
            # The server closes: the orchestrator reads the end, then closes its end too.
            connection = await client.connect(port)
            accepted, _ = server.accept()
            accepted.sendall(b"bye")
            accepted.close()
            assert await asyncio.to_thread(_read_all, connection.detach()) == b"bye"
            await eventually(lambda: not _relays(client), what="the relay ended")


async def test_a_terminal_relay_passes_everything_on_and_ends_with_its_command() -> None:
    async with _agent() as client:
        command = await client.spawn(
            SpawnRequest(["sh", "-c", "stty size; exit 3"], "/", _PATH, [], pty=(24, 80)),
            None,
            None,
            None,  # type: ignore[arg-type]
        )
        assert command.pid is None
        assert await _terminal_until_end(command) == b"24 80\r\n"
        assert (await asyncio.wait_for(command.exited, CALL_TIMEOUT)).returncode == 3
        await eventually(lambda: not _relays(client), what="the relay ended")


async def test_relays_die_with_the_agent() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        async with _agent() as client:
            connection = await client.connect(server.getsockname()[1])
            accepted, _ = server.accept()
            relays = _relays(client)
            assert len(relays) == 1
        # The agent is gone (the connection to it closed); its relay went with it.
        await eventually(lambda: not relays[0].is_running(), what="the relay died")
        connection.close()
        accepted.close()


# --- the real agent under gVisor -------------------------------------------------------

_ECHO_SERVER = """
import socket
server = socket.create_server(("127.0.0.1", 0))
print(server.getsockname()[1], flush=True)
connection, _ = server.accept()
while data := connection.recv(65536):
    connection.sendall(data.upper())
connection.close()
"""


@pytest.mark.skipif(shutil.which("runsc") is None, reason="needs gVisor (runsc)")
async def test_the_one_way_agent_runs_commands_terminals_and_connections_under_gvisor(
    tmp_path: Path,
) -> None:
    runsc = ["runsc", "--rootless", "--network=none", "--ignore-cgroups", f"--root={tmp_path}"]
    async with _agent([*runsc, "do"]) as client:
        assert await _run(client, ["sh", "-c", "echo in gvisor"]) == (0, b"in gvisor\n")

        shell = await client.spawn(
            SpawnRequest(["sh"], "/", {**_PATH, "TERM": "xterm"}, [], pty=(24, 80)),
            None,
            None,
            None,  # type: ignore[arg-type]
        )
        assert shell.terminal is not None
        os.write(shell.terminal, b"stty size\n")
        assert b"24 80" in await asyncio.to_thread(_read_until, shell.terminal, b"24 80")
        await shell.resize(40, 132)
        os.write(shell.terminal, b"stty size; tty; exit 3\n")
        said = await _terminal_until_end(shell)
        assert (await asyncio.wait_for(shell.exited, CALL_TIMEOUT)).returncode == 3
        assert b"40 132" in said
        assert b"/dev/pts/" in said

        # A server inside the sandbox's own network namespace, reached through the agent.
        read, write = os.pipe()
        server = await client.spawn(
            SpawnRequest(["python3", "-c", _ECHO_SERVER], "/", _PATH, []),
            None,
            write,
            os.dup(write),
        )
        port = int(await asyncio.to_thread(lambda: os.read(read, 100)))
        connection = await client.connect(port)
        # More than every buffer on the way holds, both ways at once, then a half-close:
        # the echo's last bytes, sent as its server closes, must all come back.
        payload = os.urandom(8 << 20).lower()
        sending = asyncio.create_task(asyncio.to_thread(_send_then_half_close, connection, payload))
        assert await asyncio.to_thread(_read_all, os.dup(connection.fileno())) == payload.upper()
        await sending
        connection.close()
        assert (await asyncio.wait_for(server.exited, CALL_TIMEOUT)).returncode == 0
        os.close(read)
