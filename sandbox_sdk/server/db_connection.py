"""How every SQLite connection of the services is opened: WAL, NORMAL sync, foreign keys.

In WAL mode with ``synchronous=NORMAL`` a committed transaction survives the
process being killed (not power loss), which is the durability the
services promise; readers never wait for writers, and writers on other
connections wait up to ``busy_timeout``.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from pathlib import Path

BUSY_TIMEOUT_SECONDS = 30.0
PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=NORMAL",
    "PRAGMA foreign_keys=ON",
    f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_SECONDS * 1000)}",
)


def open_connection(path: Path | str) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit) with rows by name.

    The database file is private (0600): it holds environment variables,
    prompts and key hashes. SQLite gives its -wal and -shm files the same mode.
    """
    if str(path) != ":memory:":
        make_private(Path(path))
    connection = sqlite3.connect(
        str(path), isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_SECONDS
    )
    connection.row_factory = sqlite3.Row
    for pragma in PRAGMAS:
        connection.execute(pragma)
    return connection


def make_private(path: Path) -> None:
    """Creates ``path`` empty with mode 0600 if it is missing, else makes it (and its
    -wal and -shm files) 0600."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
    except FileExistsError:
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                Path(f"{path}{suffix}").chmod(0o600)
