"""Per-tenant request rate limits: one token bucket per tenant.

A refused call is told honestly when to come back. The next token refills in
``(1 - tokens) / rate`` seconds, but callers refused a moment earlier will be
back for the tokens before it: each bucket remembers when it told its refused
callers to return, and a newly refused caller is sent after the tokens those
callers are waiting for. Delays are spread (``retry_delays.spread``), so a burst
of refused callers returns spread out over the time the tokens need rather
than all at once.

These buckets live in one gateway's memory; with ``redis_url`` set, the
gateway uses ``shared_rate_limits.RedisRateLimiter`` instead, so that all
replicas draw from one bucket per tenant.
"""

from __future__ import annotations

import heapq
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc

from sandbox_sdk.errors import ErrorReason
from sandbox_sdk.server.gateway.config import LimitsConfig
from sandbox_sdk.server.retry_delays import spread
from sandbox_sdk.server.status import ServiceError

# How many promised returns a bucket remembers; beyond it, the delay stops growing
# (memory stays bounded however fast a tenant calls).
MAX_PROMISED_RETURNS = 4096


@dataclass(slots=True)
class TokenBucket:
    """``burst`` tokens, refilled at ``rate`` per second; a call takes one.

    ``promised`` holds (as a heap) the times refused callers were told to
    come back and that have not passed yet.
    """

    rate: float
    burst: float
    tokens: float
    updated: float
    promised: list[float] = field(default_factory=list)

    def take(self, now: float, draw: Callable[[], float] = random.random) -> float:
        """Takes a token; returns 0 on success, else the seconds to wait before retrying."""
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return self._retry_delay(now, draw)

    def waiting(self, now: float) -> int:
        """Refused callers told to come back after ``now``."""
        promised = self.promised
        while promised and promised[0] <= now:
            heapq.heappop(promised)
        return len(promised)

    def _retry_delay(self, now: float, draw: Callable[[], float]) -> float:
        # The next token, then one for each caller already waiting, then this one's.
        needed = 1.0 - self.tokens + self.waiting(now)
        delay = spread(needed / self.rate, draw)
        if len(self.promised) < MAX_PROMISED_RETURNS:
            heapq.heappush(self.promised, now + delay)
        return delay


class RateLimiter:
    """Admits or refuses each call of a tenant by its token bucket in this process."""

    def __init__(self, limits: LimitsConfig) -> None:
        self._limits = limits
        self._buckets: dict[str, TokenBucket] = {}

    async def admit(self, tenant: str) -> None:
        """Raises RESOURCE_EXHAUSTED RATE_LIMITED when the tenant has no token left."""
        bucket = self._buckets.get(tenant)
        now = time.monotonic()
        if bucket is None:
            limits = self._limits.for_tenant(tenant)
            if limits.requests_per_second is None:
                return
            bucket = TokenBucket(limits.requests_per_second, limits.burst, limits.burst, now)
            self._buckets[tenant] = bucket
        wait = bucket.take(now)
        if wait > 0:
            raise rate_limited(tenant, bucket.rate, bucket.burst, wait)


def rate_limited(tenant: str, rate: float, burst: float, wait: float) -> ServiceError:
    """RESOURCE_EXHAUSTED RATE_LIMITED telling the caller to retry after ``wait`` seconds."""
    return ServiceError(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        ErrorReason.RATE_LIMITED,
        f"tenant {tenant} is over its rate limit of {rate:g} requests per second;"
        f" retry after {wait:.3f}s (the SDK waits by itself), send fewer calls per second,"
        " or ask the operator for a higher requests_per_second",
        quota_violations=[
            (
                f"tenant:{tenant}/requests",
                f"at most {rate:g} requests per second (burst {burst:g})",
            )
        ],
        retry_after=wait,
        metadata={"tenant": tenant},
    )
