"""Fixtures of the integration tests: the real embedded server (gateway, orchestrator,
sandboxes) for the whole directory, one per isolation runtime, started as the end-to-end
tests start it (``tests/e2e/e2e_support.py``), and a provider config that reaches it over
TCP. A test marked ``isolation`` runs under each runtime, on the server of its runtime."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import worker_places

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))

from e2e_support import BackgroundLoop, EmbeddedStack

from sandbox_sdk import SandboxError
from sandbox_sdk.models.environment import IsolationRuntime


@pytest.fixture(autouse=True)
def _no_client_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The SDK reads SANDBOX_* variables; the tests say what they mean explicitly."""
    for name in worker_places.client_settings(os.environ):
        monkeypatch.delenv(name)


@pytest.fixture(scope="session")
def _integration_loop() -> Iterator[BackgroundLoop]:
    """The event loop the embedded servers run on."""
    background = BackgroundLoop()
    yield background
    background.close()


@pytest.fixture(scope="session")
def _integration_stacks(
    _integration_loop: BackgroundLoop,
) -> Iterator[dict[IsolationRuntime, EmbeddedStack]]:
    """The embedded servers, one per isolation runtime, each started when a test under that
    runtime first needs it; every environment left at the end fails the session."""
    started: dict[IsolationRuntime, EmbeddedStack] = {}
    try:
        yield started
        leftovers: list[str] = []
        for stack in started.values():
            with stack.client() as admin:
                leftovers += [sandbox.id for sandbox in admin.list_environments()]
                with contextlib.suppress(SandboxError):
                    for sandbox in admin.list_environments():
                        sandbox.delete()
        assert not leftovers, f"the tests left environments running: {leftovers}"
    finally:
        for stack in started.values():
            stack.stop()


@pytest.fixture
def integration_stack(
    _integration_stacks: dict[IsolationRuntime, EmbeddedStack],
    _integration_loop: BackgroundLoop,
    sandbox_runtime: IsolationRuntime,
    tmp_path_factory: pytest.TempPathFactory,
) -> EmbeddedStack:
    """The embedded server whose default runtime is this test's (tests/sandbox_runtimes.py),
    shared by the session's tests under that runtime."""
    if sandbox_runtime not in _integration_stacks:
        data_dir = tmp_path_factory.mktemp(f"integrations-{sandbox_runtime.value.lower()}")
        _integration_stacks[sandbox_runtime] = EmbeddedStack.start(
            _integration_loop, data_dir / "data"
        )
    return _integration_stacks[sandbox_runtime]


@pytest.fixture
def api_key_file(integration_stack: EmbeddedStack) -> Path:
    """The server's admin key file: the provider config names the file, never the key."""
    return integration_stack.data_dir / "admin.key"
