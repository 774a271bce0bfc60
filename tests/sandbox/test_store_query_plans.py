"""The environments store's hot queries read through indexes that hold no history, and the
per-tenant live counts are counters kept with every state change (issue #16).

Each query is taken as the store runs it (SQL and parameters, recorded at ``Database.query``)
on a database with a history of terminated environments, and its ``EXPLAIN QUERY PLAN`` must
name the index that bounds it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
from query_plans import plans_of_reads

from sandbox_sdk.server.database import Database
from sandbox_sdk.server.orchestrator.sandbox.environment_record import (
    Environment,
    EnvironmentSpec,
    EnvironmentState,
    Limits,
    NetworkPolicy,
    TerminationReason,
)
from sandbox_sdk.server.orchestrator.sandbox.store import EnvironmentStore

HISTORY = 2_000
LIVE = 5

_SPEC = EnvironmentSpec(
    limits=Limits(
        cpu_cores=1.0,
        memory_bytes=1 << 28,
        disk_bytes=1 << 28,
        max_pids=64,
        exec_timeout_seconds=60.0,
    ),
    env_vars={},
    labels={"team": "a"},
    ttl_seconds=3600.0,
    idle_timeout_seconds=600.0,
    network=NetworkPolicy.NONE,
)


def _environment(
    number: int, tenant: str = "t", state: EnvironmentState = EnvironmentState.RUNNING
) -> Environment:
    return Environment(
        id=f"env-{tenant}-{number}",
        tenant=tenant,
        spec=_SPEC,
        state=state,
        termination_reason=TerminationReason.UNSPECIFIED,
        termination_message="",
        isolation="test",
        orchestrator_id="o1",
        create_time=float(number),
        expire_time=float(number) + 3600,
        last_activity_time=float(number),
        terminate_time=None,
        request_id=f"request-{number}",
    )


@pytest.fixture
def history(tmp_path: Path) -> tuple[Database, EnvironmentStore]:
    """A store with HISTORY terminated environments of tenant t and LIVE running ones."""
    database = Database(tmp_path / "orchestrator.db")
    store = EnvironmentStore(database)
    for number in range(HISTORY):
        environment = _environment(number)
        store.insert(environment)
        store.update(environment, state=EnvironmentState.TERMINATED, terminate_time=1.0)
    for number in range(HISTORY, HISTORY + LIVE):
        store.insert(_environment(number))
    database.connection.execute("ANALYZE")
    return database, store


HOT: list[tuple[str, Callable[[EnvironmentStore], object], str]] = [
    ("get by id", lambda s: s.get("env-t-7"), "sqlite_autoindex_env_environments_1 (id=?)"),
    (
        "request id lookup",
        lambda s: s.find_by_request("t", "request-7"),
        "env_environments_request_id (tenant=? AND request_id=?)",
    ),
    (
        "live listing (the gateway's quota count)",
        lambda s: s.page(
            "t", before_seq=None, limit=1000, label_selector={}, show_terminated=False
        ),
        "env_environments_live (tenant=?)",
    ),
    (
        "live listing, next page",
        lambda s: s.page("t", before_seq=10**9, limit=10, label_selector={}, show_terminated=False),
        "env_environments_live (tenant=? AND seq<?)",
    ),
    (
        "unfinished on start",
        lambda s: s.unfinished("o1"),
        "env_environments_unfinished (orchestrator_id=?)",
    ),
    ("live count", lambda s: s.live_count("t"), "env_tenant_live USING PRIMARY KEY (tenant=?)"),
]


@pytest.mark.parametrize(("name", "call", "index"), HOT, ids=[h[0] for h in HOT])
def test_hot_query_uses_its_index(
    history: tuple[Database, EnvironmentStore],
    name: str,
    call: Callable[[EnvironmentStore], object],
    index: str,
) -> None:
    database, store = history
    for sql, plan in plans_of_reads(database, lambda: call(store)):
        assert index in plan, (name, sql, plan)
        assert "SCAN env_environments" not in plan.replace("USING INDEX", ""), plan


def test_live_listing_reads_live_rows_only(history: tuple[Database, EnvironmentStore]) -> None:
    _, store = history
    page, next_seq = store.page(
        "t", before_seq=None, limit=1000, label_selector={}, show_terminated=False
    )
    assert len(page) == LIVE
    assert next_seq is None
    assert all(e.state is EnvironmentState.RUNNING for e in page)
    everything, _ = store.page(
        "t", before_seq=None, limit=10_000, label_selector={}, show_terminated=True
    )
    assert len(everything) == HISTORY + LIVE


def test_live_counts_follow_every_change_and_survive_a_restart(tmp_path: Path) -> None:
    database = Database(tmp_path / "orchestrator.db")
    store = EnvironmentStore(database)
    a = [_environment(n, "a", EnvironmentState.CREATING) for n in range(4)]
    for environment in a:
        store.insert(environment)
    store.insert(_environment(0, "b"))
    assert (store.live_count("a"), store.live_count("b"), store.live_count("c")) == (4, 1, 0)

    running = store.update(a[0], state=EnvironmentState.RUNNING)
    assert store.live_count("a") == 4  # live to live: unchanged
    terminating = store.update(running, state=EnvironmentState.TERMINATING)
    store.update(terminating, state=EnvironmentState.TERMINATED)
    store.update(a[1], state=EnvironmentState.TERMINATED)
    assert store.live_count("a") == 2
    # Saving a terminated one again (e.g. its activity or labels) does not count it twice.
    store.save(replace(a[1], state=EnvironmentState.TERMINATED, termination_message="again"))
    assert store.live_count("a") == 2
    # A record that was never inserted changes nothing.
    store.save(_environment(99, "a", EnvironmentState.TERMINATED))
    assert store.live_count("a") == 2

    # A counter that drifted (a hand-edited database) is repaired on start.
    with database.transaction() as conn:
        conn.execute("UPDATE env_tenant_live SET live = 40 WHERE tenant = 'a'")
        conn.execute("DELETE FROM env_tenant_live WHERE tenant = 'b'")
    database.close()
    reopened = EnvironmentStore(Database(tmp_path / "orchestrator.db"))
    assert (reopened.live_count("a"), reopened.live_count("b")) == (2, 1)
    assert reopened.live_count("a") == len(
        reopened.page("a", before_seq=None, limit=100, label_selector={}, show_terminated=False)[0]
    )


def test_a_database_without_the_counters_is_upgraded(tmp_path: Path) -> None:
    """A database made by the first schema version gets the live indexes and its counters
    from the rows it already holds."""
    from sandbox_sdk.server.orchestrator.sandbox import store as module

    database = Database(tmp_path / "orchestrator.db")
    database.migrate(module.COMPONENT, module.MIGRATIONS[:1])
    with database.transaction() as conn:
        for number, state in enumerate(
            [EnvironmentState.RUNNING, EnvironmentState.TERMINATED, EnvironmentState.CREATING]
        ):
            e = _environment(number, state=state)
            conn.execute(
                "INSERT INTO env_environments (id, tenant, request_id, orchestrator_id, state,"
                " termination_reason, isolation, spec, create_time, expire_time,"
                " last_activity_time) VALUES (?, ?, ?, ?, ?, ?, ?, '{}', 0, 0, 0)",
                (e.id, e.tenant, e.request_id, e.orchestrator_id, e.state.value,
                 e.termination_reason.value, e.isolation),
            )  # fmt: skip
    store = EnvironmentStore(database)
    assert store.live_count("t") == 2
    names = {
        row[0] for row in database.query("SELECT name FROM sqlite_master WHERE type = 'index'")
    }
    assert {"env_environments_live", "env_environments_unfinished"} <= names
