"""The gateway's shared store on SQLite and PostgreSQL: API keys, migrations, exact quotas."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import yaml

from sandbox_sdk.server.database import Database
from sandbox_sdk.server.gateway.api_keys import ApiKeyStore, RequestIdReusedError, Scope
from sandbox_sdk.server.gateway.config import LimitsConfig, TenantLimits
from sandbox_sdk.server.gateway.methods import Quota
from sandbox_sdk.server.gateway.orchestrators import OrchestratorPool
from sandbox_sdk.server.gateway.quotas import QuotaEnforcer
from sandbox_sdk.server.status import ServiceError
from sandbox_sdk.server.store.migrate import current_revision, upgrade
from sandbox_sdk.server.store.reservations import SharedReservations

HEAD_REVISION = "0004"

# The schema the gateway created before its migrations moved to Alembic (verbatim).
PRE_ALEMBIC_SCHEMA = """
    CREATE TABLE gw_api_keys (
        id TEXT PRIMARY KEY,
        tenant TEXT NOT NULL,
        scopes TEXT NOT NULL,
        display_name TEXT NOT NULL,
        key_hash BLOB NOT NULL,
        create_time REAL NOT NULL,
        expire_time REAL,
        revoke_time REAL,
        request_id TEXT UNIQUE
    );
    CREATE INDEX gw_api_keys_newest_first ON gw_api_keys (create_time DESC, id DESC)
    """


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database of each backend, by URL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'gateway.db'}"
    return str(request.getfixturevalue("postgres_database"))


def _open(database_url: str, tmp_path: Path, cache_seconds: float = 10.0) -> ApiKeyStore:
    return ApiKeyStore.open(database_url, tmp_path / "unused.db", cache_seconds=cache_seconds)


@pytest.fixture
def store(database_url: str, tmp_path: Path) -> Iterator[ApiKeyStore]:
    """A migrated key store on each backend."""
    opened = _open(database_url, tmp_path)
    yield opened
    opened.close()


# -- API keys ------------------------------------------------------------------------------


def test_a_created_key_is_found_by_its_id(store: ApiKeyStore) -> None:
    created = store.create("t1", {Scope.ADMIN}, display_name="ci", ttl_seconds=60)
    found = store.lookup(created.record.id)
    assert found == created.record
    assert found is not None
    assert found.expire_time is not None
    assert store.lookup("sk_0000000000000000") is None


def test_a_retried_create_returns_the_first_key_and_another_replica_refuses_it(
    store: ApiKeyStore, database_url: str, tmp_path: Path
) -> None:
    first = store.create("t1", {Scope.READ}, request_id="admin/r1")
    again = store.create("t1", {Scope.READ}, request_id="admin/r1")
    assert again.secret == first.secret
    other_replica = _open(database_url, tmp_path)
    try:
        with pytest.raises(RequestIdReusedError):
            other_replica.create("t1", {Scope.READ}, request_id="admin/r1")
    finally:
        other_replica.close()
    assert len(store.list(tenant="t1")) == 1


def test_listing_pages_newest_first_with_a_keyset_cursor(store: ApiKeyStore) -> None:
    ids = [store.create("t1", {Scope.READ}).record.id for _ in range(5)]
    store.create("t2", {Scope.READ})
    seen: list[str] = []
    before: tuple[float, str] | None = None
    while True:
        page = store.list(tenant="t1", limit=2, before=before)
        if not page:
            break
        seen += [record.id for record in page]
        before = (page[-1].create_time, page[-1].id)
    assert seen == list(reversed(ids))


def test_a_revoked_key_leaves_the_active_list(store: ApiKeyStore) -> None:
    kept = store.create("t1", {Scope.READ}).record
    revoked = store.create("t1", {Scope.READ}).record
    record = store.revoke(revoked.id)
    assert record is not None
    assert record.revoke_time is not None
    assert [r.id for r in store.list(tenant="t1")] == [kept.id]
    assert {r.id for r in store.list(tenant="t1", include_inactive=True)} == {kept.id, revoked.id}
    assert store.revoke("sk_0000000000000000") is None


def test_forget_makes_a_replica_see_a_revocation_made_elsewhere(
    store: ApiKeyStore, database_url: str, tmp_path: Path
) -> None:
    key = store.create("t1", {Scope.READ}).record
    replica = _open(database_url, tmp_path, cache_seconds=3600)
    try:
        assert replica.lookup(key.id) is not None
        store.revoke(key.id)
        cached = replica.lookup(key.id)
        assert cached is not None
        assert cached.revoke_time is None
        replica.forget(key.id)
        fresh = replica.lookup(key.id)
        assert fresh is not None
        assert fresh.revoke_time is not None
    finally:
        replica.close()


# -- migrations ----------------------------------------------------------------------------


def test_migrations_build_the_schema_from_an_empty_database(database_url: str) -> None:
    assert current_revision(database_url) is None
    upgrade(database_url)
    assert current_revision(database_url) == HEAD_REVISION
    upgrade(database_url)  # a second run has nothing to do
    assert current_revision(database_url) == HEAD_REVISION


def test_a_sqlite_file_from_before_alembic_migrates_in_place_keeping_its_keys(
    tmp_path: Path,
) -> None:
    path = tmp_path / "gateway.db"
    legacy = Database(path)
    legacy.migrate("gateway_api_keys", [PRE_ALEMBIC_SCHEMA])
    with legacy.transaction() as conn:
        conn.execute(
            "INSERT INTO gw_api_keys (id, tenant, scopes, display_name, key_hash, create_time)"
            " VALUES ('sk_00000000000000aa', 't1', 'admin,read', 'old', x'00', 1.0)"
        )
    legacy.close()

    store = ApiKeyStore.open(None, path)
    try:
        old = store.lookup("sk_00000000000000aa")
        assert old is not None
        assert old.scopes == {Scope.ADMIN, Scope.READ}
        new = store.create("t1", {Scope.READ})
        assert [r.id for r in store.list(tenant="t1")] == [new.record.id, old.id]
    finally:
        store.close()
    assert current_revision(f"sqlite:///{path}") == HEAD_REVISION


def test_the_migrate_command_upgrades_the_configured_store(tmp_path: Path) -> None:
    path = tmp_path / "gateway.db"
    config = tmp_path / "server.yaml"
    config.write_text(yaml.safe_dump({"gateway": {"db_path": str(path)}}))
    command = Path(sys.executable).parent / "sandbox-gateway"
    done = subprocess.run(
        [str(command), "migrate", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert current_revision(f"sqlite:///{path}") == HEAD_REVISION


# -- quotas across replicas ----------------------------------------------------------------


class Orchestrators:
    """What the replicas count: the environments that were created."""

    def __init__(self) -> None:
        self.created = 0
        self.refusals: list[grpc.StatusCode] = []

    async def count(self, quota: Quota, tenant: str, request_id: str, timeout: float | None) -> int:
        await asyncio.sleep(0)
        return self.created

    async def create(self, enforcer: QuotaEnforcer, attempt: int) -> bool:
        try:
            async with enforcer.reserve(Quota.ENVIRONMENTS, "t1", f"r{attempt}", 30.0):
                await asyncio.sleep(0.001)
                self.created += 1
        except ServiceError as error:
            self.refusals.append(error.code)
            return False
        return True


def _enforcer(orchestrators: Orchestrators, shared: SharedReservations | None) -> QuotaEnforcer:
    return QuotaEnforcer(
        OrchestratorPool([], internal_token=None),
        LimitsConfig(default=TenantLimits(max_environments=10)),
        shared=shared,
        usage=orchestrators.count,
    )


async def test_two_replicas_on_postgresql_admit_exactly_the_quota(
    postgres_database: str,
) -> None:
    upgrade(postgres_database)
    orchestrators = Orchestrators()
    replicas = [SharedReservations(postgres_database), SharedReservations(postgres_database)]
    for replica in replicas:
        await replica.open()
    try:
        enforcers = [_enforcer(orchestrators, replica) for replica in replicas]
        admitted = await asyncio.gather(
            *(orchestrators.create(enforcers[i % 2], i) for i in range(50))
        )
        # Never past the quota. A create finishing while others count is counted
        # twice for an instant (live, and still reserved), so the race may refuse
        # one more than needed, never admit one too many.
        assert sum(admitted) == orchestrators.created <= 10
        assert set(orchestrators.refusals) == {grpc.StatusCode.RESOURCE_EXHAUSTED}
        # No slot leaks: once the race is over, the rest of the quota can be used.
        attempt = 50
        while await orchestrators.create(enforcers[attempt % 2], attempt):
            attempt += 1
    finally:
        for replica in replicas:
            await replica.close()
    assert orchestrators.created == 10


async def test_one_gateway_on_sqlite_admits_exactly_the_quota() -> None:
    orchestrators = Orchestrators()
    enforcer = _enforcer(orchestrators, None)
    admitted = await asyncio.gather(*(orchestrators.create(enforcer, i) for i in range(50)))
    assert sum(admitted) == 10
    assert orchestrators.created == 10
    assert orchestrators.refusals == [grpc.StatusCode.RESOURCE_EXHAUSTED] * 40
