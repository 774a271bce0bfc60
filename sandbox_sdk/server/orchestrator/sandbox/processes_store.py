"""Background processes in the orchestrator's SQLite database (table ``proc_processes``).

A row per process, written when it starts and when it ends, so that GetProcess,
ListProcesses and WaitProcess still answer after the orchestrator restarted
(its environments then ended ORCHESTRATOR_RESTARTED, and their processes with
them): at start-up every row still RUNNING is marked KILLED, reason CANCELLED,
with a start_error saying the orchestrator restarted. Output is not persisted.
"""

from __future__ import annotations

import json
import sqlite3
import time

from sandbox_sdk.server.database import Database
from sandbox_sdk.server.orchestrator.sandbox.environment_record import ExitReason

TYPE_CHECKING = False
if TYPE_CHECKING:
    from sandbox_sdk.server.orchestrator.sandbox.processes import ManagedProcess

COMPONENT = "processes"
MIGRATIONS = [
    """
    CREATE TABLE proc_processes (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        environment_id TEXT NOT NULL,
        id TEXT NOT NULL,
        argv TEXT NOT NULL,
        cwd TEXT NOT NULL,
        pid INTEGER NOT NULL,
        pty INTEGER NOT NULL,
        state TEXT NOT NULL,
        exit_code INTEGER NOT NULL,
        signal INTEGER NOT NULL,
        reason TEXT NOT NULL,
        cpu_seconds REAL NOT NULL,
        max_rss_bytes INTEGER NOT NULL,
        start_time REAL NOT NULL,
        end_time REAL,
        start_error TEXT NOT NULL DEFAULT '',
        UNIQUE (environment_id, id)
    );
    CREATE INDEX proc_processes_environment ON proc_processes (environment_id, seq)
    """,
]
_LOST = "the orchestrator restarted, and the process ended with its environment"


class ProcessStore:
    """Reads and writes process rows."""

    def __init__(self, db: Database) -> None:
        self._db = db
        db.migrate(COMPONENT, MIGRATIONS)

    def mark_lost(self) -> int:
        """Marks the processes a previous run left RUNNING as KILLED; how many there were."""
        with self._db.transaction() as conn:
            cursor = conn.execute(
                "UPDATE proc_processes SET state = 'KILLED', reason = ?, end_time = ?,"
                " start_error = ? WHERE state = 'RUNNING'",
                (ExitReason.CANCELLED.value, time.time(), _LOST),
            )
            return cursor.rowcount

    def save(self, process: ManagedProcess) -> None:
        """Inserts or updates the process's row (best effort: a full disk loses only the row)."""
        p = process
        row = (
            p.environment_id,
            p.id,
            json.dumps(list(p.argv)),
            p.cwd,
            p.pid,
            int(p.pty),
            p.state,
            p.exit_code,
            p.signal,
            p.reason.value,
            p.cpu_seconds,
            p.max_rss_bytes,
            p.start_time,
            p.end_time,
            p.start_error,
        )
        try:
            with self._db.transaction() as conn:
                conn.execute(
                    "INSERT INTO proc_processes (environment_id, id, argv, cwd, pid, pty, state,"
                    " exit_code, signal, reason, cpu_seconds, max_rss_bytes, start_time,"
                    " end_time, start_error) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                    " ON CONFLICT (environment_id, id) DO UPDATE SET pid = excluded.pid,"
                    " state = excluded.state, exit_code = excluded.exit_code,"
                    " signal = excluded.signal, reason = excluded.reason,"
                    " cpu_seconds = excluded.cpu_seconds, max_rss_bytes = excluded.max_rss_bytes,"
                    " end_time = excluded.end_time, start_error = excluded.start_error",
                    row,
                )
        except sqlite3.Error:
            return

    def for_environment(self, environment_id: str, buffer_limit: int) -> list[ManagedProcess]:
        """The environment's processes as rows left them (each ended), oldest first; their
        output is gone, so each stream holds only its end."""
        from sandbox_sdk.server.orchestrator.sandbox.processes import ManagedProcess, OutputEvent

        rows = self._db.query(
            "SELECT * FROM proc_processes WHERE environment_id = ? ORDER BY seq",
            (environment_id,),
        )
        processes = []
        for row in rows:
            process = ManagedProcess(
                id=row["id"],
                environment_id=environment_id,
                argv=tuple(json.loads(row["argv"])),
                cwd=row["cwd"],
                pty=bool(row["pty"]),
                buffer_limit=buffer_limit,
                pid=row["pid"],
                state=row["state"],
                exit_code=row["exit_code"],
                signal=row["signal"],
                reason=ExitReason(row["reason"]),
                cpu_seconds=row["cpu_seconds"],
                max_rss_bytes=row["max_rss_bytes"],
                start_time=row["start_time"],
                end_time=row["end_time"],
                start_error=row["start_error"],
            )
            process.done.set()
            process.events.append(OutputEvent(1, process.end_time or time.time(), "exited"))
            process.next_sequence = 2
            processes.append(process)
        return processes
