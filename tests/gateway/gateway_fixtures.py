"""Fixtures for the gateway tests: fake orchestrators, gateways, and key holders.

tests/gateway/conftest.py and tests/security/conftest.py import them by name.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from gateway_callers import Caller, Stack, StartGateway, StartOrchestrator
from gateway_testkit import FakeOrchestrator, FakeState

from sandbox_sdk.api.v1 import gateway_service_pb2_grpc
from sandbox_sdk.server.gateway.api_keys import Scope
from sandbox_sdk.server.gateway.config import GatewayConfig, OrchestratorEndpoint
from sandbox_sdk.server.gateway.server import GatewayServer


@pytest.fixture
async def start_orchestrator() -> AsyncIterator[StartOrchestrator]:
    """Starts fake orchestrators; stops them all after the test."""
    started: list[FakeOrchestrator] = []

    async def start(
        orchestrator_id: str = "o1",
        *,
        state: FakeState | None = None,
        port: int = 0,
        internal_token: str | None = None,
        **state_fields: Any,
    ) -> FakeOrchestrator:
        fake = await FakeOrchestrator.start(
            state or FakeState(orchestrator_id, **state_fields), port, internal_token
        )
        started.append(fake)
        return fake

    yield start
    for fake in started:
        await fake.stop(0)


@pytest.fixture
async def start_gateway(tmp_path: Path) -> AsyncIterator[StartGateway]:
    """Starts gateways in front of the given fakes; stops them after the test."""
    started: list[GatewayServer] = []

    async def start(*orchestrators: FakeOrchestrator, **overrides: Any) -> GatewayServer:
        settings: dict[str, Any] = {
            "listen": "127.0.0.1:0",
            "orchestrators": [
                OrchestratorEndpoint(id=o.state.orchestrator_id, address=o.address)
                for o in orchestrators
            ],
            "db_path": tmp_path / f"gateway{len(started)}.db",
            "health_check_interval_seconds": 0.2,
            **overrides,
        }
        gateway = await GatewayServer.start(GatewayConfig(**settings))
        started.append(gateway)
        return gateway

    yield start
    for gateway in started:
        await gateway.stop(0)


@pytest.fixture
async def channels() -> AsyncIterator[Callable[[str], grpc.aio.Channel]]:
    """Opens client channels; closes them after the test."""
    opened: list[grpc.aio.Channel] = []

    def open_channel(target: str) -> grpc.aio.Channel:
        channel = grpc.aio.insecure_channel(target)
        opened.append(channel)
        return channel

    yield open_channel
    for channel in opened:
        await channel.close()


@pytest.fixture
def caller_for(
    channels: Callable[[str], grpc.aio.Channel],
) -> Callable[..., Caller]:
    """Makes an API key on a gateway and a client that sends it."""

    def make(
        gateway: GatewayServer,
        tenant: str = "team-a",
        scopes: tuple[Scope, ...] = (Scope.READ, Scope.WRITE),
        **key_options: Any,
    ) -> Caller:
        created = gateway.keys.create(tenant, scopes, **key_options)
        stub = gateway_service_pb2_grpc.GatewayServiceStub(channels(f"127.0.0.1:{gateway.port}"))
        return Caller(stub, created.secret, tenant)

    return make


@pytest.fixture
async def stack(
    start_orchestrator: StartOrchestrator,
    start_gateway: StartGateway,
    caller_for: Callable[..., Caller],
) -> Stack:
    orchestrator = await start_orchestrator("o1")
    gateway = await start_gateway(orchestrator)
    return Stack(orchestrator, gateway, caller_for(gateway))
