"""The SDK over two gateways: calls spread over both and carry on when one dies.

Two real gateways share one key database and one orchestrator (the in-memory
fake of tests/gateway, whose event stream here pauses midway so a gateway can
be stopped under it). The client is given both addresses.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "gateway"))

from gateway_testkit import Context, FakeOrchestratorServicer, FakeState

from sandbox_sdk import AsyncSandboxClient
from sandbox_sdk.api.v1 import (
    experiment_pb2,
    orchestrator_service_pb2_grpc,
    requests_pb2,
)
from sandbox_sdk.server.gateway.api_keys import Scope
from sandbox_sdk.server.gateway.config import GatewayConfig, OrchestratorEndpoint
from sandbox_sdk.server.gateway.server import GatewayServer
from sandbox_sdk.server.ops import add_health_and_reflection
from sandbox_sdk.server.status import ErrorInterceptor

PROMPTS = [f"prompt {index}" for index in range(6)]
# The scripted experiment's events: a start, an output and a metric per
# prompt, and an end.
EVENT_COUNT = 2 + 2 * len(PROMPTS)
PAUSE_AFTER = 5


class PausingOrchestrator(FakeOrchestratorServicer):
    """The fake orchestrator; the first event stream stops after ``PAUSE_AFTER`` events
    until its caller goes away."""

    def __init__(self, state: FakeState) -> None:
        super().__init__(state, None)
        self.paused = asyncio.Event()

    async def StreamExperimentEvents(
        self, request: requests_pb2.StreamExperimentEventsRequest, context: Context
    ) -> AsyncIterator[requests_pb2.StreamExperimentEventsResponse]:
        tenant = await self._enter("StreamExperimentEvents", context)
        experiment = self._experiment(tenant, request.experiment_id)
        first_stream = not self.paused.is_set()
        for event in self.state.events[experiment.id]:
            if event.sequence <= request.after_sequence:
                continue
            yield requests_pb2.StreamExperimentEventsResponse(event=event)
            if first_stream and event.sequence == PAUSE_AFTER:
                self.paused.set()
                await asyncio.Event().wait()  # until the gateway cancels the call
        experiment.state = experiment_pb2.EXPERIMENT_STATE_SUCCEEDED


@dataclass
class TwoGateways:
    orchestrator: PausingOrchestrator
    gateways: list[GatewayServer]
    key: str

    def served(self, gateway: GatewayServer, method: str) -> float:
        """Calls of ``method`` this gateway finished successfully."""
        value = gateway.metrics.registry.get_sample_value(
            "sandbox_gateway_requests_total", {"method": method, "code": "OK"}
        )
        return value or 0.0

    def streaming(self, gateway: GatewayServer) -> float:
        """Event streams this gateway has open now."""
        value = gateway.metrics.registry.get_sample_value(
            "sandbox_gateway_active_streams", {"method": "StreamExperimentEvents"}
        )
        return value or 0.0

    def client(self) -> AsyncSandboxClient:
        return AsyncSandboxClient(
            [gateway.address for gateway in self.gateways],
            api_key=self.key,
            retry={"max_attempts": 10, "initial_backoff": 0.05, "deadline": 30.0},
            timeout=10.0,
        )


@pytest.fixture
async def two_gateways(tmp_path: Path) -> AsyncIterator[TwoGateways]:
    orchestrator = PausingOrchestrator(FakeState("o1"))
    server = grpc.aio.server(interceptors=[ErrorInterceptor()])
    orchestrator_service_pb2_grpc.add_OrchestratorServiceServicer_to_server(orchestrator, server)
    await add_health_and_reflection(server, ["sandbox.v1.OrchestratorService"])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    gateways: list[GatewayServer] = []
    try:
        for _ in range(2):
            config = GatewayConfig(
                listen="127.0.0.1:0",
                orchestrators=[OrchestratorEndpoint(id="o1", address=f"127.0.0.1:{port}")],
                db_path=tmp_path / "keys.db",
                health_check_interval_seconds=0.2,
            )
            gateways.append(await GatewayServer.start(config))
        key = gateways[0].keys.create("team-a", (Scope.READ, Scope.WRITE)).secret
        yield TwoGateways(orchestrator, gateways, key)
    finally:
        for gateway in gateways:
            await gateway.stop(0)
        await server.stop(0)


async def test_calls_spread_over_both_gateways(two_gateways: TwoGateways) -> None:
    async with two_gateways.client() as client:
        sandbox = await client.create_environment()
        # Round-robin takes ready connections in turn; both connect within a few calls.
        for _ in range(200):
            await client.get_environment(sandbox.id)
            if all(
                two_gateways.served(gateway, "GetEnvironment") > 0
                for gateway in two_gateways.gateways
            ):
                break
        served = [two_gateways.served(g, "GetEnvironment") for g in two_gateways.gateways]
    assert all(count > 0 for count in served), served


async def test_a_dead_gateway_leaves_calls_and_event_streams_to_the_other(
    two_gateways: TwoGateways,
) -> None:
    orchestrator = two_gateways.orchestrator
    async with two_gateways.client() as client:
        sandbox = await client.create_environment()
        experiment = await sandbox.run_experiment(model="scripted", prompts=PROMPTS)
        sequences: list[int] = []
        async with experiment.events() as stream:
            async for event in stream:
                sequences.append(event.sequence)
                if event.sequence == PAUSE_AFTER:
                    break
            assert orchestrator.paused.is_set()
            [carrying] = [g for g in two_gateways.gateways if two_gateways.streaming(g) == 1]
            [survivor] = [g for g in two_gateways.gateways if g is not carrying]
            await carrying.stop(0)
            async for event in stream:
                sequences.append(event.sequence)

        assert sequences == list(range(1, EVENT_COUNT + 1))
        assert two_gateways.served(survivor, "StreamExperimentEvents") == 1

        before = two_gateways.served(survivor, "GetEnvironment")
        for _ in range(10):
            assert (await client.get_environment(sandbox.id)).id == sandbox.id
        assert two_gateways.served(survivor, "GetEnvironment") == before + 10


async def test_calls_in_flight_carry_on_when_a_gateway_dies(two_gateways: TwoGateways) -> None:
    dying, survivor = two_gateways.gateways
    async with two_gateways.client() as client:
        sandbox = await client.create_environment()
        found: list[str] = []
        both_served = asyncio.Event()

        async def load() -> None:
            for _ in range(40):
                found.append((await client.get_environment(sandbox.id)).id)
                if all(
                    two_gateways.served(gateway, "GetEnvironment") > 0
                    for gateway in two_gateways.gateways
                ):
                    both_served.set()

        workers = [asyncio.create_task(load()) for _ in range(4)]
        # Round-robin reaches both gateways within a few calls; the wait is a bound, not a
        # measurement.
        await asyncio.wait_for(both_served.wait(), timeout=30)
        assert two_gateways.served(dying, "GetEnvironment") > 0
        await dying.stop(0)
        served_before = two_gateways.served(survivor, "GetEnvironment")
        await asyncio.gather(*workers)

    assert found == [sandbox.id] * 160
    assert two_gateways.served(survivor, "GetEnvironment") > served_before
