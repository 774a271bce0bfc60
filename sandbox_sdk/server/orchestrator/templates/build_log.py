"""A build's log as it is written to the template's events: bounded, and off the event loop.

Build steps run commands a tenant wrote, and those may print without end. Lines are
cut to ``MAX_LINE_CHARS``; past ``MAX_LINES`` they are counted, not kept, and one
closing line says how many were dropped. Kept lines are written in batches on a
worker thread, in order, and watchers are told after each batch.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

MAX_LINES = 20_000
MAX_LINE_CHARS = 4096


class BuildLog:
    """The log-line callback of one build; :meth:`close` before recording its end."""

    def __init__(
        self,
        append: Callable[[Sequence[str]], None],
        notify: Callable[[], None],
        max_lines: int = MAX_LINES,
    ) -> None:
        self._append = append
        self._notify = notify
        self._max_lines = max_lines
        self._loop = asyncio.get_running_loop()
        self._pending: list[str] = []
        self._kept = 0
        self._dropped = 0
        self._writing: asyncio.Task[None] | None = None

    def __call__(self, line: str) -> None:
        """Takes one line; safe to call from the build's worker threads too."""
        self._loop.call_soon_threadsafe(self._take, line)

    async def close(self) -> None:
        """Waits for every kept line to be written, then notes the dropped ones."""
        await asyncio.sleep(0)  # lines handed over from threads just before are taken
        while self._writing is not None:
            await asyncio.shield(self._writing)
        if self._dropped:
            note = f"... {self._dropped} more lines were not kept (at most {self._max_lines})"
            await asyncio.to_thread(self._append, [note])
            self._notify()

    def _take(self, line: str) -> None:
        if self._kept >= self._max_lines:
            self._dropped += 1
            return
        self._kept += 1
        self._pending.append(line[:MAX_LINE_CHARS])
        if self._writing is None:
            self._writing = self._loop.create_task(self._write())

    async def _write(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                await asyncio.to_thread(self._append, batch)
                self._notify()
        finally:
            self._writing = None
