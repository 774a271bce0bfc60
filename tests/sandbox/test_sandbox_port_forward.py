"""ForwardPort against real environments: a TCP server started inside one, reached through
the orchestrator's gRPC service (with its ErrorInterceptor) without any host networking."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from agent_modes import agent_mode
from peer_agent import open_fd_count, peer_client
from prometheus_client import CollectorRegistry
from sandbox_support import (
    TENANT,
    create,
    eventually,
    fast_settings,
    needs_isolation,
    run,
    running_manager,
)

from sandbox_sdk.api.v1 import orchestrator_service_pb2_grpc, requests_pb2
from sandbox_sdk.errors import SandboxError, from_rpc_error
from sandbox_sdk.server.orchestrator.sandbox import EnvironmentHandlers, SandboxManager
from sandbox_sdk.server.orchestrator.sandbox.agent_client import AgentError
from sandbox_sdk.server.orchestrator.sandbox.environment_record import (
    FileWrite,
    NetworkPolicy,
)
from sandbox_sdk.server.orchestrator.sandbox.settings import SandboxSettings
from sandbox_sdk.server.orchestrator.servicer import add_orchestrator_service, handler_table
from sandbox_sdk.server.status import ErrorInterceptor
from sandbox_sdk.server.tenancy import TENANT_KEY

pytestmark = [*needs_isolation, pytest.mark.timeout(120)]
__all__ = ["agent_mode"]  # a fixture: the forwards run with either agent mode

SERVER_SOURCE = (Path(__file__).parent / "port_forward_server.py").read_bytes()
# Starts the server in a session of its own (so it outlives this command) and
# returns once it listens.
LAUNCHER = (
    "import subprocess, sys\n"
    "server = subprocess.Popen([sys.executable, 'port_forward_server.py', *sys.argv[1:]],"
    " stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,"
    " start_new_session=True)\n"
    "sys.exit(0 if server.stdout.readline() == b'ready\\n' else 1)\n"
)
CALL_TIMEOUT = 60.0
Request = requests_pb2.ForwardPortRequest


def _tenant(name: str = TENANT) -> tuple[tuple[str, str]]:
    return ((TENANT_KEY, name),)


def _header(environment_id: str, port: int) -> Request:
    return Request(header=requests_pb2.ForwardPortHeader(environment_id=environment_id, port=port))


def _host_free_port() -> int:
    """A port nothing on the host listens on; the environment's server takes the same number."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class Served:
    """A started manager behind a real gRPC server, and a stub to it."""

    def __init__(self, manager: SandboxManager, stub: Any, registry: CollectorRegistry) -> None:
        self.manager = manager
        self.stub = stub
        self.registry = registry

    async def environment_with(self, mode: str, port: int, *, tenant: str = TENANT) -> str:
        """A new environment whose server (``mode``, see port_forward_server.py) listens."""
        environment = await create(
            self.manager,
            tenant=tenant,
            files=[FileWrite("port_forward_server.py", SERVER_SOURCE, 0o644)],
        )
        started = await run(
            self.manager,
            environment.id,
            ["python3", "-c", LAUNCHER, mode, str(port)],
            tenant=tenant,
        )
        assert started.result.exit_code == 0, started.err
        return environment.id

    def forward(
        self, requests: AsyncIterator[Request] | None = None, *, tenant: str = TENANT
    ) -> Any:
        """A ForwardPort call (write its messages, or give them as ``requests``)."""
        if requests is None:
            return self.stub.ForwardPort(metadata=_tenant(tenant), timeout=CALL_TIMEOUT)
        return self.stub.ForwardPort(requests, metadata=_tenant(tenant), timeout=CALL_TIMEOUT)

    def forwarded_bytes(self, direction: str) -> float:
        value = self.registry.get_sample_value(
            "sandbox_forwarded_bytes_total", {"direction": direction}
        )
        return value or 0.0


@contextlib.asynccontextmanager
async def _serving(tmp_path: Path, settings: SandboxSettings) -> AsyncIterator[Served]:
    registry = CollectorRegistry()
    async with running_manager(tmp_path, settings=settings, registry=registry) as manager:
        server = grpc.aio.server(interceptors=[ErrorInterceptor()])
        add_orchestrator_service(server, handler_table(EnvironmentHandlers(manager), None, None))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = orchestrator_service_pb2_grpc.OrchestratorServiceStub(channel)
                yield Served(manager, stub, registry)
        finally:
            await server.stop(None)


@pytest.fixture
async def served(tmp_path: Path, agent_mode: str) -> AsyncIterator[Served]:
    del agent_mode  # the agents start in it
    async with _serving(tmp_path, fast_settings()) as serving:
        yield serving


async def _read_exactly(call: Any, count: int) -> bytes:
    received = bytearray()
    while len(received) < count:
        response = await call.read()
        assert response is not grpc.aio.EOF, f"the stream ended after {len(received)} bytes"
        received += response.data
    return bytes(received)


async def _read_to_end(call: Any) -> bytes:
    # read(), not async for: grpc.aio refuses to mix the two styles on one call.
    received = bytearray()
    while (response := await call.read()) is not grpc.aio.EOF:
        received += response.data
    return bytes(received)


async def _error(call: Any) -> SandboxError:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await _read_to_end(call)
    return from_rpc_error(raised.value)


def _chunks(data: bytes, size: int) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def test_bytes_go_both_ways_and_the_client_half_closes(served: Served) -> None:
    port = _host_free_port()
    environment_id = await served.environment_with("echo", port)
    call = served.forward()
    await call.write(_header(environment_id, port))
    await call.write(Request(data=b"hello"))
    assert await _read_exactly(call, 5) == b"hello"
    await call.write(Request(data=b" world"))
    assert await _read_exactly(call, 6) == b" world"
    await call.done_writing()  # the echo server reads end of file and closes
    assert await _read_to_end(call) == b""
    assert await call.code() == grpc.StatusCode.OK
    await eventually(lambda: served.manager.forwarding.open_forwards(environment_id) == 0)


async def test_a_large_transfer_arrives_whole_and_is_counted(served: Served) -> None:
    port = _host_free_port()
    environment_id = await served.environment_with("digest", port)
    payload = os.urandom(8 << 20)
    sent_before = served.forwarded_bytes("in")

    async def requests() -> AsyncIterator[Request]:
        yield _header(environment_id, port)
        for chunk in _chunks(payload, 256 << 10):
            yield Request(data=chunk)

    answer = await _read_to_end(served.forward(requests()))
    assert answer.decode() == f"{len(payload)} {hashlib.sha256(payload).hexdigest()}"
    assert served.forwarded_bytes("in") - sent_before == len(payload)
    assert served.forwarded_bytes("out") >= len(answer)


async def test_an_echo_larger_than_every_buffer_flows_both_ways_at_once(served: Served) -> None:
    # Neither side can hold 16 MiB: it only completes if both directions move together.
    port = _host_free_port()
    environment_id = await served.environment_with("echo", port)
    payload = os.urandom(16 << 20)

    async def requests() -> AsyncIterator[Request]:
        yield _header(environment_id, port)
        for chunk in _chunks(payload, 1 << 20):
            yield Request(data=chunk)

    echoed = await _read_to_end(served.forward(requests()))
    assert hashlib.sha256(echoed).digest() == hashlib.sha256(payload).digest()


async def test_a_port_nothing_listens_on_is_failed_precondition(served: Served) -> None:
    environment = await create(served.manager)
    call = served.forward()
    await call.write(_header(environment.id, 9))
    error = await _error(call)
    assert error.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "nothing listens on port 9" in error.message
    assert served.manager.forwarding.open_forwards(environment.id) == 0


async def test_another_tenants_environment_is_not_found(served: Served) -> None:
    port = _host_free_port()
    environment_id = await served.environment_with("echo", port)
    call = served.forward(tenant="tenant-b")
    await call.write(_header(environment_id, port))
    error = await _error(call)
    assert (error.code, error.reason) == (grpc.StatusCode.NOT_FOUND, "ENVIRONMENT_NOT_FOUND")


@pytest.mark.parametrize("port", [0, 70000, -1, 65536, -(2**31)])
async def test_a_port_outside_1_to_65535_is_invalid(served: Served, port: int) -> None:
    environment = await create(served.manager)
    call = served.forward()
    await call.write(_header(environment.id, port))
    error = await _error(call)
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in error.field_violations] == ["header.port"]


async def test_hostile_streams_are_invalid_argument(served: Served) -> None:
    port = _host_free_port()
    environment_id = await served.environment_with("echo", port)

    async def no_header() -> AsyncIterator[Request]:
        yield Request(data=b"GET / HTTP/1.0\r\n\r\n")

    async def nothing() -> AsyncIterator[Request]:
        return
        yield

    async def two_headers() -> AsyncIterator[Request]:
        yield _header(environment_id, port)
        yield _header(environment_id, port + 1)

    async def oversized() -> AsyncIterator[Request]:
        yield _header(environment_id, port)
        yield Request(data=b"x" * ((1 << 20) + 1))

    async def malformed_id() -> AsyncIterator[Request]:
        yield _header("../../etc/passwd", port)

    for requests, field in [
        (no_header(), "header"),
        (nothing(), "header"),
        (two_headers(), "header"),
        (oversized(), "data"),
        (malformed_id(), "environment_id"),
    ]:
        error = await _error(served.forward(requests))
        assert error.code == grpc.StatusCode.INVALID_ARGUMENT, error.message
        assert [v.field for v in error.field_violations] == [field]
    await eventually(lambda: served.manager.forwarding.open_forwards(environment_id) == 0)


async def test_forwarding_opens_no_network(served: Served) -> None:
    port = _host_free_port()
    environment_id = await served.environment_with("echo", port)
    call = served.forward()
    await call.write(_header(environment_id, port))
    await call.write(Request(data=b"ping"))
    assert await _read_exactly(call, 4) == b"ping"

    # The server is reachable only through the agent: not on the host's loopback...
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0
    # ...and the environment still has its own namespace with only a loopback.
    environment = served.manager.get_environment(TENANT, environment_id)
    assert environment.spec.network is NetworkPolicy.NONE
    interfaces = await run(served.manager, environment_id, ["cat", "/proc/net/dev"])
    names = {line.split(":")[0].strip() for line in interfaces.out.splitlines()[2:]}
    assert names == {"lo"}
    await call.done_writing()
    assert await _read_to_end(call) == b""


@pytest.mark.usefixtures("agent_mode")
async def test_the_forwards_of_an_environment_are_limited(tmp_path: Path) -> None:
    async with _serving(tmp_path, fast_settings(max_port_forwards_per_environment=2)) as served:
        port = _host_free_port()
        environment_id = await served.environment_with("echo", port)
        held = []
        for _ in range(2):
            call = served.forward()
            await call.write(_header(environment_id, port))
            await call.write(Request(data=b"hi"))
            assert await _read_exactly(call, 2) == b"hi"
            held.append(call)
        third = served.forward()
        await third.write(_header(environment_id, port))
        error = await _error(third)
        assert error.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "close one" in error.message
        held.pop().cancel()
        await eventually(lambda: served.manager.forwarding.open_forwards(environment_id) == 1)
        again = served.forward()
        await again.write(_header(environment_id, port))
        await again.write(Request(data=b"back"))
        assert await _read_exactly(again, 4) == b"back"
        for call in [*held, again]:
            call.cancel()


async def test_a_flooding_server_is_stopped_when_the_client_goes(served: Served) -> None:
    port = _host_free_port()
    environment_id = await served.environment_with("flood", port)
    call = served.forward()
    await call.write(_header(environment_id, port))
    await _read_exactly(call, 1 << 20)
    call.cancel()
    await eventually(lambda: served.manager.forwarding.open_forwards(environment_id) == 0)


async def test_the_forward_ends_with_its_environment(served: Served) -> None:
    port = _host_free_port()
    environment_id = await served.environment_with("echo", port)
    call = served.forward()
    await call.write(_header(environment_id, port))
    await call.write(Request(data=b"ping"))
    assert await _read_exactly(call, 4) == b"ping"
    await served.manager.delete_environment(TENANT, environment_id)
    error = await _error(call)
    assert (error.code, error.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "ENVIRONMENT_NOT_RUNNING",
    )
    assert served.manager.forwarding.open_forwards(environment_id) == 0


# --- a compromised agent answering connects --------------------------------------------


def _tcp_socket() -> int:
    return socket.socket(socket.AF_INET, socket.SOCK_STREAM).detach()


def _udp_socket() -> int:
    return socket.socket(socket.AF_INET, socket.SOCK_DGRAM).detach()


def _dev_null() -> int:
    return os.open("/dev/null", os.O_RDONLY)


async def test_a_connect_answered_with_a_tcp_socket_returns_it() -> None:
    async with peer_client() as (client, peer, violations):
        connecting = asyncio.ensure_future(client.connect(8080))
        request, _ = await peer.request()
        assert (request["op"], request["port"]) == ("connect", 8080)
        fd = _tcp_socket()
        peer.say({"op": "connected", "id": request["id"]}, [fd])
        os.close(fd)
        connection = await asyncio.wait_for(connecting, CALL_TIMEOUT)
        assert (connection.family, connection.type) == (socket.AF_INET, socket.SOCK_STREAM)
        connection.close()
        assert not violations


_HOSTILE_ANSWERS: list[tuple[str, bool, Callable[[], int] | None]] = [
    ("a file instead of a socket", True, _dev_null),
    ("a UDP socket", True, _udp_socket),
    ("no fd at all", True, None),
    ("a socket for a connect never asked", False, _tcp_socket),
]


@pytest.mark.parametrize(
    ("in_flight", "make_fd"),
    [(in_flight, make_fd) for _, in_flight, make_fd in _HOSTILE_ANSWERS],
    ids=[name for name, _, _ in _HOSTILE_ANSWERS],
)
async def test_a_hostile_connected_answer_cuts_the_agent_off_and_closes_the_fd(
    in_flight: bool, make_fd: Callable[[], int] | None
) -> None:
    before = open_fd_count()
    async with peer_client() as (client, peer, violations):
        connecting = asyncio.ensure_future(client.connect(8080))
        request, _ = await peer.request()
        fds = [make_fd()] if make_fd is not None else []
        peer.say({"op": "connected", "id": request["id"] + (0 if in_flight else 1000)}, fds)
        for fd in fds:
            os.close(fd)
        with pytest.raises(AgentError, match="gone"):
            await asyncio.wait_for(connecting, CALL_TIMEOUT)
        assert violations
        assert client.closed
    assert open_fd_count() <= before


async def test_a_connect_failed_with_a_forged_errno_cuts_the_agent_off() -> None:
    async with peer_client() as (client, peer, violations):
        connecting = asyncio.ensure_future(client.connect(8080))
        request, _ = await peer.request()
        peer.say({"op": "connect_failed", "id": request["id"], "errno": "111", "error": "x"})
        with pytest.raises(AgentError, match="gone"):
            await asyncio.wait_for(connecting, CALL_TIMEOUT)
        assert violations
