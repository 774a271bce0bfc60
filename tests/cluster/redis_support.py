"""A throwaway redis-server for the cluster tests, one per test, that a test may stop and restart.

The server itself is ``sandbox_sdk.server.cluster.redis`` (also what ``sandbox-cluster``
starts). Import the ``redis_server`` fixture into a test module by name.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from sandbox_sdk.server.cluster.redis import REDIS_SERVER, RedisServer

__all__ = ["REDIS_SERVER", "RedisServer", "redis_server"]


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A running redis-server for this test; stopped after it."""
    if not Path(REDIS_SERVER).exists():
        pytest.skip("redis-server is not installed (make install)")
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()
