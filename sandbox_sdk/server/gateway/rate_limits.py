"""Per-tenant request rate limits: one token bucket per tenant."""

from __future__ import annotations

import time
from dataclasses import dataclass

import grpc

from sandbox_sdk.errors import ErrorReason
from sandbox_sdk.server.gateway.config import LimitsConfig
from sandbox_sdk.server.status import ServiceError


@dataclass(slots=True)
class TokenBucket:
    """``burst`` tokens, refilled at ``rate`` per second; a call takes one."""

    rate: float
    burst: float
    tokens: float
    updated: float

    def take(self, now: float) -> float:
        """Takes a token; returns 0 on success, else the seconds until one is available."""
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate


class RateLimiter:
    """Admits or refuses each call of a tenant by its token bucket."""

    def __init__(self, limits: LimitsConfig) -> None:
        self._limits = limits
        self._buckets: dict[str, TokenBucket] = {}

    def admit(self, tenant: str) -> None:
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
            raise ServiceError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                ErrorReason.RATE_LIMITED,
                f"tenant {tenant} is over its rate limit of {bucket.rate:g} requests per second;"
                f" retry after {wait:.3f}s",
                quota_violations=[
                    (
                        f"tenant:{tenant}/requests",
                        f"at most {bucket.rate:g} requests per second (burst {bucket.burst:g})",
                    )
                ],
                retry_after=wait,
                metadata={"tenant": tenant},
            )
