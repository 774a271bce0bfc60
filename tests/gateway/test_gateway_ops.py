"""Operations: metrics, reflection, the internal token, graceful shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import urllib.request
from collections.abc import Callable

import grpc
from gateway_callers import Caller, Stack, StartGateway, StartOrchestrator
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from sandbox_sdk.api.v1 import requests_pb2


def _fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 -- a local test server
        return str(response.read().decode())


async def test_metrics_are_served_over_http(
    start_orchestrator: StartOrchestrator,
    start_gateway: StartGateway,
    caller_for: Callable[..., Caller],
) -> None:
    gateway = await start_gateway(await start_orchestrator("o1"), metrics_port=0)
    caller = caller_for(gateway)
    await caller.stub.ListEnvironments(
        requests_pb2.ListEnvironmentsRequest(), metadata=caller.metadata
    )
    text = await asyncio.to_thread(_fetch, f"http://127.0.0.1:{gateway.metrics_port}/metrics")
    assert 'sandbox_gateway_requests_total{code="OK",method="ListEnvironments"} 1.0' in text
    assert "sandbox_gateway_request_duration_seconds_bucket" in text
    assert 'sandbox_gateway_orchestrator_up{orchestrator="o1"} 1.0' in text


async def test_auth_failures_are_counted(stack: Stack) -> None:
    with contextlib.suppress(grpc.aio.AioRpcError):
        await stack.caller.stub.ListEnvironments(requests_pb2.ListEnvironmentsRequest())
    assert (
        stack.gateway.metrics.registry.get_sample_value(
            "sandbox_gateway_auth_failures_total", {"reason": "API_KEY_MISSING"}
        )
        == 1.0
    )


async def test_reflection_lists_the_gateway_service(stack: Stack) -> None:
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{stack.gateway.port}")
    try:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = stub.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        )
        names = [s.name async for r in responses for s in r.list_services_response.service]
    finally:
        await channel.close()
    assert "sandbox.v1.GatewayService" in names


async def test_the_internal_token_is_sent_to_orchestrators(
    start_orchestrator: StartOrchestrator,
    start_gateway: StartGateway,
    caller_for: Callable[..., Caller],
) -> None:
    orchestrator = await start_orchestrator("o1", internal_token="s3cret-internal")
    gateway = await start_gateway(orchestrator, internal_token="s3cret-internal")
    caller = caller_for(gateway)
    created = await caller.stub.CreateEnvironment(
        requests_pb2.CreateEnvironmentRequest(), metadata=caller.metadata
    )
    assert created.environment.orchestrator_id == "o1"
    seen = orchestrator.state.metadata["CreateEnvironment"]
    assert seen["authorization"] == "Bearer s3cret-internal"


async def test_stop_drains_calls_in_flight(stack: Stack) -> None:
    created = await stack.caller.stub.CreateEnvironment(
        requests_pb2.CreateEnvironmentRequest(), metadata=stack.caller.metadata
    )
    state = stack.orchestrator.state
    state.hold.add("GetEnvironment")
    in_flight = asyncio.ensure_future(
        stack.caller.stub.GetEnvironment(
            requests_pb2.GetEnvironmentRequest(environment_id=created.environment.id),
            metadata=stack.caller.metadata,
        )
    )
    for _ in range(1000):
        if state.calls["GetEnvironment"]:
            break
        await asyncio.sleep(0.01)
    stopping = asyncio.ensure_future(stack.gateway.stop(grace=10))
    await asyncio.sleep(0.1)
    state.release.set()
    response = await in_flight
    await stopping
    assert response.environment.id == created.environment.id
