"""The engine's retry policy for model calls: full-jitter backoff, Retry-After as given."""

from __future__ import annotations

import random

import pytest

from sandbox_sdk.server.orchestrator.experiments.providers.base import ProviderError
from sandbox_sdk.server.orchestrator.experiments.providers.retry import RetryPolicy
from sandbox_sdk.server.orchestrator.experiments.settings import RetrySettings

SETTINGS = RetrySettings(
    max_attempts=5,
    initial_backoff_seconds=0.5,
    max_backoff_seconds=1.5,
    max_retry_after_seconds=3.0,
)


def test_backoff_doubles_up_to_the_maximum_with_full_jitter() -> None:
    draws, expected = random.Random(3), random.Random(3)
    policy = RetryPolicy(SETTINGS, random=draws.random)
    error = ProviderError("server error", retryable=True)
    waits = [policy.delay_before_retry(attempt, error) for attempt in (1, 2, 3, 4)]
    assert waits == pytest.approx([c * expected.random() for c in (0.5, 1.0, 1.5, 1.5)])


def test_retry_after_is_waited_as_given_and_capped() -> None:
    policy = RetryPolicy(SETTINGS, random=lambda: 0.9)
    assert (
        policy.delay_before_retry(1, ProviderError("429", retryable=True, retry_after=2.0)) == 2.0
    )
    assert (
        policy.delay_before_retry(1, ProviderError("429", retryable=True, retry_after=9.0)) == 3.0
    )
    assert policy.delay_before_retry(1, ProviderError("429", retryable=True, retry_after=-1)) == 0.0


def test_gives_up_on_a_permanent_error_or_after_the_last_attempt() -> None:
    policy = RetryPolicy(SETTINGS)
    assert policy.delay_before_retry(1, ProviderError("bad request")) is None
    assert policy.delay_before_retry(5, ProviderError("server error", retryable=True)) is None
