"""The experiments' event log: commit first, then wake the streams that follow it.

Subscribers never receive events from memory: a commit only wakes them, and
each reads the events it has not seen from the database. A slow consumer
therefore never holds up the experiment and never loses an event, and every
streamed event is one that survives a crash.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

from sandbox_sdk.server.orchestrator.experiments.records import (
    EventPayload,
    ExperimentChanges,
    OutputEvent,
    SampleRecord,
    StateEvent,
    StoredEvent,
)
from sandbox_sdk.server.orchestrator.experiments.store import ExperimentStore

STREAM_PAGE_SIZE = 500
OUTPUT_FLUSH_SECONDS = 0.05
OUTPUT_FLUSH_COUNT = 64
# A follower re-reads at least this often, in case it was woken by nobody
# (for example the experiment was changed by another process on the same file).
FOLLOW_POLL_SECONDS = 1.0


class EventLog:
    """Commits experiment events and lets streams wait for new ones."""

    def __init__(self, store: ExperimentStore) -> None:
        self.store = store
        self._waiters: dict[str, asyncio.Event] = {}

    def commit(
        self,
        experiment_id: str,
        payloads: Sequence[EventPayload],
        changes: ExperimentChanges | None = None,
        sample: SampleRecord | None = None,
        *,
        has_output: bool = False,
    ) -> list[StoredEvent]:
        """Commits the events (and changes) atomically, then wakes the experiment's streams."""
        events = self.store.commit(experiment_id, payloads, changes, sample, has_output=has_output)
        self.notify(experiment_id)
        return events

    def notify(self, experiment_id: str) -> None:
        """Wakes every stream waiting on the experiment."""
        waiter = self._waiters.pop(experiment_id, None)
        if waiter is not None:
            waiter.set()

    async def stream(
        self, experiment_id: str, after_sequence: int, *, follow: bool
    ) -> AsyncIterator[StoredEvent]:
        """The committed events after ``after_sequence``.

        Without ``follow`` it ends at the newest committed event. With it, it
        waits for more until it has sent the state event that ends the
        experiment (at once if that was sent before ``after_sequence``).
        """
        last = after_sequence
        try:
            while True:
                # Take the waiter before reading, so a commit made while this
                # stream is suspended in a yield still wakes it afterwards.
                waiter = self._waiters.setdefault(experiment_id, asyncio.Event())
                events = self.store.events_after(experiment_id, last, STREAM_PAGE_SIZE)
                for event in events:
                    yield event
                    last = event.sequence
                    if follow and _is_final(event):
                        return
                if len(events) == STREAM_PAGE_SIZE:
                    continue
                if not follow or self._finished_before(experiment_id, last):
                    return
                try:
                    await asyncio.wait_for(waiter.wait(), FOLLOW_POLL_SECONDS)
                except TimeoutError:
                    continue
        finally:
            if self._finished_before(experiment_id, last):
                # No commit will ever wake a waiter of a finished experiment.
                self._waiters.pop(experiment_id, None)

    def _finished_before(self, experiment_id: str, sequence: int) -> bool:
        record = self.store.get(experiment_id)
        return record is None or (record.state.is_final and record.last_sequence <= sequence)


class ExperimentWriter:
    """Writes one running experiment's events, batching streamed output.

    Output deltas are buffered and committed together, at most
    ``OUTPUT_FLUSH_SECONDS`` after the first of them or every
    ``OUTPUT_FLUSH_COUNT`` deltas; any other event first commits the
    buffered output, in the same transaction, so the order is kept.
    """

    def __init__(self, log: EventLog, experiment_id: str) -> None:
        self.log = log
        self.experiment_id = experiment_id
        self._buffer: list[EventPayload] = []
        self._timer: asyncio.TimerHandle | None = None
        self.has_output = False

    def output(self, event: OutputEvent) -> None:
        """Buffers a delta of generated text."""
        self._buffer.append(event)
        if len(self._buffer) >= OUTPUT_FLUSH_COUNT:
            self.flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(OUTPUT_FLUSH_SECONDS, self.flush)

    def emit(
        self,
        payloads: Sequence[EventPayload] = (),
        changes: ExperimentChanges | None = None,
        sample: SampleRecord | None = None,
    ) -> list[StoredEvent]:
        """Commits buffered output, then ``payloads``, ``changes`` and ``sample``, atomically."""
        pending, self._buffer = self._buffer, []
        self._cancel_timer()
        first_output = bool(pending) and not self.has_output
        self.has_output = self.has_output or bool(pending)
        return self.log.commit(
            self.experiment_id,
            [*pending, *payloads],
            changes,
            sample,
            has_output=first_output,
        )

    def flush(self) -> None:
        """Commits buffered output now."""
        self._timer = None
        if self._buffer:
            self.emit()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def _is_final(event: StoredEvent) -> bool:
    return isinstance(event.payload, StateEvent) and event.payload.state.is_final
