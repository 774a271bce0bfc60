"""SQLite persistence of experiments, their events and samples (tables ``exp_*``).

Every change of an experiment is committed together with the events that
describe it, in one job that also assigns the events' sequence numbers
(``last_sequence + 1`` onwards), so the sequence has no gaps and a process
killed at any moment leaves either all of a change or none of it.

Nothing here blocks the event loop: writes are jobs of a
:class:`~sandbox_sdk.server.db_writer.BatchWriter` (one thread, many jobs per
transaction, a job's future done only once committed) and the ``a``-prefixed
reads that scan (listings, event pages, samples, aggregates) run on a
:class:`~sandbox_sdk.server.db_readers.ReadPool`. Reads of one row by its key
are bounded work and run inline on a connection of the loop's own (a thread
hop would cost more than the read); parsing a large, uncached spec from such
a row goes to a thread. The synchronous reads use the shared
:class:`Database` connection; they are for tests, tools and start-up.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from sandbox_sdk.api.v1 import experiment_pb2
from sandbox_sdk.server.database import Database
from sandbox_sdk.server.db_connection import open_connection
from sandbox_sdk.server.db_readers import ReadPool
from sandbox_sdk.server.db_writer import BatchWriter
from sandbox_sdk.server.orchestrator.experiments.convert import (
    event_bytes,
    event_payload,
    event_response_bytes,
)
from sandbox_sdk.server.orchestrator.experiments.records import (
    EventPage,
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
    ToolCallEvent,
    ToolResultEvent,
)
from sandbox_sdk.server.orchestrator.experiments.results import Aggregates, aggregate
from sandbox_sdk.server.orchestrator.experiments.spec import ExperimentSpec
from sandbox_sdk.server.request_ids import DuplicateRequestError, is_duplicate_request

T = TypeVar("T")
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
    """,
    # The archive outbox: finished experiments still to be shipped to the shared store.
    # A row is written in the transaction that records the experiment's final state.
    """
    CREATE TABLE exp_archive_outbox (
      experiment_id TEXT PRIMARY KEY,
      queue_time REAL NOT NULL
    ) WITHOUT ROWID
    """,
    # The sandbox tool's loop, per sample.
    """
    ALTER TABLE exp_samples ADD COLUMN turns INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE exp_samples ADD COLUMN tool_calls INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE exp_samples ADD COLUMN tool_errors INTEGER NOT NULL DEFAULT 0
    """,
    # Cost that does not grow with history: queued and running experiments are found
    # through an index of those alone (listings by state, what the gateway's quota counts;
    # an environment's experiments), and each tenant's queued and running counts are
    # counters kept in the transactions that change states.
    """
    CREATE INDEX exp_experiments_active ON exp_experiments (tenant, state, create_time, id)
      WHERE state IN ('QUEUED', 'RUNNING');
    CREATE INDEX exp_experiments_environment ON exp_experiments (environment_id, state)
      WHERE state IN ('QUEUED', 'RUNNING');
    CREATE TABLE exp_tenant_live (
      tenant TEXT PRIMARY KEY,
      queued INTEGER NOT NULL,
      running INTEGER NOT NULL
    ) WITHOUT ROWID
    """,
    # Each event's ExperimentEvent message, serialized once when it is committed, so a
    # stream sends stored bytes instead of building a message per event per reader.
    # Rows written before have NULL here and are converted from their JSON payload; rows
    # written since keep the event in the message alone (their payload is '').
    """
    ALTER TABLE exp_events ADD COLUMN message BLOB
    """,
]

_ACTIVE_STATES = frozenset((ExperimentState.QUEUED, ExperimentState.RUNNING))
# The predicate of the partial indexes of queued and running experiments, spelled as they
# are in the queries that use them (SQLite matches it term by term, not through parameters).
_ACTIVE = "state IN ('QUEUED', 'RUNNING')"
# "request_id != ''" lets SQLite use the partial unique index of request ids.
_BY_REQUEST = (
    "SELECT * FROM exp_experiments WHERE tenant = ? AND request_id = ? AND request_id != ''"
)
_RECOUNT = (
    "INSERT INTO exp_tenant_live (tenant, queued, running)"  # noqa: S608 -- constant
    " SELECT tenant, SUM(state = 'QUEUED'), SUM(state = 'RUNNING')"
    f" FROM exp_experiments WHERE {_ACTIVE} GROUP BY tenant"
)

_PAYLOAD_KINDS: dict[str, type[EventPayload]] = {
    "log": LogEvent,
    "metric": MetricEvent,
    "state": StateEvent,
    "output": OutputEvent,
    "tool_call": ToolCallEvent,
    "tool_result": ToolResultEvent,
}
_KIND_OF = {cls: kind for kind, cls in _PAYLOAD_KINDS.items()}
_INSERT_EVENT = (
    "INSERT INTO exp_events (experiment_id, sequence, time, kind, payload, message)"
    " VALUES (?, ?, ?, ?, ?, ?)"
)
_SELECT_MESSAGES = (
    # Whether the row is a state event: only those are parsed (did it end the experiment?).
    "SELECT sequence, message, kind = 'state'"
    " FROM exp_events WHERE experiment_id = ? AND sequence > ? ORDER BY sequence LIMIT ?"
)
_SELECT_EVENTS = (
    "SELECT sequence, time, kind, payload, message"
    " FROM exp_events WHERE experiment_id = ? AND sequence > ? ORDER BY sequence LIMIT ?"
)
# A row written before messages were stored, whose message is made from its payload.
_SELECT_PAYLOAD = (
    "SELECT time, kind, payload FROM exp_events WHERE experiment_id = ? AND sequence = ?"
)


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
    create_time: float

    def record(self) -> ExperimentRecord:
        """The record the insert creates (QUEUED, first event committed)."""
        return ExperimentRecord(
            id=self.id,
            tenant=self.tenant,
            environment_id=self.environment_id,
            spec=self.spec,
            model_name=self.model_name,
            state=ExperimentState.QUEUED,
            failure=None,
            completed_samples=0,
            total_samples=self.total_samples,
            create_time=self.create_time,
            start_time=None,
            end_time=None,
            last_sequence=1,
            request_id=self.request_id,
            queue_order=self.queue_order,
            has_output=False,
        )


@dataclass(frozen=True)
class ArchiveContents:
    """A finished experiment as read for its shipment to the archive: one snapshot."""

    record: ExperimentRecord
    samples: list[SampleRecord]
    # Each event's sequence and serialized ExperimentEvent message.
    events: list[tuple[int, bytes]]
    aggregates: Aggregates


@dataclass(frozen=True)
class ListFilter:
    """ListExperiments filters; empty values do not filter."""

    environment_id: str = ""
    states: tuple[ExperimentState, ...] = ()
    labels: Mapping[str, str] = dataclasses.field(default_factory=dict)


Query = Callable[[str, Sequence[Any]], list[sqlite3.Row]]
_SPEC_CACHE_SIZE = 256
# Specs longer than this (as JSON) are parsed on a thread when not cached.
INLINE_SPEC_CHARS = 65_536


class _SpecCache:
    """Parsed specs by experiment id: a spec never changes, and parsing one with
    thousands of inputs costs more than the row it comes from."""

    def __init__(self, size: int = _SPEC_CACHE_SIZE) -> None:
        self._size = size
        self._specs: OrderedDict[str, ExperimentSpec] = OrderedDict()
        self._lock = threading.Lock()

    def put(self, experiment_id: str, spec: ExperimentSpec) -> None:
        with self._lock:
            self._specs[experiment_id] = spec
            while len(self._specs) > self._size:
                self._specs.popitem(last=False)

    def has(self, experiment_id: str) -> bool:
        with self._lock:
            return experiment_id in self._specs

    def get(self, experiment_id: str, text: str) -> ExperimentSpec:
        with self._lock:
            spec = self._specs.get(experiment_id)
            if spec is not None:
                self._specs.move_to_end(experiment_id)
                return spec
        spec = ExperimentSpec.model_validate_json(text)
        with self._lock:
            self._specs[experiment_id] = spec
            while len(self._specs) > self._size:
                self._specs.popitem(last=False)
        return spec


class ExperimentStore:
    """Reads and writes the ``exp_*`` tables; see the module docstring for threading."""

    def __init__(self, db: Database, *, outbox: bool = False) -> None:
        if str(db.path) == ":memory:":
            raise ValueError("the experiment store needs a database file, not :memory:")
        self.db = db
        # With ``outbox``, recording an experiment's final state also queues it for the
        # archive (same transaction), and ``on_outbox`` is called once that has committed.
        self.outbox = outbox
        self.on_outbox: Callable[[], None] | None = None
        db.migrate(COMPONENT, MIGRATIONS)
        self.reconcile_live_counts()
        self.specs = _SpecCache()
        self.writer = BatchWriter(db.path, name="exp-writer")
        self.readers = ReadPool(db.path, name="exp-reader")
        self._loop_connection: sqlite3.Connection | None = None

    async def aclose(self) -> None:
        """Commits every submitted write, then stops the writer and the reader threads."""
        await self.writer.aclose()
        await self.readers.aclose()
        if self._loop_connection is not None:
            self._loop_connection.close()
            self._loop_connection = None

    # --- writes ----------------------------------------------------------------------

    async def insert(self, new: NewExperiment, queued: StateEvent) -> ExperimentRecord:
        """Inserts a QUEUED experiment with its first event; DuplicateRequestError on a reused
        request id. Returns once committed."""
        await asyncio.shield(self.submit_insert(new, queued))
        return new.record()

    def submit_insert(self, new: NewExperiment, queued: StateEvent) -> asyncio.Future[None]:
        """Queues :meth:`insert`'s job (call on the event loop); the future completes once
        committed, or holds DuplicateRequestError."""
        self.specs.put(new.id, new.spec)
        return self.writer.submit(lambda conn: _insert_experiment(conn, new, queued), new.id)

    def submit_commit(
        self,
        experiment_id: str,
        payloads: Sequence[EventPayload],
        changes: ExperimentChanges | None = None,
        sample: SampleRecord | None = None,
        *,
        has_output: bool = False,
    ) -> asyncio.Future[list[StoredEvent]]:
        """Queues events, changes and a sample as one atomic job (call on the event loop);
        the future holds the committed events once their transaction has committed."""

        to_outbox = (
            self.outbox
            and changes is not None
            and changes.state is not None
            and changes.state.is_final
        )

        def job(conn: sqlite3.Connection) -> list[StoredEvent]:
            return _commit_events(
                conn,
                experiment_id,
                payloads=payloads,
                changes=changes,
                sample=sample,
                has_output=has_output,
                to_outbox=to_outbox,
            )

        committed = self.writer.submit(job, experiment_id)
        if to_outbox:
            committed.add_done_callback(self._outbox_committed)
        return committed

    def _outbox_committed(self, committed: asyncio.Future[list[StoredEvent]]) -> None:
        if self.on_outbox is not None and not committed.cancelled() and not committed.exception():
            self.on_outbox()

    # --- the archive outbox ----------------------------------------------------------

    async def aoutbox(self, limit: int) -> list[str]:
        """Up to ``limit`` experiments waiting to be shipped to the archive, oldest first."""
        return await self.readers.run(lambda conn: _select_outbox(_query_on(conn), limit))

    def outbox_ids(self) -> list[str]:
        """Every experiment waiting to be shipped to the archive, oldest first."""
        return _select_outbox(self.db.query, None)

    async def adelete_outbox(self, experiment_id: str) -> None:
        """Removes the experiment's outbox row (it is in the archive); once committed."""

        def job(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM exp_archive_outbox WHERE experiment_id = ?", (experiment_id,))

        await self.writer.run(job, experiment_id)

    async def aarchive_contents(self, experiment_id: str) -> ArchiveContents | None:
        """The experiment with every sample and event and its aggregates, read in one
        snapshot on a reader thread; None when it does not exist."""

        def read(conn: sqlite3.Connection) -> ArchiveContents | None:
            query = _query_on(conn)
            record = _select_experiment(query, self.specs, experiment_id)
            if record is None:
                return None
            return ArchiveContents(
                record=record,
                samples=_select_samples(query, experiment_id, None, None),
                events=_select_messages(_tuples_on(conn), experiment_id),
                aggregates=aggregate(_select_sample_metrics(query, experiment_id)),
            )

        return await self.readers.run(read, snapshot=True)

    # --- reads on the event loop's behalf --------------------------------------------

    async def aget(self, experiment_id: str) -> ExperimentRecord | None:
        """The experiment, or None."""
        rows = self._key_read("SELECT * FROM exp_experiments WHERE id = ?", (experiment_id,))
        return await self._record_of(rows[0]) if rows else None

    async def afind_request(self, tenant: str, request_id: str) -> ExperimentRecord | None:
        """The tenant's experiment created with ``request_id``, or None."""
        rows = self._key_read(_BY_REQUEST, (tenant, request_id))
        return await self._record_of(rows[0]) if rows else None

    async def aprogress(self, experiment_id: str) -> tuple[ExperimentState, int] | None:
        """An experiment's state and last sequence number, or None: what a stream needs."""
        rows = self._key_read(
            "SELECT state, last_sequence FROM exp_experiments WHERE id = ?", (experiment_id,)
        )
        return (ExperimentState(rows[0][0]), int(rows[0][1])) if rows else None

    def _key_read(self, sql: str, params: Sequence[Any]) -> list[sqlite3.Row]:
        """A one-row read by key on the loop's own connection (bounded work)."""
        if self._loop_connection is None:
            self._loop_connection = open_connection(self.db.path)
        return self._loop_connection.execute(sql, params).fetchall()

    async def _record_of(self, row: sqlite3.Row) -> ExperimentRecord:
        if self.specs.has(row["id"]) or len(row["spec_json"]) <= INLINE_SPEC_CHARS:
            return _record(row, self.specs)
        return await asyncio.to_thread(_record, row, self.specs)

    async def ain_environment(self, environment_id: str) -> list[ExperimentRecord]:
        """Every queued or running experiment of an environment."""
        return await self.readers.run(
            lambda conn: _select_in_environment(_query_on(conn), self.specs, environment_id)
        )

    async def ain_state(self, state: ExperimentState) -> list[ExperimentRecord]:
        """Every experiment in ``state``, oldest first."""
        return await self.readers.run(
            lambda conn: _select_in_state(_query_on(conn), self.specs, state)
        )

    async def alist_experiments(
        self,
        tenant: str,
        filters: ListFilter,
        limit: int,
        before: tuple[float, str] | None = None,
    ) -> list[ExperimentRecord]:
        """The tenant's experiments newest first, starting after the ``before`` key."""
        return await self.readers.run(
            lambda conn: _select_listing(
                _query_on(conn),
                self.specs,
                tenant=tenant,
                filters=filters,
                limit=limit,
                before=before,
            )
        )

    async def aevents_after(self, experiment_id: str, after: int, limit: int) -> list[StoredEvent]:
        """Committed events with sequence greater than ``after``, oldest first."""
        return await self.readers.run(
            lambda conn: _select_events(_query_on(conn), experiment_id, after, limit)
        )

    async def aevent_page(
        self, experiment_id: str, after: int, limit: int
    ) -> EventPage[StoredEvent]:
        """:meth:`aevents_after` as a page (what :class:`EventLog` streams are read in)."""
        return await self.readers.run(
            lambda conn: _event_page(
                _select_events(_query_on(conn), experiment_id, after, limit), after
            )
        )

    async def aresponse_page(self, experiment_id: str, after: int, limit: int) -> EventPage[bytes]:
        """The serialized StreamExperimentEventsResponse of each committed event after
        ``after``, oldest first, made on a reader thread from the stored messages."""
        return await self.readers.run(
            lambda conn: _select_responses(_tuples_on(conn), experiment_id, after, limit)
        )

    async def apage_samples(
        self, experiment_id: str, limit: int, after: tuple[int, int] | None
    ) -> list[SampleRecord]:
        """Up to ``limit`` samples by input then repeat, after the ``after`` key."""
        return await self.readers.run(
            lambda conn: _select_samples(_query_on(conn), experiment_id, limit, after)
        )

    async def aaggregates(self, experiment_id: str) -> Aggregates:
        """Aggregates over every sample, read and computed on a reader thread (the
        samples' texts are not read: aggregates do not need them)."""
        return await self.readers.run(
            lambda conn: aggregate(_select_sample_metrics(_query_on(conn), experiment_id))
        )

    # --- synchronous reads (tests, tools, start-up) ----------------------------------

    def reconcile_live_counts(self) -> None:
        """Recounts every tenant's queued and running experiments from the table (on start:
        the counters are kept in the transactions that change states, this only repairs a
        pre-counter or hand-edited database). Reads only those rows, through an index."""
        with self.db.transaction() as conn:
            conn.execute("DELETE FROM exp_tenant_live")
            conn.execute(_RECOUNT)

    def live_counts(self, tenant: str) -> tuple[int, int]:
        """The tenant's queued and running experiments, from its counters (O(1))."""
        rows = self.db.query(
            "SELECT queued, running FROM exp_tenant_live WHERE tenant = ?", (tenant,)
        )
        return (int(rows[0][0]), int(rows[0][1])) if rows else (0, 0)

    def last_queue_order(self) -> int:
        """The largest queue order given so far (0 for none); new experiments count on from it."""
        rows = self.db.query("SELECT COALESCE(MAX(queue_order), 0) FROM exp_experiments")
        return int(rows[0][0])

    def get(self, experiment_id: str) -> ExperimentRecord | None:
        """The experiment, or None."""
        return _select_experiment(self.db.query, self.specs, experiment_id)

    def find_request(self, tenant: str, request_id: str) -> ExperimentRecord | None:
        """The tenant's experiment created with ``request_id``, or None."""
        return _select_request(self.db.query, self.specs, tenant, request_id)

    def in_state(self, state: ExperimentState) -> list[ExperimentRecord]:
        """Every experiment in ``state``, oldest first."""
        return _select_in_state(self.db.query, self.specs, state)

    def in_environment(self, environment_id: str) -> list[ExperimentRecord]:
        """Every queued or running experiment of an environment."""
        return _select_in_environment(self.db.query, self.specs, environment_id)

    def list_experiments(
        self,
        tenant: str,
        filters: ListFilter,
        limit: int,
        before: tuple[float, str] | None = None,
    ) -> list[ExperimentRecord]:
        """The tenant's experiments newest first, starting after the ``before`` key."""
        return _select_listing(
            self.db.query, self.specs, tenant=tenant, filters=filters, limit=limit, before=before
        )

    def events_after(self, experiment_id: str, after: int, limit: int) -> list[StoredEvent]:
        """Committed events with sequence greater than ``after``, oldest first."""
        return _select_events(self.db.query, experiment_id, after, limit)

    def samples(
        self, experiment_id: str, limit: int | None = None, after: tuple[int, int] | None = None
    ) -> list[SampleRecord]:
        """Samples ordered by input then repeat, starting after the ``after`` key."""
        return _select_samples(self.db.query, experiment_id, limit, after)


def _query_on(conn: sqlite3.Connection) -> Query:
    def query(sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        return conn.execute(sql, params).fetchall()

    return query


def _tuples_on(conn: sqlite3.Connection) -> Query:
    """:func:`_query_on` with rows as plain tuples: cheaper, where rows are many."""
    cursor = conn.cursor()
    cursor.row_factory = None

    def query(sql: str, params: Sequence[Any] = ()) -> list[Any]:
        return cursor.execute(sql, params).fetchall()

    return query


# --- write jobs (run on the writer thread) ------------------------------------------


def _insert_experiment(conn: sqlite3.Connection, new: NewExperiment, queued: StateEvent) -> None:
    now = new.create_time
    try:
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
    except sqlite3.IntegrityError as error:
        if is_duplicate_request(error, new.request_id):
            raise DuplicateRequestError(new.request_id) from error
        raise
    _count_live(conn, new.tenant, None, ExperimentState.QUEUED)
    conn.executemany(
        "INSERT INTO exp_labels (experiment_id, key, value) VALUES (?, ?, ?)",
        [(new.id, k, v) for k, v in new.spec.labels.items()],
    )
    conn.execute(_INSERT_EVENT, _event_row(StoredEvent(new.id, 1, now, queued)))


def _commit_events(
    conn: sqlite3.Connection,
    experiment_id: str,
    *,
    payloads: Sequence[EventPayload],
    changes: ExperimentChanges | None,
    sample: SampleRecord | None,
    has_output: bool,
    to_outbox: bool = False,
) -> list[StoredEvent]:
    now = time.time()
    row = conn.execute(
        "SELECT last_sequence, tenant, state FROM exp_experiments WHERE id = ?", (experiment_id,)
    ).fetchone()
    if row is None:
        raise KeyError(experiment_id)
    first = int(row[0]) + 1
    events = [
        StoredEvent(experiment_id, first + offset, now, payload)
        for offset, payload in enumerate(payloads)
    ]
    conn.executemany(_INSERT_EVENT, [_event_row(e) for e in events])
    assignments, params = _assignments(changes, sample, has_output)
    assignments.append("last_sequence = ?")
    params.append(first + len(events) - 1)
    conn.execute(
        f"UPDATE exp_experiments SET {', '.join(assignments)} WHERE id = ?",  # noqa: S608 -- fixed column names
        (*params, experiment_id),
    )
    if changes is not None and changes.state is not None:
        _count_live(conn, row[1], ExperimentState(row[2]), changes.state)
    if sample is not None:
        _insert_sample(conn, experiment_id, sample)
    if to_outbox:
        conn.execute(
            "INSERT OR IGNORE INTO exp_archive_outbox (experiment_id, queue_time) VALUES (?, ?)",
            (experiment_id, now),
        )
    return events


def _count_live(
    conn: sqlite3.Connection,
    tenant: str,
    before: ExperimentState | None,
    after: ExperimentState,
) -> None:
    """Moves the tenant's queued/running counters along a state change (same transaction)."""
    queued = (after is ExperimentState.QUEUED) - (before is ExperimentState.QUEUED)
    running = (after is ExperimentState.RUNNING) - (before is ExperimentState.RUNNING)
    if queued or running:
        conn.execute(
            "INSERT INTO exp_tenant_live (tenant, queued, running) VALUES (?, ?, ?)"
            " ON CONFLICT (tenant) DO UPDATE SET queued = queued + excluded.queued,"
            " running = running + excluded.running",
            (tenant, queued, running),
        )


# --- read queries (any connection) ---------------------------------------------------


def _select_experiment(
    query: Query, specs: _SpecCache, experiment_id: str
) -> ExperimentRecord | None:
    rows = query("SELECT * FROM exp_experiments WHERE id = ?", (experiment_id,))
    return _record(rows[0], specs) if rows else None


def _select_request(
    query: Query, specs: _SpecCache, tenant: str, request_id: str
) -> ExperimentRecord | None:
    rows = query(_BY_REQUEST, (tenant, request_id))
    return _record(rows[0], specs) if rows else None


def _select_in_state(
    query: Query, specs: _SpecCache, state: ExperimentState
) -> list[ExperimentRecord]:
    rows = query(
        "SELECT * FROM exp_experiments WHERE state = ? ORDER BY queue_order", (state.value,)
    )
    return [_record(row, specs) for row in rows]


def _select_in_environment(
    query: Query, specs: _SpecCache, environment_id: str
) -> list[ExperimentRecord]:
    rows = query(
        f"SELECT * FROM exp_experiments WHERE environment_id = ? AND {_ACTIVE}",  # noqa: S608 -- constant
        (environment_id,),
    )
    return [_record(row, specs) for row in rows]


def _select_listing(
    query: Query,
    specs: _SpecCache,
    *,
    tenant: str,
    filters: ListFilter,
    limit: int,
    before: tuple[float, str] | None,
) -> list[ExperimentRecord]:
    clauses = ["tenant = ?"]
    params: list[Any] = [tenant]
    source = "exp_experiments e"
    if filters.states and _ACTIVE_STATES.issuperset(filters.states):
        # Only queued or running ones (what the gateway's quota counts): read through their
        # own index, not the tenant's whole history in listing order.
        source = "exp_experiments e INDEXED BY exp_experiments_active"
        clauses.append(_ACTIVE)
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
        f"SELECT * FROM {source} WHERE {' AND '.join(clauses)}"  # noqa: S608 -- fixed clauses
        " ORDER BY create_time DESC, id DESC LIMIT ?"
    )
    return [_record(row, specs) for row in query(sql, (*params, limit))]


def _select_events(query: Query, experiment_id: str, after: int, limit: int) -> list[StoredEvent]:
    rows = query(_SELECT_EVENTS, (experiment_id, after, limit))
    return [
        StoredEvent(
            experiment_id,
            sequence,
            time,
            _decode(kind, payload) if message is None else _payload_of(message),
        )
        for sequence, time, kind, payload, message in rows
    ]


def _event_page(events: list[StoredEvent], after: int) -> EventPage[StoredEvent]:
    final_at = next((i for i, e in enumerate(events) if _ends_experiment(e.payload)), None)
    return EventPage(events, events[-1].sequence if events else after, final_at)


def _select_responses(query: Query, experiment_id: str, after: int, limit: int) -> EventPage[bytes]:
    # A stream reads this for every event it sends: rows come as tuples, and only the
    # rare ones read anything more.
    rows = query(_SELECT_MESSAGES, (experiment_id, after, limit))
    responses: list[bytes] = []
    final_at: int | None = None
    for sequence, stored, is_state in rows:
        message = _message(query, experiment_id, sequence, stored)
        if is_state and final_at is None and _ends_experiment(_payload_of(message)):
            final_at = len(responses)
        responses.append(event_response_bytes(message))
    return EventPage(responses, rows[-1][0] if rows else after, final_at)


def _select_messages(query: Query, experiment_id: str) -> list[tuple[int, bytes]]:
    rows = query(_SELECT_MESSAGES, (experiment_id, 0, -1))
    return [
        (sequence, _message(query, experiment_id, sequence, stored)) for sequence, stored, _ in rows
    ]


def _message(query: Query, experiment_id: str, sequence: int, stored: bytes | None) -> bytes:
    """An event's serialized ExperimentEvent: the stored one, or for a row written before
    messages were stored, one made from its JSON payload."""
    if stored is not None:
        return stored
    time, kind, payload = query(_SELECT_PAYLOAD, (experiment_id, sequence))[0]
    return event_bytes(StoredEvent(experiment_id, sequence, time, _decode(kind, payload)))


def _payload_of(message: bytes) -> EventPayload:
    return event_payload(experiment_pb2.ExperimentEvent.FromString(message))


def _ends_experiment(payload: EventPayload) -> bool:
    return isinstance(payload, StateEvent) and payload.state.is_final


def _select_outbox(query: Query, limit: int | None) -> list[str]:
    rows = query(
        "SELECT experiment_id FROM exp_archive_outbox ORDER BY queue_time, experiment_id LIMIT ?",
        (-1 if limit is None else limit,),
    )
    return [str(row[0]) for row in rows]


def _select_samples(
    query: Query, experiment_id: str, limit: int | None, after: tuple[int, int] | None
) -> list[SampleRecord]:
    sql = "SELECT * FROM exp_samples WHERE experiment_id = ?"
    params: list[Any] = [experiment_id]
    if after is not None:
        sql += " AND (input_index > ? OR (input_index = ? AND repeat > ?))"
        params.extend((after[0], after[0], after[1]))
    sql += " ORDER BY input_index, repeat"
    if limit is not None:
        sql += " LIMIT ?"
        params.append(limit)
    return [_sample(row) for row in query(sql, params)]


_SAMPLE_COLUMNS = (
    "experiment_id, input_index, repeat, seed, prompt, expected, output, scores, score_errors,"
    " prompt_tokens, completion_tokens, latency_seconds, time_to_first_token_seconds,"
    " tokens_per_second, finish_reason, error, turns, tool_calls, tool_errors"
)
_METRIC_COLUMNS = (
    "input_index, repeat, seed, scores, score_errors, prompt_tokens, completion_tokens,"
    " latency_seconds, time_to_first_token_seconds, tokens_per_second, finish_reason, error,"
    " turns, tool_calls, tool_errors"
)


def _select_sample_metrics(query: Query, experiment_id: str) -> list[SampleRecord]:
    rows = query(
        f"SELECT {_METRIC_COLUMNS} FROM exp_samples WHERE experiment_id = ?"  # noqa: S608 -- fixed columns
        " ORDER BY input_index, repeat",
        (experiment_id,),
    )
    return [_sample(row, with_texts=False) for row in rows]


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
        f"INSERT OR REPLACE INTO exp_samples ({_SAMPLE_COLUMNS})"  # noqa: S608 -- fixed columns
        f" VALUES ({', '.join('?' * 19)})",
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
            sample.turns,
            sample.tool_calls,
            sample.tool_errors,
        ),
    )


def _event_row(event: StoredEvent) -> tuple[str, int, float, str, str, bytes]:
    """The ``_INSERT_EVENT`` parameters of an event: the event is its message, serialized
    here (on the writer thread), once; the JSON payload column of older rows stays empty."""
    return (
        event.experiment_id,
        event.sequence,
        event.time,
        _KIND_OF[type(event.payload)],
        "",
        event_bytes(event),
    )


def _decode(kind: str, text: str) -> EventPayload:
    """The payload of a row written before messages were stored, from its JSON."""
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
    if kind == "tool_call":
        return ToolCallEvent(**{**data, "argv": tuple(data["argv"])})
    return _PAYLOAD_KINDS[kind](**data)


def _record(row: sqlite3.Row, specs: _SpecCache) -> ExperimentRecord:
    failure = (
        Failure(row["failure_reason"], row["failure_message"] or "")
        if row["failure_reason"]
        else None
    )
    return ExperimentRecord(
        id=row["id"],
        tenant=row["tenant"],
        environment_id=row["environment_id"],
        spec=specs.get(row["id"], row["spec_json"]),
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


def _sample(row: sqlite3.Row, *, with_texts: bool = True) -> SampleRecord:
    return SampleRecord(
        input_index=row["input_index"],
        repeat=row["repeat"],
        seed=row["seed"],
        prompt=row["prompt"] if with_texts else "",
        expected=row["expected"] if with_texts else "",
        output=row["output"] if with_texts else "",
        scores=json.loads(row["scores"]),
        score_errors=json.loads(row["score_errors"]),
        prompt_tokens=row["prompt_tokens"],
        completion_tokens=row["completion_tokens"],
        latency_seconds=row["latency_seconds"],
        time_to_first_token_seconds=row["time_to_first_token_seconds"],
        tokens_per_second=row["tokens_per_second"],
        finish_reason=row["finish_reason"],
        error=row["error"],
        turns=row["turns"],
        tool_calls=row["tool_calls"],
        tool_errors=row["tool_errors"],
    )
