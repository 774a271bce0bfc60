"""Per-tenant quotas and rate limits: RESOURCE_EXHAUSTED with QuotaFailure and RetryInfo."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import grpc
import pytest
from gateway_callers import Caller, StartGateway, StartOrchestrator
from gateway_testkit import detail, reason
from google.rpc import error_details_pb2

from sandbox_sdk.api.v1 import experiment_pb2, requests_pb2
from sandbox_sdk.server.gateway.config import (
    LimitsConfig,
    TenantLimitOverrides,
    TenantLimits,
)

SPEC = experiment_pb2.ExperimentSpec(
    model="scripted", inputs=[experiment_pb2.ExperimentInput(prompt="hi")]
)


def _limits(**default: object) -> LimitsConfig:
    return LimitsConfig(default=TenantLimits(**default))  # type: ignore[arg-type]


def _assert_limited(error: grpc.aio.AioRpcError, expected_reason: str, subject: str) -> float:
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert reason(error) == expected_reason
    violations = detail(error, error_details_pb2.QuotaFailure).violations
    assert [v.subject for v in violations] == [subject]
    delay = detail(error, error_details_pb2.RetryInfo).retry_delay.ToTimedelta().total_seconds()
    assert delay > 0
    return float(delay)


async def test_environment_quota(
    start_orchestrator: StartOrchestrator,
    start_gateway: StartGateway,
    caller_for: Callable[..., Caller],
) -> None:
    orchestrator = await start_orchestrator("o1")
    gateway = await start_gateway(orchestrator, limits=_limits(max_environments=2))
    caller = caller_for(gateway, "team-a")
    create = requests_pb2.CreateEnvironmentRequest()
    first = await caller.stub.CreateEnvironment(create, metadata=caller.metadata)
    await caller.stub.CreateEnvironment(create, metadata=caller.metadata)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await caller.stub.CreateEnvironment(create, metadata=caller.metadata)
    _assert_limited(caught.value, "QUOTA_EXCEEDED", "tenant:team-a/environments")
    assert orchestrator.state.calls["CreateEnvironment"] == 2
    refused = gateway.metrics.registry.get_sample_value(
        "sandbox_gateway_limited_requests_total", {"tenant": "team-a", "reason": "QUOTA_EXCEEDED"}
    )
    assert refused == 1.0

    # Another tenant has its own quota.
    other = caller_for(gateway, "team-b")
    await other.stub.CreateEnvironment(create, metadata=other.metadata)

    # Deleting frees a slot: usage is counted on the orchestrator, not remembered.
    await caller.stub.DeleteEnvironment(
        requests_pb2.DeleteEnvironmentRequest(environment_id=first.environment.id),
        metadata=caller.metadata,
    )
    await caller.stub.CreateEnvironment(create, metadata=caller.metadata)


async def test_concurrent_creates_cannot_overshoot_the_quota(
    start_orchestrator: StartOrchestrator,
    start_gateway: StartGateway,
    caller_for: Callable[..., Caller],
) -> None:
    orchestrator = await start_orchestrator("o1")
    gateway = await start_gateway(orchestrator, limits=_limits(max_environments=3))
    caller = caller_for(gateway, "team-a")
    results = await asyncio.gather(
        *(
            caller.stub.CreateEnvironment(
                requests_pb2.CreateEnvironmentRequest(), metadata=caller.metadata
            )
            for _ in range(8)
        ),
        return_exceptions=True,
    )
    refused = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert all(reason(r) == "QUOTA_EXCEEDED" for r in refused)
    assert orchestrator.state.environment_count() <= 3
    assert len(results) - len(refused) == orchestrator.state.environment_count()


async def test_experiment_quota_with_per_tenant_override(
    start_orchestrator: StartOrchestrator,
    start_gateway: StartGateway,
    caller_for: Callable[..., Caller],
) -> None:
    orchestrator = await start_orchestrator("o1")
    limits = LimitsConfig(
        default=TenantLimits(max_concurrent_experiments=5),
        tenants={"team-a": TenantLimitOverrides(max_concurrent_experiments=1)},
    )
    gateway = await start_gateway(orchestrator, limits=limits)
    caller = caller_for(gateway, "team-a")
    env = await caller.stub.CreateEnvironment(
        requests_pb2.CreateEnvironmentRequest(), metadata=caller.metadata
    )
    create = requests_pb2.CreateExperimentRequest(environment_id=env.environment.id, spec=SPEC)
    first = await caller.stub.CreateExperiment(create, metadata=caller.metadata)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await caller.stub.CreateExperiment(create, metadata=caller.metadata)
    _assert_limited(caught.value, "QUOTA_EXCEEDED", "tenant:team-a/experiments")

    # A finished experiment no longer counts.
    await caller.stub.CancelExperiment(
        requests_pb2.CancelExperimentRequest(experiment_id=first.experiment.id),
        metadata=caller.metadata,
    )
    await caller.stub.CreateExperiment(create, metadata=caller.metadata)


async def test_rate_limit(
    start_orchestrator: StartOrchestrator,
    start_gateway: StartGateway,
    caller_for: Callable[..., Caller],
) -> None:
    orchestrator = await start_orchestrator("o1")
    gateway = await start_gateway(orchestrator, limits=_limits(requests_per_second=0.05, burst=3))
    caller = caller_for(gateway, "team-a")
    listing = requests_pb2.ListEnvironmentsRequest()
    for _ in range(3):
        await caller.stub.ListEnvironments(listing, metadata=caller.metadata)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await caller.stub.ListEnvironments(listing, metadata=caller.metadata)
    delay = _assert_limited(caught.value, "RATE_LIMITED", "tenant:team-a/requests")
    # One token takes 20 s at 0.05 per second; the delay is spread up to 1.5 times that.
    assert 19.0 <= delay <= 30.0
    assert orchestrator.state.calls["ListEnvironments"] == 3

    # Tenants do not share buckets.
    other = caller_for(gateway, "team-b")
    await other.stub.ListEnvironments(listing, metadata=other.metadata)

    refused = gateway.metrics.registry.get_sample_value(
        "sandbox_gateway_limited_requests_total", {"tenant": "team-a", "reason": "RATE_LIMITED"}
    )
    assert refused == 1.0
