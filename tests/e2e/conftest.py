"""Fixtures for the end-to-end tests: the real SDK, Gateway, Orchestrator and sandboxes.

- ``stack``: one embedded server (gateway + orchestrator, bubblewrap and cgroup
  sandboxes, the SmolLM2 model) for the whole session, in this process.
- ``client`` / ``async_client``: SDK clients of that server with its admin key.
- ``tenant_client``: a client holding a fresh tenant's read/write key.
- ``start_stack``: more in-process servers with their own ``--config``.
- ``server_process``: `sandbox-sdk serve` child processes, for restart tests.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from e2e_support import BackgroundLoop, EmbeddedStack, ServerProcess, unique_tenant

from sandbox_sdk import AsyncSandboxClient, SandboxClient, SandboxError

StartStack = Callable[[Mapping[str, Any]], EmbeddedStack]
StartServerProcess = Callable[..., ServerProcess]
TenantClient = Callable[..., SandboxClient]


@pytest.fixture(autouse=True)
def _no_client_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The SDK reads SANDBOX_* variables; the tests say what they mean explicitly."""
    for name in [name for name in os.environ if name.startswith("SANDBOX_")]:
        monkeypatch.delenv(name)


@pytest.fixture(scope="session")
def background_loop() -> Iterator[BackgroundLoop]:
    """The event loop the in-process servers run on."""
    background = BackgroundLoop()
    yield background
    background.close()


@pytest.fixture(scope="session")
def stack(
    background_loop: BackgroundLoop, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[EmbeddedStack]:
    """The embedded server with its default configuration, shared by the session."""
    started = EmbeddedStack.start(background_loop, tmp_path_factory.mktemp("stack") / "data")
    yield started
    with started.client() as admin:
        leftovers = [sandbox.id for sandbox in admin.list_environments()]
        _delete_environments(admin)
    started.stop()
    assert not leftovers, f"tests left environments of tenant default running: {leftovers}"


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
