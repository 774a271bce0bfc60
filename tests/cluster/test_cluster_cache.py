"""Gateway replicas sharing Redis: one rate limit per tenant, and revocations seen at once.

Each test starts its own redis-server (``redis_support.py``). Replicas are
separate limiters, key stores or whole gateways, each with its own Redis client.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
import pytest
from redis.asyncio import Redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "gateway"))

from gateway_testkit import FakeOrchestrator, FakeState
from redis_support import RedisServer, redis_server

from sandbox_sdk.api.v1 import gateway_service_pb2 as gw
from sandbox_sdk.api.v1 import gateway_service_pb2_grpc
from sandbox_sdk.errors import ErrorReason
from sandbox_sdk.server.database import Database
from sandbox_sdk.server.gateway.api_keys import ApiKeyStore, Scope
from sandbox_sdk.server.gateway.authentication import (
    AuthenticationFailedError,
    Authenticator,
)
from sandbox_sdk.server.gateway.config import (
    GatewayConfig,
    LimitsConfig,
    OrchestratorEndpoint,
    TenantLimitOverrides,
    TenantLimits,
)
from sandbox_sdk.server.gateway.rate_limits import RateLimiter
from sandbox_sdk.server.gateway.redis_connection import open_redis
from sandbox_sdk.server.gateway.revocations import RevocationFeed
from sandbox_sdk.server.gateway.server import GatewayServer
from sandbox_sdk.server.gateway.shared_rate_limits import (
    RATE_LIMITER_UNAVAILABLE,
    RedisRateLimiter,
)
from sandbox_sdk.server.status import ServiceError

__all__ = ["redis_server"]

# Slow enough that no token refills while a test runs: what is admitted is the burst.
RATE = 0.01
BURST = 5
# The bound: a key revoked on one gateway is refused by every gateway within it.
REVOCATION_BOUND_SECONDS = 1.0
REVOKED = ErrorReason.API_KEY_REVOKED


def _limits(burst: int = BURST) -> LimitsConfig:
    return LimitsConfig(default=TenantLimits(requests_per_second=RATE, burst=burst))


@pytest.fixture
async def redis_clients(redis_server: RedisServer) -> AsyncIterator[Callable[[], Redis]]:
    """Opens one Redis client per replica; closes them after the test."""
    opened: list[Redis] = []

    def open_client() -> Redis:
        client = open_redis(redis_server.url)
        opened.append(client)
        return client

    yield open_client
    for client in opened:
        await client.aclose()


async def _outcome(limiter: RateLimiter, tenant: str) -> ServiceError | None:
    try:
        await limiter.admit(tenant)
    except ServiceError as error:
        return error
    return None


# -- shared rate limits ---------------------------------------------------------------------


async def test_two_replicas_share_one_bucket_per_tenant(
    redis_clients: Callable[[], Redis],
) -> None:
    replicas = [RedisRateLimiter(_limits(), redis_clients(), draw=lambda: 0.0) for _ in range(2)]
    outcomes = [await _outcome(replicas[call % 2], "team-a") for call in range(BURST + 3)]

    assert outcomes[:BURST] == [None] * BURST
    refusals = [error for error in outcomes[BURST:] if error is not None]
    assert len(refusals) == 3
    assert all(error.code is grpc.StatusCode.RESOURCE_EXHAUSTED for error in refusals)
    assert all(error.reason == ErrorReason.RATE_LIMITED for error in refusals)
    # Each refused caller is sent after the ones refused before it, as in one process.
    delays = [error.retry_after or 0.0 for error in refusals]
    assert delays == pytest.approx([1 / RATE, 2 / RATE, 3 / RATE], rel=0.01)
    # Another tenant has its own bucket.
    assert await _outcome(replicas[0], "team-b") is None


async def test_a_shared_refusal_reads_like_a_local_one(redis_clients: Callable[[], Redis]) -> None:
    local = RateLimiter(_limits(burst=1))
    shared = RedisRateLimiter(_limits(burst=1), redis_clients())
    for limiter in (local, shared):
        assert await _outcome(limiter, "team-a") is None
    local_refusal = await _outcome(local, "team-a")
    shared_refusal = await _outcome(shared, "team-a")

    assert local_refusal is not None
    assert shared_refusal is not None
    assert shared_refusal.code == local_refusal.code
    assert shared_refusal.reason == local_refusal.reason
    assert shared_refusal.quota_violations == local_refusal.quota_violations
    assert shared_refusal.retry_after is not None
    assert shared_refusal.retry_after >= 1 / RATE


async def test_concurrent_calls_through_two_replicas_take_exactly_the_burst(
    redis_clients: Callable[[], Redis],
) -> None:
    burst = 40
    replicas = [RedisRateLimiter(_limits(burst), redis_clients()) for _ in range(2)]
    outcomes = await asyncio.gather(
        *(_outcome(replicas[call % 2], "team-a") for call in range(5 * burst))
    )

    assert sum(outcome is None for outcome in outcomes) == burst


async def test_limits_fail_closed_while_redis_is_down_and_recover_after(
    redis_server: RedisServer, redis_clients: Callable[[], Redis]
) -> None:
    limiter = RedisRateLimiter(_limits(), redis_clients())
    redis_server.stop()

    refusal = await _outcome(limiter, "team-a")

    assert refusal is not None
    assert refusal.code is grpc.StatusCode.UNAVAILABLE
    assert refusal.reason == RATE_LIMITER_UNAVAILABLE
    assert "Redis" in refusal.message
    assert refusal.retry_after is not None
    assert refusal.retry_after > 0
    redis_server.start()
    assert await _outcome(limiter, "team-a") is None


# -- revocation -----------------------------------------------------------------------------


class Replica:
    """One gateway's key handling: its own key cache, revocation feed and authenticator."""

    def __init__(self, db_path: Path, redis: Redis) -> None:
        self.keys = ApiKeyStore(Database(db_path), cache_seconds=60.0)
        self.feed = RevocationFeed(redis, self.keys)
        self.authenticator = Authenticator(self.keys)

    def refusal(self, key: str) -> str | None:
        """Why this replica refuses ``key`` now, or ``None`` if it accepts it."""
        try:
            self.authenticator.verify_key(key)
        except AuthenticationFailedError as error:
            return error.reason
        return None

    def revoke(self, key_id: str) -> None:
        self.keys.revoke(key_id)
        self.feed.announce(key_id)


@pytest.fixture
async def replicas(
    tmp_path: Path, redis_clients: Callable[[], Redis]
) -> AsyncIterator[tuple[Replica, Replica]]:
    pair = (
        Replica(tmp_path / "keys.db", redis_clients()),
        Replica(tmp_path / "keys.db", redis_clients()),
    )
    for replica in pair:
        await replica.feed.start()
    yield pair
    for replica in pair:
        await replica.feed.stop()


async def _seconds_until(condition: Callable[[], bool], limit: float) -> float:
    """Polls ``condition``; the seconds it took to hold, or ``inf`` past ``limit``."""
    started = time.monotonic()
    while time.monotonic() - started < limit:
        if condition():
            return time.monotonic() - started
        await asyncio.sleep(0.01)
    return float("inf")


async def test_a_key_revoked_on_one_replica_is_refused_by_the_other_within_a_second(
    replicas: tuple[Replica, Replica],
) -> None:
    first, second = replicas
    created = first.keys.create("team-a", [Scope.READ])
    key = created.secret
    assert second.refusal(key) is None  # now cached by the second replica for 60 s

    first.revoke(created.record.id)

    assert (
        await _seconds_until(lambda: second.refusal(key) == REVOKED, 5.0) < REVOCATION_BOUND_SECONDS
    )


async def test_revocations_missed_while_redis_was_away_still_take_effect(
    replicas: tuple[Replica, Replica], redis_server: RedisServer
) -> None:
    first, second = replicas
    created = first.keys.create("team-a", [Scope.READ])
    key = created.secret
    assert second.refusal(key) is None
    redis_server.stop()

    first.revoke(created.record.id)  # the notice is lost: nobody hears it
    redis_server.start()

    assert await _seconds_until(lambda: second.refusal(key) == REVOKED, 10.0) < 10.0


# -- two real gateways ----------------------------------------------------------------------


@pytest.fixture
async def orchestrator() -> AsyncIterator[FakeOrchestrator]:
    fake = await FakeOrchestrator.start(FakeState("o1"))
    yield fake
    await fake.stop(0)


@pytest.fixture
async def two_gateways(
    tmp_path: Path, redis_server: RedisServer, orchestrator: FakeOrchestrator
) -> AsyncIterator[list[tuple[GatewayServer, gateway_service_pb2_grpc.GatewayServiceStub]]]:
    """Two gateways sharing one key database and one Redis, each with a client stub."""
    config = GatewayConfig(
        listen="127.0.0.1:0",
        orchestrators=[OrchestratorEndpoint(id="o1", address=orchestrator.address)],
        db_path=tmp_path / "gateway.db",
        redis_url=redis_server.url,
        key_cache_seconds=60.0,
        # Only tenant "limited" is rate-limited, so the revocation test can poll freely.
        limits=LimitsConfig(
            default=TenantLimits(requests_per_second=None),
            tenants={"limited": TenantLimitOverrides(requests_per_second=RATE, burst=BURST)},
        ),
    )
    gateways = [await GatewayServer.start(config) for _ in range(2)]
    channels = [grpc.aio.insecure_channel(f"127.0.0.1:{g.port}") for g in gateways]
    try:
        yield [
            (gateway, gateway_service_pb2_grpc.GatewayServiceStub(channel))
            for gateway, channel in zip(gateways, channels, strict=True)
        ]
    finally:
        for channel in channels:
            await channel.close()
        for gateway in gateways:
            await gateway.stop(0)


def _bearer(key: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key}"),)


async def _status(stub: gateway_service_pb2_grpc.GatewayServiceStub, key: str) -> grpc.StatusCode:
    """The status of a ListApiKeys call with ``key``."""
    try:
        await stub.ListApiKeys(gw.ListApiKeysRequest(), metadata=_bearer(key))
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


async def test_two_gateways_refuse_a_key_revoked_on_one_within_a_second(
    two_gateways: list[tuple[GatewayServer, gateway_service_pb2_grpc.GatewayServiceStub]],
) -> None:
    (first, first_stub), (_, second_stub) = two_gateways
    admin = first.keys.create("team-a", [Scope.ADMIN]).secret
    victim = first.keys.create("team-a", [Scope.ADMIN])
    # Now cached by the second gateway for 60 s.
    assert await _status(second_stub, victim.secret) is grpc.StatusCode.OK

    await first_stub.RevokeApiKey(
        gw.RevokeApiKeyRequest(api_key_id=victim.record.id), metadata=_bearer(admin)
    )

    started = time.monotonic()
    while await _status(second_stub, victim.secret) is grpc.StatusCode.OK:
        assert time.monotonic() - started < 5.0, "the second gateway still admits the key"
        await asyncio.sleep(0.01)
    assert time.monotonic() - started < REVOCATION_BOUND_SECONDS
    assert await _status(second_stub, victim.secret) is grpc.StatusCode.UNAUTHENTICATED


async def test_two_gateways_admit_a_tenant_s_burst_once_between_them(
    two_gateways: list[tuple[GatewayServer, gateway_service_pb2_grpc.GatewayServiceStub]],
) -> None:
    (first, _), _ = two_gateways
    key = first.keys.create("limited", [Scope.ADMIN]).secret
    stubs = [stub for _, stub in two_gateways]

    statuses = [await _status(stubs[call % 2], key) for call in range(BURST + 2)]

    assert statuses == [grpc.StatusCode.OK] * BURST + [grpc.StatusCode.RESOURCE_EXHAUSTED] * 2
