"""Database reads off the event loop: a few threads, each with its own connection.

In WAL mode readers never wait for the writer and see only committed
transactions, so a read on its own connection is as fresh as any read on
the loop would be, and a slow one (a long page, an aggregate over many rows)
costs other callers nothing but CPU.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from sandbox_sdk.server.db_connection import open_connection

T = TypeVar("T")
DEFAULT_READERS = 2


class ReadPool:
    """Runs read jobs (functions of a connection) on worker threads."""

    def __init__(self, path: Path, *, workers: int = DEFAULT_READERS, name: str = "db-reader"):
        self.path = path
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name)

    async def run(self, job: Callable[[sqlite3.Connection], T], *, snapshot: bool = False) -> T:
        """``job(connection)`` on a reader thread; with ``snapshot`` all its queries see
        one consistent state of the database."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._run, job, snapshot)

    def _run(self, job: Callable[[sqlite3.Connection], T], snapshot: bool) -> T:
        connection = self._connection()
        if not snapshot:
            return job(connection)
        connection.execute("BEGIN")
        try:
            return job(connection)
        finally:
            connection.execute("COMMIT")

    def _connection(self) -> sqlite3.Connection:
        connection: sqlite3.Connection | None = getattr(self._local, "connection", None)
        if connection is None:
            connection = open_connection(self.path)
            self._local.connection = connection
            with self._lock:
                self._connections.append(connection)
        return connection

    def close(self) -> None:
        """Waits for running reads, then closes every connection. Idempotent."""
        self._executor.shutdown(wait=True)
        with self._lock:
            for connection in self._connections:
                connection.close()
            self._connections.clear()

    async def aclose(self) -> None:
        """:meth:`close` without blocking the event loop."""
        await asyncio.to_thread(self.close)
