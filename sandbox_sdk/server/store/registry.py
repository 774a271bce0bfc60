"""The orchestrator registry: orchestrators announce themselves and keep a lease alive.

An orchestrator registers (or renews) its row with a lease expiry a few
seconds ahead; gateways place only on orchestrators whose lease is live and
which are not draining. Calls are synchronous and short: callers on an event
loop run them with ``asyncio.to_thread``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from sandbox_sdk.server.store.backends import Row, SqlBackend, open_backend
from sandbox_sdk.server.store.migrate import upgrade

DEFAULT_LEASE_SECONDS = 10.0


@dataclass(frozen=True)
class Capacity:
    """What an orchestrator can hold."""

    max_environments: int
    cpu_cores: float
    memory_bytes: int


@dataclass(frozen=True)
class Labels:
    """Where an orchestrator runs and on what kind of machine."""

    zone: str = ""
    machine_class: str = ""


@dataclass(frozen=True)
class Announcement:
    """What an orchestrator tells the registry about itself."""

    id: str
    address: str
    capacity: Capacity
    labels: Labels
    version: str


@dataclass(frozen=True)
class RegisteredOrchestrator(Announcement):
    """One row of the registry: an announcement, its lease and whether it drains."""

    lease_expire_time: float
    draining: bool

    def is_live(self, now: float) -> bool:
        """Whether its lease has not expired at ``now``."""
        return self.lease_expire_time > now


_SELECT = (
    "SELECT id, address, max_environments, cpu_cores, memory_bytes, zone, machine_class,"
    " version, lease_expire_time, draining FROM gw_orchestrators"
)


def _from_row(row: Row) -> RegisteredOrchestrator:
    return RegisteredOrchestrator(
        id=str(row["id"]),
        address=str(row["address"]),
        capacity=Capacity(
            max_environments=int(row["max_environments"]),
            cpu_cores=float(row["cpu_cores"]),
            memory_bytes=int(row["memory_bytes"]),
        ),
        labels=Labels(zone=str(row["zone"]), machine_class=str(row["machine_class"])),
        version=str(row["version"]),
        lease_expire_time=float(row["lease_expire_time"]),
        draining=bool(row["draining"]),
    )


class OrchestratorRegistry:
    """The registry table in the gateway's shared store (SQLite or PostgreSQL)."""

    def __init__(self, backend: SqlBackend) -> None:
        self._backend = backend

    @classmethod
    def open(cls, database_url: str) -> OrchestratorRegistry:
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

    def register(
        self,
        announcement: Announcement,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        now: float | None = None,
    ) -> None:
        """Adds or refreshes the orchestrator's row with a lease ``lease_seconds`` ahead.

        A renewal keeps the draining flag: an orchestrator once drained stays drained.
        """
        expire = (time.time() if now is None else now) + lease_seconds
        with self._backend.transaction() as transaction:
            transaction.execute(
                "INSERT INTO gw_orchestrators (id, address, max_environments, cpu_cores,"
                " memory_bytes, zone, machine_class, version, lease_expire_time, draining)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (id) DO UPDATE SET address = excluded.address,"
                " max_environments = excluded.max_environments,"
                " cpu_cores = excluded.cpu_cores, memory_bytes = excluded.memory_bytes,"
                " zone = excluded.zone, machine_class = excluded.machine_class,"
                " version = excluded.version,"
                " lease_expire_time = excluded.lease_expire_time",
                (
                    announcement.id,
                    announcement.address,
                    announcement.capacity.max_environments,
                    announcement.capacity.cpu_cores,
                    announcement.capacity.memory_bytes,
                    announcement.labels.zone,
                    announcement.labels.machine_class,
                    announcement.version,
                    expire,
                    False,
                ),
            )

    def drain(self, orchestrator_id: str) -> bool:
        """Marks the orchestrator draining; ``False`` when it is not registered."""
        with self._backend.transaction() as transaction:
            cursor = transaction.execute(
                "UPDATE gw_orchestrators SET draining = ? WHERE id = ?", (True, orchestrator_id)
            )
            return bool(cursor.rowcount)

    def remove(self, orchestrator_id: str) -> None:
        """Deletes the orchestrator's row (a clean shutdown)."""
        with self._backend.transaction() as transaction:
            transaction.execute("DELETE FROM gw_orchestrators WHERE id = ?", (orchestrator_id,))

    def get(self, orchestrator_id: str) -> RegisteredOrchestrator | None:
        """The orchestrator's row, live or not."""
        rows = self._backend.query(_SELECT + " WHERE id = ?", (orchestrator_id,))
        return _from_row(rows[0]) if rows else None

    def list_all(self) -> list[RegisteredOrchestrator]:
        """Every row, expired leases included (their orchestrators are lost), by id."""
        return [_from_row(row) for row in self._backend.query(_SELECT + " ORDER BY id")]

    def list_live(self, now: float | None = None) -> list[RegisteredOrchestrator]:
        """The orchestrators whose lease has not expired, draining ones included, by id."""
        rows = self._backend.query(
            _SELECT + " WHERE lease_expire_time > ? ORDER BY id",
            (time.time() if now is None else now,),
        )
        return [_from_row(row) for row in rows]
