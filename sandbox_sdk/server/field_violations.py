"""Collecting a request's bad fields, to refuse them all in one INVALID_ARGUMENT."""

from __future__ import annotations

from sandbox_sdk.server.status import invalid_argument


class FieldViolations:
    """Collects (field path, what to do) pairs and raises them together.

    A validator checks every field before it answers, so the caller learns of
    every mistake at once instead of one per attempt.
    """

    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []

    def add(self, field_path: str, description: str) -> None:
        """Records that ``field_path`` is wrong and what to do about it."""
        self.items.append((field_path, description))

    def raise_if_any(self) -> None:
        """Raises INVALID_ARGUMENT naming every field recorded so far, if any."""
        if self.items:
            raise invalid_argument(self.items)
