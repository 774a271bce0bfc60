"""Fixtures of the chaos suite: one real embedded server (gateway, orchestrator, sandboxes)
for the whole directory, and tenants with their own keys.

The server is the one the end-to-end tests start (``tests/e2e/e2e_support.py``),
shared through that uniquely named module.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))

from chaos_support import ChaosServer


@pytest.fixture(scope="session")
def chaos_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChaosServer]:
    """The embedded server every chaos test talks to; stopped after the session."""
    server = ChaosServer.start(tmp_path_factory.mktemp("chaos") / "data")
    yield server
    with contextlib.suppress(Exception):
        server.delete_all_environments()
    server.stop()
