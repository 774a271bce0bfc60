"""Environments in the orchestrator's SQLite database (tables ``env_*``)."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from sandbox_sdk.server.database import Database
from sandbox_sdk.server.orchestrator.sandbox.environment_record import (
    Environment,
    EnvironmentSpec,
    EnvironmentState,
    IsolationRuntime,
    Limits,
    NetworkPolicy,
    TerminationReason,
)
from sandbox_sdk.server.request_ids import DuplicateRequestError, is_duplicate_request

COMPONENT = "sandbox"
# The predicate of the live-only partial indexes, spelled the same in the queries that use
# them (SQLite matches a partial index's WHERE term by term, and not through parameters).
_LIVE = f"state <> '{EnvironmentState.TERMINATED.value}'"
_RECOUNT = (
    "INSERT INTO env_tenant_live (tenant, live)"  # noqa: S608 -- constant
    f" SELECT tenant, COUNT(*) FROM env_environments WHERE {_LIVE} GROUP BY tenant"
)
MIGRATIONS = [
    """
    CREATE TABLE env_environments (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        tenant TEXT NOT NULL,
        request_id TEXT NOT NULL DEFAULT '',
        orchestrator_id TEXT NOT NULL,
        state TEXT NOT NULL,
        termination_reason TEXT NOT NULL,
        termination_message TEXT NOT NULL DEFAULT '',
        isolation TEXT NOT NULL,
        spec TEXT NOT NULL,
        create_time REAL NOT NULL,
        expire_time REAL NOT NULL,
        last_activity_time REAL NOT NULL,
        terminate_time REAL
    );
    CREATE UNIQUE INDEX env_environments_request_id
        ON env_environments (tenant, request_id) WHERE request_id <> '';
    CREATE INDEX env_environments_tenant_seq ON env_environments (tenant, seq);
    CREATE INDEX env_environments_state ON env_environments (orchestrator_id, state)
    """,
    # Live environments without their history: listings of live ones (what the gateway's
    # quota counts) and the start-up's unfinished ones read only live rows, and the
    # per-tenant live count is a counter kept in every state change's transaction.
    f"""
    CREATE INDEX env_environments_live ON env_environments (tenant, seq)
        WHERE {_LIVE};
    CREATE INDEX env_environments_unfinished ON env_environments (orchestrator_id)
        WHERE {_LIVE};
    CREATE TABLE env_tenant_live (
        tenant TEXT PRIMARY KEY,
        live INTEGER NOT NULL
    ) WITHOUT ROWID
    """,
]

_COLUMNS = (
    "id, tenant, request_id, orchestrator_id, state, termination_reason, termination_message, "
    "isolation, spec, create_time, expire_time, last_activity_time, terminate_time"
)


def _spec_to_json(spec: EnvironmentSpec) -> str:
    limits = spec.limits
    return json.dumps(
        {
            "limits": {
                "cpu_cores": limits.cpu_cores,
                "memory_bytes": limits.memory_bytes,
                "disk_bytes": limits.disk_bytes,
                "max_pids": limits.max_pids,
                "exec_timeout_seconds": limits.exec_timeout_seconds,
            },
            "env_vars": dict(spec.env_vars),
            "labels": dict(spec.labels),
            "ttl_seconds": spec.ttl_seconds,
            "idle_timeout_seconds": spec.idle_timeout_seconds,
            "network": spec.network.value,
            "egress_allow_cidrs": list(spec.egress_allow_cidrs),
            "egress_deny_cidrs": list(spec.egress_deny_cidrs),
            "template": spec.template,
            "template_id": spec.template_id,
            "runtime": spec.runtime.value,
        },
        sort_keys=True,
    )


def _spec_from_json(text: str) -> EnvironmentSpec:
    data: dict[str, Any] = json.loads(text)
    return EnvironmentSpec(
        limits=Limits(**data["limits"]),
        env_vars=data["env_vars"],
        labels=data["labels"],
        ttl_seconds=data["ttl_seconds"],
        idle_timeout_seconds=data["idle_timeout_seconds"],
        network=NetworkPolicy(data["network"]),
        egress_allow_cidrs=tuple(data.get("egress_allow_cidrs", ())),
        egress_deny_cidrs=tuple(data.get("egress_deny_cidrs", ())),
        template=data.get("template"),
        template_id=data.get("template_id"),
        # Specs stored before runtimes were chosen ran under bubblewrap, the only one then.
        runtime=IsolationRuntime(data.get("runtime", IsolationRuntime.BUBBLEWRAP.value)),
    )


def _from_row(row: sqlite3.Row) -> Environment:
    return Environment(
        id=row["id"],
        tenant=row["tenant"],
        spec=_spec_from_json(row["spec"]),
        state=EnvironmentState(row["state"]),
        termination_reason=TerminationReason(row["termination_reason"]),
        termination_message=row["termination_message"],
        isolation=row["isolation"],
        orchestrator_id=row["orchestrator_id"],
        create_time=row["create_time"],
        expire_time=row["expire_time"],
        last_activity_time=row["last_activity_time"],
        terminate_time=row["terminate_time"],
        request_id=row["request_id"],
    )


def _add_live(conn: sqlite3.Connection, tenant: str, delta: int) -> None:
    conn.execute(
        "INSERT INTO env_tenant_live (tenant, live) VALUES (?, ?) "
        "ON CONFLICT (tenant) DO UPDATE SET live = live + excluded.live",
        (tenant, delta),
    )


class EnvironmentStore:
    """Reads and writes environment records."""

    def __init__(self, db: Database) -> None:
        self._db = db
        db.migrate(COMPONENT, MIGRATIONS)
        self.reconcile_live_counts()

    def reconcile_live_counts(self) -> None:
        """Recounts every tenant's live environments from the table (on start: the counters
        are kept in the same transactions as the rows, this only repairs a hand-edited or
        pre-counter database). Reads only live rows, through the live index."""
        with self._db.transaction() as conn:
            conn.execute("DELETE FROM env_tenant_live")
            conn.execute(_RECOUNT)

    def live_count(self, tenant: str) -> int:
        """The tenant's environments not yet TERMINATED, from its counter (O(1))."""
        rows = self._db.query("SELECT live FROM env_tenant_live WHERE tenant = ?", (tenant,))
        return int(rows[0][0]) if rows else 0

    def insert(self, environment: Environment) -> None:
        """Adds a new record; raises DuplicateRequestError if its request_id is taken."""
        e = environment
        try:
            with self._db.transaction() as conn:
                conn.execute(
                    f"INSERT INTO env_environments ({_COLUMNS}) "  # noqa: S608  (constant columns)
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        e.id, e.tenant, e.request_id, e.orchestrator_id, e.state.value,
                        e.termination_reason.value, e.termination_message, e.isolation,
                        _spec_to_json(e.spec), e.create_time, e.expire_time,
                        e.last_activity_time, e.terminate_time,
                    ),
                )  # fmt: skip
                if e.state is not EnvironmentState.TERMINATED:
                    _add_live(conn, e.tenant, 1)
        except sqlite3.IntegrityError as error:
            if is_duplicate_request(error, e.request_id):
                raise DuplicateRequestError(e.request_id) from error
            raise

    def get(self, environment_id: str) -> Environment | None:
        """The record, or None."""
        rows = self._db.query(
            f"SELECT {_COLUMNS} FROM env_environments WHERE id = ?",  # noqa: S608
            (environment_id,),
        )
        return _from_row(rows[0]) if rows else None

    def find_by_request(self, tenant: str, request_id: str) -> Environment | None:
        """The tenant's environment created with ``request_id``, or None."""
        rows = self._db.query(
            # "request_id <> ''" lets SQLite use the partial unique index on it.
            f"SELECT {_COLUMNS} FROM env_environments "  # noqa: S608
            "WHERE tenant = ? AND request_id = ? AND request_id <> ''",
            (tenant, request_id),
        )
        return _from_row(rows[0]) if rows else None

    def page(
        self,
        tenant: str,
        *,
        before_seq: int | None,
        limit: int,
        label_selector: Mapping[str, str],
        show_terminated: bool,
    ) -> tuple[list[Environment], int | None]:
        """One page, newest first, and the cursor for the next page (None on the last)."""
        where = ["tenant = ?"]
        params: list[object] = [tenant]
        if before_seq is not None:
            where.append("seq < ?")
            params.append(before_seq)
        if not show_terminated:
            where.append(_LIVE)  # the live index: the tenant's history is not read
        for key, value in sorted(label_selector.items()):
            where.append(
                "EXISTS (SELECT 1 FROM json_each(spec, '$.labels') WHERE key = ? AND value = ?)"
            )
            params += [key, value]
        rows = self._db.query(
            f"SELECT seq, {_COLUMNS} FROM env_environments WHERE {' AND '.join(where)} "  # noqa: S608
            "ORDER BY seq DESC LIMIT ?",
            (*params, limit + 1),
        )
        page = [_from_row(row) for row in rows[:limit]]
        next_seq = rows[limit - 1]["seq"] if len(rows) > limit else None
        return page, next_seq

    def unfinished(self, orchestrator_id: str) -> list[Environment]:
        """The orchestrator's environments not yet TERMINATED."""
        rows = self._db.query(
            f"SELECT {_COLUMNS} FROM env_environments WHERE orchestrator_id = ? AND {_LIVE}",  # noqa: S608
            (orchestrator_id,),
        )
        return [_from_row(row) for row in rows]

    def save(self, environment: Environment) -> None:
        """Writes back the mutable fields of a record."""
        e = environment
        with self._db.transaction() as conn:
            before = conn.execute(
                "SELECT tenant, state FROM env_environments WHERE id = ?", (e.id,)
            ).fetchone()
            conn.execute(
                "UPDATE env_environments SET state = ?, termination_reason = ?, "
                "termination_message = ?, spec = ?, expire_time = ?, last_activity_time = ?, "
                "terminate_time = ?, request_id = ? WHERE id = ?",
                (
                    e.state.value, e.termination_reason.value, e.termination_message,
                    _spec_to_json(e.spec), e.expire_time, e.last_activity_time,
                    e.terminate_time, e.request_id, e.id,
                ),
            )  # fmt: skip
            if before is not None:
                was_live = before[1] != EnvironmentState.TERMINATED.value
                is_live = e.state is not EnvironmentState.TERMINATED
                if was_live != is_live:
                    _add_live(conn, before[0], 1 if is_live else -1)

    def record_activity(self, environment_id: str, when: float) -> None:
        """Moves last_activity_time forward to ``when``."""
        with self._db.transaction() as conn:
            conn.execute(
                "UPDATE env_environments SET last_activity_time = MAX(last_activity_time, ?) "
                "WHERE id = ?",
                (when, environment_id),
            )

    def update(self, environment: Environment, **changes: Any) -> Environment:
        """Applies ``changes`` (dataclass fields) to a record, saves and returns it."""
        updated = replace(environment, **changes)
        self.save(updated)
        return updated
