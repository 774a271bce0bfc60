"""SQLite persistence of experiments, their events and samples (tables ``exp_*``).

Every change of an experiment is committed together with the events that
describe it, in one transaction that also assigns the events' sequence
numbers (``last_sequence + 1`` onwards), so the sequence has no gaps and a
process killed at any moment leaves either all of a change or none of it.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sandbox_sdk.server.database import Database
from sandbox_sdk.server.orchestrator.experiments.records import (
    EventPayload,
    ExperimentChanges,
    ExperimentRecord,
    ExperimentState,
    Failure,
    LogEvent,
    LogLevel,
    MetricEvent,
    OutputEvent,
    SampleRecord,
    StateEvent,
    StoredEvent,
)
from sandbox_sdk.server.orchestrator.experiments.spec import ExperimentSpec

COMPONENT = "experiments"
MIGRATIONS = [
    """
    CREATE TABLE exp_experiments (
      id TEXT PRIMARY KEY,
      tenant TEXT NOT NULL,
      environment_id TEXT NOT NULL,
      spec_json TEXT NOT NULL,
      model_name TEXT NOT NULL,
      state TEXT NOT NULL,
      failure_reason TEXT,
      failure_message TEXT,
      priority INTEGER NOT NULL,
      queue_order INTEGER NOT NULL,
      completed_samples INTEGER NOT NULL DEFAULT 0,
      total_samples INTEGER NOT NULL,
      create_time REAL NOT NULL,
      start_time REAL,
      end_time REAL,
      last_sequence INTEGER NOT NULL DEFAULT 0,
      request_id TEXT NOT NULL DEFAULT '',
      has_output INTEGER NOT NULL DEFAULT 0
    );
    CREATE UNIQUE INDEX exp_experiments_request
      ON exp_experiments (tenant, request_id) WHERE request_id != '';
    CREATE INDEX exp_experiments_listing ON exp_experiments (tenant, create_time, id);
    CREATE INDEX exp_experiments_state ON exp_experiments (state);
    CREATE TABLE exp_labels (
      experiment_id TEXT NOT NULL REFERENCES exp_experiments (id) ON DELETE CASCADE,
      key TEXT NOT NULL,
      value TEXT NOT NULL,
      PRIMARY KEY (experiment_id, key)
    ) WITHOUT ROWID;
    CREATE INDEX exp_labels_pair ON exp_labels (key, value);
    CREATE TABLE exp_events (
      experiment_id TEXT NOT NULL,
      sequence INTEGER NOT NULL,
      time REAL NOT NULL,
      kind TEXT NOT NULL,
      payload TEXT NOT NULL,
      PRIMARY KEY (experiment_id, sequence)
    ) WITHOUT ROWID;
    CREATE TABLE exp_samples (
      experiment_id TEXT NOT NULL,
      input_index INTEGER NOT NULL,
      repeat INTEGER NOT NULL,
      seed INTEGER,
      prompt TEXT NOT NULL,
      expected TEXT NOT NULL,
      output TEXT NOT NULL,
      scores TEXT NOT NULL,
      score_errors TEXT NOT NULL,
      prompt_tokens INTEGER NOT NULL,
      completion_tokens INTEGER NOT NULL,
      latency_seconds REAL NOT NULL,
      time_to_first_token_seconds REAL NOT NULL,
      tokens_per_second REAL NOT NULL,
      finish_reason TEXT NOT NULL,
      error TEXT NOT NULL,
      PRIMARY KEY (experiment_id, input_index, repeat)
    ) WITHOUT ROWID
    """
]

_PAYLOAD_KINDS: dict[str, type[EventPayload]] = {
    "log": LogEvent,
    "metric": MetricEvent,
    "state": StateEvent,
    "output": OutputEvent,
}
_KIND_OF = {cls: kind for kind, cls in _PAYLOAD_KINDS.items()}


@dataclass(frozen=True)
class NewExperiment:
    """What the store needs to insert an experiment."""

    id: str
    tenant: str
    environment_id: str
    spec: ExperimentSpec
    model_name: str
    total_samples: int
    request_id: str
    queue_order: int


@dataclass(frozen=True)
class ListFilter:
    """ListExperiments filters; empty values do not filter."""

    environment_id: str = ""
    states: tuple[ExperimentState, ...] = ()
    labels: Mapping[str, str] = dataclasses.field(default_factory=dict)


class DuplicateRequestError(Exception):
    """Another experiment of the tenant was created with the same request id."""


class ExperimentStore:
    """Reads and writes the ``exp_*`` tables."""

    def __init__(self, db: Database) -> None:
        self.db = db
        db.migrate(COMPONENT, MIGRATIONS)

    def insert(self, new: NewExperiment, queued: StateEvent) -> ExperimentRecord:
        """Inserts a QUEUED experiment with its first event; DuplicateRequestError on a reused
        request id."""
        now = time.time()
        try:
            with self.db.transaction() as conn:
                conn.execute(
                    "INSERT INTO exp_experiments (id, tenant, environment_id, spec_json,"
                    " model_name, state, priority, queue_order, total_samples, create_time,"
                    " request_id, last_sequence) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1)",
                    (
                        new.id,
                        new.tenant,
                        new.environment_id,
                        new.spec.model_dump_json(),
                        new.model_name,
                        ExperimentState.QUEUED.value,
                        new.spec.priority,
                        new.queue_order,
                        new.total_samples,
                        now,
                        new.request_id,
                    ),
                )
                conn.executemany(
                    "INSERT INTO exp_labels (experiment_id, key, value) VALUES (?, ?, ?)",
                    [(new.id, k, v) for k, v in new.spec.labels.items()],
                )
                conn.execute(
                    "INSERT INTO exp_events (experiment_id, sequence, time, kind, payload)"
                    " VALUES (?, 1, ?, ?, ?)",
                    (new.id, now, *_encode(queued)),
                )
        except sqlite3.IntegrityError as error:
            if new.request_id and "request_id" in str(error):
                raise DuplicateRequestError(new.request_id) from error
            raise
        record = self.get(new.id)
        if record is None:  # pragma: no cover -- just inserted in this process
            raise RuntimeError(f"experiment {new.id} vanished after insert")
        return record

    def commit(
        self,
        experiment_id: str,
        payloads: Sequence[EventPayload],
        changes: ExperimentChanges | None = None,
        sample: SampleRecord | None = None,
        *,
        has_output: bool = False,
    ) -> list[StoredEvent]:
        """Appends events and applies changes and a sample, atomically; returns the events."""
        now = time.time()
        with self.db.transaction() as conn:
            row = conn.execute(
                "SELECT last_sequence FROM exp_experiments WHERE id = ?", (experiment_id,)
            ).fetchone()
            if row is None:
                raise KeyError(experiment_id)
            first = int(row[0]) + 1
            events = [
                StoredEvent(experiment_id, first + offset, now, payload)
                for offset, payload in enumerate(payloads)
            ]
            conn.executemany(
                "INSERT INTO exp_events (experiment_id, sequence, time, kind, payload)"
                " VALUES (?, ?, ?, ?, ?)",
                [(experiment_id, e.sequence, now, *_encode(e.payload)) for e in events],
            )
            assignments, params = _assignments(changes, sample, has_output)
            assignments.append("last_sequence = ?")
            params.append(first + len(events) - 1)
            conn.execute(
                f"UPDATE exp_experiments SET {', '.join(assignments)} WHERE id = ?",  # noqa: S608 -- fixed column names
                (*params, experiment_id),
            )
            if sample is not None:
                _insert_sample(conn, experiment_id, sample)
        return events

    def last_queue_order(self) -> int:
        """The largest queue order given so far (0 for none); new experiments count on from it."""
        rows = self.db.query("SELECT COALESCE(MAX(queue_order), 0) FROM exp_experiments")
        return int(rows[0][0])

    def get(self, experiment_id: str) -> ExperimentRecord | None:
        """The experiment, or None."""
        rows = self.db.query("SELECT * FROM exp_experiments WHERE id = ?", (experiment_id,))
        return _record(rows[0]) if rows else None

    def find_request(self, tenant: str, request_id: str) -> ExperimentRecord | None:
        """The tenant's experiment created with ``request_id``, or None."""
        rows = self.db.query(
            "SELECT * FROM exp_experiments WHERE tenant = ? AND request_id = ?",
            (tenant, request_id),
        )
        return _record(rows[0]) if rows else None

    def in_state(self, state: ExperimentState) -> list[ExperimentRecord]:
        """Every experiment in ``state``, oldest first."""
        rows = self.db.query(
            "SELECT * FROM exp_experiments WHERE state = ? ORDER BY queue_order", (state.value,)
        )
        return [_record(row) for row in rows]

    def in_environment(self, environment_id: str) -> list[ExperimentRecord]:
        """Every queued or running experiment of an environment."""
        rows = self.db.query(
            "SELECT * FROM exp_experiments WHERE environment_id = ? AND state IN (?, ?)",
            (environment_id, ExperimentState.QUEUED.value, ExperimentState.RUNNING.value),
        )
        return [_record(row) for row in rows]

    def list_experiments(
        self,
        tenant: str,
        filters: ListFilter,
        limit: int,
        before: tuple[float, str] | None = None,
    ) -> list[ExperimentRecord]:
        """The tenant's experiments newest first, starting after the ``before`` key."""
        clauses = ["tenant = ?"]
        params: list[Any] = [tenant]
        if filters.environment_id:
            clauses.append("environment_id = ?")
            params.append(filters.environment_id)
        if filters.states:
            clauses.append(f"state IN ({', '.join('?' for _ in filters.states)})")
            params.extend(s.value for s in filters.states)
        for key, value in filters.labels.items():
            clauses.append(
                "EXISTS (SELECT 1 FROM exp_labels l WHERE l.experiment_id = e.id"
                " AND l.key = ? AND l.value = ?)"
            )
            params.extend((key, value))
        if before is not None:
            clauses.append("(create_time < ? OR (create_time = ? AND id < ?))")
            params.extend((before[0], before[0], before[1]))
        sql = (
            f"SELECT * FROM exp_experiments e WHERE {' AND '.join(clauses)}"  # noqa: S608 -- fixed clauses
            " ORDER BY create_time DESC, id DESC LIMIT ?"
        )
        return [_record(row) for row in self.db.query(sql, (*params, limit))]

    def events_after(self, experiment_id: str, after: int, limit: int) -> list[StoredEvent]:
        """Committed events with sequence greater than ``after``, oldest first."""
        rows = self.db.query(
            "SELECT sequence, time, kind, payload FROM exp_events"
            " WHERE experiment_id = ? AND sequence > ? ORDER BY sequence LIMIT ?",
            (experiment_id, after, limit),
        )
        return [StoredEvent(experiment_id, row[0], row[1], _decode(row[2], row[3])) for row in rows]

    def samples(
        self, experiment_id: str, limit: int | None = None, after: tuple[int, int] | None = None
    ) -> list[SampleRecord]:
        """Samples ordered by input then repeat, starting after the ``after`` key."""
        sql = "SELECT * FROM exp_samples WHERE experiment_id = ?"
        params: list[Any] = [experiment_id]
        if after is not None:
            sql += " AND (input_index > ? OR (input_index = ? AND repeat > ?))"
            params.extend((after[0], after[0], after[1]))
        sql += " ORDER BY input_index, repeat"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        return [_sample(row) for row in self.db.query(sql, params)]


def _assignments(
    changes: ExperimentChanges | None, sample: SampleRecord | None, has_output: bool
) -> tuple[list[str], list[Any]]:
    assignments: list[str] = []
    params: list[Any] = []
    if changes is not None:
        if changes.state is not None:
            assignments += ["state = ?", "failure_reason = ?", "failure_message = ?"]
            failure = changes.failure
            params += [
                changes.state.value,
                failure.reason if failure else None,
                failure.message if failure else None,
            ]
        for column, value in (
            ("start_time", changes.start_time),
            ("end_time", changes.end_time),
            ("total_samples", changes.total_samples),
        ):
            if value is not None:
                assignments.append(f"{column} = ?")
                params.append(value)
        if changes.clear_start_time:
            assignments.append("start_time = NULL")
    if sample is not None:
        assignments.append("completed_samples = completed_samples + 1")
    if has_output:
        assignments.append("has_output = 1")
    return assignments, params


def _insert_sample(conn: sqlite3.Connection, experiment_id: str, sample: SampleRecord) -> None:
    conn.execute(
        f"INSERT OR REPLACE INTO exp_samples VALUES ({', '.join('?' * 16)})",  # noqa: S608
        (
            experiment_id,
            sample.input_index,
            sample.repeat,
            sample.seed,
            sample.prompt,
            sample.expected,
            sample.output,
            json.dumps(sample.scores),
            json.dumps(sample.score_errors),
            sample.prompt_tokens,
            sample.completion_tokens,
            sample.latency_seconds,
            sample.time_to_first_token_seconds,
            sample.tokens_per_second,
            sample.finish_reason,
            sample.error,
        ),
    )


def _encode(payload: EventPayload) -> tuple[str, str]:
    return _KIND_OF[type(payload)], json.dumps(dataclasses.asdict(payload))


def _decode(kind: str, text: str) -> EventPayload:
    data = json.loads(text)
    if kind == "state":
        failure = data["failure"]
        return StateEvent(
            state=ExperimentState(data["state"]),
            failure=Failure(**failure) if failure else None,
            queue_position=data["queue_position"],
        )
    if kind == "log":
        return LogEvent(level=LogLevel(data["level"]), message=data["message"])
    return _PAYLOAD_KINDS[kind](**data)


def _record(row: sqlite3.Row) -> ExperimentRecord:
    failure = (
        Failure(row["failure_reason"], row["failure_message"] or "")
        if row["failure_reason"]
        else None
    )
    return ExperimentRecord(
        id=row["id"],
        tenant=row["tenant"],
        environment_id=row["environment_id"],
        spec=ExperimentSpec.model_validate_json(row["spec_json"]),
        model_name=row["model_name"],
        state=ExperimentState(row["state"]),
        failure=failure,
        completed_samples=row["completed_samples"],
        total_samples=row["total_samples"],
        create_time=row["create_time"],
        start_time=row["start_time"],
        end_time=row["end_time"],
        last_sequence=row["last_sequence"],
        request_id=row["request_id"],
        queue_order=row["queue_order"],
        has_output=bool(row["has_output"]),
    )


def _sample(row: sqlite3.Row) -> SampleRecord:
    return SampleRecord(
        input_index=row["input_index"],
        repeat=row["repeat"],
        seed=row["seed"],
        prompt=row["prompt"],
        expected=row["expected"],
        output=row["output"],
        scores=json.loads(row["scores"]),
        score_errors=json.loads(row["score_errors"]),
        prompt_tokens=row["prompt_tokens"],
        completion_tokens=row["completion_tokens"],
        latency_seconds=row["latency_seconds"],
        time_to_first_token_seconds=row["time_to_first_token_seconds"],
        tokens_per_second=row["tokens_per_second"],
        finish_reason=row["finish_reason"],
        error=row["error"],
    )
