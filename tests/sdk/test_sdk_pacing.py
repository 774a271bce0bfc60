"""Retries the server paces with RetryInfo: one error class per condition, jittered waits
that are never shorter than the server asked, and no early give-up before the deadline.

Against a real gRPC server whose handlers fail on demand (sync and async clients); time
is a fake clock that moves only when the SDK sleeps.
"""

from __future__ import annotations

import dataclasses
import random

import grpc
import pytest
from sdk_clock import FakeClock
from sdk_drivers import DRIVERS, Driver
from sdk_fake_gateway import API_KEY, Failure, FakeGateway, FakeServer

from sandbox_sdk import (
    CapacityExhaustedError,
    ConfigError,
    QuotaExceededError,
    RateLimitedError,
    ResourceExhaustedError,
    RetryPolicy,
    SandboxError,
)
from sandbox_sdk.errors import ErrorReason, error_class

EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED
# What the orchestrator attaches to CAPACITY_EXHAUSTED; the gateway's refusal has none.
CAPACITY_VIOLATIONS = (("cpu_cores", "1.5 of 2 cores are promised"),)


def _refusal(reason: str, count: int = 1, retry_after: float | None = 2.0, **kw: object) -> Failure:
    return Failure(count, EXHAUSTED, reason, f"refused: {reason}", retry_after=retry_after, **kw)  # type: ignore[arg-type]


def _open(server: FakeServer, kind: str, policy: RetryPolicy) -> Driver:
    return DRIVERS[kind](server.target, api_key=API_KEY, retry=policy)  # type: ignore[no-any-return]


# -- one class per condition ---------------------------------------------------------------

CLASS_BY_REASON = {
    ErrorReason.CAPACITY_EXHAUSTED: CapacityExhaustedError,
    ErrorReason.QUOTA_EXCEEDED: QuotaExceededError,
    ErrorReason.RATE_LIMITED: RateLimitedError,
}


@pytest.mark.parametrize("violations", [(), CAPACITY_VIOLATIONS], ids=["gateway", "orchestrator"])
@pytest.mark.parametrize("reason", sorted(CLASS_BY_REASON))
def test_the_error_class_follows_the_reason_not_the_hop(
    gateway: FakeGateway,
    driver: Driver,
    reason: ErrorReason,
    violations: tuple[tuple[str, str], ...],
) -> None:
    """With or without QuotaFailure details (orchestrator or gateway), one class per reason."""
    # Without RetryInfo, so that the SDK does not retry it.
    refusal = _refusal(reason, retry_after=None, quota_violations=violations)
    gateway.fail("ListEnvironments", refusal)
    with pytest.raises(ResourceExhaustedError) as caught:
        driver.list_environment_ids()
    assert type(caught.value) is CLASS_BY_REASON[reason]
    assert caught.value.reason == reason
    assert caught.value.advice


def test_an_unknown_reason_keeps_the_class_of_its_code() -> None:
    assert error_class(EXHAUSTED, "SOMETHING_NEW") is ResourceExhaustedError
    # A reason never narrows a code whose class it does not belong under.
    assert error_class(grpc.StatusCode.UNAVAILABLE, ErrorReason.RATE_LIMITED) is not (
        RateLimitedError
    )


# -- jitter on the server's delay ----------------------------------------------------------


def test_a_server_delay_is_never_shortened_and_callers_spread_out() -> None:
    server_delay = 2.0
    policy = RetryPolicy(random=random.Random(11).random)
    waits = [policy.paced(server_delay) for _ in range(500)]
    assert min(waits) >= server_delay
    assert max(waits) <= server_delay * 1.5
    # Callers told the same delay come back at different moments, across the whole range.
    assert len(set(waits)) == len(waits)
    assert max(waits) - min(waits) >= 0.45 * server_delay


def test_the_jitter_bounds_are_the_server_delay_and_one_and_a_half_times_it() -> None:
    assert RetryPolicy(random=lambda: 0.0).paced(3.0) == 3.0
    assert RetryPolicy(random=lambda: 0.999999).paced(3.0) == pytest.approx(4.5)
    assert RetryPolicy(random=lambda: 0.5, retry_after_jitter=1.0).paced(3.0) == 4.5
    assert RetryPolicy(random=lambda: 0.7, jitter=False).paced(3.0) == 3.0


def test_a_negative_jitter_is_refused() -> None:
    with pytest.raises(ConfigError, match="retry_after_jitter"):
        RetryPolicy(retry_after_jitter=-0.1)


@pytest.mark.parametrize("kind", sorted(DRIVERS))
def test_the_sdk_sleeps_the_jittered_server_delay(
    gateway: FakeGateway, server: FakeServer, policy: RetryPolicy, clock: FakeClock, kind: str
) -> None:
    jittered = dataclasses.replace(policy, jitter=True, random=lambda: 0.5)
    driver = _open(server, kind, jittered)
    try:
        gateway.fail("ListEnvironments", _refusal(ErrorReason.RATE_LIMITED, 2, retry_after=2.0))
        assert driver.list_environment_ids() == []
    finally:
        driver.close()
    assert clock.sleeps == [2.5, 2.5]
    assert len(gateway.calls("ListEnvironments")) == 3


# -- the deadline --------------------------------------------------------------------------


def test_a_delay_past_the_deadline_leads_to_one_last_attempt_before_it(
    gateway: FakeGateway, driver: Driver, clock: FakeClock
) -> None:
    """The policy's deadline is 30 s; the server asks for 50 s. The SDK does not give up
    at once: it waits until a second before the deadline, and the last attempt succeeds."""
    gateway.fail("ListEnvironments", _refusal(ErrorReason.CAPACITY_EXHAUSTED, retry_after=50.0))
    assert driver.list_environment_ids() == []
    assert clock.sleeps == [29.0]
    assert len(gateway.calls("ListEnvironments")) == 2


@pytest.mark.parametrize(
    ("reason", "advice"),
    [
        (ErrorReason.RATE_LIMITED, "send fewer calls per second"),
        (ErrorReason.CAPACITY_EXHAUSTED, "delete environments you no longer need"),
    ],
)
def test_once_the_deadline_is_spent_the_error_says_what_to_do(
    gateway: FakeGateway, driver: Driver, clock: FakeClock, reason: ErrorReason, advice: str
) -> None:
    gateway.fail("ListEnvironments", _refusal(reason, 10, retry_after=12.0))
    with pytest.raises(SandboxError) as caught:
        driver.list_environment_ids()
    # 12 s, 12 s, then 6 s is all that is left: the last attempt starts 1 s before the end.
    assert clock.sleeps == [12.0, 12.0, 5.0]
    assert len(gateway.calls("ListEnvironments")) == 4
    assert type(caught.value) is CLASS_BY_REASON[reason]
    notes = " ".join(caught.value.__notes__)
    assert "the retry deadline of 30s ran out while waiting as the server asked" in notes
    assert advice in notes


def _refused(retry_after: float) -> RateLimitedError:
    return RateLimitedError("slow down", reason=ErrorReason.RATE_LIMITED, retry_after=retry_after)


def test_with_under_a_second_left_the_last_attempt_is_made_at_once(clock: FakeClock) -> None:
    attempts = RetryPolicy(deadline=30.0, jitter=False, clock=clock).start()
    clock.sleep(29.5)
    assert attempts.next_delay(_refused(5.0)) == 0.0
    assert attempts.next_delay(_refused(5.0)) is None  # that was the last one
    assert attempts.out_of_time


def test_with_nothing_left_of_the_deadline_no_attempt_is_made(clock: FakeClock) -> None:
    attempts = RetryPolicy(deadline=30.0, jitter=False, clock=clock).start()
    clock.sleep(29.99)
    assert attempts.next_delay(_refused(5.0)) is None
    assert attempts.out_of_time


def test_without_a_deadline_the_server_delay_is_waited_in_full(clock: FakeClock) -> None:
    attempts = RetryPolicy(deadline=None, jitter=False, clock=clock).start()
    assert attempts.next_delay(_refused(500.0)) == 500.0
    assert not attempts.out_of_time


def test_server_paced_refusals_count_towards_max_attempts(
    gateway: FakeGateway, driver: Driver, clock: FakeClock
) -> None:
    gateway.fail("ListEnvironments", _refusal(ErrorReason.CAPACITY_EXHAUSTED, 10, 1.0))
    with pytest.raises(CapacityExhaustedError) as caught:
        driver.list_environment_ids()
    assert clock.sleeps == [1.0, 1.0, 1.0]
    assert "gave up after 4 attempts" in caught.value.__notes__


# -- rate limits outlast the attempt count -------------------------------------------------


def test_rate_limit_refusals_go_on_past_max_attempts_until_one_passes(
    gateway: FakeGateway, driver: Driver, clock: FakeClock
) -> None:
    """max_attempts is 4. A caller the gateway refuses eight times in a row (new calls
    took the tokens it was told of) is not failed: it waits the server's 0.5 s while the
    count lasts, then at least the backoff (0.5 s doubled up to 4 s), and the ninth
    attempt passes within the 30 s deadline."""
    gateway.fail("ListEnvironments", _refusal(ErrorReason.RATE_LIMITED, 8, retry_after=0.5))
    assert driver.list_environment_ids() == []
    assert clock.sleeps == [0.5, 0.5, 0.5, 4.0, 4.0, 4.0, 4.0, 4.0]
    assert len(gateway.calls("ListEnvironments")) == 9


def test_rate_limit_refusals_past_the_count_end_at_the_deadline_with_advice(
    gateway: FakeGateway, driver: Driver, clock: FakeClock
) -> None:
    gateway.fail("ListEnvironments", _refusal(ErrorReason.RATE_LIMITED, 100, retry_after=0.5))
    with pytest.raises(RateLimitedError) as caught:
        driver.list_environment_ids()
    assert sum(clock.sleeps) < 30.0
    notes = " ".join(caught.value.__notes__)
    assert "send fewer calls per second" in notes


def test_capacity_refusals_still_stop_at_max_attempts(
    gateway: FakeGateway, driver: Driver, clock: FakeClock
) -> None:
    """Room on the orchestrators, unlike a token, is not freed at a known pace: the count holds."""
    gateway.fail("ListEnvironments", _refusal(ErrorReason.CAPACITY_EXHAUSTED, 8, retry_after=0.5))
    with pytest.raises(CapacityExhaustedError):
        driver.list_environment_ids()
    assert len(gateway.calls("ListEnvironments")) == 4


def test_a_server_answering_now_again_and_again_is_not_called_in_a_tight_loop(
    clock: FakeClock,
) -> None:
    policy = RetryPolicy(
        max_attempts=3, initial_backoff=0.1, max_backoff=5.0, jitter=False, clock=clock
    )
    attempts = policy.start()
    waits = [attempts.next_delay(_refused(0.0)) for _ in range(8)]
    assert waits == [0.0, 0.0, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0]


def test_without_retries_or_a_deadline_a_rate_limit_refusal_keeps_the_count(
    clock: FakeClock,
) -> None:
    disabled = RetryPolicy.disabled().start()
    assert disabled.next_delay(_refused(0.5)) is None
    unbounded = RetryPolicy(max_attempts=2, deadline=None, jitter=False, clock=clock).start()
    assert unbounded.next_delay(_refused(0.5)) == 0.5
    assert unbounded.next_delay(_refused(0.5)) is None
