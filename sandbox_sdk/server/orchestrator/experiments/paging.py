"""Page sizes of the experiment listings (their tokens are ``server.page_tokens``)."""

from __future__ import annotations

from sandbox_sdk.server.status import invalid_argument


def page_size(requested: int, default: int, maximum: int) -> int:
    """The effective page size: ``default`` for 0, at most ``maximum``; negative is invalid."""
    if requested < 0:
        raise invalid_argument([("page_size", f"use 0 (for {default}) to {maximum}")])
    return min(requested or default, maximum)
