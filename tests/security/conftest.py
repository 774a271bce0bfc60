"""Fixtures for the hostile-tenant suite: attacks against the real gateway and orchestrator.

Helpers come from uniquely named modules of the other test directories
(``gateway_*`` from tests/gateway, ``e2e_support`` from tests/e2e), put on the
import path here so this directory runs on its own too.

- ``start_orchestrator``, ``start_gateway``, ``caller_for``, ``channels``, ``stack``:
  a real gateway in front of fake orchestrators (see tests/gateway).
- ``embedded``: one real embedded server (gateway + orchestrator + sandboxes) for
  the session, and ``operator_client``, a client with its operator key.
- ``start_embedded``: more embedded servers, each with its own data dir.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import worker_places

_TESTS = Path(__file__).resolve().parents[1]
for _helpers in ("gateway", "e2e"):
    if str(_TESTS / _helpers) not in sys.path:
        sys.path.insert(0, str(_TESTS / _helpers))

from e2e_support import BackgroundLoop, EmbeddedStack  # noqa: E402
from gateway_fixtures import (  # noqa: E402
    caller_for,
    channels,
    stack,
    start_gateway,
    start_orchestrator,
)

from sandbox_sdk import SandboxClient, SandboxError  # noqa: E402

__all__ = ["caller_for", "channels", "stack", "start_gateway", "start_orchestrator"]

StartEmbedded = Callable[..., EmbeddedStack]


@pytest.fixture(autouse=True)
def _no_client_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The SDK reads SANDBOX_* variables; each attack sets what it means explicitly."""
    for name in worker_places.client_settings(os.environ):
        monkeypatch.delenv(name)


@pytest.fixture(scope="session")
def security_loop() -> Iterator[BackgroundLoop]:
    """The event loop the in-process servers of this directory run on."""
    background = BackgroundLoop()
    yield background
    background.close()


@pytest.fixture(scope="session")
def embedded(
    security_loop: BackgroundLoop, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[EmbeddedStack]:
    """The embedded server with its default configuration, shared by the session."""
    started = EmbeddedStack.start(security_loop, tmp_path_factory.mktemp("sec") / "data")
    yield started
    with started.client() as operator, contextlib.suppress(SandboxError):
        for sandbox in list(operator.list_environments()):
            sandbox.delete()
    started.stop()


@pytest.fixture
def operator_client(embedded: EmbeddedStack) -> Iterator[SandboxClient]:
    """A client of the shared server with its bootstrap operator key (tenant ``default``)."""
    with embedded.client() as opened:
        yield opened


@pytest.fixture
def start_embedded(security_loop: BackgroundLoop, tmp_path: Path) -> Iterator[StartEmbedded]:
    """Starts more embedded servers, each in a data dir of its own; stops them after the test."""
    started: list[EmbeddedStack] = []

    def start(data_dir: Path | None = None) -> EmbeddedStack:
        directory = data_dir or tmp_path / f"server{len(started)}"
        server = EmbeddedStack.start(security_loop, directory)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
