"""Tenant quotas and rate limits from the gateway's `limits:` config, seen through the SDK."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from e2e_support import EmbeddedStack

from sandbox_sdk import ExperimentState, QuotaExceededError, RateLimitedError, RetryPolicy

RETRY_AFTER = 0.25
# The server spreads its delays up to 1.5x; the SDK stretches what it is told up to 1.5x.
SPREAD = 1.5
LIMITED = "limited"
CONFIG = {
    "gateway": {
        "limits": {
            "quota_retry_after_seconds": RETRY_AFTER,
            "default": {"max_environments": 1, "max_concurrent_experiments": 1},
            "tenants": {LIMITED: {"requests_per_second": 1, "burst": 1}},
        }
    },
    "orchestrator": {
        "experiments": {
            "models": [
                {"name": "slow", "provider": "scripted", "options": {"chunk_delay_seconds": 0.05}}
            ]
        }
    },
}
LONG_PROMPT = " ".join(f"word{i}" for i in range(200))


class RecordingSleep:
    """A RetryPolicy ``sleep`` that records each wait and runs a hook before the first."""

    def __init__(self, before_first_retry: Callable[[], Any] = lambda: None) -> None:
        self.delays: list[float] = []
        self._before_first_retry = before_first_retry

    def __call__(self, seconds: float) -> None:
        if not self.delays:
            self._before_first_retry()
        self.delays.append(seconds)
        time.sleep(seconds)


@pytest.fixture
def limited_stack(start_stack: Callable[[dict[str, Any]], EmbeddedStack]) -> EmbeddedStack:
    return start_stack(CONFIG)


def test_the_environment_quota_refuses_with_retry_info_and_creates_nothing(
    limited_stack: EmbeddedStack,
) -> None:
    with limited_stack.client(retry=RetryPolicy.disabled()) as client:
        first = client.create_environment()
        try:
            with pytest.raises(QuotaExceededError) as caught:
                client.create_environment(labels={"second": "yes"})
            error = caught.value
            assert error.code == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert error.reason == "QUOTA_EXCEEDED"
            assert error.retry_after is not None
            assert RETRY_AFTER <= error.retry_after <= RETRY_AFTER * SPREAD
            [violation] = error.quota_violations
            assert violation.subject == "tenant:default/environments"
            assert "1" in violation.description
            assert error.request_id
            assert [s.id for s in client.list_environments()] == [first.id]
        finally:
            first.delete()


def test_a_retry_policy_waits_the_servers_delay_and_succeeds_once_the_quota_frees(
    limited_stack: EmbeddedStack,
) -> None:
    with limited_stack.client(retry=RetryPolicy.disabled()) as client:
        first = client.create_environment()
        sleep = RecordingSleep(before_first_retry=first.delete)
        patient = RetryPolicy(max_attempts=5, deadline=60, sleep=sleep)
        with client.create_environment(retry=patient) as second:
            # One refusal, one wait of at least the server's RetryInfo delay, one success.
            [delay] = sleep.delays
            assert RETRY_AFTER <= delay <= RETRY_AFTER * SPREAD * SPREAD
            assert [s.id for s in client.list_environments()] == [second.id]
            assert second.id != first.id


def test_the_experiment_quota_counts_queued_and_running_experiments(
    limited_stack: EmbeddedStack,
) -> None:
    with (
        limited_stack.client(retry=RetryPolicy.disabled()) as client,
        client.create_environment() as sandbox,
    ):
        running = sandbox.run_experiment(model="slow", prompt=LONG_PROMPT)
        with pytest.raises(QuotaExceededError) as caught:
            sandbox.run_experiment(model="slow", prompt="two")
        assert caught.value.reason == "QUOTA_EXCEEDED"
        assert [v.subject for v in caught.value.quota_violations] == ["tenant:default/experiments"]
        assert [e.id for e in sandbox.list_experiments()] == [running.id]
        # A cancelled experiment frees its slot.
        assert running.cancel().state is ExperimentState.CANCELLED
        third = sandbox.run_experiment(model="slow", prompt="three")
        assert third.wait(60).state is ExperimentState.SUCCEEDED


def test_the_rate_limit_refuses_with_retry_info_and_a_retry_policy_gets_through(
    limited_stack: EmbeddedStack,
) -> None:
    key = limited_stack.tenant_key(LIMITED)
    with limited_stack.client(api_key=key, retry=RetryPolicy.disabled()) as impatient:
        error: RateLimitedError | None = None
        for _ in range(20):  # one call a second: the bucket runs dry within a few calls
            try:
                impatient.list_models()
            except RateLimitedError as refused:
                error = refused
                break
        assert error is not None, "20 calls in a row were never rate limited"
        assert error.reason == "RATE_LIMITED"
        assert error.retry_after is not None
        assert 0 < error.retry_after <= 1.0 * SPREAD  # one token's refill time, spread
        assert [v.subject for v in error.quota_violations] == [f"tenant:{LIMITED}/requests"]

    sleep = RecordingSleep()
    patient = RetryPolicy(max_attempts=10, deadline=60, sleep=sleep)
    with limited_stack.client(api_key=key, retry=patient) as client:
        assert client.list_models()
    # Each wait, if any was needed, followed the server's RetryInfo delay: at most the
    # refill of two tokens (the refused caller above is still owed one), spread twice.
    assert all(0 < delay <= 2.0 * SPREAD * SPREAD for delay in sleep.delays)
