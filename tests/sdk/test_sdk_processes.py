"""Background processes and port forwarding through the sync and asyncio clients, against
the fake gateway (local subprocesses and local sockets stand in for the environment)."""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import socket
import threading
import urllib.request
from collections.abc import Iterator

import pytest
from sdk_fake_gateway import API_KEY, FakeServer
from sdk_fake_processes import FakeProcessGateway

from sandbox_sdk import (
    AsyncSandboxClient,
    ExitReason,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    ProcessState,
    RetryPolicy,
    SandboxClient,
    SandboxTimeoutError,
)
from sandbox_sdk.client.output_lines import LineSplitter


@pytest.fixture
def gateway() -> Iterator[FakeProcessGateway]:
    fake = FakeProcessGateway()
    yield fake
    fake.stop_all()


class _Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = f"hello from {self.path}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def web_port() -> Iterator[int]:
    """An HTTP server on 127.0.0.1, standing in for one inside the environment."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hello)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def _echo(connection: socket.socket) -> None:
    with connection, contextlib.suppress(OSError):
        while data := connection.recv(4096):
            connection.sendall(data)


@pytest.fixture
def echo_port() -> Iterator[int]:
    """A TCP echo server on 127.0.0.1 that keeps each connection open until its peer closes."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []

    def serve() -> None:
        while True:
            try:
                connection, _ = listener.accept()
            except OSError:
                return
            accepted.append(connection)
            threading.Thread(target=_echo, args=(connection,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    yield listener.getsockname()[1]
    for sock in [listener, *accepted]:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
    listener.close()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


# -- sync ----------------------------------------------------------------------------------


def test_start_streams_output_and_wait_returns_the_exit(
    client: SandboxClient, gateway: FakeProcessGateway
) -> None:
    sandbox = client.create_environment()
    process = sandbox.start("echo out; echo err >&2; exit 3", env={"A": "1"}, cwd="sub")
    request = gateway.calls("StartProcess")[0].request
    assert list(request.argv) == ["/bin/sh", "-c", "echo out; echo err >&2; exit 3"]
    assert dict(request.env) == {"A": "1"}
    assert request.cwd == "sub"
    assert request.request_id
    assert process.id.startswith("p-")
    assert process.pid > 0
    assert process.info.start_time is not None

    chunks = list(process.output())
    assert b"".join(c.data for c in chunks if c.stream == "stdout") == b"out\n"
    assert b"".join(c.data for c in chunks if c.stream == "stderr") == b"err\n"
    assert [c.sequence for c in chunks] == sorted(c.sequence for c in chunks)
    assert process.state is ProcessState.EXITED  # the stream's last event updated it

    result = process.wait()
    assert (result.exit_code, result.reason, result.ok) == (3, ExitReason.EXITED, False)
    assert result.usage.cpu_seconds > 0
    assert result.usage.memory_peak_bytes > 0


def test_stdin_is_a_stream_of_writes(client: SandboxClient) -> None:
    process = client.create_environment().start(["cat"], stdin=True)
    process.write("first\n")
    process.write(b"second\n")
    process.close_stdin()
    assert list(process.stdout_lines()) == ["first", "second"]
    assert process.wait().ok
    with pytest.raises(FailedPreconditionError, match="stdin"):
        process.write("late")


def test_output_resumes_after_a_broken_stream_without_loss_or_repeats(
    client: SandboxClient, gateway: FakeProcessGateway
) -> None:
    process = client.create_environment().start(
        ["sh", "-c", "for i in 1 2 3 4 5; do echo $i; done"]
    )
    process.wait()
    gateway.break_output_after = 2
    assert list(process.stdout_lines()) == ["1", "2", "3", "4", "5"]
    calls = gateway.calls("StreamProcessOutput")
    assert len(calls) == 2
    assert calls[1].request.after_sequence > 0


def test_a_second_client_attaches_and_reads_from_any_sequence(
    client: SandboxClient, server: FakeServer, policy: RetryPolicy
) -> None:
    sandbox = client.create_environment()
    started = sandbox.start(["sh", "-c", "echo one; echo two"])
    started.wait()
    with SandboxClient(server.target, api_key=API_KEY, retry=policy) as other:
        attached = other.get_environment(sandbox.id).process(started.id)
        assert attached.pid == started.pid
        chunks = list(attached.output())
        later = list(attached.output(after_sequence=chunks[0].sequence))
    assert b"".join(c.data for c in chunks) == b"one\ntwo\n"
    assert later == chunks[1:]


def test_kill_list_and_signal_names(client: SandboxClient) -> None:
    sandbox = client.create_environment()
    sleepers = [sandbox.start(["sleep", "60"]) for _ in range(3)]
    done = sandbox.start(["true"])
    done.wait()
    assert {p.id for p in sandbox.processes()} == {p.id for p in sleepers}  # pages of 2
    assert {p.id for p in sandbox.processes(include_finished=True)} == {
        *(p.id for p in sleepers),
        done.id,
    }
    sleepers[0].kill()
    sleepers[1].signal("TERM")
    sleepers[2].signal(15)
    ended = [p.wait() for p in sleepers]
    assert [(e.state, e.signal, e.reason) for e in ended] == [
        (ProcessState.KILLED, 9, ExitReason.SIGNALED),
        (ProcessState.KILLED, 15, ExitReason.SIGNALED),
        (ProcessState.KILLED, 15, ExitReason.SIGNALED),
    ]
    assert sandbox.processes() == []


def test_wait_with_a_timeout_leaves_the_process_running(server: FakeServer) -> None:
    with SandboxClient(server.target, api_key=API_KEY, retry=RetryPolicy(max_attempts=1)) as c:
        process = c.create_environment().start(["sleep", "60"])
        with pytest.raises(SandboxTimeoutError, match="kill"):
            process.wait(timeout=0.3)
        assert process.refresh().running
        process.kill()


def test_pty_size_and_resize(client: SandboxClient) -> None:
    sandbox = client.create_environment()
    process = sandbox.start(["sh", "-c", "stty size; read line; stty size"], pty=(24, 80))
    lines = process.stdout_lines()
    assert next(lines) == "24 80"
    process.resize(30, 100)
    process.write("\n")
    assert "30 100" in list(lines)
    assert process.wait().ok


def test_bad_arguments_fail_before_any_call(
    client: SandboxClient, gateway: FakeProcessGateway
) -> None:
    sandbox = client.create_environment()
    with pytest.raises(InvalidArgumentError, match=r"pty\.rows"):
        sandbox.start(["sh"], pty=(0, 80))
    with pytest.raises(InvalidArgumentError, match="remote_port"):
        sandbox.forward(70000)
    with pytest.raises(InvalidArgumentError, match="no signal named"):
        sandbox.start(["sleep", "60"]).signal("NOPE")
    assert len(gateway.calls("StartProcess")) == 1


def test_unknown_process_and_failed_start(client: SandboxClient) -> None:
    sandbox = client.create_environment()
    with pytest.raises(NotFoundError, match="env ps"):
        sandbox.process("p-000000000099")
    failed = sandbox.start(["/nonexistent/program"])
    assert failed.state is ProcessState.FAILED_TO_START
    assert failed.info.start_error


def test_forward_carries_each_connection_and_closing_stops_the_listener(
    client: SandboxClient, gateway: FakeProcessGateway, web_port: int
) -> None:
    sandbox = client.create_environment()
    with sandbox.forward(web_port) as local_port:
        for path in ("/a", "/b"):
            with urllib.request.urlopen(f"http://127.0.0.1:{local_port}{path}", timeout=10) as r:
                assert r.read() == f"hello from {path}".encode()
    assert gateway.forwarded == [web_port, web_port]
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", local_port)):
        pass


def test_forward_to_a_closed_port_closes_the_connection_and_says_why(
    client: SandboxClient,
) -> None:
    forward = client.create_environment().forward(_free_port())
    with forward as local_port, socket.create_connection(("127.0.0.1", local_port)) as conn:
        conn.settimeout(10)
        assert conn.recv(100) == b""
    assert isinstance(forward.last_error, FailedPreconditionError)


def test_closing_a_forward_closes_its_open_connections(
    client: SandboxClient, echo_port: int
) -> None:
    forward = client.create_environment().forward(echo_port)
    local_port = forward.start()
    with socket.create_connection(("127.0.0.1", local_port)) as conn:
        conn.settimeout(10)
        conn.sendall(b"ping")
        assert conn.recv(4) == b"ping"
        forward.close()
        assert conn.recv(10) == b""


# -- asyncio -------------------------------------------------------------------------------


async def test_async_process_lifecycle(aclient: AsyncSandboxClient) -> None:
    sandbox = await aclient.create_environment()
    process = await sandbox.start(["cat"], stdin=True)
    await process.write("hello\n")
    await process.close_stdin()
    assert [line async for line in process.stdout_lines()] == ["hello"]
    assert (await process.wait()).ok
    sleeper = await sandbox.start(["sleep", "60"])
    assert [p.id for p in await sandbox.processes()] == [sleeper.id]
    assert (await sandbox.process(sleeper.id)).pid == sleeper.pid
    await sleeper.kill()
    assert (await sleeper.wait()).signal == 9


async def test_async_output_resumes(
    aclient: AsyncSandboxClient, gateway: FakeProcessGateway
) -> None:
    process = await (await aclient.create_environment()).start(["sh", "-c", "echo a; echo b"])
    await process.wait()
    gateway.break_output_after = 1
    assert [chunk.data async for chunk in process.output()] == [b"a\n", b"b\n"]


async def test_async_forward_relays_on_the_running_loop(
    aclient: AsyncSandboxClient, web_port: int
) -> None:
    sandbox = await aclient.create_environment()
    async with sandbox.forward(web_port) as local_port:
        reader, writer = await asyncio.open_connection("127.0.0.1", local_port)
        writer.write(b"GET /async HTTP/1.0\r\nHost: x\r\n\r\n")
        await writer.drain()
        response = await asyncio.wait_for(reader.read(), 10)
        writer.close()
    assert response.startswith(b"HTTP/1.0 200")
    assert response.endswith(b"hello from /async")
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", local_port)


async def test_async_closing_a_forward_closes_its_open_connections(
    aclient: AsyncSandboxClient, echo_port: int
) -> None:
    forward = (await aclient.create_environment()).forward(echo_port)
    reader, writer = await asyncio.open_connection("127.0.0.1", await forward.start())
    writer.write(b"ping")
    assert await asyncio.wait_for(reader.readexactly(4), 10) == b"ping"
    await forward.aclose()
    assert await asyncio.wait_for(reader.read(), 10) == b""
    writer.close()


# -- pieces --------------------------------------------------------------------------------


def test_line_splitter_handles_split_characters_and_terminal_endings() -> None:
    splitter = LineSplitter()
    euro = "€".encode()
    assert splitter.feed(b"a\r\nb" + euro[:1]) == ["a"]
    assert splitter.feed(euro[1:] + b"\nrest") == ["b€"]
    assert splitter.flush() == ["rest"]
