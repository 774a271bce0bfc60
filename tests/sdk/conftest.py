"""Fixtures: a fake gateway on 127.0.0.1:0, sync and async clients pointed at it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from sdk_clock import FakeClock
from sdk_drivers import DRIVERS, Driver
from sdk_fake_gateway import API_KEY, FakeGateway, FakeServer

from sandbox_sdk import AsyncSandboxClient, RetryPolicy, SandboxClient


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def policy(clock: FakeClock) -> RetryPolicy:
    return RetryPolicy(
        max_attempts=4,
        initial_backoff=0.5,
        max_backoff=4.0,
        multiplier=2.0,
        deadline=30.0,
        jitter=False,
        clock=clock,
        sleep=clock.sleep,
        async_sleep=clock.async_sleep,
    )


@pytest.fixture
def gateway() -> FakeGateway:
    return FakeGateway()


@pytest.fixture
def server(gateway: FakeGateway) -> Iterator[FakeServer]:
    running = FakeServer(gateway).start()
    yield running
    running.stop()


@pytest.fixture
def client(
    server: FakeServer, policy: RetryPolicy, monkeypatch: pytest.MonkeyPatch
) -> Iterator[SandboxClient]:
    monkeypatch.delenv("SANDBOX_CONFIG", raising=False)
    with SandboxClient(server.target, api_key=API_KEY, retry=policy) as sync_client:
        yield sync_client


@pytest.fixture
async def aclient(
    server: FakeServer, policy: RetryPolicy, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[AsyncSandboxClient]:
    monkeypatch.delenv("SANDBOX_CONFIG", raising=False)
    async with AsyncSandboxClient(server.target, api_key=API_KEY, retry=policy) as async_client:
        yield async_client


@pytest.fixture(params=["sync", "async"])
def driver(
    request: pytest.FixtureRequest, server: FakeServer, policy: RetryPolicy
) -> Iterator[Driver]:
    """The same scenarios against the sync and the async client."""
    opened = DRIVERS[request.param](server.target, api_key=API_KEY, retry=policy)
    yield opened
    opened.close()
