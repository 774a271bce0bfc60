"""API keys: random secrets shown once, stored only as SHA-256 hashes in the shared store.

A key looks like ``sk_<16 hex>_<43 url-safe characters>``. The ``sk_<16 hex>``
part is the key's id (its visible prefix, safe to log and list); the rest is
``secrets.token_urlsafe(32)``, 256 random bits. Because the whole key has that
much entropy a plain SHA-256 is a safe one-way hash; the id makes lookup a
primary-key read followed by one constant-time comparison.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from sandbox_sdk.models.api_keys import ApiKeyScope
from sandbox_sdk.server.database import Database
from sandbox_sdk.server.store.backends import Row, SqlBackend, SqliteBackend, open_backend
from sandbox_sdk.server.store.migrate import upgrade

KEY_PATTERN = re.compile(r"^(sk_[0-9a-f]{16})_[A-Za-z0-9_-]{43}$")
KEY_ID_PATTERN = re.compile(r"^sk_[0-9a-f]{16}$")
# A retried CreateApiKey (same request_id) gets the secret again only this long.
_RETRY_WINDOW_SECONDS = 600.0

# What a key allows: the SDK's enum, under the name the gateway's modules use.
Scope = ApiKeyScope


@dataclass(frozen=True, slots=True)
class ApiKeyRecord:
    """A stored key: its metadata and the hash of its secret."""

    id: str
    tenant: str
    scopes: frozenset[Scope]
    display_name: str
    key_hash: bytes
    create_time: float
    expire_time: float | None
    revoke_time: float | None

    def allows(self, scope: Scope) -> bool:
        """Whether the key may make calls that need ``scope``."""
        if scope in self.scopes or Scope.OPERATOR in self.scopes:
            return True
        return Scope.ADMIN in self.scopes and scope is not Scope.OPERATOR

    @property
    def is_operator(self) -> bool:
        """Whether the key administers every tenant (the ``operator`` scope)."""
        return Scope.OPERATOR in self.scopes

    def is_expired(self, now: float) -> bool:
        """Whether the key's lifetime has run out at ``now`` (epoch seconds)."""
        return self.expire_time is not None and now >= self.expire_time


@dataclass(frozen=True)
class CreatedKey:
    """A new key: its record, and the secret that is never stored."""

    record: ApiKeyRecord
    secret: str


class RequestIdReusedError(Exception):
    """A key was created with this request_id too long ago to show its secret again."""


def hash_key(key: str) -> bytes:
    """The stored form of a key."""
    return hashlib.sha256(key.encode()).digest()


def key_id_of(key: str) -> str | None:
    """The id inside a well-formed key, or ``None`` if the key is malformed."""
    match = KEY_PATTERN.match(key)
    return match.group(1) if match else None


def _new_key() -> tuple[str, str]:
    key_id = f"sk_{secrets.token_hex(8)}"
    return key_id, f"{key_id}_{secrets.token_urlsafe(32)}"


# The scopes column holds lower-case names, comma-separated, as it always has.
def _scopes_column(scopes: Iterable[Scope]) -> str:
    return ",".join(sorted(scope.lower() for scope in scopes))


def _scopes_from_column(text: str) -> frozenset[Scope]:
    return frozenset(Scope(name.upper()) for name in text.split(","))


def _is_unique_violation(error: Exception) -> bool:
    # sqlite3.IntegrityError and psycopg.errors.UniqueViolation, without importing either here.
    return type(error).__name__ in {"IntegrityError", "UniqueViolation"}


def _record(row: Row) -> ApiKeyRecord:
    return ApiKeyRecord(
        id=row["id"],
        tenant=row["tenant"],
        scopes=_scopes_from_column(row["scopes"]),
        display_name=row["display_name"],
        key_hash=bytes(row["key_hash"]),
        create_time=row["create_time"],
        expire_time=row["expire_time"],
        revoke_time=row["revoke_time"],
    )


class ApiKeyStore:
    """API keys in the gateway's database, with a short-lived in-memory cache of lookups.

    The database is SQLite (embedded) or PostgreSQL (shared by several gateways),
    with its schema migrated already (see :meth:`open`). Revoking through this
    store drops the cached entry at once; another gateway process sharing the
    database sees a revocation within ``cache_seconds``, or at once when it is
    told to :meth:`forget` the key.
    """

    def __init__(self, database: SqlBackend | Database, cache_seconds: float = 10.0) -> None:
        if isinstance(database, Database):
            database = SqliteBackend(database)
            upgrade(database.url)
        self._db: SqlBackend = database
        self._cache_seconds = cache_seconds
        self._cache: dict[str, tuple[ApiKeyRecord, float]] = {}
        self._recent: dict[str, tuple[CreatedKey, float]] = {}
        self._lock = threading.Lock()

    @classmethod
    def open(
        cls, database_url: str | None, sqlite_path: Path, cache_seconds: float = 10.0
    ) -> ApiKeyStore:
        """Migrates the database (PostgreSQL at ``database_url``, else SQLite) and opens it."""
        backend = open_backend(database_url, sqlite_path)
        try:
            upgrade(backend.url)
        except BaseException:
            backend.close()
            raise
        return cls(backend, cache_seconds)

    @property
    def backend(self) -> SqlBackend:
        """The database the keys are in."""
        return self._db

    def close(self) -> None:
        """Closes the database."""
        self._db.close()

    def create(
        self,
        tenant: str,
        scopes: Iterable[Scope],
        display_name: str = "",
        ttl_seconds: float = 0.0,
        request_id: str = "",
    ) -> CreatedKey:
        """Creates a key; a repeated ``request_id`` returns the first key (within 10 min)."""
        with self._lock:
            if request_id:
                replay = self._replay(request_id)
                if replay is not None:
                    return replay
            key_id, secret = _new_key()
            now = time.time()
            record = ApiKeyRecord(
                id=key_id,
                tenant=tenant,
                scopes=frozenset(scopes),
                display_name=display_name,
                key_hash=hash_key(secret),
                create_time=now,
                expire_time=now + ttl_seconds if ttl_seconds > 0 else None,
                revoke_time=None,
            )
            try:
                self._insert(record, request_id)
            except Exception as error:
                if request_id and _is_unique_violation(error):
                    # Another gateway created a key with this request_id at the same time.
                    raise RequestIdReusedError(request_id) from error
                raise
            created = CreatedKey(record, secret)
            if request_id:
                self._recent[request_id] = (created, time.monotonic())
            return created

    def _insert(self, record: ApiKeyRecord, request_id: str) -> None:
        with self._db.transaction() as conn:
            conn.execute(
                "INSERT INTO gw_api_keys (id, tenant, scopes, display_name, key_hash,"
                " create_time, expire_time, request_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    record.id,
                    record.tenant,
                    _scopes_column(record.scopes),
                    record.display_name,
                    record.key_hash,
                    record.create_time,
                    record.expire_time,
                    request_id or None,
                ),
            )

    def _replay(self, request_id: str) -> CreatedKey | None:
        now = time.monotonic()
        for stale in [r for r, (_, t) in self._recent.items() if now - t > _RETRY_WINDOW_SECONDS]:
            del self._recent[stale]
        recent = self._recent.get(request_id)
        if recent is not None:
            return recent[0]
        if self._db.query("SELECT 1 FROM gw_api_keys WHERE request_id = ?", (request_id,)):
            raise RequestIdReusedError(request_id)
        return None

    def cached(self, key_id: str) -> ApiKeyRecord | None:
        """The key with this id if it was read recently, without asking the database."""
        cached = self._cache.get(key_id)
        if cached is not None and time.monotonic() - cached[1] < self._cache_seconds:
            return cached[0]
        return None

    def lookup(self, key_id: str) -> ApiKeyRecord | None:
        """The key with this id, from memory when it was read recently."""
        cached = self._cache.get(key_id)
        now = time.monotonic()
        if cached is not None and now - cached[1] < self._cache_seconds:
            return cached[0]
        rows = self._db.query("SELECT * FROM gw_api_keys WHERE id = ?", (key_id,))
        if not rows:
            self._cache.pop(key_id, None)
            return None
        record = _record(rows[0])
        self._cache[key_id] = (record, now)
        return record

    def forget(self, key_id: str) -> None:
        """Drops the cached lookup of ``key_id`` (it was revoked through another gateway)."""
        self._cache.pop(key_id, None)

    def forget_all(self) -> None:
        """Drops every cached lookup (after revocation notices may have been missed)."""
        self._cache.clear()

    def list(
        self,
        *,
        tenant: str = "",
        include_inactive: bool = False,
        limit: int = 50,
        before: tuple[float, str] | None = None,
    ) -> list[ApiKeyRecord]:
        """Keys newest first, after the ``(create_time, id)`` cursor ``before``."""
        where = []
        params: list[object] = []
        if tenant:
            where.append("tenant = ?")
            params.append(tenant)
        if not include_inactive:
            where.append("revoke_time IS NULL AND (expire_time IS NULL OR expire_time > ?)")
            params.append(time.time())
        if before is not None:
            where.append("(create_time < ? OR (create_time = ? AND id < ?))")
            params.extend([before[0], before[0], before[1]])
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        rows = self._db.query(
            f"SELECT * FROM gw_api_keys {clause} ORDER BY create_time DESC, id DESC LIMIT ?",  # noqa: S608 -- clause is built from fixed fragments
            [*params, limit],
        )
        return [_record(row) for row in rows]

    def revoke(self, key_id: str) -> ApiKeyRecord | None:
        """Revokes a key at once (a no-op if it already is); ``None`` if there is no such key."""
        with self._db.transaction() as conn:
            conn.execute(
                "UPDATE gw_api_keys SET revoke_time = ? WHERE id = ? AND revoke_time IS NULL",
                (time.time(), key_id),
            )
        self._cache.pop(key_id, None)
        return self.lookup(key_id)
