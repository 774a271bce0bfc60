"""The archive outbox: a finished experiment is queued with its final state and shipped once."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from sandbox_sdk.api.v1 import requests_pb2
from sandbox_sdk.server.database import Database
from sandbox_sdk.server.orchestrator.experiments import (
    ExperimentEngine,
    ExperimentHandlers,
    ExperimentSettings,
)
from sandbox_sdk.server.orchestrator.experiments.records import (
    ExperimentChanges,
    ExperimentState,
    StateEvent,
)
from sandbox_sdk.server.response_page import each_response
from sandbox_sdk.server.store.archive import (
    ArchivedExperiment,
    ArchivedHeader,
    ExperimentArchive,
)

from .conftest import TenantContext
from .exp_support import SubprocessSandbox, create_request, eventually, make_spec, wait_final

CTX = TenantContext()


class FlakyArchive(ExperimentArchive):
    """The real archive (SQLite), whose store() fails while ``down``, as an unreachable one."""

    def __init__(self, path: Path) -> None:
        opened = ExperimentArchive.open(f"sqlite:///{path}")
        super().__init__(opened._backend)  # reuse the migrated backend
        self.down = False
        self.stores = 0

    def store(self, archived: ArchivedExperiment, now: float | None = None) -> bool:
        if self.down:
            raise ConnectionError("the shared store is unreachable")
        self.stores += 1
        return super().store(archived, now)


@pytest.fixture
def archive(tmp_path: Path) -> Iterator[FlakyArchive]:
    opened = FlakyArchive(tmp_path / "gateway.db")
    yield opened
    opened.close()


@pytest.fixture
async def engines(
    tmp_path: Path, sandbox: SubprocessSandbox
) -> AsyncIterator[list[tuple[ExperimentEngine, Database]]]:
    started: list[tuple[ExperimentEngine, Database]] = []
    yield started
    for engine, db in started:
        await engine.stop()
        db.close()


async def _start(
    engines: list[tuple[ExperimentEngine, Database]],
    tmp_path: Path,
    sandbox: SubprocessSandbox,
    archive: ExperimentArchive,
) -> ExperimentEngine:
    db = Database(tmp_path / "orchestrator.db")
    engine = ExperimentEngine(db, ExperimentSettings(), sandbox, "t1", archive=archive)
    await engine.start()
    engines.append((engine, db))
    return engine


async def _run_one(engine: ExperimentEngine, sandbox: SubprocessSandbox) -> str:
    handlers = ExperimentHandlers(engine)
    environment = sandbox.create()
    spec = make_spec(["alpha", "beta"], expected=["alpha", "x"], repeats=2)
    spec.scorers.add().exact_match.SetInParent()
    created = await handlers.CreateExperiment(create_request(environment, spec), CTX)
    record = await wait_final(engine, created.experiment.id)
    assert record.state is ExperimentState.SUCCEEDED
    return record.id


async def _until(condition: Callable[[], bool]) -> None:
    await eventually(condition, timeout=15.0)


def _archived(archive: ExperimentArchive, experiment_id: str) -> ArchivedHeader | None:
    return archive.experiment("default", experiment_id)


async def test_the_final_state_and_the_outbox_row_commit_together(
    tmp_path: Path, sandbox: SubprocessSandbox, archive: FlakyArchive, engines: list
) -> None:
    archive.down = True  # nothing ships: the outbox keeps what the commits wrote
    engine = await _start(engines, tmp_path, sandbox, archive)
    experiment_id = await _run_one(engine, sandbox)
    assert engine.store.outbox_ids() == [experiment_id]
    # A failed commit (an unknown experiment) writes neither a state nor an outbox row,
    # and a commit of a state that is not final writes no outbox row.
    with pytest.raises(KeyError):
        await engine.store.submit_commit(
            "exp-t1-0000000000000000",
            [StateEvent(ExperimentState.CANCELLED)],
            ExperimentChanges(state=ExperimentState.CANCELLED),
        )
    other = await _run_one(engine, sandbox)
    rows = engine.store.db.query(
        "SELECT o.experiment_id, e.state FROM exp_archive_outbox o"
        " JOIN exp_experiments e ON e.id = o.experiment_id ORDER BY o.queue_time"
    )
    assert [(r[0], r[1]) for r in rows] == [
        (experiment_id, ExperimentState.SUCCEEDED.value),
        (other, ExperimentState.SUCCEEDED.value),
    ]
    assert _archived(archive, experiment_id) is None


async def test_a_shipment_that_fails_keeps_the_row_and_ships_after_recovery(
    tmp_path: Path, sandbox: SubprocessSandbox, archive: FlakyArchive, engines: list
) -> None:
    archive.down = True
    engine = await _start(engines, tmp_path, sandbox, archive)
    experiment_id = await _run_one(engine, sandbox)
    assert engine.shipper is not None
    await _until(lambda: engine.shipper is not None and engine.shipper.failing)
    assert engine.store.outbox_ids() == [experiment_id]
    archive.down = False
    await _until(lambda: not engine.store.outbox_ids())
    header = _archived(archive, experiment_id)
    assert header is not None
    # The archive holds exactly what the orchestrator's RPCs return.
    handlers = ExperimentHandlers(engine)
    got = await handlers.GetExperiment(
        requests_pb2.GetExperimentRequest(experiment_id=experiment_id), CTX
    )
    assert header.experiment == got.experiment.SerializeToString()
    results = await handlers.GetExperimentResults(
        requests_pb2.GetExperimentResultsRequest(experiment_id=experiment_id), CTX
    )
    samples = archive.samples("default", experiment_id, 100)
    assert [s.sample for s in samples] == [s.SerializeToString() for s in results.samples]
    summary = requests_pb2.GetExperimentResultsResponse.FromString(header.summary)
    assert list(summary.metrics) == list(results.metrics)
    assert summary.total_usage == results.total_usage
    streamed = [
        requests_pb2.StreamExperimentEventsResponse.FromString(response).event.SerializeToString()
        async for response in each_response(
            handlers.StreamExperimentEvents(
                requests_pb2.StreamExperimentEventsRequest(experiment_id=experiment_id), CTX
            )
        )
    ]
    assert [e.event for e in archive.events("default", experiment_id, 0, 1000)] == streamed
    assert archive.stores == 1


async def test_a_restarted_orchestrator_ships_what_a_previous_process_left(
    tmp_path: Path, sandbox: SubprocessSandbox, archive: FlakyArchive, engines: list
) -> None:
    archive.down = True
    first = await _start(engines, tmp_path, sandbox, archive)
    experiment_id = await _run_one(first, sandbox)
    _, db = engines.pop()
    await first.stop()  # the archive is down: the row stays for the next process
    db.close()
    assert _archived(archive, experiment_id) is None
    archive.down = False
    second = await _start(engines, tmp_path, sandbox, archive)
    await _until(lambda: not second.store.outbox_ids())
    assert _archived(archive, experiment_id) is not None
    assert archive.stores == 1


async def test_a_repeated_shipment_has_the_effect_of_one(
    tmp_path: Path, sandbox: SubprocessSandbox, archive: FlakyArchive, engines: list
) -> None:
    engine = await _start(engines, tmp_path, sandbox, archive)
    experiment_id = await _run_one(engine, sandbox)
    await _until(lambda: not engine.store.outbox_ids())
    before = len(archive.events("default", experiment_id, 0, 1000))
    assert engine.shipper is not None
    # As after a crash between the archive's commit and the outbox row's deletion.
    engine.store.db.connection.execute(
        "INSERT INTO exp_archive_outbox VALUES (?, 0)", (experiment_id,)
    )
    assert await engine.shipper.ship_pending() == 1
    assert engine.store.outbox_ids() == []
    assert len(archive.events("default", experiment_id, 0, 1000)) == before
    assert len(archive.samples("default", experiment_id, 100)) == 4
