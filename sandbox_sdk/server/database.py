"""The services' SQLite storage: one file per service, WAL mode, numbered migrations.

Calls are synchronous and short; in WAL mode with ``synchronous=NORMAL`` a
committed transaction survives the process being killed, which is the
durability the services promise (not power loss).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from sandbox_sdk.server.db_connection import open_connection


class Database:
    """A SQLite connection shared by one service's stores."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        if str(path) != ":memory:":
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self.connection = open_connection(path)
        self.connection.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " component TEXT NOT NULL, version INTEGER NOT NULL,"
            " PRIMARY KEY (component, version))"
        )

    def migrate(self, component: str, migrations: Sequence[str]) -> None:
        """Applies each not-yet-applied migration script of ``component`` in order."""
        with self.transaction() as conn:
            done = {
                row[0]
                for row in conn.execute(
                    "SELECT version FROM schema_migrations WHERE component = ?", (component,)
                )
            }
            for version, script in enumerate(migrations, start=1):
                if version in done:
                    continue
                for statement in filter(None, (s.strip() for s in script.split(";"))):
                    conn.execute(statement)
                conn.execute(
                    "INSERT INTO schema_migrations (component, version) VALUES (?, ?)",
                    (component, version),
                )

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction, committed on exit and rolled back on error."""
        with self._lock:
            self.connection.execute("BEGIN IMMEDIATE")
            try:
                yield self.connection
            except BaseException:
                self.connection.execute("ROLLBACK")
                raise
            self.connection.execute("COMMIT")

    def query(self, sql: str, params: Sequence[object] = ()) -> list[sqlite3.Row]:
        """Runs a read query and returns all rows."""
        with self._lock:
            return self.connection.execute(sql, params).fetchall()

    def close(self) -> None:
        """Closes the connection."""
        with self._lock:
            self.connection.close()
