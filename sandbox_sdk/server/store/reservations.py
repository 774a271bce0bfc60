"""Quota reservations in PostgreSQL: one admission at a time per (tenant, quota) over all gateways.

A create takes a transaction-scoped advisory lock on its (tenant, quota),
counts the live resources and the unexpired reservations of every gateway,
and, when under the limit, records its own reservation before committing.
The reservation is deleted when the create finishes; if its gateway dies
first it expires after a bounded time instead.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

# Removes the reservation of a create whose gateway died; a live create outlasting
# it could let one more in, so it is at least the create's own deadline.
DEFAULT_HOLD_SECONDS = 300.0


class SharedReservations:
    """Reservations of quota slots in the PostgreSQL store shared by the gateways."""

    def __init__(self, database_url: str, max_connections: int = 4) -> None:
        self._pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]] = AsyncConnectionPool(
            database_url, min_size=1, max_size=max_connections, open=False
        )

    async def open(self) -> None:
        """Opens the connection pool (inside the running event loop)."""
        await self._pool.open()

    async def close(self) -> None:
        """Closes the connection pool."""
        await self._pool.close()

    async def reserve(
        self,
        tenant: str,
        quota: str,
        limit: int,
        count_live: Callable[[], Awaitable[int]],
        hold_seconds: float = DEFAULT_HOLD_SECONDS,
    ) -> str | None:
        """The id of a new reservation, or ``None`` when the tenant is at ``limit`` already."""
        async with self._pool.connection() as connection, connection.transaction():
            await connection.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (f"{tenant}/{quota}",)
            )
            now = time.time()
            await connection.execute(
                "DELETE FROM gw_quota_reservations"
                " WHERE tenant = %s AND quota = %s AND expire_time <= %s",
                (tenant, quota, now),
            )
            cursor = await connection.execute(
                "SELECT count(*) FROM gw_quota_reservations WHERE tenant = %s AND quota = %s",
                (tenant, quota),
            )
            row = await cursor.fetchone()
            reserved = int(row[0]) if row is not None else 0
            if reserved >= limit or reserved + await count_live() >= limit:
                return None
            reservation = uuid.uuid4().hex
            await connection.execute(
                "INSERT INTO gw_quota_reservations (id, tenant, quota, expire_time)"
                " VALUES (%s, %s, %s, %s)",
                (reservation, tenant, quota, now + hold_seconds),
            )
            return reservation

    async def release(self, reservation: str) -> None:
        """Frees the slot of a finished create."""
        async with self._pool.connection() as connection:
            await connection.execute(
                "DELETE FROM gw_quota_reservations WHERE id = %s", (reservation,)
            )
