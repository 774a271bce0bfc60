"""The one retry policy for model calls: exponential backoff with full jitter, or Retry-After.

The backoff is the package's shared one (:mod:`sandbox_sdk.utils.backoff`). A
model server's Retry-After is waited as given, not stretched as the SDK
stretches RetryInfo: an orchestrator makes one model call per running
experiment (the scheduler's ``max_concurrent``), not a crowd of callers.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from sandbox_sdk.server.orchestrator.experiments.providers.base import ProviderError
from sandbox_sdk.server.orchestrator.experiments.settings import RetrySettings
from sandbox_sdk.utils.backoff import backoff_ceiling, full_jitter

_MULTIPLIER = 2.0


@dataclass(frozen=True)
class RetryPolicy:
    """Decides whether and when a failed model call is attempted again.

    ``random`` draws in [0, 1) as ``random.random`` does; injectable for tests.
    """

    settings: RetrySettings
    random: Callable[[], float] = field(default=random.random, compare=False, repr=False)

    def delay_before_retry(self, attempt: int, error: ProviderError) -> float | None:
        """Seconds to wait before attempt ``attempt + 1``, or None to give up.

        ``attempt`` counts from 1 (the attempt that just failed).
        """
        if not error.retryable or attempt >= self.settings.max_attempts:
            return None
        if error.retry_after is not None:
            return min(max(error.retry_after, 0.0), self.settings.max_retry_after_seconds)
        ceiling = backoff_ceiling(
            attempt,
            initial=self.settings.initial_backoff_seconds,
            multiplier=_MULTIPLIER,
            maximum=self.settings.max_backoff_seconds,
        )
        return full_jitter(ceiling, self.random)
