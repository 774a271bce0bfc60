"""What the store query-plan tests share: the reads a store really makes, and their plans."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence

from sandbox_sdk.server.database import Database


class QueryRecorder:
    """Records the (sql, params) of every read of a Database."""

    def __init__(self, database: Database) -> None:
        self.queries: list[tuple[str, Sequence[object]]] = []
        original = database.query

        def query(sql: str, params: Sequence[object] = ()) -> list[sqlite3.Row]:
            self.queries.append((sql, params))
            return original(sql, params)

        database.query = query  # type: ignore[method-assign]


def query_plan(database: Database, sql: str, params: Sequence[object]) -> str:
    """SQLite's ``EXPLAIN QUERY PLAN`` of one statement, its steps joined by `` | ``."""
    rows = database.connection.execute(f"EXPLAIN QUERY PLAN {sql}", params).fetchall()
    return " | ".join(str(row[3]) for row in rows)


def plans_of_reads(database: Database, call: Callable[[], object]) -> list[tuple[str, str]]:
    """``call()``'s reads of ``database`` and the plan of each, as (sql, plan); it must
    read at least once."""
    recorder = QueryRecorder(database)
    call()
    assert recorder.queries, "the call read nothing"
    return [(sql, query_plan(database, sql, params)) for sql, params in recorder.queries]
