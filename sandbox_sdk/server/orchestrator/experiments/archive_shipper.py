"""Ships finished experiments from the orchestrator's outbox to the shared archive.

When an archive is configured, the transaction that records an experiment's
final state also writes its row in the outbox (``exp_archive_outbox``), so a
crash cannot lose it. The shipper reads each pending experiment in one
snapshot, builds the very messages GetExperiment, GetExperimentResults and
StreamExperimentEvents return (with the handlers' converters), stores them
with :meth:`ExperimentArchive.store` (one transaction, a repeat changes
nothing) and deletes the outbox row only after that committed. A crash
between the two ships the experiment again, to the same effect: exactly once.

It ships what is pending when it starts (rows left by a previous process)
and whenever a new row commits, retries with jittered exponential backoff
while the shared store is unreachable, and never blocks the event loop: the
local reads go to the store's reader threads, building the messages and the
shared store's transaction to worker threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random

from sandbox_sdk.api.v1 import experiment_pb2, requests_pb2
from sandbox_sdk.server.orchestrator.experiments import convert
from sandbox_sdk.server.orchestrator.experiments.store import ArchiveContents, ExperimentStore
from sandbox_sdk.server.store.archive import (
    ArchivedEvent,
    ArchivedExperiment,
    ArchivedSample,
    ExperimentArchive,
)
from sandbox_sdk.utils.backoff import backoff_ceiling, full_jitter

log = logging.getLogger(__name__)

_BATCH = 100
# A last chance at stop() to ship what the shutdown itself finished.
STOP_FLUSH_SECONDS = 5.0


def archived_experiment(contents: ArchiveContents) -> ArchivedExperiment:
    """The archive's copy of a finished experiment: the messages its RPCs return, serialized.

    The Experiment message is the one GetExperiment builds (a finished experiment has no
    queue position); the summary holds GetExperimentResults' metrics and total usage.
    """
    record = contents.record
    aggregates = contents.aggregates
    summary = requests_pb2.GetExperimentResultsResponse(
        metrics=[convert.aggregate_to_proto(n, s) for n, s in aggregates.metrics],
        total_usage=experiment_pb2.TokenUsage(
            prompt_tokens=aggregates.prompt_tokens,
            completion_tokens=aggregates.completion_tokens,
        ),
    )
    return ArchivedExperiment(
        tenant=record.tenant,
        experiment_id=record.id,
        experiment=convert.experiment_to_proto(record, 0).SerializeToString(),
        summary=summary.SerializeToString(),
        samples=[
            ArchivedSample(s.input_index, s.repeat, convert.sample_to_proto(s).SerializeToString())
            for s in contents.samples
        ],
        events=[ArchivedEvent(sequence, message) for sequence, message in contents.events],
    )


class ArchiveShipper:
    """Empties the outbox into the archive in the background; see the module docstring."""

    def __init__(
        self,
        store: ExperimentStore,
        archive: ExperimentArchive,
        *,
        initial_backoff_seconds: float = 0.5,
        max_backoff_seconds: float = 30.0,
        poll_seconds: float = 30.0,
    ) -> None:
        self._store = store
        self._archive = archive
        self._initial_backoff = initial_backoff_seconds
        self._max_backoff = max_backoff_seconds
        self._poll_seconds = poll_seconds
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._failures = 0
        self.shipped = 0
        store.on_outbox = self.wake

    @property
    def failing(self) -> bool:
        """Whether the last attempt to reach the archive failed."""
        return self._failures > 0

    def wake(self) -> None:
        """Ships soon: a new row is in the outbox (call on the event loop)."""
        self._wake.set()

    async def start(self) -> None:
        """Starts shipping, beginning with whatever a previous process left pending."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="archive-shipper")

    async def stop(self, flush_seconds: float = STOP_FLUSH_SECONDS) -> None:
        """Stops shipping; first tries for up to ``flush_seconds`` to ship what is pending
        (unless the archive is failing). Rows not shipped wait for the next start."""
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        if flush_seconds > 0 and not self.failing:
            try:
                async with asyncio.timeout(flush_seconds):
                    await self.ship_pending()
            except Exception:  # shipped at the next start instead
                log.warning("archive: pending experiments left for the next start", exc_info=True)

    async def ship_pending(self) -> int:
        """Ships every pending experiment; returns how many. Raises when the archive fails."""
        count = 0
        while True:
            pending = await self._store.aoutbox(_BATCH)
            for experiment_id in pending:
                await self.ship(experiment_id)
                count += 1
            if len(pending) < _BATCH:
                return count

    async def ship(self, experiment_id: str) -> None:
        """Ships one experiment, then removes its outbox row."""
        contents = await self._store.aarchive_contents(experiment_id)
        if contents is not None:
            archived = await asyncio.to_thread(archived_experiment, contents)
            stored = await asyncio.to_thread(self._archive.store, archived)
            log.info(
                "archive: experiment %s %s",
                experiment_id,
                "archived" if stored else "was archived already",
            )
        await self._store.adelete_outbox(experiment_id)
        self.shipped += 1

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            try:
                await self.ship_pending()
            except Exception:  # the shared store is down, most likely: back off and retry
                self._failures += 1
                delay = max(
                    0.05,
                    full_jitter(
                        backoff_ceiling(
                            self._failures,
                            initial=self._initial_backoff,
                            multiplier=2.0,
                            maximum=self._max_backoff,
                        ),
                        random.random,
                    ),
                )
                log.warning(
                    "archive: shipping failed (attempt %d); retrying in %.1fs",
                    self._failures,
                    delay,
                    exc_info=self._failures == 1,
                )
                await asyncio.sleep(delay)
                continue
            self._failures = 0
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._poll_seconds):
                    await self._wake.wait()
