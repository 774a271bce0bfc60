"""Database writes off the event loop: a writer task that hands whole batches to one thread.

A job is a function of a SQLite connection. :meth:`BatchWriter.submit`
(called on the event loop) queues it and returns a future at once. A writer
task takes every job waiting (up to ``max_batch``) and hands the batch to the
writer thread, which has its own connection and runs the jobs in one
transaction, each inside its own savepoint: a job that raises rolls back
only its own changes and fails only its own future, and the batch commits
once. Futures are completed on the loop only after that commit, so "done"
always means durable (in WAL mode with ``synchronous=NORMAL``, a commit
survives the process being killed). Jobs run in submission order.

Group commit is what makes this cheap: a fast experiment submits a job per
sample, and while one batch commits the next one gathers, so one thread hop
and one commit carry hundreds of jobs. ``on_commit`` is called on the loop
after each commit with the keys of the jobs committed, so readers can be
woken once per batch.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from sandbox_sdk.server.db_connection import open_connection

log = logging.getLogger(__name__)

T = TypeVar("T")
Job = Callable[[sqlite3.Connection], T]

DEFAULT_MAX_BATCH = 256
# A batch stops taking jobs after this long, so one transaction never holds
# SQLite's write lock long enough to stall other writers of the same file.
MAX_BATCH_SECONDS = 0.05


class WriterClosedError(RuntimeError):
    """A job was submitted after :meth:`BatchWriter.aclose`."""


@dataclass
class _Pending(Generic[T]):
    job: Job[T]
    future: asyncio.Future[T]
    key: str


@dataclass
class _Outcome:
    """What the writer thread did with one job of a batch."""

    result: Any = None
    error: BaseException | None = None


class BatchWriter:
    """Runs write jobs on one thread, many per transaction; see the module docstring."""

    def __init__(
        self,
        path: Path,
        *,
        max_batch: int = DEFAULT_MAX_BATCH,
        on_commit: Callable[[Sequence[str]], None] | None = None,
        name: str = "db-writer",
    ) -> None:
        self.path = path
        self.max_batch = max_batch
        self.on_commit = on_commit
        self._pending: list[_Pending[Any]] = []
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []

    def submit(self, job: Job[T], key: str = "") -> asyncio.Future[T]:
        """Queues ``job`` (call on the event loop); the future completes once the
        transaction holding it has committed.

        A submitted job always runs: cancelling the future does not stop it.
        ``key`` (for example an experiment id) is passed to ``on_commit``.
        """
        if self._closed:
            raise WriterClosedError("the database writer is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._pending.append(_Pending(job, future, key))
        if self._task is None:
            self._wake = asyncio.Event()
            self._task = loop.create_task(self._serve(), name="db-writer")
        assert self._wake is not None  # noqa: S101 -- made with the task
        self._wake.set()
        return future

    async def run(self, job: Job[T], key: str = "") -> T:
        """Submits ``job`` and waits, without blocking the loop, until it has committed."""
        return await asyncio.shield(self.submit(job, key))

    async def aclose(self) -> None:
        """Commits every job already submitted, then stops the writer. Idempotent."""
        self._closed = True
        if self._task is not None and self._wake is not None:
            self._wake.set()
            await self._task
        await asyncio.to_thread(self._shut_down)

    def _shut_down(self) -> None:
        self._executor.shutdown(wait=True)
        for connection in self._connections:
            connection.close()
        self._connections.clear()

    # --- the writer task, on the loop ------------------------------------------------

    async def _serve(self) -> None:
        assert self._wake is not None  # noqa: S101 -- set before the task starts
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                batch = self._pending[: self.max_batch]
                del self._pending[: self.max_batch]
                outcomes = await loop.run_in_executor(self._executor, self._commit, batch)
                # Jobs the batch had no time for go back to the front of the line.
                self._pending[:0] = batch[len(outcomes) :]
                self._settle(batch, outcomes)
            if self._closed:
                return

    def _settle(self, batch: list[_Pending[Any]], outcomes: list[_Outcome]) -> None:
        keys: dict[str, None] = {}
        for item, outcome in zip(batch, outcomes, strict=False):
            if item.future.done():  # cancelled by its caller; the job ran all the same
                continue
            if outcome.error is None:
                item.future.set_result(outcome.result)
                if item.key:
                    keys[item.key] = None
            else:
                item.future.set_exception(outcome.error)
        if keys and self.on_commit is not None:
            try:
                self.on_commit(list(keys))
            except Exception:  # a broken listener must not stop the writer
                log.exception("on_commit listener failed")

    # --- the writer thread -----------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        connection: sqlite3.Connection | None = getattr(self._local, "connection", None)
        if connection is None:
            connection = open_connection(self.path)
            self._local.connection = connection
            self._connections.append(connection)
        return connection

    def _commit(self, batch: list[_Pending[Any]]) -> list[_Outcome]:
        """Runs a prefix of ``batch`` in one transaction; one outcome per job it ran."""
        connection = self._connection()
        outcomes: list[_Outcome] = []
        started = time.monotonic()
        try:
            connection.execute("BEGIN IMMEDIATE")
            for item in batch:
                if outcomes and time.monotonic() - started > MAX_BATCH_SECONDS:
                    break
                outcomes.append(_run_in_savepoint(connection, item.job))
            connection.execute("COMMIT")
        except sqlite3.Error as error:
            _rollback(connection)
            log.error("a database write failed and was rolled back: %s", error)
            return [_Outcome(error=error) for _ in batch]
        return outcomes


def _run_in_savepoint(connection: sqlite3.Connection, job: Job[Any]) -> _Outcome:
    connection.execute("SAVEPOINT job")
    try:
        result = job(connection)
    except sqlite3.OperationalError:
        raise  # the database itself is failing: the whole batch fails
    except Exception as error:  # the job's own failure is its caller's to handle
        connection.execute("ROLLBACK TO job")
        connection.execute("RELEASE job")
        return _Outcome(error=error)
    connection.execute("RELEASE job")
    return _Outcome(result=result)


def _rollback(connection: sqlite3.Connection) -> None:
    try:
        connection.execute("ROLLBACK")
    except sqlite3.Error:
        log.debug("nothing to roll back")
