"""The orchestrator's template records and their build events, in its SQLite database.

A record is what a tenant sees: an id, a name, a state, the spec, and the
content address (``digest``) of the root file system in the
:class:`.TemplateCache`. Records of several tenants may share one digest (the
tree is built once); each tenant sees only its own records and the public ones.
A deleted record stays as a tombstone so that deleting twice succeeds. Build
events are numbered per template from 1, so that a stream resumes after the
last sequence a client saw.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

from sandbox_sdk.server.database import Database

PUBLIC_TENANT = ""

_MIGRATIONS = (
    """
    CREATE TABLE templates (
        id TEXT PRIMARY KEY,
        tenant TEXT NOT NULL,
        display_name TEXT NOT NULL,
        digest TEXT NOT NULL,
        spec BLOB NOT NULL,
        state TEXT NOT NULL,
        failure_message TEXT NOT NULL,
        size_bytes INTEGER NOT NULL,
        source TEXT NOT NULL,
        public INTEGER NOT NULL,
        source_environment_id TEXT NOT NULL,
        parent_template_id TEXT NOT NULL,
        create_time REAL NOT NULL,
        finish_time REAL,
        build_seconds REAL NOT NULL,
        request_id TEXT NOT NULL,
        deleted INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX templates_by_tenant ON templates (tenant, deleted, create_time);
    CREATE INDEX templates_by_digest ON templates (digest, deleted);
    CREATE TABLE template_events (
        template_id TEXT NOT NULL,
        sequence INTEGER NOT NULL,
        time REAL NOT NULL,
        log TEXT,
        state TEXT,
        failure_message TEXT NOT NULL DEFAULT '',
        PRIMARY KEY (template_id, sequence)
    )
    """,
)


class State(StrEnum):
    """A template's lifecycle state."""

    BUILDING = "BUILDING"
    READY = "READY"
    FAILED = "FAILED"


class Source(StrEnum):
    """Where a template came from."""

    SPEC = "SPEC"
    SNAPSHOT = "SNAPSHOT"
    PUBLIC = "PUBLIC"


@dataclass(frozen=True)
class TemplateRecord:
    """One template as stored; times are Unix seconds, ``spec`` a serialized TemplateSpec."""

    id: str
    tenant: str
    display_name: str
    digest: str
    spec: bytes
    state: State
    failure_message: str
    size_bytes: int
    source: Source
    public: bool
    source_environment_id: str
    parent_template_id: str
    create_time: float
    finish_time: float | None
    build_seconds: float
    request_id: str
    deleted: bool = False

    @property
    def finished(self) -> bool:
        """Whether the build has ended, one way or the other."""
        return self.state is not State.BUILDING


@dataclass(frozen=True)
class BuildEvent:
    """One build event: a log line, or a new state."""

    template_id: str
    sequence: int
    time: float
    log: str | None
    state: State | None
    failure_message: str = ""


_COLUMNS = (
    "id, tenant, display_name, digest, spec, state, failure_message, size_bytes, source, public,"
    " source_environment_id, parent_template_id, create_time, finish_time, build_seconds,"
    " request_id, deleted"
)


class TemplateRecords:
    """Reads and writes template records and build events (short synchronous calls)."""

    def __init__(self, db: Database) -> None:
        self._db = db
        db.migrate("templates", _MIGRATIONS)

    # --- records -----------------------------------------------------------------------

    def insert(self, record: TemplateRecord) -> None:
        """Stores a new record, with its first event (its state)."""
        with self._db.transaction() as conn:
            conn.execute(
                f"INSERT INTO templates ({_COLUMNS}) VALUES"  # noqa: S608  (constant columns)
                " (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                _row(record),
            )
            conn.execute(
                "INSERT INTO template_events (template_id, sequence, time, state) VALUES"
                " (?, 1, ?, ?)",
                (record.id, record.create_time, record.state.value),
            )

    def finish(self, record: TemplateRecord, **changes: object) -> TemplateRecord:
        """Saves the end of a build (state, sizes, failure) and its last event."""
        updated = replace(record, finish_time=time.time(), **changes)  # type: ignore[arg-type]
        with self._db.transaction() as conn:
            conn.execute(
                "UPDATE templates SET state = ?, failure_message = ?, size_bytes = ?,"
                " finish_time = ?, build_seconds = ?, digest = ? WHERE id = ?",
                (
                    updated.state.value,
                    updated.failure_message,
                    updated.size_bytes,
                    updated.finish_time,
                    updated.build_seconds,
                    updated.digest,
                    updated.id,
                ),
            )
            _append(conn, updated.id, None, updated.state, updated.failure_message)
        return updated

    def mark_deleted(self, template_id: str) -> None:
        """Leaves a tombstone: the record is no longer listed or usable."""
        with self._db.transaction() as conn:
            conn.execute("UPDATE templates SET deleted = 1 WHERE id = ?", (template_id,))

    def get(self, template_id: str) -> TemplateRecord | None:
        """The record with this id, tombstones included."""
        rows = self._db.query(
            f"SELECT {_COLUMNS} FROM templates WHERE id = ?",  # noqa: S608
            (template_id,),
        )
        return _record(rows[0]) if rows else None

    def by_request_id(self, tenant: str, request_id: str) -> TemplateRecord | None:
        """The tenant's record created with ``request_id``."""
        rows = self._db.query(
            f"SELECT {_COLUMNS} FROM templates WHERE tenant = ? AND request_id = ?",  # noqa: S608
            (tenant, request_id),
        )
        return _record(rows[0]) if rows else None

    def by_digest(self, tenant: str, digest: str) -> TemplateRecord | None:
        """The tenant's live record of ``digest`` that did not fail, if any."""
        rows = self._db.query(
            f"SELECT {_COLUMNS} FROM templates WHERE tenant = ? AND digest = ?"  # noqa: S608
            " AND deleted = 0 AND state != 'FAILED' ORDER BY create_time LIMIT 1",
            (tenant, digest),
        )
        return _record(rows[0]) if rows else None

    def digest_in_use(self, digest: str) -> bool:
        """Whether any live record (of any tenant) holds the tree of ``digest``."""
        rows = self._db.query(
            "SELECT 1 FROM templates WHERE digest = ? AND deleted = 0 LIMIT 1", (digest,)
        )
        return bool(rows)

    def listing(self, tenant: str, include_public: bool) -> list[TemplateRecord]:
        """The tenant's live records (and the public ones), newest first."""
        tenants = (tenant, PUBLIC_TENANT) if include_public else (tenant, tenant)
        rows = self._db.query(
            f"SELECT {_COLUMNS} FROM templates WHERE tenant IN (?, ?) AND deleted = 0"  # noqa: S608
            " ORDER BY create_time DESC, id DESC",
            tenants,
        )
        return [_record(row) for row in rows]

    def snapshot_bytes(self, tenant: str) -> int:
        """Disk the tenant's live snapshots take."""
        rows = self._db.query(
            "SELECT COALESCE(SUM(size_bytes), 0) FROM templates"
            " WHERE tenant = ? AND source = 'SNAPSHOT' AND deleted = 0",
            (tenant,),
        )
        return int(rows[0][0])

    def unfinished(self) -> list[TemplateRecord]:
        """Records whose build a previous run of the orchestrator did not finish."""
        rows = self._db.query(
            f"SELECT {_COLUMNS} FROM templates WHERE state = 'BUILDING'"  # noqa: S608
        )
        return [_record(row) for row in rows]

    # --- events ------------------------------------------------------------------------

    def append_logs(self, template_id: str, lines: Sequence[str]) -> None:
        """Appends log lines as events."""
        if not lines:
            return
        with self._db.transaction() as conn:
            for line in lines:
                _append(conn, template_id, line, None, "")

    def events(self, template_id: str, after_sequence: int, limit: int = 500) -> list[BuildEvent]:
        """Events after ``after_sequence``, in order."""
        rows = self._db.query(
            "SELECT sequence, time, log, state, failure_message FROM template_events"
            " WHERE template_id = ? AND sequence > ? ORDER BY sequence LIMIT ?",
            (template_id, after_sequence, limit),
        )
        return [
            BuildEvent(
                template_id,
                row[0],
                row[1],
                row[2],
                State(row[3]) if row[3] else None,
                row[4],
            )
            for row in rows
        ]


def _append(
    conn: object, template_id: str, log: str | None, state: State | None, failure: str
) -> None:
    cursor = conn.execute(  # type: ignore[attr-defined]
        "SELECT COALESCE(MAX(sequence), 0) FROM template_events WHERE template_id = ?",
        (template_id,),
    )
    sequence = int(cursor.fetchone()[0]) + 1
    conn.execute(  # type: ignore[attr-defined]
        "INSERT INTO template_events (template_id, sequence, time, log, state, failure_message)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        (template_id, sequence, time.time(), log, state.value if state else None, failure),
    )


def _row(record: TemplateRecord) -> tuple[object, ...]:
    return (
        record.id,
        record.tenant,
        record.display_name,
        record.digest,
        record.spec,
        record.state.value,
        record.failure_message,
        record.size_bytes,
        record.source.value,
        int(record.public),
        record.source_environment_id,
        record.parent_template_id,
        record.create_time,
        record.finish_time,
        record.build_seconds,
        record.request_id,
        int(record.deleted),
    )


def _record(row: Any) -> TemplateRecord:
    return TemplateRecord(
        id=str(row[0]),
        tenant=str(row[1]),
        display_name=str(row[2]),
        digest=str(row[3]),
        spec=bytes(row[4]),
        state=State(row[5]),
        failure_message=str(row[6]),
        size_bytes=int(row[7]),
        source=Source(row[8]),
        public=bool(row[9]),
        source_environment_id=str(row[10]),
        parent_template_id=str(row[11]),
        create_time=float(row[12]),
        finish_time=float(row[13]) if row[13] is not None else None,
        build_seconds=float(row[14]),
        request_id=str(row[15]),
        deleted=bool(row[16]),
    )
