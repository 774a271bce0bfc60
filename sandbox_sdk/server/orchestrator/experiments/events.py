"""The experiments' event log: commit first, then wake the streams that follow it.

Subscribers never receive events from memory: a commit only wakes them, and
each reads the events it has not seen from the database. A slow consumer
therefore never holds up the experiment and never loses an event, and every
streamed event is one that survives a crash.

Commits go through the store's batch writer, which wakes the streams once
per committed batch; streams read on the store's reader threads. The event
loop never waits for SQLite.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncGenerator, Callable, Coroutine, Sequence
from typing import Any, TypeVar

from sandbox_sdk.server.orchestrator.experiments.records import (
    EventPage,
    EventPayload,
    ExperimentChanges,
    OutputEvent,
    SampleRecord,
    StoredEvent,
)
from sandbox_sdk.server.orchestrator.experiments.store import ExperimentStore

T = TypeVar("T")
PageReader = Callable[[str, int, int], Coroutine[Any, Any, EventPage[T]]]
"""Reads a page: ``(experiment_id, after_sequence, limit)`` to the events after it."""
ResponsePages = AsyncGenerator[list[bytes], None]
"""A stream's serialized StreamExperimentEventsResponses, a page at a time."""
STREAM_PAGE_SIZE = 500
FIRST_PAGE_SIZE = 50
OUTPUT_FLUSH_SECONDS = 0.05
OUTPUT_FLUSH_COUNT = 64
# A follower re-reads at least this often, in case it was woken by nobody
# (for example the experiment was changed by another process on the same file).
FOLLOW_POLL_SECONDS = 1.0
# How many commits one running experiment may have queued but not yet
# committed before it waits: the writer batches them, and memory stays bounded.
MAX_COMMITS_IN_FLIGHT = 256


class EventLog:
    """Commits experiment events and lets streams wait for new ones."""

    def __init__(self, store: ExperimentStore) -> None:
        self.store = store
        self._waiters: dict[str, asyncio.Event] = {}
        store.writer.on_commit = self._committed

    async def commit(
        self,
        experiment_id: str,
        payloads: Sequence[EventPayload],
        changes: ExperimentChanges | None = None,
        sample: SampleRecord | None = None,
        *,
        has_output: bool = False,
    ) -> list[StoredEvent]:
        """Commits the events (and changes) atomically and waits until they are durable."""
        future = self.store.submit_commit(
            experiment_id, payloads, changes, sample, has_output=has_output
        )
        return await asyncio.shield(future)

    def notify(self, experiment_id: str) -> None:
        """Wakes every stream waiting on the experiment (on the loop)."""
        waiter = self._waiters.pop(experiment_id, None)
        if waiter is not None:
            waiter.set()

    def _committed(self, experiment_ids: Sequence[str]) -> None:
        """Called by the writer after each commit: wakes the streams of those experiments."""
        for experiment_id in experiment_ids:
            self.notify(experiment_id)

    async def stream(
        self, experiment_id: str, after_sequence: int, *, follow: bool
    ) -> AsyncGenerator[StoredEvent, None]:
        """The committed events after ``after_sequence``, one by one; see :meth:`pages`."""
        pages = self.pages(
            experiment_id, after_sequence, follow=follow, read=self.store.aevent_page
        )
        async with contextlib.aclosing(pages):
            async for page in pages:
                for event in page:
                    yield event

    def responses(self, experiment_id: str, after_sequence: int, *, follow: bool) -> ResponsePages:
        """The serialized StreamExperimentEventsResponse of each committed event after
        ``after_sequence``, a page at a time, made on a reader thread from the messages
        stored with the events; see :meth:`pages`."""
        return self.pages(
            experiment_id, after_sequence, follow=follow, read=self.store.aresponse_page
        )

    async def pages(
        self,
        experiment_id: str,
        after_sequence: int,
        *,
        follow: bool,
        read: PageReader[T],
    ) -> AsyncGenerator[list[T], None]:
        """The committed events after ``after_sequence``, oldest first, in the pages
        ``read(experiment_id, after, limit)`` makes of them (on a reader thread); never an
        empty page.

        Without ``follow`` it ends at the newest committed event. With it, it
        waits for more until it has sent the state event that ends the
        experiment (at once if that was sent before ``after_sequence``).

        The next page is read once this one is sent, not while it is: a page of
        stored messages costs its reader thread about a millisecond, and reading
        ahead only made that thread contend with the loop for the GIL while the
        loop sent.
        """
        last = after_sequence
        # Taken before each read, so a commit made while this stream is suspended in
        # a yield (or its read is on a thread) still wakes it afterwards.
        waiter = self._waiter(experiment_id)
        try:
            while True:
                # Short pages until the stream has sent something: its first events
                # go out without waiting for a full page to be read.
                size = FIRST_PAGE_SIZE if last == after_sequence else STREAM_PAGE_SIZE
                page = await read(experiment_id, last, size)
                if follow and page.final_at is not None:
                    yield page.events[: page.final_at + 1]
                    return
                if page.events:
                    yield page.events
                last = page.last_sequence
                if len(page.events) < size:  # the newest committed event was read
                    if not follow or await self._finished_before(experiment_id, last):
                        return
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(waiter.wait(), FOLLOW_POLL_SECONDS)
                waiter = self._waiter(experiment_id)
        finally:
            idle = self._waiters.get(experiment_id)
            if idle is not None and not idle.is_set():
                # Drop an idle waiter; a live stream of the same experiment
                # makes a new one on its next read.
                self._waiters.pop(experiment_id, None)
                idle.set()

    def _waiter(self, experiment_id: str) -> asyncio.Event:
        """The event the next commit of the experiment sets."""
        return self._waiters.setdefault(experiment_id, asyncio.Event())

    async def _finished_before(self, experiment_id: str, sequence: int) -> bool:
        progress = await self.store.aprogress(experiment_id)
        return progress is None or (progress[0].is_final and progress[1] <= sequence)


class ExperimentWriter:
    """Writes one running experiment's events, batching streamed output.

    Output deltas are buffered and committed together, at most
    ``OUTPUT_FLUSH_SECONDS`` after the first of them or every
    ``OUTPUT_FLUSH_COUNT`` deltas; any other event first commits the
    buffered output, in the same transaction, so the order is kept.

    Commits are pipelined: :meth:`emit` queues one and returns at once while
    fewer than ``MAX_COMMITS_IN_FLIGHT`` are uncommitted, so the writer
    thread can put many samples into one transaction. Nothing is reported as
    done before it is committed: streams and reads see only the database,
    and :meth:`drain` (awaited before an experiment's end is recorded as
    final) re-raises any commit that failed.
    """

    def __init__(self, log: EventLog, experiment_id: str) -> None:
        self.log = log
        self.experiment_id = experiment_id
        self._buffer: list[EventPayload] = []
        self._timer: asyncio.TimerHandle | None = None
        self._in_flight: collections.deque[asyncio.Future[list[StoredEvent]]] = collections.deque()
        self.has_output = False

    def output(self, event: OutputEvent) -> None:
        """Buffers a delta of generated text."""
        self._buffer.append(event)
        if len(self._buffer) >= OUTPUT_FLUSH_COUNT:
            self.flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(OUTPUT_FLUSH_SECONDS, self.flush)

    async def emit(
        self,
        payloads: Sequence[EventPayload] = (),
        changes: ExperimentChanges | None = None,
        sample: SampleRecord | None = None,
    ) -> None:
        """Queues buffered output, then ``payloads``, ``changes`` and ``sample`` as one atomic
        commit; waits only when too many commits are still uncommitted."""
        self.submit(payloads, changes, sample)
        self._raise_failed()
        while len(self._in_flight) > MAX_COMMITS_IN_FLIGHT:
            await asyncio.shield(self._in_flight.popleft())

    def submit(
        self,
        payloads: Sequence[EventPayload] = (),
        changes: ExperimentChanges | None = None,
        sample: SampleRecord | None = None,
    ) -> asyncio.Future[list[StoredEvent]]:
        """Queues the commit :meth:`emit` would, without waiting at all."""
        pending, self._buffer = self._buffer, []
        self._cancel_timer()
        first_output = bool(pending) and not self.has_output
        self.has_output = self.has_output or bool(pending)
        future = self.log.store.submit_commit(
            self.experiment_id,
            [*pending, *payloads],
            changes,
            sample,
            has_output=first_output,
        )
        self._in_flight.append(future)
        return future

    async def drain(self) -> None:
        """Waits until every queued commit is durable; raises the first that failed."""
        while self._in_flight:
            await asyncio.shield(self._in_flight.popleft())

    def flush(self) -> None:
        """Queues buffered output for commit now."""
        self._timer = None
        if self._buffer:
            self.submit()

    def _raise_failed(self) -> None:
        """Forgets commits that are done; raises the first that failed."""
        while self._in_flight and self._in_flight[0].done():
            done = self._in_flight.popleft()
            error = None if done.cancelled() else done.exception()
            if error is not None:
                raise error

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
