"""The RetryInfo delays the services send: honest (a token bucket's real refill time, about a
second for capacity) and spread, so that refused callers do not all come back at once."""

from __future__ import annotations

import random

import pytest

from sandbox_sdk.server.gateway.rate_limits import MAX_PROMISED_RETURNS, TokenBucket
from sandbox_sdk.server.retry_delays import (
    CAPACITY_RETRY_SECONDS,
    SPREAD,
    capacity_retry_delay,
    spread,
)


def _no_jitter() -> float:
    return 0.0


def _empty_bucket(rate: float = 10.0, burst: float = 2.0, now: float = 100.0) -> TokenBucket:
    bucket = TokenBucket(rate=rate, burst=burst, tokens=burst, updated=now)
    for _ in range(int(burst)):
        assert bucket.take(now, _no_jitter) == 0.0
    return bucket


def test_spread_never_shortens_a_delay_and_stretches_it_at_most_by_the_spread() -> None:
    draw = random.Random(5).random
    delays = [spread(2.0, draw) for _ in range(500)]
    assert min(delays) >= 2.0
    assert max(delays) <= 2.0 * (1 + SPREAD)
    assert max(delays) - min(delays) >= 0.9 * 2.0 * SPREAD  # spread over the whole range
    assert spread(2.0, _no_jitter) == 2.0


def test_capacity_asks_for_about_a_second() -> None:
    delays = [capacity_retry_delay(random.Random(seed).random) for seed in range(50)]
    assert all(CAPACITY_RETRY_SECONDS <= delay <= 1.5 for delay in delays)
    assert len(set(delays)) == len(delays)


def test_a_lone_refused_caller_waits_for_the_next_token() -> None:
    bucket = _empty_bucket(rate=10.0)
    assert bucket.take(100.0, _no_jitter) == pytest.approx(0.1)
    # Half a token refilled: half the wait.
    bucket = _empty_bucket(rate=10.0)
    assert bucket.take(100.05, _no_jitter) == pytest.approx(0.05)


def test_callers_refused_together_are_sent_after_each_other() -> None:
    """Each refused caller waits for the tokens of those refused before it, not all for the
    same next token (which only one of them would get)."""
    bucket = _empty_bucket(rate=10.0)
    delays = [bucket.take(100.0, _no_jitter) for _ in range(5)]
    assert delays == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5])
    assert bucket.waiting(100.0) == 5


def test_a_promise_is_forgotten_once_its_time_has_passed() -> None:
    bucket = _empty_bucket(rate=10.0)
    first = bucket.take(100.0, _no_jitter)
    assert bucket.waiting(100.0 + first - 0.001) == 1
    assert bucket.waiting(100.0 + first) == 0


def test_the_caller_that_returns_on_time_gets_its_token() -> None:
    bucket = _empty_bucket(rate=10.0)
    delays = [bucket.take(100.0, _no_jitter) for _ in range(3)]
    for delay in delays:
        assert bucket.take(100.0 + delay + 1e-9, _no_jitter) == 0.0


def test_spread_delays_of_callers_refused_together_differ() -> None:
    bucket = _empty_bucket(rate=10.0)
    draw = random.Random(3).random
    delays = [bucket.take(100.0, draw) for _ in range(50)]
    assert len(set(delays)) == len(delays)
    honest = [(n + 1) / 10.0 for n in range(50)]
    assert all(h <= d <= h * (1 + SPREAD) for h, d in zip(honest, delays, strict=True))


def test_the_promises_a_bucket_keeps_are_bounded() -> None:
    bucket = _empty_bucket(rate=1000.0)
    for _ in range(MAX_PROMISED_RETURNS + 100):
        bucket.take(100.0, _no_jitter)
    assert bucket.waiting(100.0) == MAX_PROMISED_RETURNS
