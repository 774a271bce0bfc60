"""When and how long to wait before retrying a failed call, and which calls are retried.

A :class:`RetryPolicy` is a frozen value object. Each attempt's timeout is cut
to what is left of the overall ``deadline``; the wait between attempts is
full-jitter exponential backoff, or, when the server sent a
``RetryInfo.retry_delay`` (capacity, quota, rate limit), that delay stretched
by a random factor between 1 and ``1 + retry_after_jitter``: never shorter
than the server asked, and spread out so that callers refused together do not
come back together. A server delay longer than what is left of the deadline
does not end the call early: the SDK waits until shortly before the deadline
and makes one last attempt, then raises the server's error with a note on what
to do. Rate-limit refusals are not bounded by ``max_attempts`` but by the
deadline: under a steady overload a caller may be refused many times before a
token is its, and failing it then would turn a slower run into a failed one.

A failed attempt (UNAVAILABLE, say) may still have been carried out, so only
calls whose repetition cannot change the outcome are retried. The contract
declares which ones, as method options in ``proto/sandbox/v1``: protobuf's
``idempotency_level``, and ``sandbox.v1.rules``'s ``idempotent_by_request_id``
for creates; :mod:`sandbox_sdk.client.calls` reads them from the descriptors.
Why each of them is safe to repeat:

- Reads, lists and streams; an event stream resumes after the last event seen.
- Creates: each carries a client-generated ``request_id``, and the server
  returns the first result for a repeated id.
- DeleteEnvironment and CancelExperiment, idempotent by contract: deleting a
  deleted environment succeeds, cancelling a finished experiment returns it
  unchanged.
- UpdateEnvironment: it sets the fields named in ``update_mask`` to the
  request's values (labels are replaced as a whole, ttl counts from creation),
  and a retry sends the same request.
- WriteFile: it replaces the whole file with the request's content and mode,
  so a repeat leaves the same file. Last writer wins: should something else,
  such as a command in the sandbox, change that file between an attempt whose
  answer was lost and the retry, the retry overwrites that change, as if the
  write had happened then. Pass ``retry=RetryPolicy.disabled()`` to write at
  most once.
- RevokeApiKey: revoked is a final state; revoking a revoked key changes
  nothing and returns it with its first ``revoke_time``. A revocation should
  not fail for a passing outage.

Besides ``retryable_codes``, a CANCELLED status is retried: the SDK never
cancels a call and then reads its status, so CANCELLED means the server side
gave the call up (a gateway stopping without a grace period does this to every
call it is serving).

ExecCommand is never retried: running a command again may do its work twice.
Any call rejected as UNAUTHENTICATED is sent once more with a fresh token when
the token comes from a provider; the server did not act on the rejected call.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import grpc

from sandbox_sdk.config.settings import RetrySettings
from sandbox_sdk.errors import ConfigError, RateLimitedError, SandboxError
from sandbox_sdk.utils.backoff import (
    backoff_ceiling,
    ends_in_time,
    full_jitter,
    stretched,
    wait_for_last_attempt,
)

DEFAULT_RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE})


@dataclass(frozen=True)
class RetryPolicy:
    """How a call is retried.

    Attributes:
        max_attempts: attempts in all, the first included (1 disables retries).
            Refusals for the tenant's rate limit (:class:`RateLimitedError`) go on past
            it, as the server paces them, until ``deadline`` (if there is one).
        initial_backoff: ceiling of the first wait, in seconds.
        max_backoff: largest ceiling of any wait, in seconds.
        multiplier: growth of the ceiling per retry.
        deadline: seconds for all attempts and waits together, or ``None``.
        retryable_codes: status codes worth another attempt. RESOURCE_EXHAUSTED
            is also retried, in any case, when the server sent ``RetryInfo``.
        jitter: wait a uniform random time up to the ceiling ("full jitter"),
            and stretch server-given delays by up to ``retry_after_jitter``.
            ``False`` waits exactly the ceiling or the server's delay.
        retry_after_jitter: how far a server-given delay is stretched at most,
            as a fraction of it (0.5: between 1x and 1.5x the delay).
        clock, sleep, async_sleep, random: injectable for tests.
    """

    max_attempts: int = 5
    initial_backoff: float = 0.1
    max_backoff: float = 5.0
    multiplier: float = 2.0
    deadline: float | None = 60.0
    retryable_codes: frozenset[grpc.StatusCode] = DEFAULT_RETRYABLE
    jitter: bool = True
    retry_after_jitter: float = 0.5
    clock: Callable[[], float] = field(default=time.monotonic, compare=False, repr=False)
    sleep: Callable[[float], None] = field(default=time.sleep, compare=False, repr=False)
    async_sleep: Callable[[float], Awaitable[None]] = field(
        default=asyncio.sleep, compare=False, repr=False
    )
    random: Callable[[], float] = field(default=random.random, compare=False, repr=False)

    def __post_init__(self) -> None:
        problems = []
        if self.max_attempts < 1:
            problems.append("max_attempts must be at least 1 (1 disables retries)")
        if self.initial_backoff <= 0 or self.max_backoff <= 0:
            problems.append("initial_backoff and max_backoff must be positive seconds")
        if self.multiplier < 1:
            problems.append("multiplier must be at least 1")
        if self.deadline is not None and self.deadline <= 0:
            problems.append("deadline must be positive seconds, or None for no deadline")
        if self.retry_after_jitter < 0:
            problems.append("retry_after_jitter must be 0 or more (0.5 waits up to 1.5x)")
        if problems:
            raise ConfigError("invalid RetryPolicy: " + "; ".join(problems))

    @classmethod
    def disabled(cls) -> RetryPolicy:
        """A policy that never retries."""
        return cls(max_attempts=1)

    @classmethod
    def from_settings(cls, settings: RetrySettings) -> RetryPolicy:
        """The policy described by the ``retry`` section of the settings."""
        return cls(
            max_attempts=settings.max_attempts,
            initial_backoff=settings.initial_backoff,
            max_backoff=settings.max_backoff,
            multiplier=settings.multiplier,
            deadline=settings.deadline,
            retryable_codes=frozenset(grpc.StatusCode[name] for name in settings.retryable_codes),
        )

    def backoff(self, retry_number: int) -> float:
        """The wait before retry ``retry_number`` (1 for the first retry), without RetryInfo."""
        ceiling = backoff_ceiling(
            retry_number,
            initial=self.initial_backoff,
            multiplier=self.multiplier,
            maximum=self.max_backoff,
        )
        return full_jitter(ceiling, self.random) if self.jitter else ceiling

    def is_retryable(self, error: SandboxError) -> bool:
        """Whether ``error`` is worth another attempt of a call that is safe to repeat.

        CANCELLED is always worth one: the SDK ends its own calls by closing them,
        which never comes back as an error, so a CANCELLED status was sent by the
        other side, typically a gateway or proxy abandoning its calls as it stops.
        """
        if error.code in self.retryable_codes or error.code == grpc.StatusCode.CANCELLED:
            return True
        return error.code == grpc.StatusCode.RESOURCE_EXHAUSTED and error.retry_after is not None

    def delay(self, error: SandboxError, retry_number: int) -> float:
        """The wait before retry ``retry_number``: the server's RetryInfo if sent, else backoff."""
        if error.retry_after is not None:
            return self.paced(error.retry_after)
        return self.backoff(retry_number)

    def paced(self, server_delay: float) -> float:
        """The wait for a server-given delay: at least that delay, stretched by jitter.

        The stretch is uniform between 1x and ``1 + retry_after_jitter`` times the
        delay, so callers the server refused together spread out instead of
        coming back at the same instant.
        """
        if not self.jitter:
            return max(0.0, server_delay)
        return stretched(server_delay, self.retry_after_jitter, self.random)

    def start(self, *, stream: bool = False) -> Attempts:
        """Begins tracking one call's attempts against this policy.

        A resumable ``stream`` is bounded by the deadline alone when there is one.
        """
        unbounded = stream and self.deadline is not None
        return Attempts(self, max_attempts=math.inf if unbounded else self.max_attempts)


# A server delay that outlasts the deadline is cut so that one last attempt starts
# this long before the deadline; with less than the minimum left, the call gives up.
LAST_ATTEMPT_SECONDS = 1.0
MIN_LAST_ATTEMPT_SECONDS = 0.05


class Attempts:
    """One call's attempts: what timeout the next one gets and whether to retry.

    Attributes:
        made: attempts that failed so far.
        out_of_time: the deadline, not the error or the attempt count, ended
            (or is about to end) the retries.
    """

    __slots__ = ("_deadline_at", "_last", "_max_attempts", "made", "out_of_time", "policy")

    def __init__(self, policy: RetryPolicy, *, max_attempts: float) -> None:
        self.policy = policy
        self._max_attempts = max_attempts
        self.made = 0
        self.out_of_time = False
        self._last = False
        self._deadline_at = (
            policy.clock() + policy.deadline if policy.deadline is not None else math.inf
        )

    def timeout(self, call_timeout: float | None) -> float | None:
        """The next attempt's timeout: the call's, cut to what is left of the deadline."""
        if self._deadline_at == math.inf:
            return call_timeout
        remaining = max(0.0, self._deadline_at - self.policy.clock())
        return remaining if call_timeout is None else min(call_timeout, remaining)

    def next_delay(self, error: SandboxError) -> float | None:
        """Records a failed attempt; the wait before the next one, or ``None`` to give up."""
        policy = self.policy
        self.made += 1
        if self._last or not policy.is_retryable(error):
            return None
        wait = policy.delay(error, self.made)
        if self.made >= self._max_attempts:
            if not self._outlasts_the_count(error):
                return None
            # Past the count the server's pace still holds, but never faster than backoff:
            # a server answering "now" again and again is not called in a tight loop.
            wait = max(wait, policy.backoff(self.made))
        remaining = self._deadline_at - policy.clock()
        if ends_in_time(wait, remaining):
            return wait
        self.out_of_time = True
        if error.retry_after is None:
            return None
        # The server asked for longer than the deadline leaves. Its delay is an
        # estimate (room is often freed sooner), so rather than give up now, make
        # one last attempt just before the deadline.
        last_wait = wait_for_last_attempt(
            remaining, margin=LAST_ATTEMPT_SECONDS, minimum=MIN_LAST_ATTEMPT_SECONDS
        )
        self._last = last_wait is not None
        return last_wait

    def _outlasts_the_count(self, error: SandboxError) -> bool:
        """Whether a rate-limit refusal is retried past ``max_attempts``, until the deadline.

        The gateway did not act on the call and said when a token is there for it, but
        new calls may take that token first, so under a steady overload one caller can be
        refused several times in a row: that is a reason to wait longer, not to fail. Only
        a policy that retries at all and has a deadline does so.
        """
        return (
            isinstance(error, RateLimitedError)
            and self._max_attempts > 1
            and self._deadline_at != math.inf
        )

    def annotate(self, error: SandboxError) -> SandboxError:
        """Adds notes to the call's final error: attempts made, and what to do when out of time.

        The second note appears when the deadline cut short a wait the server asked for.
        """
        if self.made > 1:
            error.add_note(f"gave up after {self.made} attempts")
        if self.out_of_time and error.retry_after is not None:
            what_to_do = error.advice or "retry later"
            error.add_note(
                f"the retry deadline of {self.policy.deadline:g}s ran out while waiting as "
                f"the server asked; {what_to_do}"
            )
        return error

    def restart_deadline(self) -> None:
        """Starts a new deadline window and attempt count (a stream made progress)."""
        self.made = 0
        self.out_of_time = False
        self._last = False
        policy = self.policy
        self._deadline_at = (
            policy.clock() + policy.deadline if policy.deadline is not None else math.inf
        )
