"""The environments store's lookups use their indexes, so their cost does not grow with history."""

from __future__ import annotations

from pathlib import Path

from sandbox_sdk.server.database import Database
from sandbox_sdk.server.orchestrator.sandbox.store import EnvironmentStore


def test_a_repeated_request_is_found_through_its_unique_index(tmp_path: Path) -> None:
    database = Database(tmp_path / "store.db")
    EnvironmentStore(database)
    traced: list[str] = []
    database.connection.set_trace_callback(traced.append)
    store = EnvironmentStore(database)
    store.find_by_request("tenant", "request-1")
    (query,) = [q for q in traced if "request_id = " in q]
    plan = database.connection.execute(f"EXPLAIN QUERY PLAN {query}").fetchall()
    assert "USING INDEX env_environments_request_id" in str([tuple(row) for row in plan])
