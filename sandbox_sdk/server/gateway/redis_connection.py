"""The gateway's Redis client: shared rate limits and revocation notices go through it."""

from __future__ import annotations

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ConstantBackoff

# A call waits at most about this long on an unreachable Redis before it is refused;
# one quick retry rides over a dropped connection.
REDIS_TIMEOUT_SECONDS = 1.0


def open_redis(url: str) -> Redis:
    """An asyncio client for ``url`` (``redis://host:port/db``); connects on first use."""
    return Redis.from_url(
        url,
        socket_timeout=REDIS_TIMEOUT_SECONDS,
        socket_connect_timeout=REDIS_TIMEOUT_SECONDS,
        retry=Retry(ConstantBackoff(0.05), retries=1),
        health_check_interval=REDIS_TIMEOUT_SECONDS,
    )
