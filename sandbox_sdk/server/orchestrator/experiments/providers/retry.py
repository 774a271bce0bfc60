"""The one retry policy for model calls: exponential backoff with full jitter, or Retry-After."""

from __future__ import annotations

import random
from dataclasses import dataclass

from sandbox_sdk.server.orchestrator.experiments.providers.base import ProviderError
from sandbox_sdk.server.orchestrator.experiments.settings import RetrySettings


@dataclass(frozen=True)
class RetryPolicy:
    """Decides whether and when a failed model call is attempted again."""

    settings: RetrySettings

    def delay_before_retry(self, attempt: int, error: ProviderError) -> float | None:
        """Seconds to wait before attempt ``attempt + 1``, or None to give up.

        ``attempt`` counts from 1 (the attempt that just failed).
        """
        if not error.retryable or attempt >= self.settings.max_attempts:
            return None
        if error.retry_after is not None:
            return min(max(error.retry_after, 0.0), self.settings.max_retry_after_seconds)
        ceiling = min(
            self.settings.max_backoff_seconds,
            self.settings.initial_backoff_seconds * 2 ** (attempt - 1),
        )
        return random.uniform(0.0, ceiling)  # noqa: S311 -- jitter, not security
