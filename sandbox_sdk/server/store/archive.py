"""The experiment archive: finished experiments in the shared store, outliving their node.

An orchestrator stores each finished experiment here (its final Experiment
message, its results summary, every sample and every event, all serialized
as its RPCs return them) in one transaction. Storing an experiment that is
already here changes nothing, so a shipment repeated after a crash has the
effect of one. Gateways read it back when the orchestrator that ran it is
gone. Reads are scoped to a tenant: another tenant's experiment is not here.

Calls are synchronous and short: callers on an event loop run them with
``asyncio.to_thread``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sandbox_sdk.server.store.backends import Executor, Row, SqlBackend, open_backend
from sandbox_sdk.server.store.migrate import upgrade

# Rows per multi-row INSERT (each row is 3 or 4 parameters: far under SQLite's limit).
_CHUNK_ROWS = 200


@dataclass(frozen=True)
class ArchivedSample:
    """One sample: its key and its serialized ``SampleResult``."""

    input_index: int
    repeat: int
    sample: bytes


@dataclass(frozen=True)
class ArchivedEvent:
    """One event: its sequence number and its serialized ``ExperimentEvent``."""

    sequence: int
    event: bytes


@dataclass(frozen=True)
class ArchivedExperiment:
    """Everything archived of one finished experiment.

    ``experiment`` is a serialized ``Experiment``; ``summary`` a serialized
    ``GetExperimentResultsResponse`` holding only ``metrics`` and ``total_usage``.
    """

    tenant: str
    experiment_id: str
    experiment: bytes
    summary: bytes
    samples: Sequence[ArchivedSample] = field(default_factory=tuple)
    events: Sequence[ArchivedEvent] = field(default_factory=tuple)


@dataclass(frozen=True)
class ArchivedHeader:
    """An archived experiment without its samples and events."""

    tenant: str
    experiment_id: str
    experiment: bytes
    summary: bytes
    archive_time: float


def _bytes(value: object) -> bytes:
    # psycopg may return memoryview for bytea; SQLite returns bytes.
    return bytes(value) if isinstance(value, memoryview | bytearray) else value  # type: ignore[return-value]


def _insert_rows(
    transaction: Executor, table_and_columns: str, width: int, rows: Sequence[tuple[object, ...]]
) -> None:
    for start in range(0, len(rows), _CHUNK_ROWS):
        chunk = rows[start : start + _CHUNK_ROWS]
        placeholders = ", ".join("(" + ", ".join("?" * width) + ")" for _ in chunk)
        transaction.execute(
            f"INSERT INTO {table_and_columns} VALUES {placeholders}"  # noqa: S608 -- fixed names
            " ON CONFLICT DO NOTHING",
            [value for row in chunk for value in row],
        )


class ExperimentArchive:
    """The archive's tables in the gateways' shared store (SQLite or PostgreSQL)."""

    def __init__(self, backend: SqlBackend) -> None:
        self._backend = backend

    @classmethod
    def open(cls, database_url: str) -> ExperimentArchive:
        """Migrates the database at ``database_url`` (PostgreSQL or ``sqlite:///``) and opens it."""
        backend = open_backend(database_url, Path(database_url.removeprefix("sqlite:///")))
        try:
            upgrade(backend.url)
        except BaseException:
            backend.close()
            raise
        return cls(backend)

    def close(self) -> None:
        """Releases the database connections."""
        self._backend.close()

    # -- writing ---------------------------------------------------------------------------

    def store(self, archived: ArchivedExperiment, now: float | None = None) -> bool:
        """Stores the experiment with its samples and events in one transaction.

        Returns ``False``, changing nothing, when the experiment is archived already.
        """
        with self._backend.transaction() as transaction:
            cursor = transaction.execute(
                "INSERT INTO gw_archived_experiments (experiment_id, tenant, experiment,"
                " summary, archive_time) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (experiment_id) DO NOTHING",
                (
                    archived.experiment_id,
                    archived.tenant,
                    archived.experiment,
                    archived.summary,
                    time.time() if now is None else now,
                ),
            )
            if not cursor.rowcount:
                return False  # its first store committed everything at once
            _insert_rows(
                transaction,
                "gw_archived_samples (experiment_id, input_index, repeat, sample)",
                4,
                [
                    (archived.experiment_id, s.input_index, s.repeat, s.sample)
                    for s in archived.samples
                ],
            )
            _insert_rows(
                transaction,
                "gw_archived_events (experiment_id, sequence, event)",
                3,
                [(archived.experiment_id, e.sequence, e.event) for e in archived.events],
            )
        return True

    # -- reading ---------------------------------------------------------------------------

    def experiment(self, tenant: str, experiment_id: str) -> ArchivedHeader | None:
        """The tenant's archived experiment, or ``None`` (also for another tenant's)."""
        rows = self._backend.query(
            "SELECT experiment_id, tenant, experiment, summary, archive_time"
            " FROM gw_archived_experiments WHERE experiment_id = ? AND tenant = ?",
            (experiment_id, tenant),
        )
        return _header(rows[0]) if rows else None

    def samples(
        self,
        tenant: str,
        experiment_id: str,
        limit: int,
        after: tuple[int, int] | None = None,
    ) -> list[ArchivedSample]:
        """Up to ``limit`` of the tenant's experiment's samples by input and repeat, after
        ``after``."""
        sql = (
            "SELECT s.input_index, s.repeat, s.sample FROM gw_archived_samples s"
            " JOIN gw_archived_experiments e ON e.experiment_id = s.experiment_id"
            " WHERE e.tenant = ? AND s.experiment_id = ?"
        )
        params: list[object] = [tenant, experiment_id]
        if after is not None:
            sql += " AND (s.input_index > ? OR (s.input_index = ? AND s.repeat > ?))"
            params.extend((after[0], after[0], after[1]))
        sql += " ORDER BY s.input_index, s.repeat LIMIT ?"
        params.append(limit)
        return [
            ArchivedSample(int(row["input_index"]), int(row["repeat"]), _bytes(row["sample"]))
            for row in self._backend.query(sql, params)
        ]

    def events(
        self, tenant: str, experiment_id: str, after_sequence: int, limit: int
    ) -> list[ArchivedEvent]:
        """Up to ``limit`` of the tenant's experiment's events after ``after_sequence``."""
        rows = self._backend.query(
            "SELECT v.sequence, v.event FROM gw_archived_events v"
            " JOIN gw_archived_experiments e ON e.experiment_id = v.experiment_id"
            " WHERE e.tenant = ? AND v.experiment_id = ? AND v.sequence > ?"
            " ORDER BY v.sequence LIMIT ?",
            (tenant, experiment_id, after_sequence, limit),
        )
        return [ArchivedEvent(int(row["sequence"]), _bytes(row["event"])) for row in rows]


def _header(row: Row) -> ArchivedHeader:
    return ArchivedHeader(
        tenant=str(row["tenant"]),
        experiment_id=str(row["experiment_id"]),
        experiment=_bytes(row["experiment"]),
        summary=_bytes(row["summary"]),
        archive_time=float(row["archive_time"]),
    )
