"""Fixtures for the end-to-end tests: the real SDK, Gateway, Orchestrator and sandboxes.

- ``stack``: one embedded server (gateway + orchestrator, sandboxes, the SmolLM2
  model) per isolation runtime for the whole session, in this process; a test
  gets the one whose default runtime is the test's (tests/sandbox_runtimes.py).
  Every server the fixtures start takes the test's runtime as its default.
- ``client`` / ``async_client``: SDK clients of that server with its admin key.
- ``tenant_client``: a client holding a fresh tenant's read/write key.
- ``start_stack``: more in-process servers with their own ``--config``.
- ``server_process``: `sandbox-sdk serve` child processes, for restart tests.
- ``gateway``: the raw gRPC stub and admin key, once for each way the gateway
  reaches its orchestrator (``in_process``: the shared stack; ``over_grpc``: a
  server of the test module's own per runtime, whose gateway calls it over a
  gRPC channel).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import grpc
import pytest
import sandbox_runtimes
import worker_places
from e2e_support import (
    BackgroundLoop,
    EmbeddedStack,
    Gateway,
    ServerProcess,
    bearer,
    unique_tenant,
    write_server_config,
)

from sandbox_sdk import AsyncSandboxClient, SandboxClient, SandboxError
from sandbox_sdk.api.v1 import gateway_service_pb2_grpc
from sandbox_sdk.models.environment import IsolationRuntime
from sandbox_sdk.server.embedded import run_embedded

StartStack = Callable[[Mapping[str, Any]], EmbeddedStack]
StartServerProcess = Callable[..., ServerProcess]
TenantClient = Callable[..., SandboxClient]


@pytest.fixture(autouse=True)
def _no_client_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The SDK reads SANDBOX_* variables; the tests say what they mean explicitly."""
    for name in worker_places.client_settings(os.environ):
        monkeypatch.delenv(name)


@pytest.fixture(scope="session")
def background_loop() -> Iterator[BackgroundLoop]:
    """The event loop the in-process servers run on."""
    background = BackgroundLoop()
    yield background
    background.close()


@pytest.fixture(scope="session")
def _stacks(
    background_loop: BackgroundLoop, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[IsolationRuntime, EmbeddedStack]]:
    """The shared embedded servers, one per isolation runtime, each started when a test
    under that runtime first needs it."""
    started: dict[IsolationRuntime, EmbeddedStack] = {}
    yield started
    leftovers: list[str] = []
    for shared in started.values():
        with shared.client() as admin:
            leftovers += [sandbox.id for sandbox in admin.list_environments()]
            _delete_environments(admin)
        shared.stop()
    assert not leftovers, f"tests left environments of tenant default running: {leftovers}"


@pytest.fixture
def stack(
    _stacks: dict[IsolationRuntime, EmbeddedStack],
    sandbox_runtime: IsolationRuntime,
    background_loop: BackgroundLoop,
    tmp_path_factory: pytest.TempPathFactory,
) -> EmbeddedStack:
    """The embedded server with its default configuration, shared by the session's tests
    under this test's runtime (its default runtime)."""
    if sandbox_runtime not in _stacks:
        data_dir = tmp_path_factory.mktemp(f"stack-{sandbox_runtime.value.lower()}") / "data"
        _stacks[sandbox_runtime] = EmbeddedStack.start(background_loop, data_dir)
    return _stacks[sandbox_runtime]


@pytest.fixture(scope="module")
def _over_grpc_servers(
    background_loop: BackgroundLoop, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[[], Gateway]]:
    """Starts, per test module and runtime, a server whose gateway reaches its orchestrator
    over a gRPC channel; stops them after the module."""
    gateways: dict[IsolationRuntime, Gateway] = {}
    with contextlib.ExitStack() as cleanup:

        def gateway_under_current_runtime() -> Gateway:
            runtime = sandbox_runtimes.current()
            if runtime not in gateways:
                gateways[runtime] = cleanup.enter_context(
                    _over_grpc_server(background_loop, tmp_path_factory)
                )
            return gateways[runtime]

        yield gateway_under_current_runtime


@contextlib.contextmanager
def _over_grpc_server(
    background_loop: BackgroundLoop, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    data_dir = tmp_path_factory.mktemp("over-grpc")
    config_path = write_server_config(data_dir.parent / f"{data_dir.name}.yaml", None)
    server = background_loop.run(
        run_embedded("127.0.0.1", 0, data_dir, config_path, in_process=False), 60
    )
    try:
        with grpc.insecure_channel(server.address) as channel:
            stub = gateway_service_pb2_grpc.GatewayServiceStub(channel)
            yield Gateway(stub, bearer(server.admin_key_path.read_text().strip()))
    finally:
        background_loop.run(server.stop(1.0), 30)


@pytest.fixture
def over_grpc(
    _over_grpc_servers: Callable[[], Gateway], sandbox_runtime: IsolationRuntime
) -> Gateway:
    """A server whose gateway reaches its orchestrator over a gRPC channel, under this
    test's runtime. Each test module that uses it gets servers of its own."""
    return _over_grpc_servers()


@pytest.fixture
def in_process(stack: EmbeddedStack) -> Iterator[Gateway]:
    """The shared embedded server, whose gateway calls its orchestrator in process."""
    with grpc.insecure_channel(stack.target) as channel:
        yield Gateway(gateway_service_pb2_grpc.GatewayServiceStub(channel), bearer(stack.admin_key))


@pytest.fixture(params=["in_process", "over_grpc"])
def gateway(request: pytest.FixtureRequest) -> Gateway:
    """Each way a gateway reaches its orchestrator."""
    chosen: Gateway = request.getfixturevalue(request.param)
    return chosen


@pytest.fixture
def client(stack: EmbeddedStack) -> Iterator[SandboxClient]:
    """A client of the shared stack with the admin key (tenant ``default``)."""
    with stack.client() as opened:
        yield opened


@pytest.fixture
async def async_client(stack: EmbeddedStack) -> AsyncIterator[AsyncSandboxClient]:
    """An asyncio client of the shared stack with the admin key."""
    async with stack.async_client() as opened:
        yield opened


@pytest.fixture
def tenant_client(stack: EmbeddedStack) -> Iterator[TenantClient]:
    """Makes clients of fresh tenants, so listings hold only what the test created."""
    opened: list[SandboxClient] = []

    def make(prefix: str = "e2e", **options: Any) -> SandboxClient:
        made = stack.client(api_key=stack.tenant_key(unique_tenant(prefix)), **options)
        opened.append(made)
        return made

    yield make
    for made in opened:
        _delete_environments(made)
        made.close()


def _delete_environments(client: SandboxClient) -> None:
    """Deletes whatever environments a test left behind."""
    with contextlib.suppress(SandboxError):
        for sandbox in list(client.list_environments()):
            sandbox.delete()


@pytest.fixture
def start_stack(background_loop: BackgroundLoop, tmp_path: Path) -> Iterator[StartStack]:
    """Starts in-process servers with a server config; stops them after the test."""
    started: list[EmbeddedStack] = []

    def start(config: Mapping[str, Any]) -> EmbeddedStack:
        stack = EmbeddedStack.start(background_loop, tmp_path / f"stack{len(started)}", config)
        started.append(stack)
        return stack

    yield start
    for stack in started:
        stack.stop()


@pytest.fixture
def server_process(tmp_path: Path) -> Iterator[StartServerProcess]:
    """Starts `sandbox-sdk serve` processes; stops (or kills) them after the test."""
    started: list[ServerProcess] = []

    def start(config: Mapping[str, Any] | None = None) -> ServerProcess:
        server = ServerProcess(tmp_path / f"server{len(started)}", config)
        started.append(server)
        server.start()
        return server

    yield start
    for server in started:
        server.stop()
        # Shown by pytest only when the test failed.
        print(f"--- output of sandbox-sdk serve on {server.target} ---\n{server.output_tail(300)}")
