"""The shared backoff arithmetic: ceilings, full jitter, stretched server delays, deadlines.

Randomness is injected; expectations are written out by hand or drawn from a
second generator with the same seed.
"""

from __future__ import annotations

import random

import pytest

from sandbox_sdk import RetryPolicy
from sandbox_sdk.utils.backoff import (
    backoff_ceiling,
    ends_in_time,
    full_jitter,
    stretched,
    wait_for_last_attempt,
)


def test_ceilings_grow_by_the_multiplier_and_stop_at_the_maximum() -> None:
    ceilings = [backoff_ceiling(n, initial=0.5, multiplier=2.0, maximum=4.0) for n in range(1, 7)]
    assert ceilings == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert [backoff_ceiling(n, initial=0.1, multiplier=3.0, maximum=10.0) for n in (1, 2, 3)] == [
        pytest.approx(0.1),
        pytest.approx(0.3),
        pytest.approx(0.9),
    ]


def test_a_multiplier_of_one_keeps_the_ceiling_constant() -> None:
    assert {backoff_ceiling(n, initial=0.2, multiplier=1.0, maximum=5.0) for n in range(1, 50)} == {
        0.2
    }


def test_the_ceiling_of_a_retry_far_beyond_float_range_is_the_maximum() -> None:
    assert backoff_ceiling(5000, initial=0.1, multiplier=2.0, maximum=5.0) == 5.0


def test_full_jitter_scales_the_draw_to_the_ceiling() -> None:
    assert full_jitter(4.0, lambda: 0.0) == 0.0
    assert full_jitter(4.0, lambda: 0.25) == 1.0
    draws, expected = random.Random(7), random.Random(7)
    waits = [full_jitter(3.0, draws.random) for _ in range(20)]
    assert waits == [3.0 * expected.random() for _ in range(20)]


def test_a_server_delay_is_stretched_never_shortened() -> None:
    assert stretched(2.0, 0.5, lambda: 0.0) == 2.0
    assert stretched(2.0, 0.5, lambda: 0.5) == 2.5
    assert stretched(2.0, 0.0, lambda: 0.9) == 2.0
    assert stretched(-1.0, 0.5, lambda: 0.5) == 0.0


def test_a_wait_ends_in_time_only_if_it_ends_before_the_deadline() -> None:
    assert ends_in_time(1.0, None)
    assert ends_in_time(0.99, 1.0)
    assert not ends_in_time(1.0, 1.0)
    assert not ends_in_time(0.5, -0.1)


def test_the_last_attempt_starts_a_margin_before_the_deadline() -> None:
    assert wait_for_last_attempt(10.0, margin=1.0, minimum=0.05) == 9.0
    assert wait_for_last_attempt(0.5, margin=1.0, minimum=0.05) == 0.0
    assert wait_for_last_attempt(0.05, margin=1.0, minimum=0.05) is None
    assert wait_for_last_attempt(-3.0, margin=1.0, minimum=0.05) is None


def test_the_client_policy_waits_what_the_shared_arithmetic_gives() -> None:
    draws, expected = random.Random(11), random.Random(11)
    policy = RetryPolicy(initial_backoff=0.25, max_backoff=1.5, multiplier=3.0, random=draws.random)
    waits = [policy.backoff(n) for n in range(1, 6)]
    ceilings = [0.25, 0.75, 1.5, 1.5, 1.5]
    assert waits == pytest.approx([c * expected.random() for c in ceilings])
    assert policy.paced(2.0) == pytest.approx(2.0 * (1 + 0.5 * expected.random()))
