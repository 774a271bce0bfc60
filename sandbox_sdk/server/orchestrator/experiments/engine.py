"""The experiment engine: accepts experiments, queues them fairly, runs them, recovers them.

Lifecycle: an accepted experiment is QUEUED (persisted, with its place in
the fair queue), turns RUNNING when a slot is free (``max_concurrent``
overall, ``max_concurrent_per_tenant`` per tenant), and ends SUCCEEDED,
FAILED, CANCELLED or TIMED_OUT. Every transition is committed with its
event before anyone can see it. With an archive configured, the final
transition also queues the experiment in the outbox in the same
transaction, and the :class:`ArchiveShipper` ships it to the shared store.

Restarts: ``start()`` finds experiments left RUNNING by a previous process.
One that produced no model output yet is queued again (at its old place);
one that did is FAILED with reason ORCHESTRATOR_RESTARTED, keeping the
samples it finished. ``stop()`` applies the same rule at once to the
experiments it interrupts, so the database never claims that a stopped
orchestrator is still running something.

The engine never blocks the event loop on SQLite: every transition is a
commit awaited through the store's writer thread (so "done" means
durable), and reads go to its reader threads.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeAlias, TypeVar

import grpc
from prometheus_client import CollectorRegistry

from sandbox_sdk.errors import ErrorReason
from sandbox_sdk.server import ids
from sandbox_sdk.server.clipping import echo
from sandbox_sdk.server.database import Database
from sandbox_sdk.server.orchestrator.experiments.archive_shipper import ArchiveShipper
from sandbox_sdk.server.orchestrator.experiments.events import (
    EventLog,
    ExperimentWriter,
    ResponsePages,
)
from sandbox_sdk.server.orchestrator.experiments.metrics import EngineMetrics
from sandbox_sdk.server.orchestrator.experiments.providers.registry import ModelRegistry
from sandbox_sdk.server.orchestrator.experiments.records import (
    ExperimentChanges,
    ExperimentRecord,
    ExperimentState,
    Failure,
    LogEvent,
    LogLevel,
    SampleRecord,
    StateEvent,
    StoredEvent,
)
from sandbox_sdk.server.orchestrator.experiments.results import Aggregates
from sandbox_sdk.server.orchestrator.experiments.results_cache import AggregateCache
from sandbox_sdk.server.orchestrator.experiments.runner import (
    ExperimentFailedError,
    ExperimentRunner,
)
from sandbox_sdk.server.orchestrator.experiments.scheduler import FairQueue, QueueEntry
from sandbox_sdk.server.orchestrator.experiments.settings import ExperimentSettings
from sandbox_sdk.server.orchestrator.experiments.store import (
    ExperimentStore,
    ListFilter,
    NewExperiment,
)
from sandbox_sdk.server.orchestrator.experiments.validation import ValidatedRequest
from sandbox_sdk.server.orchestrator.ports import SandboxPort
from sandbox_sdk.server.request_ids import DuplicateRequestError
from sandbox_sdk.server.status import ServiceError, not_found
from sandbox_sdk.server.store.archive import ExperimentArchive

log = logging.getLogger(__name__)
T = TypeVar("T")

_Committed: TypeAlias = "asyncio.Future[list[StoredEvent]]"
# How long CancelExperiment waits for a running experiment to record its end.
CANCEL_WAIT_SECONDS = 10.0
_SHUTDOWN = "shutdown"
# Queued experiments with at most this many inline inputs keep their record in memory.
_REMEMBERED_INPUTS = 1000


@dataclass
class _Run:
    """A running experiment's task, and why the engine stopped it, if it did."""

    experiment_id: str
    tenant: str
    environment_id: str
    writer: ExperimentWriter
    task: asyncio.Task[None] | None = None
    started: _Committed | None = None
    start_time: float = 0.0
    record: ExperimentRecord | None = None
    discarded: bool = False
    holds_slot: bool = True
    stop: tuple[ExperimentState, Failure] | str | None = None
    recorded: bool = False
    finished: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass(frozen=True)
class ResultsPage:
    """An experiment, one page of its samples, and aggregates over all samples."""

    experiment: ExperimentRecord
    samples: list[SampleRecord]
    aggregates: Aggregates
    has_more: bool


class ExperimentEngine:
    """Queues, runs and records experiments; the RPC handlers are a thin layer over it."""

    def __init__(
        self,
        db: Database,
        settings: ExperimentSettings,
        sandbox: SandboxPort,
        orchestrator_id: str,
        registry: CollectorRegistry | None = None,
        *,
        archive: ExperimentArchive | None = None,
    ) -> None:
        self.settings = settings
        self.sandbox = sandbox
        self.orchestrator_id = orchestrator_id
        # With an archive, finished experiments are queued in the outbox as they finish
        # and shipped to the shared store (see archive_shipper.py).
        self.store = ExperimentStore(db, outbox=archive is not None)
        self.shipper = ArchiveShipper(self.store, archive) if archive is not None else None
        self.events = EventLog(self.store)
        self.models = ModelRegistry(settings.models)
        self.metrics = EngineMetrics(registry if registry is not None else CollectorRegistry())
        self._queue = FairQueue()
        # Records of experiments created here and still queued, so starting one needs no
        # read (only for specs with few inline inputs, to bound memory).
        self._records: dict[str, ExperimentRecord] = {}
        self._inserts: dict[str, asyncio.Future[None]] = {}
        self._running: dict[str, _Run] = {}
        self._running_per_tenant: collections.Counter[str] = collections.Counter()
        self._slots_used = 0
        self._aggregates = AggregateCache()
        self._background: set[asyncio.Task[None]] = set()
        self._next_order = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._accepting = False

    async def start(self) -> None:
        """Recovers experiments a previous process left, then starts dispatching."""
        self._loop = asyncio.get_running_loop()
        self._next_order = self.store.last_queue_order()
        await self._recover()
        self.sandbox.on_terminated(self._on_environment_terminated)
        self._accepting = True
        self._dispatch()
        if self.shipper is not None:
            await self.shipper.start()

    async def stop(self) -> None:
        """Stops accepting and dispatching; interrupted experiments are re-queued or FAILED
        (ORCHESTRATOR_RESTARTED) as on a restart, and model clients are closed. Every
        write queued before is committed before it returns."""
        self._accepting = False
        runs = list(self._running.values())
        for run in runs:
            self._interrupt(run, _SHUTDOWN)
        await asyncio.gather(*(run.finished.wait() for run in runs))
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        if self.shipper is not None:
            await self.shipper.stop()
        await self.models.aclose()
        await self.store.aclose()

    # Commands

    async def create(self, tenant: str, request: ValidatedRequest) -> ExperimentRecord:
        """Queues a validated experiment, or returns the one created with the same request id.

        It returns once the experiment and its QUEUED event are committed.
        """
        if request.request_id:
            existing = await self.store.afind_request(tenant, request.request_id)
            if existing is not None:
                return existing
        self._check_admission()
        spec = request.spec
        self._next_order += 1
        entry = QueueEntry(
            experiment_id=ids.new_id(ids.EXPERIMENT, self.orchestrator_id),
            tenant=tenant,
            priority=spec.priority,
            order=self._next_order,
            environment_id=request.environment_id,
        )
        new = NewExperiment(
            id=entry.experiment_id,
            tenant=tenant,
            environment_id=request.environment_id,
            spec=spec,
            model_name=request.model.config.name,
            total_samples=len(spec.inputs) * spec.repeats,
            request_id=request.request_id,
            queue_order=entry.order,
            create_time=time.time(),
        )
        queued = StateEvent(ExperimentState.QUEUED, queue_position=self._position_if_added(entry))
        inserted = self.store.submit_insert(new, queued)
        record = new.record()
        if len(spec.inputs) <= _REMEMBERED_INPUTS:
            self._records[new.id] = record
        # Queued and dispatched at once: the writer runs jobs in order, so whatever a run
        # commits lands after the insert, usually in the same transaction.
        self._inserts[new.id] = inserted
        self._queue.add(entry)
        self._dispatch()
        try:
            await asyncio.shield(inserted)
        except DuplicateRequestError:
            self._discard(entry.experiment_id)
            existing = await self.store.afind_request(tenant, request.request_id)
            if existing is None:  # pragma: no cover -- the unique index just said it exists
                raise
            return existing
        except BaseException:
            self._discard(entry.experiment_id)
            raise
        finally:
            self._inserts.pop(new.id, None)
        self.metrics.created.labels(new.model_name).inc()
        run = self._running.get(new.id)
        if run is None or run.started is None:
            # Still queued (answer with its live position), or already ended (read it).
            return record if new.id in self._queue else await self._get(new.id)
        # It started meanwhile: answer with the committed RUNNING state.
        try:
            events = await asyncio.shield(run.started)
        except Exception:  # the run records its own failure
            return await self._get(new.id)
        return dataclasses.replace(
            record,
            state=ExperimentState.RUNNING,
            start_time=run.start_time,
            last_sequence=events[-1].sequence,
        )

    def _discard(self, experiment_id: str) -> None:
        """Forgets an experiment whose insert failed, queued or already started."""
        self._records.pop(experiment_id, None)
        self._queue.remove(experiment_id)
        run = self._running.get(experiment_id)
        if run is not None:
            run.discarded = True
            self._interrupt(run, _SHUTDOWN)

    async def cancel(self, tenant: str, experiment_id: str) -> ExperimentRecord:
        """Cancels a queued or running experiment; a finished one is returned unchanged."""
        record = await self.get(tenant, experiment_id)
        if not record.state.is_final:
            run = await self._stop_experiment(
                record, Failure(ErrorReason.CANCELLED, "cancelled by the user")
            )
            if run is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(run.finished.wait()), CANCEL_WAIT_SECONDS)
        return await self._get(experiment_id)

    # Queries

    async def get(self, tenant: str, experiment_id: str) -> ExperimentRecord:
        """The tenant's experiment; NOT_FOUND for unknown ids and other tenants' experiments."""
        record = await self.store.aget(experiment_id) if experiment_id else None
        if record is None or record.tenant != tenant:
            raise not_found(
                ErrorReason.EXPERIMENT_NOT_FOUND,
                f"experiment {echo(experiment_id)} does not exist; ListExperiments lists yours",
            )
        return record

    async def list(
        self, tenant: str, filters: ListFilter, limit: int, before: tuple[float, str] | None
    ) -> list[ExperimentRecord]:
        """The tenant's experiments, newest first, after the ``before`` key."""
        return await self.store.alist_experiments(tenant, filters, limit, before)

    def queue_position(self, experiment_id: str) -> int:
        """The 1-based queue position of a QUEUED experiment, else 0."""
        return self._queue.position(experiment_id)

    async def results(
        self, tenant: str, experiment_id: str, page_size: int, after: tuple[int, int] | None
    ) -> ResultsPage:
        """One page of samples (by input, then repeat) and aggregates over all samples."""
        record = await self.get(tenant, experiment_id)
        page = await self.store.apage_samples(experiment_id, page_size + 1, after)
        aggregates = await self._aggregates.get(record, self.store.aaggregates)
        return ResultsPage(
            experiment=record,
            samples=page[:page_size],
            aggregates=aggregates,
            has_more=len(page) > page_size,
        )

    async def stream(
        self, tenant: str, experiment_id: str, after_sequence: int, *, follow: bool
    ) -> AsyncIterator[StoredEvent]:
        """The experiment's committed events after ``after_sequence``; see EventLog.stream."""
        await self.get(tenant, experiment_id)
        async for event in self.events.stream(experiment_id, after_sequence, follow=follow):
            yield event

    async def open_stream(
        self, tenant: str, experiment_id: str, after_sequence: int, *, follow: bool
    ) -> ResponsePages:
        """The tenant's experiment's serialized StreamExperimentEventsResponses, a page at a
        time (see EventLog.responses); NOT_FOUND at once for an experiment that is not the
        tenant's."""
        await self.get(tenant, experiment_id)
        return self.events.responses(experiment_id, after_sequence, follow=follow)

    def capacity(self) -> tuple[int, int]:
        """Experiments running now and experiments waiting, for GetCapacity."""
        return len(self._running), len(self._queue)

    # Dispatch

    def _position_if_added(self, entry: QueueEntry) -> int:
        self._queue.add(entry)
        try:
            return self._queue.position(entry.experiment_id)
        finally:
            self._queue.remove(entry.experiment_id)

    def _check_admission(self) -> None:
        if not self._accepting:
            raise ServiceError(
                grpc.StatusCode.UNAVAILABLE,
                ErrorReason.ORCHESTRATOR_UNAVAILABLE,
                "the orchestrator is not accepting experiments now; retry shortly",
                retry_after=1.0,
            )
        limit = self.settings.scheduler.max_queue_length
        if len(self._queue) >= limit:
            raise ServiceError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                ErrorReason.CAPACITY_EXHAUSTED,
                f"{limit} experiments are already waiting; retry when some have finished",
                retry_after=5.0,
            )

    def _tenant_has_room(self, tenant: str) -> bool:
        limit = self.settings.scheduler.max_concurrent_per_tenant
        return limit is None or self._running_per_tenant[tenant] < limit

    def _dispatch(self) -> None:
        while self._accepting and self._slots_used < self.settings.scheduler.max_concurrent:
            entry = self._queue.pop_next(self._tenant_has_room)
            if entry is None:
                break
            self._start(entry)
        self.metrics.running.set(len(self._running))
        self.metrics.queued.set(len(self._queue))

    def _start(self, entry: QueueEntry) -> None:
        writer = ExperimentWriter(self.events, entry.experiment_id)
        run = _Run(
            experiment_id=entry.experiment_id,
            tenant=entry.tenant,
            environment_id=entry.environment_id,
            writer=writer,
        )
        self._running[entry.experiment_id] = run
        self._slots_used += 1
        self._running_per_tenant[entry.tenant] += 1
        run.record = self._records.pop(entry.experiment_id, None)
        run.start_time = time.time()
        run.started = writer.submit(
            [StateEvent(ExperimentState.RUNNING)],
            ExperimentChanges(state=ExperimentState.RUNNING, start_time=run.start_time),
        )
        run.task = asyncio.create_task(self._execute(run), name=entry.experiment_id)
        run.task.add_done_callback(lambda _: self._run_done(run))

    async def _execute(self, run: _Run) -> None:
        writer = run.writer
        inserting = self._inserts.get(run.experiment_id)
        if inserting is not None:  # started before its insert committed
            with contextlib.suppress(Exception):
                await asyncio.shield(inserting)
            if run.discarded:
                return
        record = run.record or await self._get(run.experiment_id)
        outcome = await self._outcome(record, run, writer)
        if run.discarded:  # its insert failed: there is nothing to record
            return
        run.recorded = True
        self._finish(writer, outcome)
        # The slot is free once the end is queued; the run is finished once it is durable.
        self._free_slot(run)
        await writer.drain()

    def _run_done(self, run: _Run) -> None:
        """Bookkeeping after a run's task ended, however it ended."""
        if run.recorded or run.discarded:
            self._release(run)
            return
        # Cancelled before it recorded an end (before it started, or by the event
        # loop shutting down): record it now, and release the run once committed.
        run.recorded = True
        loop = self._loop
        try:
            future = self._finish(run.writer, run.stop or _SHUTDOWN)
        except Exception:  # the store is closed: recovery at the next start records it
            log.exception("could not record the end of experiment %s", run.experiment_id)
            self._release(run)
            return
        if loop is None or loop.is_closed():
            self._release(run)
            return
        future.add_done_callback(lambda done: self._released_after(done, run))

    def _released_after(self, committed: _Committed, run: _Run) -> None:
        if not committed.cancelled() and committed.exception() is not None:
            log.error("could not record the end of experiment %s", run.experiment_id)
        self._release(run)

    def _free_slot(self, run: _Run) -> None:
        """Lets another experiment start in this run's place (once per run)."""
        if not run.holds_slot:
            return
        run.holds_slot = False
        self._slots_used -= 1
        self._running_per_tenant[run.tenant] -= 1
        self._dispatch()

    def _release(self, run: _Run) -> None:
        if self._running.pop(run.experiment_id, None) is None:
            return
        run.finished.set()
        self._free_slot(run)

    async def _outcome(
        self, record: ExperimentRecord, run: _Run, writer: ExperimentWriter
    ) -> tuple[ExperimentState, Failure | None] | str:
        timeout = record.spec.timeout_seconds or self.settings.scheduler.default_timeout_seconds
        try:
            self.sandbox.require_running(record.tenant, record.environment_id)
            model = self.models.resolve(record.spec.model)
            runner = ExperimentRunner(record, model, self.sandbox, writer, self.metrics)
            async with asyncio.timeout(timeout):
                await runner.run()
        except ExperimentFailedError as error:
            return error.state, error.failure
        except ServiceError as error:
            return ExperimentState.FAILED, Failure(error.reason, error.message)
        except TimeoutError:
            message = f"the experiment ran longer than its timeout of {timeout:g}s"
            return ExperimentState.TIMED_OUT, Failure(ErrorReason.TIMEOUT, message)
        except asyncio.CancelledError:
            if run.stop is None:
                raise
            return run.stop
        except Exception:
            log.exception("experiment %s failed unexpectedly", record.id)
            message = "the orchestrator failed running the experiment; see its log"
            return ExperimentState.FAILED, Failure(ErrorReason.INTERNAL, message)
        return ExperimentState.SUCCEEDED, None

    def _finish(
        self, writer: ExperimentWriter, outcome: tuple[ExperimentState, Failure | None] | str
    ) -> _Committed:
        """Queues the commit of the experiment's end; the future completes once durable."""
        if outcome == _SHUTDOWN:
            return self._interrupted(writer)
        assert not isinstance(outcome, str)  # noqa: S101 -- _SHUTDOWN is the only string
        state, failure = outcome
        self.metrics.finished.labels(state.value).inc()
        return writer.submit(
            [StateEvent(state, failure)],
            ExperimentChanges(state=state, failure=failure, end_time=time.time()),
        )

    def _interrupted(self, writer: ExperimentWriter) -> _Committed:
        """Re-queues an interrupted experiment without output, else fails it."""
        if writer.has_output:
            failure = Failure(
                ErrorReason.ORCHESTRATOR_RESTARTED,
                "the orchestrator stopped while the experiment was running; run it again",
            )
            self.metrics.finished.labels(ExperimentState.FAILED.value).inc()
            return writer.submit(
                [StateEvent(ExperimentState.FAILED, failure)],
                ExperimentChanges(
                    state=ExperimentState.FAILED, failure=failure, end_time=time.time()
                ),
            )
        return writer.submit(
            [
                LogEvent(LogLevel.WARNING, "the orchestrator stopped before any output; re-queued"),
                StateEvent(ExperimentState.QUEUED),
            ],
            ExperimentChanges(state=ExperimentState.QUEUED, clear_start_time=True),
        )

    # Cancellation

    async def _stop_experiment(self, record: ExperimentRecord, failure: Failure) -> _Run | None:
        """Ends a queued experiment now, or interrupts a running one and returns its run."""
        run = self._running.get(record.id)
        if run is not None:
            self._interrupt(run, (ExperimentState.CANCELLED, failure))
            return run
        self._records.pop(record.id, None)
        if not self._queue.remove(record.id):
            return None  # it started or ended meanwhile; its own path records that
        await self.events.commit(
            record.id,
            [StateEvent(ExperimentState.CANCELLED, failure)],
            ExperimentChanges(
                state=ExperimentState.CANCELLED, failure=failure, end_time=time.time()
            ),
        )
        self.metrics.finished.labels(ExperimentState.CANCELLED.value).inc()
        self._dispatch()
        return None

    @staticmethod
    def _interrupt(run: _Run, reason: tuple[ExperimentState, Failure] | str) -> None:
        # Once its end is recorded, a run only waits for that commit: leave it be.
        if run.stop is None and run.task is not None and not run.recorded:
            run.stop = reason
            run.task.cancel()

    def _on_environment_terminated(self, environment_id: str) -> None:
        """SandboxPort callback; it may come from any thread.

        Environments ended by the orchestrator's own shutdown are left to
        recovery at the next start, which fails their experiments as
        ORCHESTRATOR_RESTARTED rather than calling them cancelled.
        """
        loop = self._loop
        if loop is None or loop.is_closed() or not self._accepting:
            return
        try:
            current = asyncio.get_running_loop()
        except RuntimeError:
            current = None
        if current is loop:
            self._environment_ended(environment_id)
        else:
            _call_soon(loop, self._environment_ended, environment_id)

    def _environment_ended(self, environment_id: str) -> None:
        """Interrupts the environment's running experiments and dequeues its queued ones
        now (before a freed slot could start one), then records the cancellations."""
        failure = _environment_ended_failure(environment_id)
        for run in list(self._running.values()):
            if run.environment_id == environment_id:
                self._interrupt(run, (ExperimentState.CANCELLED, failure))
        dequeued = self._queue.remove_where(lambda e: e.environment_id == environment_id)
        for entry in dequeued:
            self._records.pop(entry.experiment_id, None)
        self._spawn(self._cancel_dequeued([e.experiment_id for e in dequeued], failure))

    async def _cancel_dequeued(self, experiment_ids: Sequence[str], failure: Failure) -> None:
        for experiment_id in experiment_ids:
            try:
                await self.events.commit(
                    experiment_id,
                    [StateEvent(ExperimentState.CANCELLED, failure)],
                    ExperimentChanges(
                        state=ExperimentState.CANCELLED, failure=failure, end_time=time.time()
                    ),
                )
            except KeyError:  # its insert failed; it never existed
                continue
            self.metrics.finished.labels(ExperimentState.CANCELLED.value).inc()
        self._dispatch()

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # Recovery

    async def _recover(self) -> None:
        requeued: list[ExperimentRecord] = []
        for record in await self.store.ain_state(ExperimentState.RUNNING):
            if record.has_output:
                failure = Failure(
                    ErrorReason.ORCHESTRATOR_RESTARTED,
                    "the orchestrator restarted while the experiment was running; run it again",
                )
                await self.events.commit(
                    record.id,
                    [StateEvent(ExperimentState.FAILED, failure)],
                    ExperimentChanges(
                        state=ExperimentState.FAILED, failure=failure, end_time=time.time()
                    ),
                )
            else:
                requeued.append(record)
        for record in [*await self.store.ain_state(ExperimentState.QUEUED), *requeued]:
            self._queue.add(
                QueueEntry(
                    record.id,
                    record.tenant,
                    record.spec.priority,
                    record.queue_order,
                    record.environment_id,
                )
            )
        for record in requeued:
            await self.events.commit(
                record.id,
                [
                    LogEvent(
                        LogLevel.WARNING,
                        "the orchestrator restarted before the experiment produced output;"
                        " re-queued",
                    ),
                    StateEvent(
                        ExperimentState.QUEUED, queue_position=self._queue.position(record.id)
                    ),
                ],
                ExperimentChanges(state=ExperimentState.QUEUED, clear_start_time=True),
            )
        for record in await self.store.ain_state(ExperimentState.QUEUED):
            if not self._environment_survived(record):
                await self._fail_for_lost_environment(record)

    def _environment_survived(self, record: ExperimentRecord) -> bool:
        try:
            self.sandbox.require_running(record.tenant, record.environment_id)
        except ServiceError:
            return False
        return True

    async def _fail_for_lost_environment(self, record: ExperimentRecord) -> None:
        self._queue.remove(record.id)
        failure = Failure(
            ErrorReason.ORCHESTRATOR_RESTARTED,
            f"environment {record.environment_id} did not survive the orchestrator restart;"
            " create a new environment and run the experiment again",
        )
        await self.events.commit(
            record.id,
            [StateEvent(ExperimentState.FAILED, failure)],
            ExperimentChanges(state=ExperimentState.FAILED, failure=failure, end_time=time.time()),
        )
        self.metrics.finished.labels(ExperimentState.FAILED.value).inc()

    async def _get(self, experiment_id: str) -> ExperimentRecord:
        record = await self.store.aget(experiment_id)
        if record is None:
            raise KeyError(experiment_id)
        return record


def _environment_ended_failure(environment_id: str) -> Failure:
    return Failure(
        ErrorReason.ENVIRONMENT_NOT_RUNNING,
        f"environment {environment_id} ended, so its experiments were cancelled",
    )


def _call_soon(loop: asyncio.AbstractEventLoop, callback: Callable[..., None], *args: Any) -> None:
    """``loop.call_soon_threadsafe``, ignoring a loop that has closed meanwhile."""
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(callback, *args)
