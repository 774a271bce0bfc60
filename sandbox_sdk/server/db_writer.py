"""Database writes off the event loop: one writer thread, many jobs per transaction.

A job is a function of a SQLite connection. Jobs run on a dedicated thread
with its own connection, in submission order. The thread takes every job
waiting when it wakes (up to ``max_batch``) and runs them in one
transaction, each inside its own savepoint: a job that raises rolls back
only its own changes and fails only its own future, and the batch commits
once. A job's future completes only after the transaction that holds it has
committed, so "done" always means durable (in WAL mode with
``synchronous=NORMAL``, a commit survives the process being killed).

Group commit is what makes this cheap: a fast experiment submits a job per
sample, and one commit carries hundreds of them. ``on_commit`` is called on
the writer thread after each commit with the keys of the jobs committed, so
readers can be woken once per batch.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from sandbox_sdk.server.db_connection import open_connection

log = logging.getLogger(__name__)

T = TypeVar("T")
Job = Callable[[sqlite3.Connection], T]

DEFAULT_MAX_BATCH = 512
# A batch stops taking jobs after this long, so one transaction never holds
# SQLite's write lock long enough to stall other writers of the same file.
MAX_BATCH_SECONDS = 0.05


class WriterClosedError(RuntimeError):
    """A job was submitted after :meth:`BatchWriter.close`."""


@dataclass
class _Pending(Generic[T]):
    job: Job[T]
    future: concurrent.futures.Future[T]
    key: str


_STOP = object()


class BatchWriter:
    """Runs write jobs on one thread, batching those that wait into one transaction."""

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
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._closed = False
        self._thread: threading.Thread | None = None
        self._name = name
        # Jobs a batch ran out of time for; the writer thread takes them first.
        self._carried: collections.deque[_Pending[Any]] = collections.deque()

    def submit(self, job: Job[T], key: str = "") -> concurrent.futures.Future[T]:
        """Queues ``job``; the future completes after the transaction holding it commits.

        A submitted job always runs: cancelling the future does not stop it,
        so a caller that stops waiting never leaves a half-known write.
        ``key`` (for example an experiment id) is passed to ``on_commit``.
        """
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        future.set_running_or_notify_cancel()
        with self._lock:
            if self._closed:
                raise WriterClosedError("the database writer is closed")
            if self._thread is None:
                self._thread = threading.Thread(target=self._serve, name=self._name, daemon=True)
                self._thread.start()
            self._queue.put(_Pending(job, future, key))
        return future

    async def run(self, job: Job[T], key: str = "") -> T:
        """Submits ``job`` and waits, without blocking the loop, until it has committed."""
        return await asyncio.wrap_future(self.submit(job, key))

    def close(self) -> None:
        """Runs the jobs already submitted, then stops the thread. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            thread = self._thread
            if thread is not None:
                self._queue.put(_STOP)
        if thread is not None:
            thread.join()

    async def aclose(self) -> None:
        """:meth:`close` without blocking the event loop."""
        await asyncio.to_thread(self.close)

    # --- the writer thread ---------------------------------------------------------

    def _serve(self) -> None:
        connection = open_connection(self.path)
        try:
            stopping = False
            while not (stopping and not self._carried):
                batch, stopping = self._gather(stopping)
                if batch:
                    self._commit(connection, batch)
        finally:
            connection.close()

    def _gather(self, stopping: bool) -> tuple[list[_Pending[Any]], bool]:
        """The next batch: carried-over jobs first, then queued ones; and whether to stop."""
        batch: list[_Pending[Any]] = []
        while self._carried and len(batch) < self.max_batch:
            batch.append(self._carried.popleft())
        block = not batch
        while not stopping and len(batch) < self.max_batch:
            try:
                item = self._queue.get(block=block)
            except queue.Empty:
                break
            block = False
            if item is _STOP:
                stopping = True
            else:
                batch.append(item)
        return batch, stopping

    def _commit(self, connection: sqlite3.Connection, batch: list[_Pending[Any]]) -> None:
        outcomes: list[tuple[_Pending[Any], Any, BaseException | None]] = []
        started = time.monotonic()
        try:
            connection.execute("BEGIN IMMEDIATE")
            for index, item in enumerate(batch):
                if index and time.monotonic() - started > MAX_BATCH_SECONDS:
                    self._carried.extendleft(reversed(batch[index:]))
                    break
                outcomes.append((item, *_run_in_savepoint(connection, item.job)))
            connection.execute("COMMIT")
        except sqlite3.Error as error:
            _rollback(connection)
            log.error("a database write failed and was rolled back: %s", error)
            carried = {id(item) for item in self._carried}
            for item in batch:
                if id(item) not in carried:
                    item.future.set_exception(error)
            return
        for item, result, failure in outcomes:
            if failure is None:
                item.future.set_result(result)
            else:
                item.future.set_exception(failure)
        self._notify(outcomes)

    def _notify(self, outcomes: list[tuple[_Pending[Any], Any, BaseException | None]]) -> None:
        if self.on_commit is None:
            return
        keys = list(dict.fromkeys(item.key for item, _, _ in outcomes if item.key))
        if keys:
            try:
                self.on_commit(keys)
            except Exception:  # a broken listener must not stop the writer
                log.exception("on_commit listener failed")


def _run_in_savepoint(
    connection: sqlite3.Connection, job: Job[Any]
) -> tuple[Any, BaseException | None]:
    connection.execute("SAVEPOINT job")
    try:
        result = job(connection)
    except sqlite3.OperationalError:
        raise  # the database itself is failing: the whole batch fails
    except Exception as error:  # the job's own failure is its caller's to handle
        connection.execute("ROLLBACK TO job")
        connection.execute("RELEASE job")
        return None, error
    connection.execute("RELEASE job")
    return result, None


def _rollback(connection: sqlite3.Connection) -> None:
    try:
        connection.execute("ROLLBACK")
    except sqlite3.Error:
        log.debug("nothing to roll back")
