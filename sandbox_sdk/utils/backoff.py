"""Waits between attempts: exponential ceilings, full jitter, server delays, deadlines.

The pure arithmetic every retry loop in the package shares (the SDK's
``RetryPolicy``, the gateway's forwarding to orchestrators, the RetryInfo
delays the services send and the experiment engine's model calls). Nothing
here sleeps or reads a clock; randomness comes in as ``draw``, a function
returning a number in [0, 1) as ``random.random`` does.

- The ceiling of the wait before retry n grows by ``multiplier`` per retry
  from ``initial`` and stops at ``maximum``.
- Full jitter waits a uniform random time up to the ceiling, so that callers
  that failed together do not retry together.
- A delay a server asked for is never shortened, only stretched by a random
  factor between 1 and ``1 + fraction``: shorter, the retry would be refused
  again; unstretched, everyone refused together would come back together.
"""

from __future__ import annotations

from collections.abc import Callable

Draw = Callable[[], float]


def backoff_ceiling(
    retry_number: int, *, initial: float, multiplier: float, maximum: float
) -> float:
    """The longest wait before retry ``retry_number`` (1 for the first retry).

    ``initial * multiplier ** (retry_number - 1)``, capped at ``maximum``.
    """
    try:
        grown = initial * multiplier ** (retry_number - 1)
    except OverflowError:  # thousands of retries of a stream bounded by its deadline alone
        return maximum
    return min(maximum, grown)


def full_jitter(limit: float, draw: Draw) -> float:
    """A uniform random wait between 0 and ``limit``."""
    return draw() * limit


def stretched(server_delay: float, fraction: float, draw: Draw) -> float:
    """``server_delay`` stretched by a random factor in [1, 1 + ``fraction``); never shorter.

    A negative delay counts as 0.
    """
    return max(0.0, server_delay) * (1.0 + fraction * draw())


def ends_in_time(wait: float, remaining: float | None) -> bool:
    """Whether a wait of ``wait`` seconds ends before a deadline ``remaining`` seconds away.

    ``None`` means no deadline.
    """
    return remaining is None or wait < remaining


def wait_for_last_attempt(remaining: float, *, margin: float, minimum: float) -> float | None:
    """The wait that starts one last attempt ``margin`` seconds before the deadline.

    ``None`` when no more than ``minimum`` seconds are left: too little for an
    attempt to get anywhere. With less than ``margin`` left, the attempt starts now.
    """
    if remaining <= minimum:
        return None
    return max(0.0, remaining - margin)
