"""The experiment store's hot queries read through indexes that hold no history, and the
per-tenant queued/running counts are counters kept with every state change (issue #16).

Each query is taken as the store runs it (SQL and parameters, recorded at ``Database.query``)
on a database with a history of finished experiments, and its ``EXPLAIN QUERY PLAN`` must name
the index that bounds it.
"""

from __future__ import annotations

import dataclasses
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from query_plans import plans_of_reads, query_plan

from sandbox_sdk.server.database import Database
from sandbox_sdk.server.orchestrator.experiments.records import (
    ExperimentChanges,
    ExperimentState,
    LogEvent,
    LogLevel,
    SampleRecord,
    StateEvent,
)
from sandbox_sdk.server.orchestrator.experiments.spec import ExperimentSpec, InputSpec
from sandbox_sdk.server.orchestrator.experiments.store import (
    _SELECT_PAYLOAD,
    ExperimentStore,
    ListFilter,
    NewExperiment,
)
from sandbox_sdk.server.request_ids import DuplicateRequestError

HISTORY = 1_000
ACTIVE = (ExperimentState.QUEUED, ExperimentState.RUNNING)
_SPEC = ExperimentSpec(model="fake", inputs=(InputSpec(prompt="p", expected="e"),))


def _new(number: int, tenant: str = "t", environment_id: str = "env-1") -> NewExperiment:
    return NewExperiment(
        id=f"exp-{tenant}-{number}",
        tenant=tenant,
        environment_id=environment_id,
        spec=_SPEC,
        model_name="fake",
        total_samples=1,
        request_id=f"request-{number}",
        queue_order=number,
        create_time=float(number),
    )


def _sample(index: int) -> SampleRecord:
    return SampleRecord(
        input_index=index,
        repeat=0,
        seed=None,
        prompt="p",
        expected="e",
        output="o",
        scores={"exact": 1.0},
        score_errors={},
        prompt_tokens=1,
        completion_tokens=1,
        latency_seconds=0.1,
        time_to_first_token_seconds=0.01,
        tokens_per_second=10.0,
        finish_reason="stop",
        error="",
    )


async def _run(store: ExperimentStore, new: NewExperiment, final: ExperimentState | None) -> None:
    """Inserts ``new`` and moves it through RUNNING to ``final`` (None: leave it RUNNING)."""
    store.submit_insert(new, StateEvent(ExperimentState.QUEUED))
    store.submit_commit(
        new.id,
        [StateEvent(ExperimentState.RUNNING)],
        ExperimentChanges(state=ExperimentState.RUNNING, start_time=1.0),
    )
    store.submit_commit(new.id, [LogEvent(LogLevel.INFO, "sample")], sample=_sample(0))
    if final is not None:
        await store.submit_commit(
            new.id, [StateEvent(final)], ExperimentChanges(state=final, end_time=2.0)
        )


@pytest.fixture
async def history(tmp_path: Path) -> tuple[Database, ExperimentStore]:
    """HISTORY finished experiments of tenant t (one sample and a few events each), one
    queued and one running."""
    database = Database(tmp_path / "orchestrator.db")
    store = ExperimentStore(database)
    for number in range(HISTORY):
        await _run(store, _new(number), ExperimentState.SUCCEEDED)
    await _run(store, _new(HISTORY), None)
    await store.insert(_new(HISTORY + 1), StateEvent(ExperimentState.QUEUED))
    await store.aclose()
    database.connection.execute("ANALYZE")
    return database, store


HOT: list[tuple[str, Callable[[ExperimentStore], object], str]] = [
    ("get by id", lambda s: s.get("exp-t-7"), "sqlite_autoindex_exp_experiments_1 (id=?)"),
    (
        "request id lookup",
        lambda s: s.find_request("t", "request-7"),
        "exp_experiments_request (tenant=? AND request_id=?)",
    ),
    (
        "queued or running listing (the gateway's quota count)",
        lambda s: s.list_experiments("t", ListFilter(states=ACTIVE), 1000),
        "exp_experiments_active (tenant=? AND state=?)",
    ),
    (
        "running listing",
        lambda s: s.list_experiments("t", ListFilter(states=(ExperimentState.RUNNING,)), 10),
        "exp_experiments_active (tenant=? AND state=?)",
    ),
    (
        "listing page",
        lambda s: s.list_experiments("t", ListFilter(), 10, before=(500.0, "exp-t-500")),
        "exp_experiments_listing (tenant=?",
    ),
    (
        "an environment's queued or running",
        lambda s: s.in_environment("env-1"),
        "exp_experiments_environment (environment_id=? AND state=?)",
    ),
    ("in state on start", lambda s: s.in_state(ExperimentState.QUEUED), "exp_experiments_state"),
    (
        "events after a sequence",
        lambda s: s.events_after("exp-t-7", 1, 100),
        "PRIMARY KEY (experiment_id=? AND sequence>?)",
    ),
    ("sample page", lambda s: s.samples("exp-t-7", 10, None), "PRIMARY KEY (experiment_id=?)"),
    ("live counts", lambda s: s.live_counts("t"), "exp_tenant_live USING PRIMARY KEY (tenant=?)"),
]


@pytest.mark.parametrize(("name", "call", "index"), HOT, ids=[h[0] for h in HOT])
def test_hot_query_uses_its_index(
    history: tuple[Database, ExperimentStore],
    name: str,
    call: Callable[[ExperimentStore], object],
    index: str,
) -> None:
    database, store = history
    for sql, plan in plans_of_reads(database, lambda: call(store)):
        assert index in plan, (name, sql, plan)
        for table in ("exp_experiments", "exp_events", "exp_samples"):
            assert f"SCAN {table}" not in plan, (name, plan)


def test_active_listing_returns_only_queued_and_running(
    history: tuple[Database, ExperimentStore],
) -> None:
    _, store = history
    active = store.list_experiments("t", ListFilter(states=ACTIVE), 1000)
    assert [r.id for r in active] == [f"exp-t-{HISTORY + 1}", f"exp-t-{HISTORY}"]
    running = store.list_experiments(
        "t", ListFilter(environment_id="env-1", states=(ExperimentState.RUNNING,)), 10
    )
    assert [r.id for r in running] == [f"exp-t-{HISTORY}"]
    assert store.live_counts("t") == (1, 1)


async def test_live_counts_follow_every_change_and_survive_a_restart(tmp_path: Path) -> None:
    database = Database(tmp_path / "orchestrator.db")
    store = ExperimentStore(database)
    for number in range(3):
        await store.insert(_new(number, "a"), StateEvent(ExperimentState.QUEUED))
    await store.insert(_new(0, "b"), StateEvent(ExperimentState.QUEUED))
    assert (store.live_counts("a"), store.live_counts("b")) == ((3, 0), (1, 0))

    await store.submit_commit(
        "exp-a-0", [StateEvent(ExperimentState.RUNNING)], ExperimentChanges(ExperimentState.RUNNING)
    )
    assert store.live_counts("a") == (2, 1)
    # Events and samples without a state change leave the counters alone.
    await store.submit_commit("exp-a-0", [LogEvent(LogLevel.INFO, "x")], sample=_sample(0))
    assert store.live_counts("a") == (2, 1)
    # Back to the queue (a restart re-queues a running experiment), then to the end.
    await store.submit_commit(
        "exp-a-0",
        [StateEvent(ExperimentState.QUEUED)],
        ExperimentChanges(ExperimentState.QUEUED, clear_start_time=True),
    )
    assert store.live_counts("a") == (3, 0)
    for experiment_id, final in (
        ("exp-a-0", ExperimentState.SUCCEEDED),
        ("exp-a-1", ExperimentState.CANCELLED),
    ):
        await store.submit_commit(experiment_id, [StateEvent(final)], ExperimentChanges(final))
    assert store.live_counts("a") == (1, 0)
    # A duplicate request id is refused and counts nothing.
    with pytest.raises(DuplicateRequestError):
        await store.insert(
            dataclasses.replace(_new(9, "a"), request_id="request-2"),
            StateEvent(ExperimentState.QUEUED),
        )
    assert store.live_counts("a") == (1, 0)
    await store.aclose()

    # A counter that drifted (a hand-edited database) is repaired on start.
    with database.transaction() as conn:
        conn.execute("UPDATE exp_tenant_live SET queued = 40, running = 3 WHERE tenant = 'a'")
        conn.execute("DELETE FROM exp_tenant_live WHERE tenant = 'b'")
    database.close()
    reopened = ExperimentStore(Database(tmp_path / "orchestrator.db"))
    try:
        assert (reopened.live_counts("a"), reopened.live_counts("b")) == ((1, 0), (1, 0))
        assert reopened.live_counts("nobody") == (0, 0)
    finally:
        await reopened.aclose()


_DML = ("SELECT", "UPDATE", "DELETE", "INSERT", "WITH")


async def test_every_statement_of_an_experiments_life_seeks_through_an_index(
    history: tuple[Database, ExperimentStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not only the reads recorded at ``Database.query``: every statement one experiment's
    life runs on any of the store's connections (the writer's jobs, the loop's key reads,
    a stream's pages on the readers), taken as SQLite ran it, reads no history."""
    database, _ = history
    statements: dict[str, None] = {}
    connect = sqlite3.connect

    def traced(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        connection = connect(*args, **kwargs)
        connection.set_trace_callback(lambda sql: statements.setdefault(sql.strip(), None))
        return connection

    monkeypatch.setattr(sqlite3, "connect", traced)
    store = ExperimentStore(database)
    new = _new(HISTORY + 2)
    try:
        assert await store.afind_request("t", new.request_id) is None
        await _run(store, new, ExperimentState.SUCCEEDED)
        assert await store.afind_request("t", new.request_id) is not None
        assert (await store.aget(new.id)) is not None
        assert await store.aprogress(new.id) == (ExperimentState.SUCCEEDED, 4)
        page = await store.aresponse_page(new.id, 0, 100)
        assert len(page.events) == 4
        assert page.final_at == 3
        assert len((await store.aevent_page(new.id, 1, 100)).events) == 3
    finally:
        await store.aclose()
    monkeypatch.undo()

    checked: list[tuple[str, str]] = []
    for sql in statements:
        if not sql.upper().startswith(_DML):
            continue
        plan = query_plan(database, sql, ())
        checked.append((sql, plan))
        for table in ("exp_experiments", "exp_events", "exp_samples", "exp_labels"):
            assert f"SCAN {table}" not in plan, (sql, plan)
        assert "TEMP B-TREE" not in plan, (sql, plan)
    searched = " ".join(plan for _, plan in checked)
    for index in (
        "sqlite_autoindex_exp_experiments_1 (id=?)",  # the writer's and the loop's key reads
        "exp_experiments_request (tenant=? AND request_id=?)",
        "exp_events USING PRIMARY KEY (experiment_id=? AND sequence>?)",  # a stream's page
    ):
        assert index in searched, (index, checked)
    # Rows from before messages were stored are read one by one, by key.
    assert "exp_events USING PRIMARY KEY (experiment_id=? AND sequence=?)" in query_plan(
        database, _SELECT_PAYLOAD, ("exp-t-1", 1)
    )
