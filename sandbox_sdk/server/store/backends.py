"""One SQL interface over the two backends: the embedded SQLite file and PostgreSQL.

Statements are written once with ``?`` placeholders; the PostgreSQL backend
turns them into psycopg's ``%s``. Calls are synchronous and short, as the
SQLite path always was.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, Protocol

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from sandbox_sdk.server.database import Database

Row = Mapping[str, Any]


class Executor(Protocol):
    """What a transaction can run statements on."""

    def execute(self, sql: str, params: Sequence[object] = ...) -> Any:
        """Runs one statement."""


class SqlBackend(Protocol):
    """A database holding the gateway's shared state."""

    @property
    def url(self) -> str:
        """The database's URL (``sqlite:///path`` or ``postgresql://...``)."""

    def transaction(self) -> AbstractContextManager[Executor]:
        """A write transaction, committed on exit and rolled back on error."""

    def query(self, sql: str, params: Sequence[object] = ()) -> list[Row]:
        """Runs a read query and returns all rows."""

    def close(self) -> None:
        """Releases the connections."""


def is_postgres_url(url: str) -> bool:
    """Whether ``url`` names a PostgreSQL database."""
    return url.startswith(("postgresql://", "postgres://"))


class SqliteBackend:
    """The embedded default: one SQLite file through :class:`Database`."""

    def __init__(self, database: Database) -> None:
        self.database = database

    @classmethod
    def open(cls, path: Path) -> SqliteBackend:
        """The backend of the SQLite file at ``path`` (created if missing)."""
        return cls(Database(path))

    @property
    def url(self) -> str:
        """``sqlite:///`` and the file's path."""
        return f"sqlite:///{self.database.path}"

    def transaction(self) -> AbstractContextManager[Executor]:
        """A ``BEGIN IMMEDIATE`` transaction."""
        return self.database.transaction()

    def query(self, sql: str, params: Sequence[object] = ()) -> list[Row]:
        """Runs a read query and returns all rows."""
        return [dict(row) for row in self.database.query(sql, params)]

    def close(self) -> None:
        """Closes the file."""
        self.database.close()


def _postgres_sql(sql: str) -> str:
    return sql.replace("%", "%%").replace("?", "%s")


class _PostgresExecutor:
    def __init__(self, connection: psycopg.Connection[Any]) -> None:
        self._connection = connection

    def execute(self, sql: str, params: Sequence[object] = ()) -> Any:
        return self._connection.execute(_postgres_sql(sql), params)


class PostgresBackend:
    """PostgreSQL through a small psycopg connection pool."""

    def __init__(self, url: str, max_connections: int = 4) -> None:
        self._url = url
        self._pool: ConnectionPool[psycopg.Connection[Any]] = ConnectionPool(
            url, min_size=1, max_size=max_connections, kwargs={"row_factory": dict_row}, open=True
        )

    @property
    def url(self) -> str:
        """The URL it was opened with."""
        return self._url

    @contextmanager
    def transaction(self) -> Iterator[Executor]:
        """A READ COMMITTED transaction on a pooled connection."""
        with self._pool.connection() as connection, connection.transaction():
            yield _PostgresExecutor(connection)

    def query(self, sql: str, params: Sequence[object] = ()) -> list[Row]:
        """Runs a read query and returns all rows."""
        with self._pool.connection() as connection:
            cursor = connection.execute(_postgres_sql(sql), params)
            return list(cursor.fetchall())

    def close(self) -> None:
        """Closes the pool."""
        self._pool.close()


def open_backend(database_url: str | None, sqlite_path: Path) -> SqlBackend:
    """PostgreSQL when ``database_url`` names it, otherwise the SQLite file."""
    if database_url and is_postgres_url(database_url):
        return PostgresBackend(database_url)
    if database_url and database_url.startswith("sqlite:///"):
        return SqliteBackend.open(Path(database_url.removeprefix("sqlite:///")))
    return SqliteBackend.open(sqlite_path)
