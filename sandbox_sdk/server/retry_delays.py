"""How long the services tell a refused caller to wait (``RetryInfo.retry_delay``).

Two rules for every delay sent with RESOURCE_EXHAUSTED:

- Honest: the time after which trying again can succeed, not a guess padded
  for safety. Capacity is freed by deletes within a second, so a full
  orchestrator asks for about a second; a rate limit asks for the time its
  token bucket needs to refill a token for this caller (see ``rate_limits.py``).
- Spread: callers refused at the same moment must not all come back at the
  same moment, so each delay is stretched by a random factor between 1 and
  ``1 + SPREAD``. A delay is never shortened: before it, a retry is refused.

The SDK adds its own jitter on top, and it never waits less than it was told.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from sandbox_sdk.utils.backoff import stretched

SPREAD = 0.5
CAPACITY_RETRY_SECONDS = 1.0


def spread(seconds: float, draw: Callable[[], float] = random.random) -> float:
    """``seconds`` stretched by a random factor in [1, 1 + SPREAD); never shorter.

    ``draw`` returns a number in [0, 1), as ``random.random`` does.
    """
    return stretched(seconds, SPREAD, draw)


def capacity_retry_delay(draw: Callable[[], float] = random.random) -> float:
    """The delay sent with CAPACITY_EXHAUSTED: about a second, as deletes free room that fast."""
    return spread(CAPACITY_RETRY_SECONDS, draw)
