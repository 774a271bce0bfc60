"""Fixtures of the integration tests: the real embedded server (gateway, orchestrator,
sandboxes) for the whole directory, started as the end-to-end tests start it
(``tests/e2e/e2e_support.py``), and a provider config that reaches it over TCP."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))

from e2e_support import BackgroundLoop, EmbeddedStack

from sandbox_sdk import SandboxError


@pytest.fixture(autouse=True)
def _no_client_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The SDK reads SANDBOX_* variables; the tests say what they mean explicitly."""
    for name in [name for name in os.environ if name.startswith("SANDBOX_")]:
        monkeypatch.delenv(name)


@pytest.fixture(scope="session")
def integration_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedStack]:
    """The embedded server; every environment left at the end fails the session."""
    background = BackgroundLoop()
    stack = EmbeddedStack.start(background, tmp_path_factory.mktemp("integrations") / "data")
    try:
        yield stack
        with stack.client() as admin:
            leftovers = [sandbox.id for sandbox in admin.list_environments()]
            with contextlib.suppress(SandboxError):
                for sandbox in admin.list_environments():
                    sandbox.delete()
        assert not leftovers, f"the tests left environments running: {leftovers}"
    finally:
        stack.stop()
        background.close()


@pytest.fixture(scope="session")
def api_key_file(integration_stack: EmbeddedStack) -> Path:
    """The server's admin key file: the provider config names the file, never the key."""
    return integration_stack.data_dir / "admin.key"
