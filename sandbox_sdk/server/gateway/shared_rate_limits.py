"""Per-tenant rate limits shared by every gateway replica: the token buckets live in Redis.

Each call runs one Lua script (atomic in Redis: no two replicas interleave
inside it) that refills the tenant's bucket, takes a token, and, when none is
left, returns how long the caller must wait. The wait follows the in-process
bucket's rules (``rate_limits.py``): the next token, plus one token for each
refused caller already told to come back, stretched by ``retry_delays.SPREAD``.
The promised return times are a sorted set beside the bucket. The clock is
Redis's ``TIME``, so replicas whose clocks disagree still share one bucket.

When Redis cannot be reached the call is refused with UNAVAILABLE naming Redis
(fail closed): falling back to per-replica buckets would silently multiply each
tenant's limit by the number of replicas, and the server never admits what it
cannot account for. The SDK retries UNAVAILABLE by itself, so a short Redis
outage costs callers a retry, not an error.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import grpc
from redis.asyncio import Redis
from redis.exceptions import RedisError

from sandbox_sdk.errors import ErrorReason
from sandbox_sdk.server.gateway.config import LimitsConfig
from sandbox_sdk.server.gateway.rate_limits import MAX_PROMISED_RETURNS, RateLimiter, rate_limited
from sandbox_sdk.server.retry_delays import SPREAD
from sandbox_sdk.server.status import ServiceError

KEY_PREFIX = "sandbox:rate"
RATE_LIMITER_UNAVAILABLE = ErrorReason.RATE_LIMITER_UNAVAILABLE
# What a caller refused because Redis is unreachable is told to wait.
REDIS_RETRY_SECONDS = 1.0

# KEYS: bucket hash, promised-returns sorted set (one hash slot: the {tenant} tag).
# ARGV: rate, burst, draw in [0, 1), SPREAD, MAX_PROMISED_RETURNS.
# Returns the wait in seconds as a string ("0" = admitted); Lua numbers would be
# truncated to integers on the way back.
_REFILL_AND_TAKE_SCRIPT = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'updated')
local tokens = tonumber(state[1]) or burst
local updated = tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - updated) * rate)
-- An untouched bucket is full again after burst / rate seconds: let Redis drop it.
local idle = math.ceil(burst / rate) + 1
if tokens >= 1 then
  redis.call('HSET', KEYS[1], 'tokens', string.format('%.17g', tokens - 1),
             'updated', string.format('%.17g', now))
  redis.call('EXPIRE', KEYS[1], idle)
  return '0'
end
redis.call('HSET', KEYS[1], 'tokens', string.format('%.17g', tokens),
           'updated', string.format('%.17g', now))
redis.call('EXPIRE', KEYS[1], idle)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', string.format('%.17g', now))
local waiting = redis.call('ZCARD', KEYS[2])
local needed = 1 - tokens + waiting
local delay = needed / rate * (1 + tonumber(ARGV[4]) * tonumber(ARGV[3]))
if waiting < tonumber(ARGV[5]) then
  local sequence = redis.call('HINCRBY', KEYS[1], 'sequence', 1)
  redis.call('ZADD', KEYS[2], string.format('%.17g', now + delay), sequence)
  redis.call('EXPIRE', KEYS[2], math.ceil(delay) + idle)
end
return string.format('%.17g', delay)
"""


def bucket_keys(tenant: str) -> list[str]:
    """The Redis keys of a tenant's bucket and of its promised returns."""
    return [f"{KEY_PREFIX}:{{{tenant}}}", f"{KEY_PREFIX}:{{{tenant}}}:promised"]


class RedisRateLimiter(RateLimiter):
    """Admits or refuses each call of a tenant by its token bucket in Redis."""

    def __init__(
        self, limits: LimitsConfig, redis: Redis, draw: Callable[[], float] = random.random
    ) -> None:
        super().__init__(limits)
        self._draw = draw
        self._take_token: Any = redis.register_script(_REFILL_AND_TAKE_SCRIPT)

    async def admit(self, tenant: str) -> None:
        """Raises RESOURCE_EXHAUSTED RATE_LIMITED when the tenant has no token left.

        Raises UNAVAILABLE when Redis does not answer (see the module docstring).
        """
        limits = self._limits.for_tenant(tenant)
        rate = limits.requests_per_second
        if rate is None:
            return
        args = [rate, limits.burst, self._draw(), SPREAD, MAX_PROMISED_RETURNS]
        try:
            answer = await self._take_token(keys=bucket_keys(tenant), args=args)
        except (RedisError, OSError) as error:
            raise _redis_unavailable(tenant, error) from error
        wait = float(answer)
        if wait > 0:
            raise rate_limited(tenant, rate, limits.burst, wait)


def _redis_unavailable(tenant: str, error: Exception) -> ServiceError:
    return ServiceError(
        grpc.StatusCode.UNAVAILABLE,
        RATE_LIMITER_UNAVAILABLE,
        f"the gateway cannot reach Redis, which holds the rate limits shared by all gateways"
        f" ({type(error).__name__}: {error}); calls are refused until it answers again"
        " (the SDK retries by itself). Operator: check redis_url and the Redis server",
        retry_after=REDIS_RETRY_SECONDS,
        metadata={"tenant": tenant},
    )
