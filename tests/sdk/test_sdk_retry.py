"""Retry policy: backoff bounds, deadlines, idempotency, RetryInfo and request ids,
against a real gRPC server whose handlers fail on demand (sync and async clients)."""

from __future__ import annotations

import grpc
import pytest
from sdk_clock import FakeClock
from sdk_drivers import Driver
from sdk_fake_gateway import Failure, FakeGateway

from sandbox_sdk import (
    AuthenticationError,
    EnvironmentState,
    ExperimentState,
    QuotaExceededError,
    ResourceExhaustedError,
    RetryPolicy,
    UnavailableError,
)
from sandbox_sdk.api.v1 import gateway_service_pb2, gateway_service_pb2_grpc
from sandbox_sdk.client.calls import method_table
from sandbox_sdk.errors import ConfigError, ErrorReason, SandboxError

UNAVAILABLE = grpc.StatusCode.UNAVAILABLE


def _env(gateway: FakeGateway, driver: Driver) -> str:
    return driver.create_environment().id


def test_backoff_is_exponential_capped_and_fully_jittered() -> None:
    top = RetryPolicy(initial_backoff=0.5, max_backoff=4.0, multiplier=2.0, random=lambda: 1.0)
    bottom = RetryPolicy(initial_backoff=0.5, max_backoff=4.0, random=lambda: 0.0)
    assert [top.backoff(n) for n in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert all(bottom.backoff(n) == 0.0 for n in range(1, 7))
    half = RetryPolicy(initial_backoff=0.5, max_backoff=4.0, random=lambda: 0.5)
    assert half.backoff(3) == 1.0


def test_invalid_policy_names_the_problem() -> None:
    with pytest.raises(ConfigError, match="max_attempts"):
        RetryPolicy(max_attempts=0)


def test_unavailable_is_retried_with_backoff_until_success(
    gateway: FakeGateway, driver: Driver, clock: FakeClock
) -> None:
    environment_id = _env(gateway, driver)
    gateway.fail("GetEnvironment", Failure(3, UNAVAILABLE))
    info = driver.get_environment(environment_id)
    assert info.id == environment_id
    assert len(gateway.calls("GetEnvironment")) == 4
    assert clock.sleeps == [0.5, 1.0, 2.0]


def test_gives_up_after_max_attempts(
    gateway: FakeGateway, driver: Driver, clock: FakeClock
) -> None:
    environment_id = _env(gateway, driver)
    gateway.fail("GetEnvironment", Failure(10, UNAVAILABLE, message="orchestrator o1 is down"))
    with pytest.raises(UnavailableError, match="orchestrator o1 is down") as caught:
        driver.get_environment(environment_id)
    assert len(gateway.calls("GetEnvironment")) == 4
    assert "gave up after 4 attempts" in caught.value.__notes__
    assert caught.value.reason == ErrorReason.ORCHESTRATOR_UNAVAILABLE


def test_overall_deadline_stops_retries_and_shrinks_attempt_timeouts(
    gateway: FakeGateway, server: object, clock: FakeClock
) -> None:
    from sdk_drivers import SyncDriver
    from sdk_fake_gateway import API_KEY

    policy = RetryPolicy(
        max_attempts=10,
        initial_backoff=1.0,
        max_backoff=100.0,
        multiplier=2.0,
        deadline=5.0,
        jitter=False,
        clock=clock,
        sleep=clock.sleep,
    )
    driver = SyncDriver(server.target, api_key=API_KEY, retry=policy, timeout=30.0)  # type: ignore[attr-defined]
    try:
        environment_id = driver.create_environment().id
        gateway.fail("GetEnvironment", Failure(10, UNAVAILABLE))
        with pytest.raises(UnavailableError):
            driver.get_environment(environment_id)
    finally:
        driver.close()
    calls = gateway.calls("GetEnvironment")
    # Waits 1 and 2 fit into 5 s; the next wait (4 s at t=3) would pass the deadline.
    assert clock.sleeps == [1.0, 2.0]
    assert len(calls) == 3
    budgets = [5.0, 4.0, 2.0]  # what is left of the deadline at each attempt (fake clock)
    for seen, budget in zip(calls, budgets, strict=True):
        assert seen.time_remaining is not None
        assert seen.time_remaining <= budget + 0.5


def _update(gateway: FakeGateway, driver: Driver) -> object:
    environment_id = _env(gateway, driver)
    gateway.fail("UpdateEnvironment", Failure(2, UNAVAILABLE))
    return driver.update_environment(environment_id, labels={"team": "a"}, ttl="1h").labels


def _delete(gateway: FakeGateway, driver: Driver) -> object:
    environment_id = _env(gateway, driver)
    gateway.fail("DeleteEnvironment", Failure(2, UNAVAILABLE))
    return driver.delete_environment(environment_id).state


def _write(gateway: FakeGateway, driver: Driver) -> object:
    environment_id = _env(gateway, driver)
    gateway.fail("WriteFile", Failure(2, UNAVAILABLE))
    driver.write_file(environment_id, "data/in.txt", b"same bytes")
    return gateway.files[environment_id]


def _cancel(gateway: FakeGateway, driver: Driver) -> object:
    gateway.auto_complete = False
    experiment_id = driver.run_experiment(_env(gateway, driver), model="gpt-3", prompt="hi").id
    gateway.fail("CancelExperiment", Failure(2, UNAVAILABLE))
    return driver.cancel_experiment(experiment_id).state


def _revoke(gateway: FakeGateway, driver: Driver) -> object:
    key_id = driver.create_api_key(tenant="team-a", scopes=["read"]).key.id
    gateway.fail("RevokeApiKey", Failure(2, UNAVAILABLE))
    return driver.revoke_api_key(key_id).active


IDEMPOTENT_MUTATIONS = {
    "UpdateEnvironment": (_update, {"team": "a"}),
    "DeleteEnvironment": (_delete, EnvironmentState.TERMINATED),
    "WriteFile": (_write, {"data/in.txt": b"same bytes"}),
    "CancelExperiment": (_cancel, ExperimentState.CANCELLED),
    "RevokeApiKey": (_revoke, False),
}


@pytest.mark.parametrize("method", sorted(IDEMPOTENT_MUTATIONS))
def test_idempotent_mutations_are_retried_with_the_same_request(
    gateway: FakeGateway, driver: Driver, clock: FakeClock, method: str
) -> None:
    """The handler fails twice with UNAVAILABLE; the third attempt succeeds."""
    act, expected = IDEMPOTENT_MUTATIONS[method]
    assert act(gateway, driver) == expected
    calls = gateway.calls(method)
    assert len(calls) == 3
    assert all(seen.request == calls[0].request for seen in calls)
    assert clock.sleeps == [0.5, 1.0]


def test_idempotent_mutation_gives_up_after_max_attempts(
    gateway: FakeGateway, driver: Driver, clock: FakeClock
) -> None:
    environment_id = _env(gateway, driver)
    gateway.fail("DeleteEnvironment", Failure(10, UNAVAILABLE))
    with pytest.raises(UnavailableError) as caught:
        driver.delete_environment(environment_id)
    assert len(gateway.calls("DeleteEnvironment")) == 4
    assert "gave up after 4 attempts" in caught.value.__notes__


def test_a_call_the_server_cancelled_is_retried_when_safe(
    gateway: FakeGateway, driver: Driver, clock: FakeClock
) -> None:
    environment_id = _env(gateway, driver)
    gateway.fail("GetEnvironment", Failure(1, grpc.StatusCode.CANCELLED))
    assert driver.get_environment(environment_id).id == environment_id
    assert len(gateway.calls("GetEnvironment")) == 2

    gateway.fail("ExecCommand", Failure(1, grpc.StatusCode.CANCELLED))
    with pytest.raises(SandboxError) as caught:
        driver.exec(environment_id, ["echo", "once"])
    assert caught.value.code == grpc.StatusCode.CANCELLED
    assert len(gateway.calls("ExecCommand")) == 1


def test_exec_is_not_retried(gateway: FakeGateway, driver: Driver, clock: FakeClock) -> None:
    environment_id = _env(gateway, driver)
    gateway.fail("ExecCommand", Failure(1, UNAVAILABLE))
    with pytest.raises(UnavailableError):
        driver.exec(environment_id, ["echo", "once"])
    assert len(gateway.calls("ExecCommand")) == 1
    assert clock.sleeps == []


def test_every_gateway_method_has_a_retry_decision() -> None:
    service = gateway_service_pb2.DESCRIPTOR.services_by_name["GatewayService"]
    with grpc.insecure_channel("127.0.0.1:1") as channel:
        table = method_table(gateway_service_pb2_grpc.GatewayServiceStub(channel))
    assert set(table) == set(service.methods_by_name)
    assert {name for name, rpc in table.items() if not rpc.retry_safe} == {
        "ExecCommand",
        "RenameFile",
        "UploadDirectory",
        "WriteProcessInput",
        "ForwardPort",
    }


def test_retry_info_delay_is_honoured_for_resource_exhausted(
    gateway: FakeGateway, driver: Driver, clock: FakeClock
) -> None:
    environment_id = _env(gateway, driver)
    gateway.fail(
        "GetEnvironment",
        Failure(
            1,
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            ErrorReason.RATE_LIMITED,
            "slow down",
            retry_after=3.25,
        ),
    )
    assert driver.get_environment(environment_id).id == environment_id
    assert clock.sleeps == [3.25]


def test_resource_exhausted_without_retry_info_is_not_retried(
    gateway: FakeGateway, driver: Driver, clock: FakeClock
) -> None:
    environment_id = _env(gateway, driver)
    gateway.fail(
        "GetEnvironment",
        Failure(1, grpc.StatusCode.RESOURCE_EXHAUSTED, ErrorReason.CAPACITY_EXHAUSTED, "full"),
    )
    with pytest.raises(ResourceExhaustedError) as caught:
        driver.get_environment(environment_id)
    assert not isinstance(caught.value, QuotaExceededError)
    assert len(gateway.calls("GetEnvironment")) == 1


def test_retried_create_reuses_its_request_id(
    gateway: FakeGateway, driver: Driver, clock: FakeClock
) -> None:
    gateway.fail("CreateEnvironment", Failure(2, UNAVAILABLE))
    info = driver.create_environment(labels={"run": "1"})
    calls = gateway.calls("CreateEnvironment")
    assert len(calls) == 3
    request_ids = {seen.request.request_id for seen in calls}
    assert len(request_ids) == 1
    assert request_ids.pop() != ""
    assert list(gateway.environments) == [info.id]


def test_each_create_gets_a_new_request_id(gateway: FakeGateway, driver: Driver) -> None:
    first = driver.create_environment()
    second = driver.create_environment()
    assert first.id != second.id
    ids = [seen.request.request_id for seen in gateway.calls("CreateEnvironment")]
    assert len(set(ids)) == 2


def test_per_call_retry_override(gateway: FakeGateway, driver: Driver, clock: FakeClock) -> None:
    environment_id = _env(gateway, driver)
    gateway.fail("GetEnvironment", Failure(1, UNAVAILABLE))
    with pytest.raises(UnavailableError):
        driver.get_environment(environment_id, retry=RetryPolicy.disabled())
    assert len(gateway.calls("GetEnvironment")) == 1


class CountingProvider:
    def __init__(self, tokens: list[str]) -> None:
        self.tokens = tokens
        self.calls = 0

    def get_token(self) -> object:
        from sandbox_sdk import Token

        token = self.tokens[min(self.calls, len(self.tokens) - 1)]
        self.calls += 1
        return Token(token)


def test_unauthenticated_refreshes_a_provider_token_once(
    gateway: FakeGateway, server: object, policy: RetryPolicy
) -> None:
    from sdk_drivers import DRIVERS
    from sdk_fake_gateway import API_KEY

    for kind in ("sync", "async"):
        provider = CountingProvider(["stale-token-000000", API_KEY])
        driver = DRIVERS[kind](server.target, token_provider=provider, retry=policy)  # type: ignore[attr-defined]
        try:
            created = driver.create_environment()
        finally:
            driver.close()
        assert created.id
        assert provider.calls == 2
    rejected = CountingProvider(["bad-token-0000000000"])
    driver = DRIVERS["sync"](server.target, token_provider=rejected, retry=policy)  # type: ignore[attr-defined]
    try:
        with pytest.raises(AuthenticationError) as caught:
            driver.create_environment()
    finally:
        driver.close()
    assert rejected.calls == 2  # refreshed once, then gave up
    assert caught.value.reason == ErrorReason.API_KEY_INVALID


def test_static_key_rejection_is_not_retried(gateway: FakeGateway, server: object) -> None:
    from sdk_drivers import SyncDriver

    driver = SyncDriver(server.target, api_key="sk-wrong-key-123456")  # type: ignore[attr-defined]
    try:
        with pytest.raises(AuthenticationError, match="not valid"):
            driver.create_environment()
    finally:
        driver.close()
    assert len(gateway.calls("CreateEnvironment")) == 1


def test_errors_keep_the_rpc_error_as_cause(gateway: FakeGateway, driver: Driver) -> None:
    gateway.fail(
        "GetEnvironment", Failure(1, grpc.StatusCode.INTERNAL, ErrorReason.INTERNAL, "boom")
    )
    with pytest.raises(SandboxError) as caught:
        driver.get_environment("env-o1-0000000000000001")
    assert isinstance(caught.value.__cause__, grpc.RpcError)
    assert caught.value.request_id == "req-fake-1"
