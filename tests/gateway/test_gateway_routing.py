"""Routing to orchestrators: placement, ownership, failover, fan-out lists, streams,
deadlines, cancellation, retries and unchanged error forwarding."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest
from gateway_callers import Caller, Stack, StartGateway, StartOrchestrator
from gateway_testkit import FakeOrchestrator, detail, reason
from google.rpc import error_details_pb2

from sandbox_sdk.api.v1 import (
    common_pb2,
    environment_pb2,
    orchestrator_service_pb2_grpc,
    requests_pb2,
)

CREATE = requests_pb2.CreateEnvironmentRequest()


async def _eventually(check: Callable[[], Awaitable[bool]], attempts: int = 100) -> None:
    """Polls ``check`` (bounded) until it holds; fails the test if it never does."""
    for _ in range(attempts):
        if await check():
            return
        await asyncio.sleep(0.1)
    pytest.fail("condition never held")


async def _create(caller: Caller, count: int = 1) -> list[str]:
    return [
        (await caller.stub.CreateEnvironment(CREATE, metadata=caller.metadata)).environment.id
        for _ in range(count)
    ]


async def _get(caller: Caller, environment_id: str) -> environment_pb2.Environment:
    response = await caller.stub.GetEnvironment(
        requests_pb2.GetEnvironmentRequest(environment_id=environment_id),
        metadata=caller.metadata,
    )
    return response.environment


async def test_new_environments_go_where_capacity_is_free(
    start_orchestrator: StartOrchestrator,
    start_gateway: StartGateway,
    caller_for: Callable[..., Caller],
) -> None:
    small = await start_orchestrator("o1", max_environments=4)
    large = await start_orchestrator("o2", max_environments=8)
    gateway = await start_gateway(small, large)
    caller = caller_for(gateway)
    created = await _create(caller, 6)
    # o2 has 4 more free slots: it takes the first four, then they alternate.
    assert [i.split("-")[1] for i in created] == ["o2", "o2", "o2", "o2", "o1", "o2"]


async def test_an_orchestrator_going_away_and_coming_back(
    start_orchestrator: StartOrchestrator,
    start_gateway: StartGateway,
    caller_for: Callable[..., Caller],
) -> None:
    first = await start_orchestrator("o1")
    second = await start_orchestrator("o2")
    gateway = await start_gateway(first, second)
    caller = caller_for(gateway)
    created = await _create(caller, 2)
    by_owner = {i.split("-")[1]: i for i in created}
    assert set(by_owner) == {"o1", "o2"}

    await first.stop(0)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _get(caller, by_owner["o1"])
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert reason(caught.value) == "ORCHESTRATOR_UNAVAILABLE"
    assert (await _get(caller, by_owner["o2"])).orchestrator_id == "o2"
    assert [i.split("-")[1] for i in await _create(caller, 3)] == ["o2"] * 3
    listed = await caller.stub.ListEnvironments(
        requests_pb2.ListEnvironmentsRequest(), metadata=caller.metadata
    )
    assert {e.orchestrator_id for e in listed.environments} == {"o2"}

    revived = await start_orchestrator(state=first.state, port=first.port)

    async def back() -> bool:
        try:
            return (await _get(caller, by_owner["o1"])).id == by_owner["o1"]
        except grpc.aio.AioRpcError:
            return False

    await _eventually(back)
    assert revived.state.calls["GetEnvironment"] >= 1


@pytest.mark.parametrize(
    ("request_", "field", "code"),
    [
        (requests_pb2.GetEnvironmentRequest(), "environment_id", grpc.StatusCode.INVALID_ARGUMENT),
        (
            requests_pb2.GetEnvironmentRequest(environment_id="my-env"),
            "environment_id",
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            requests_pb2.GetEnvironmentRequest(environment_id="exp-o1-0123456789abcdef"),
            "environment_id",
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            requests_pb2.GetEnvironmentRequest(environment_id="env-o9-0123456789abcdef"),
            "",
            grpc.StatusCode.NOT_FOUND,
        ),
    ],
    ids=["empty", "malformed", "wrong-kind", "unknown-orchestrator"],
)
async def test_ids_are_checked_before_routing(
    stack: Stack, request_: requests_pb2.GetEnvironmentRequest, field: str, code: grpc.StatusCode
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stack.caller.stub.GetEnvironment(request_, metadata=stack.caller.metadata)
    assert caught.value.code() == code
    if field:
        violations = detail(caught.value, error_details_pb2.BadRequest).field_violations
        assert [v.field for v in violations] == [field]
    else:
        assert reason(caught.value) == "ENVIRONMENT_NOT_FOUND"
    assert stack.orchestrator.state.calls["GetEnvironment"] == 0


async def test_lists_merge_all_orchestrators_newest_first_across_pages(
    start_orchestrator: StartOrchestrator,
    start_gateway: StartGateway,
    caller_for: Callable[..., Caller],
) -> None:
    gateway = await start_gateway(await start_orchestrator("o1"), await start_orchestrator("o2"))
    caller = caller_for(gateway)
    created = await _create(caller, 7)
    assert Counter(i.split("-")[1] for i in created) == {"o1": 4, "o2": 3}
    seen: list[environment_pb2.Environment] = []
    token = ""
    pages = 0
    while True:
        page = await caller.stub.ListEnvironments(
            requests_pb2.ListEnvironmentsRequest(page_size=3, page_token=token),
            metadata=caller.metadata,
        )
        pages += 1
        assert len(page.environments) <= 3
        seen.extend(page.environments)
        token = page.next_page_token
        if not token:
            break
    assert pages == 3
    assert [e.id for e in seen] == list(reversed(created))


async def test_a_bad_page_token_is_invalid_argument(
    start_orchestrator: StartOrchestrator,
    start_gateway: StartGateway,
    caller_for: Callable[..., Caller],
) -> None:
    gateway = await start_gateway(await start_orchestrator("o1"), await start_orchestrator("o2"))
    caller = caller_for(gateway)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await caller.stub.ListExperiments(
            requests_pb2.ListExperimentsRequest(page_token="garbage"), metadata=caller.metadata
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    violations = detail(caught.value, error_details_pb2.BadRequest).field_violations
    assert [v.field for v in violations] == ["page_token"]


async def test_streams_are_forwarded_message_by_message(stack: Stack) -> None:
    (env_id,) = await _create(stack.caller)
    stack.orchestrator.state.hold_after_first.add("StreamEnvironmentUsage")
    stream = stack.caller.stub.StreamEnvironmentUsage(
        requests_pb2.StreamEnvironmentUsageRequest(environment_id=env_id),
        metadata=stack.caller.metadata,
    )
    # The first sample arrives while the orchestrator still holds the rest back.
    first = await asyncio.wait_for(stream.read(), timeout=10)
    assert first.usage.pids == 1
    assert stack.gateway.metrics.registry.get_sample_value(
        "sandbox_gateway_active_streams", {"method": "StreamEnvironmentUsage"}
    )
    stack.orchestrator.state.release.set()
    rest = [(await stream.read()).usage.pids for _ in range(2)]
    assert rest == [2, 3]
    assert await stream.read() == grpc.aio.EOF


async def test_orchestrator_errors_reach_the_client_unchanged(stack: Stack) -> None:
    bad = requests_pb2.CreateEnvironmentRequest(
        spec=environment_pb2.EnvironmentSpec(limits=common_pb2.ResourceLimits(memory_bytes=-1))
    )
    request_id = (("x-request-id", "req-123"),)
    with pytest.raises(grpc.aio.AioRpcError) as via_gateway:
        await stack.caller.stub.CreateEnvironment(
            bad, metadata=(*stack.caller.metadata, *request_id)
        )
    channel = grpc.aio.insecure_channel(stack.orchestrator.address)
    try:
        with pytest.raises(grpc.aio.AioRpcError) as direct:
            await orchestrator_service_pb2_grpc.OrchestratorServiceStub(channel).CreateEnvironment(
                bad, metadata=(("x-sandbox-tenant", "team-a"), *request_id)
            )
    finally:
        await channel.close()

    def trailer(error: grpc.aio.AioRpcError) -> Any:
        return dict(error.trailing_metadata() or ())["grpc-status-details-bin"]

    assert via_gateway.value.code() == direct.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert via_gateway.value.details() == direct.value.details()
    assert trailer(via_gateway.value) == trailer(direct.value)
    violations = detail(via_gateway.value, error_details_pb2.BadRequest).field_violations
    assert [v.field for v in violations] == ["spec.limits.memory_bytes"]


async def test_deadlines_reach_the_orchestrator(stack: Stack) -> None:
    (env_id,) = await _create(stack.caller)
    stack.orchestrator.state.hold.add("GetEnvironment")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stack.caller.stub.GetEnvironment(
            requests_pb2.GetEnvironmentRequest(environment_id=env_id),
            metadata=stack.caller.metadata,
            timeout=0.5,
        )
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED

    async def upstream_cancelled() -> bool:
        return stack.orchestrator.state.cancelled["GetEnvironment"] == 1

    await _eventually(upstream_cancelled)


async def test_a_client_going_away_cancels_the_upstream_stream(stack: Stack) -> None:
    (env_id,) = await _create(stack.caller)
    stack.orchestrator.state.hold_after_first.add("ExecCommand")
    stream = stack.caller.stub.ExecCommand(
        requests_pb2.ExecCommandRequest(environment_id=env_id, argv=["sleep", "1000"]),
        metadata=stack.caller.metadata,
    )
    assert (await stream.read()).started.pid == 42
    stream.cancel()

    async def upstream_cancelled() -> bool:
        return stack.orchestrator.state.cancelled["ExecCommand"] == 1

    await _eventually(upstream_cancelled)


async def test_idempotent_calls_are_retried_on_unavailable(stack: Stack) -> None:
    (env_id,) = await _create(stack.caller)
    state = stack.orchestrator.state
    state.failures["GetEnvironment"] = [grpc.StatusCode.UNAVAILABLE] * 2
    assert (await _get(stack.caller, env_id)).id == env_id
    assert state.calls["GetEnvironment"] == 3

    state.failures["DeleteEnvironment"] = [grpc.StatusCode.UNAVAILABLE]
    await stack.caller.stub.DeleteEnvironment(
        requests_pb2.DeleteEnvironmentRequest(environment_id=env_id),
        metadata=stack.caller.metadata,
    )
    assert state.calls["DeleteEnvironment"] == 2


async def test_retries_give_up_after_the_configured_attempts(stack: Stack) -> None:
    (env_id,) = await _create(stack.caller)
    state = stack.orchestrator.state
    state.failures["GetEnvironment"] = [grpc.StatusCode.UNAVAILABLE] * 5
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _get(stack.caller, env_id)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert state.calls["GetEnvironment"] == stack.gateway.config.retry.max_attempts


async def test_creates_are_retried_only_with_a_request_id(stack: Stack) -> None:
    state = stack.orchestrator.state
    state.failures["CreateEnvironment"] = [grpc.StatusCode.UNAVAILABLE]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _create(stack.caller)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert state.calls["CreateEnvironment"] == 1
    assert state.environments == {}

    state.failures["CreateEnvironment"] = [grpc.StatusCode.UNAVAILABLE]
    created = await stack.caller.stub.CreateEnvironment(
        requests_pb2.CreateEnvironmentRequest(request_id="5f0c0f5e-retry"),
        metadata=stack.caller.metadata,
    )
    assert state.calls["CreateEnvironment"] == 3
    assert list(state.environments) == [created.environment.id]

    state.failures["ExecCommand"] = [grpc.StatusCode.UNAVAILABLE]
    with pytest.raises(grpc.aio.AioRpcError) as exec_error:
        async for _ in stack.caller.stub.ExecCommand(
            requests_pb2.ExecCommandRequest(environment_id=created.environment.id, argv=["true"]),
            metadata=stack.caller.metadata,
        ):
            pass
    assert exec_error.value.code() == grpc.StatusCode.UNAVAILABLE
    assert state.calls["ExecCommand"] == 1


async def test_models_come_from_any_live_orchestrator(
    start_orchestrator: StartOrchestrator,
    start_gateway: StartGateway,
    caller_for: Callable[..., Caller],
) -> None:
    first: FakeOrchestrator = await start_orchestrator("o1")
    second = await start_orchestrator("o2")
    gateway = await start_gateway(first, second)
    caller = caller_for(gateway)
    await first.stop(0)
    models = await caller.stub.ListModels(
        requests_pb2.ListModelsRequest(), metadata=caller.metadata
    )
    assert [m.name for m in models.models] == ["scripted"]
    assert second.state.calls["ListModels"] == 1


async def test_with_every_orchestrator_down_calls_are_unavailable(
    start_orchestrator: StartOrchestrator,
    start_gateway: StartGateway,
    caller_for: Callable[..., Caller],
) -> None:
    orchestrators = [await start_orchestrator("o1"), await start_orchestrator("o2")]
    gateway = await start_gateway(*orchestrators)
    caller = caller_for(gateway)
    for orchestrator in orchestrators:
        await orchestrator.stop(0)
    for call in (
        caller.stub.ListEnvironments(
            requests_pb2.ListEnvironmentsRequest(), metadata=caller.metadata
        ),
        caller.stub.CreateEnvironment(CREATE, metadata=caller.metadata),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert reason(caught.value) == "NO_HEALTHY_ORCHESTRATOR"
        assert detail(caught.value, error_details_pb2.RetryInfo).retry_delay.ToTimedelta()
