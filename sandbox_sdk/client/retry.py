"""When and how long to wait before retrying a failed call, and which calls are retried.

A :class:`RetryPolicy` is a frozen value object. Each attempt's timeout is cut
to what is left of the overall ``deadline``; the wait between attempts is
full-jitter exponential backoff, or the server's ``RetryInfo.retry_delay``
when it sent one.

A failed attempt (UNAVAILABLE, say) may still have been carried out, so only
calls whose repetition cannot change the outcome are retried (the lists are in
:mod:`sandbox_sdk.client.calls`):

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
from sandbox_sdk.errors import ConfigError, SandboxError

DEFAULT_RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE})


@dataclass(frozen=True)
class RetryPolicy:
    """How a call is retried.

    Attributes:
        max_attempts: attempts in all, the first included (1 disables retries).
        initial_backoff: ceiling of the first wait, in seconds.
        max_backoff: largest ceiling of any wait, in seconds.
        multiplier: growth of the ceiling per retry.
        deadline: seconds for all attempts and waits together, or ``None``.
        retryable_codes: status codes worth another attempt. RESOURCE_EXHAUSTED
            is also retried, in any case, when the server sent ``RetryInfo``.
        jitter: wait a uniform random time up to the ceiling ("full jitter").
        clock, sleep, async_sleep, random: injectable for tests.
    """

    max_attempts: int = 5
    initial_backoff: float = 0.1
    max_backoff: float = 5.0
    multiplier: float = 2.0
    deadline: float | None = 60.0
    retryable_codes: frozenset[grpc.StatusCode] = DEFAULT_RETRYABLE
    jitter: bool = True
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
        ceiling = min(
            self.max_backoff, self.initial_backoff * self.multiplier ** (retry_number - 1)
        )
        return self.random() * ceiling if self.jitter else ceiling

    def is_retryable(self, error: SandboxError) -> bool:
        """Whether ``error`` is worth another attempt of a call that is safe to repeat."""
        if error.code in self.retryable_codes:
            return True
        return error.code == grpc.StatusCode.RESOURCE_EXHAUSTED and error.retry_after is not None

    def delay(self, error: SandboxError, retry_number: int) -> float:
        """The wait before retry ``retry_number``: the server's RetryInfo if sent, else backoff."""
        if error.retry_after is not None:
            return max(0.0, error.retry_after)
        return self.backoff(retry_number)

    def start(self, *, stream: bool = False) -> Attempts:
        """Begins tracking one call's attempts against this policy.

        A resumable ``stream`` is bounded by the deadline alone when there is one.
        """
        unbounded = stream and self.deadline is not None
        return Attempts(self, max_attempts=math.inf if unbounded else self.max_attempts)


class Attempts:
    """One call's attempts: what timeout the next one gets and whether to retry."""

    __slots__ = ("_deadline_at", "_max_attempts", "made", "policy")

    def __init__(self, policy: RetryPolicy, *, max_attempts: float) -> None:
        self.policy = policy
        self._max_attempts = max_attempts
        self.made = 0
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
        if not policy.is_retryable(error) or self.made >= self._max_attempts:
            return None
        wait = policy.delay(error, self.made)
        if policy.clock() + wait >= self._deadline_at:
            return None
        return wait

    def restart_deadline(self) -> None:
        """Starts a new deadline window and attempt count (a stream made progress)."""
        self.made = 0
        policy = self.policy
        self._deadline_at = (
            policy.clock() + policy.deadline if policy.deadline is not None else math.inf
        )
