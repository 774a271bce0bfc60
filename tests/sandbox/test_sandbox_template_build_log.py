"""A build's log: bounded however much a build step prints, in order, and off the loop."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence

from sandbox_sdk.server.orchestrator.templates.build_log import MAX_LINE_CHARS, BuildLog


class _Written:
    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.notified = 0
        self.threads: set[str] = set()

    def append(self, lines: Sequence[str]) -> None:
        self.threads.add(threading.current_thread().name)
        self.batches.append(list(lines))

    def notify(self) -> None:
        self.notified += 1

    @property
    def lines(self) -> list[str]:
        return [line for batch in self.batches for line in batch]


async def test_lines_past_the_limit_are_counted_not_kept() -> None:
    written = _Written()
    log = BuildLog(written.append, written.notify, max_lines=100)
    for number in range(1000):
        log(f"line {number}")
    log("x" * (MAX_LINE_CHARS + 10))
    await log.close()
    assert written.lines[:100] == [f"line {n}" for n in range(100)]
    assert written.lines[100:] == ["... 901 more lines were not kept (at most 100)"]
    assert written.notified >= 2
    assert threading.main_thread().name not in written.threads  # written off the loop


async def test_long_lines_are_cut_and_threads_may_log() -> None:
    written = _Written()
    log = BuildLog(written.append, written.notify)
    await asyncio.to_thread(log, "y" * (MAX_LINE_CHARS * 3))
    await log.close()
    assert written.lines == ["y" * MAX_LINE_CHARS]
