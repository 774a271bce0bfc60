"""Watching a sandboxed command from the host by its exact command line, for the gateway tests
that check a cancelled or timed-out call leaves no process behind."""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from collections.abc import Callable

import pytest


def sleep_marker() -> list[str]:
    """A ``sleep`` command line no other test runs at the same time."""
    return ["sleep", str(10_000 + secrets.randbelow(80_000))]


def processes_running(argv: list[str]) -> set[int]:
    """Live processes (anywhere on the machine) running exactly ``argv``."""
    wanted = "\0".join(argv).encode() + b"\0"
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                if cmdline.read() == wanted:
                    found.add(int(entry))
        except OSError:
            continue
    return found


async def eventually(condition: Callable[[], bool], what: str, within: float = 15.0) -> None:
    """Polls until ``condition`` holds; fails after ``within`` s (a deadline, not a timing test)."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not happen within {within}s")
        await asyncio.sleep(0.05)
