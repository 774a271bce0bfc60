"""The experiment engine: accepts experiments, queues them fairly, runs them, recovers them.

Lifecycle: an accepted experiment is QUEUED (persisted, with its place in
the fair queue), turns RUNNING when a slot is free (``max_concurrent``
overall, ``max_concurrent_per_tenant`` per tenant), and ends SUCCEEDED,
FAILED, CANCELLED or TIMED_OUT. Every transition is committed with its
event before anyone can see it.

Restarts: ``start()`` finds experiments left RUNNING by a previous process.
One that produced no model output yet is queued again (at its old place);
one that did is FAILED with reason ORCHESTRATOR_RESTARTED, keeping the
samples it finished. ``stop()`` applies the same rule at once to the
experiments it interrupts, so the database never claims that a stopped
orchestrator is still running something.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc
from prometheus_client import CollectorRegistry

from sandbox_sdk.errors import ErrorReason
from sandbox_sdk.server import ids
from sandbox_sdk.server.database import Database
from sandbox_sdk.server.orchestrator.experiments.events import EventLog, ExperimentWriter
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
from sandbox_sdk.server.orchestrator.experiments.results import Aggregates, aggregate
from sandbox_sdk.server.orchestrator.experiments.runner import (
    ExperimentFailedError,
    ExperimentRunner,
)
from sandbox_sdk.server.orchestrator.experiments.scheduler import FairQueue, QueueEntry
from sandbox_sdk.server.orchestrator.experiments.settings import ExperimentSettings
from sandbox_sdk.server.orchestrator.experiments.store import (
    DuplicateRequestError,
    ExperimentStore,
    ListFilter,
    NewExperiment,
)
from sandbox_sdk.server.orchestrator.experiments.validation import ValidatedRequest
from sandbox_sdk.server.orchestrator.ports import SandboxPort
from sandbox_sdk.server.status import ServiceError, not_found

log = logging.getLogger(__name__)

# How long CancelExperiment waits for a running experiment to record its end.
CANCEL_WAIT_SECONDS = 10.0
_SHUTDOWN = "shutdown"


@dataclass
class _Run:
    """A running experiment's task, and why the engine stopped it, if it did."""

    tenant: str
    writer: ExperimentWriter
    task: asyncio.Task[None] | None = None
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
    ) -> None:
        self.settings = settings
        self.sandbox = sandbox
        self.orchestrator_id = orchestrator_id
        self.store = ExperimentStore(db)
        self.events = EventLog(self.store)
        self.models = ModelRegistry(settings.models)
        self.metrics = EngineMetrics(registry if registry is not None else CollectorRegistry())
        self._queue = FairQueue()
        self._running: dict[str, _Run] = {}
        self._running_per_tenant: collections.Counter[str] = collections.Counter()
        self._next_order = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._accepting = False

    async def start(self) -> None:
        """Recovers experiments a previous process left, then starts dispatching."""
        self._loop = asyncio.get_running_loop()
        self._next_order = self.store.last_queue_order()
        self._recover()
        self.sandbox.on_terminated(self._on_environment_terminated)
        self._accepting = True
        self._dispatch()

    async def stop(self) -> None:
        """Stops accepting and dispatching; interrupted experiments are re-queued or FAILED
        (ORCHESTRATOR_RESTARTED) as on a restart, and model clients are closed."""
        self._accepting = False
        runs = list(self._running.values())
        for run in runs:
            self._interrupt(run, _SHUTDOWN)
        await asyncio.gather(*(run.finished.wait() for run in runs))
        await self.models.aclose()

    # Commands

    def create(self, tenant: str, request: ValidatedRequest) -> ExperimentRecord:
        """Queues a validated experiment, or returns the one created with the same request id."""
        if request.request_id:
            existing = self.store.find_request(tenant, request.request_id)
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
        )
        self._queue.add(entry)
        new = NewExperiment(
            id=entry.experiment_id,
            tenant=tenant,
            environment_id=request.environment_id,
            spec=spec,
            model_name=request.model.config.name,
            total_samples=len(spec.inputs) * spec.repeats,
            request_id=request.request_id,
            queue_order=entry.order,
        )
        queued = StateEvent(ExperimentState.QUEUED, queue_position=self._queue.position(new.id))
        try:
            self.store.insert(new, queued)
        except DuplicateRequestError:
            self._queue.remove(new.id)
            existing = self.store.find_request(tenant, request.request_id)
            if existing is None:  # pragma: no cover -- the unique index just said it exists
                raise
            return existing
        except BaseException:
            self._queue.remove(new.id)
            raise
        self.metrics.created.labels(new.model_name).inc()
        self._dispatch()
        return self._get(new.id)

    async def cancel(self, tenant: str, experiment_id: str) -> ExperimentRecord:
        """Cancels a queued or running experiment; a finished one is returned unchanged."""
        record = self.get(tenant, experiment_id)
        if not record.state.is_final:
            run = self._stop_experiment(
                record, Failure(ErrorReason.CANCELLED, "cancelled by the user")
            )
            if run is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(run.finished.wait()), CANCEL_WAIT_SECONDS)
        return self._get(experiment_id)

    # Queries

    def get(self, tenant: str, experiment_id: str) -> ExperimentRecord:
        """The tenant's experiment; NOT_FOUND for unknown ids and other tenants' experiments."""
        record = self.store.get(experiment_id) if experiment_id else None
        if record is None or record.tenant != tenant:
            raise not_found(
                ErrorReason.EXPERIMENT_NOT_FOUND,
                f"experiment {experiment_id!r} does not exist; ListExperiments lists yours",
            )
        return record

    def list(
        self, tenant: str, filters: ListFilter, limit: int, before: tuple[float, str] | None
    ) -> list[ExperimentRecord]:
        """The tenant's experiments, newest first, after the ``before`` key."""
        return self.store.list_experiments(tenant, filters, limit, before)

    def queue_position(self, experiment_id: str) -> int:
        """The 1-based queue position of a QUEUED experiment, else 0."""
        return self._queue.position(experiment_id)

    def results(
        self, tenant: str, experiment_id: str, page_size: int, after: tuple[int, int] | None
    ) -> ResultsPage:
        """One page of samples (by input, then repeat) and aggregates over all samples."""
        record = self.get(tenant, experiment_id)
        samples = self.store.samples(experiment_id)
        start = 0
        if after is not None:
            start = next(
                (i for i, s in enumerate(samples) if (s.input_index, s.repeat) > after),
                len(samples),
            )
        page = samples[start : start + page_size]
        return ResultsPage(
            experiment=record,
            samples=page,
            aggregates=aggregate(samples),
            has_more=start + page_size < len(samples),
        )

    def stream(
        self, tenant: str, experiment_id: str, after_sequence: int, *, follow: bool
    ) -> AsyncIterator[StoredEvent]:
        """The experiment's committed events after ``after_sequence``; see EventLog.stream."""
        self.get(tenant, experiment_id)
        return self.events.stream(experiment_id, after_sequence, follow=follow)

    def capacity(self) -> tuple[int, int]:
        """Experiments running now and experiments waiting, for GetCapacity."""
        return len(self._running), len(self._queue)

    # Dispatch

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
        while self._accepting and len(self._running) < self.settings.scheduler.max_concurrent:
            entry = self._queue.pop_next(self._tenant_has_room)
            if entry is None:
                break
            self._start(entry)
        self.metrics.running.set(len(self._running))
        self.metrics.queued.set(len(self._queue))

    def _start(self, entry: QueueEntry) -> None:
        record = self._get(entry.experiment_id)
        writer = ExperimentWriter(self.events, record.id)
        writer.emit(
            [StateEvent(ExperimentState.RUNNING)],
            ExperimentChanges(state=ExperimentState.RUNNING, start_time=time.time()),
        )
        run = _Run(tenant=record.tenant, writer=writer)
        self._running[record.id] = run
        self._running_per_tenant[record.tenant] += 1
        run.task = asyncio.create_task(self._execute(record, run), name=record.id)
        run.task.add_done_callback(lambda _: self._run_done(record, run))

    async def _execute(self, record: ExperimentRecord, run: _Run) -> None:
        outcome = await self._outcome(record, run, run.writer)
        run.recorded = True
        self._finish(record, run.writer, outcome)

    def _run_done(self, record: ExperimentRecord, run: _Run) -> None:
        """Bookkeeping after a run's task ended, however it ended."""
        if not run.recorded:
            # Cancelled before it started, or by the event loop shutting down.
            run.recorded = True
            self._finish(record, run.writer, run.stop or _SHUTDOWN)
        del self._running[record.id]
        self._running_per_tenant[record.tenant] -= 1
        run.finished.set()
        self._dispatch()

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
        self,
        record: ExperimentRecord,
        writer: ExperimentWriter,
        outcome: tuple[ExperimentState, Failure | None] | str,
    ) -> None:
        if outcome == _SHUTDOWN:
            self._interrupted(record.id, writer)
            return
        assert not isinstance(outcome, str)  # noqa: S101 -- _SHUTDOWN is the only string
        state, failure = outcome
        writer.emit(
            [StateEvent(state, failure)],
            ExperimentChanges(state=state, failure=failure, end_time=time.time()),
        )
        self.metrics.finished.labels(state.value).inc()

    def _interrupted(self, experiment_id: str, writer: ExperimentWriter) -> None:
        """Re-queues an interrupted experiment without output, else fails it."""
        if writer.has_output:
            failure = Failure(
                ErrorReason.ORCHESTRATOR_RESTARTED,
                "the orchestrator stopped while the experiment was running; run it again",
            )
            writer.emit(
                [StateEvent(ExperimentState.FAILED, failure)],
                ExperimentChanges(
                    state=ExperimentState.FAILED, failure=failure, end_time=time.time()
                ),
            )
            self.metrics.finished.labels(ExperimentState.FAILED.value).inc()
            return
        writer.emit(
            [
                LogEvent(LogLevel.WARNING, "the orchestrator stopped before any output; re-queued"),
                StateEvent(ExperimentState.QUEUED),
            ],
            ExperimentChanges(state=ExperimentState.QUEUED, clear_start_time=True),
        )

    # Cancellation

    def _stop_experiment(self, record: ExperimentRecord, failure: Failure) -> _Run | None:
        """Ends a queued experiment now, or interrupts a running one and returns its run."""
        run = self._running.get(record.id)
        if run is not None:
            self._interrupt(run, (ExperimentState.CANCELLED, failure))
            return run
        self._queue.remove(record.id)
        self.events.commit(
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
        if run.stop is None and run.task is not None:
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
            self._cancel_environment(environment_id)
        else:
            loop.call_soon_threadsafe(self._cancel_environment, environment_id)

    def _cancel_environment(self, environment_id: str) -> None:
        failure = Failure(
            ErrorReason.ENVIRONMENT_NOT_RUNNING,
            f"environment {environment_id} ended, so its experiments were cancelled",
        )
        for record in self.store.in_environment(environment_id):
            self._stop_experiment(record, failure)

    # Recovery

    def _recover(self) -> None:
        requeued: list[ExperimentRecord] = []
        for record in self.store.in_state(ExperimentState.RUNNING):
            if record.has_output:
                failure = Failure(
                    ErrorReason.ORCHESTRATOR_RESTARTED,
                    "the orchestrator restarted while the experiment was running; run it again",
                )
                self.events.commit(
                    record.id,
                    [StateEvent(ExperimentState.FAILED, failure)],
                    ExperimentChanges(
                        state=ExperimentState.FAILED, failure=failure, end_time=time.time()
                    ),
                )
            else:
                requeued.append(record)
        for record in [*self.store.in_state(ExperimentState.QUEUED), *requeued]:
            self._queue.add(
                QueueEntry(record.id, record.tenant, record.spec.priority, record.queue_order)
            )
        for record in requeued:
            self.events.commit(
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
        for record in self.store.in_state(ExperimentState.QUEUED):
            if not self._environment_survived(record):
                self._fail_for_lost_environment(record)

    def _environment_survived(self, record: ExperimentRecord) -> bool:
        try:
            self.sandbox.require_running(record.tenant, record.environment_id)
        except ServiceError:
            return False
        return True

    def _fail_for_lost_environment(self, record: ExperimentRecord) -> None:
        self._queue.remove(record.id)
        failure = Failure(
            ErrorReason.ORCHESTRATOR_RESTARTED,
            f"environment {record.environment_id} did not survive the orchestrator restart;"
            " create a new environment and run the experiment again",
        )
        self.events.commit(
            record.id,
            [StateEvent(ExperimentState.FAILED, failure)],
            ExperimentChanges(state=ExperimentState.FAILED, failure=failure, end_time=time.time()),
        )
        self.metrics.finished.labels(ExperimentState.FAILED.value).inc()

    def _get(self, experiment_id: str) -> ExperimentRecord:
        record = self.store.get(experiment_id)
        if record is None:
            raise KeyError(experiment_id)
        return record
