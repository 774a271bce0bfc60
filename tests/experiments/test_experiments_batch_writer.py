"""The batch writer: jobs commit together, fail alone, and are durable once done."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from sandbox_sdk.server.db_connection import open_connection
from sandbox_sdk.server.db_writer import BatchWriter, WriterClosedError


def _database(tmp_path: Path) -> Path:
    path = tmp_path / "writer.db"
    with open_connection(path) as connection:
        connection.execute("CREATE TABLE t (k TEXT PRIMARY KEY, v INTEGER)")
    return path


def _insert(key: str, value: int) -> Callable[[sqlite3.Connection], int]:
    def job(connection: sqlite3.Connection) -> int:
        connection.execute("INSERT INTO t VALUES (?, ?)", (key, value))
        return value

    return job


def _rows(path: Path) -> dict[str, int]:
    connection = open_connection(path)
    try:
        return {row[0]: row[1] for row in connection.execute("SELECT k, v FROM t")}
    finally:
        connection.close()


async def test_jobs_submitted_together_commit_in_one_batch_in_order(tmp_path: Path) -> None:
    path = _database(tmp_path)
    commits: list[list[str]] = []
    writer = BatchWriter(path, on_commit=lambda keys: commits.append(list(keys)))

    futures = [writer.submit(_insert(f"k{i}", i), key=f"k{i % 3}") for i in range(30)]
    results = await asyncio.gather(*futures)
    await writer.aclose()

    assert results == list(range(30))
    assert commits == [["k0", "k1", "k2"]]
    assert _rows(path) == {f"k{i}": i for i in range(30)}


async def test_a_failing_job_fails_alone(tmp_path: Path) -> None:
    path = _database(tmp_path)
    writer = BatchWriter(path)

    first = writer.submit(_insert("a", 1))
    duplicate = writer.submit(_insert("a", 2))
    last = writer.submit(_insert("b", 3))
    outcomes = await asyncio.gather(first, duplicate, last, return_exceptions=True)
    await writer.aclose()

    assert outcomes[0] == 1
    assert isinstance(outcomes[1], sqlite3.IntegrityError)
    assert outcomes[2] == 3
    assert _rows(path) == {"a": 1, "b": 3}


async def test_a_done_job_is_visible_to_every_other_connection(tmp_path: Path) -> None:
    path = _database(tmp_path)
    writer = BatchWriter(path)

    for index in range(20):
        await writer.run(_insert(f"k{index}", index))
        assert _rows(path)[f"k{index}"] == index
    await writer.aclose()


async def test_closing_commits_what_was_submitted_and_refuses_more(tmp_path: Path) -> None:
    path = _database(tmp_path)
    writer = BatchWriter(path)
    pending = [writer.submit(_insert(f"k{i}", i)) for i in range(5)]

    await writer.aclose()

    assert all(future.done() for future in pending)
    assert len(_rows(path)) == 5
    with pytest.raises(WriterClosedError):
        writer.submit(_insert("late", 0))
