"""The orchestrator registry on SQLite and PostgreSQL: register, renew, expire, drain."""

from __future__ import annotations

import asyncio
import secrets
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from sandbox_sdk import AsyncSandboxClient
from sandbox_sdk.errors import ErrorReason, UnavailableError
from sandbox_sdk.server import ids
from sandbox_sdk.server.gateway.api_keys import Scope
from sandbox_sdk.server.gateway.config import GatewayConfig
from sandbox_sdk.server.gateway.server import GatewayServer
from sandbox_sdk.server.orchestrator.app import OrchestratorApp
from sandbox_sdk.server.orchestrator.config import OrchestratorConfig, RegistrySettings
from sandbox_sdk.server.store.registry import (
    Announcement,
    Capacity,
    Labels,
    OrchestratorRegistry,
)

CAPACITY = Capacity(max_environments=8, cpu_cores=4.0, memory_bytes=8 << 30)
LABELS = Labels(zone="z1", machine_class="m-small")


@pytest.fixture(params=["sqlite", "postgresql"])
def registry(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[OrchestratorRegistry]:
    """A migrated, empty registry on each backend."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'gateway.db'}"
    else:
        url = str(request.getfixturevalue("postgres_database"))
    opened = OrchestratorRegistry.open(url)
    yield opened
    opened.close()


def _register(
    registry: OrchestratorRegistry, orchestrator_id: str, now: float, lease: float = 10.0
) -> None:
    announcement = Announcement(
        orchestrator_id, f"{orchestrator_id}.internal:50051", CAPACITY, LABELS, version="1.2.3"
    )
    registry.register(announcement, lease_seconds=lease, now=now)


def test_a_registered_orchestrator_is_live_with_what_it_announced(
    registry: OrchestratorRegistry,
) -> None:
    _register(registry, "orc-a", now=1000.0)
    [live] = registry.list_live(now=1005.0)
    assert live.id == "orc-a"
    assert live.address == "orc-a.internal:50051"
    assert live.capacity == CAPACITY
    assert live.labels == LABELS
    assert live.version == "1.2.3"
    assert live.lease_expire_time == 1010.0
    assert not live.draining


def test_a_lease_not_renewed_expires_and_a_renewed_one_does_not(
    registry: OrchestratorRegistry,
) -> None:
    _register(registry, "orc-a", now=1000.0)
    _register(registry, "orc-b", now=1000.0)
    _register(registry, "orc-b", now=1008.0)
    assert [o.id for o in registry.list_live(now=1011.0)] == ["orc-b"]
    assert registry.list_live(now=1019.0) == []
    assert [o.id for o in registry.list_all()] == ["orc-a", "orc-b"]
    expired = registry.get("orc-a")
    assert expired is not None
    assert not expired.is_live(1011.0)


def test_a_drained_orchestrator_stays_draining_when_it_renews(
    registry: OrchestratorRegistry,
) -> None:
    _register(registry, "orc-a", now=1000.0)
    assert registry.drain("orc-a")
    _register(registry, "orc-a", now=1005.0)
    [live] = registry.list_live(now=1012.0)
    assert live.draining
    assert not registry.drain("orc-unknown")


def test_a_removed_orchestrator_is_gone(registry: OrchestratorRegistry) -> None:
    _register(registry, "orc-a", now=1000.0)
    registry.remove("orc-a")
    assert registry.get("orc-a") is None
    assert registry.list_live(now=1000.0) == []


# -- An orchestrator's own registration ------------------------------------------------------


async def _start_registered(
    tmp_path: Path,
    database_url: str,
    orchestrator_id: str,
    lease_seconds: float,
    internal_token: str | None = None,
) -> OrchestratorApp:
    config = OrchestratorConfig(
        orchestrator_id=orchestrator_id,
        data_dir=tmp_path / orchestrator_id,
        internal_token=internal_token or secrets.token_urlsafe(32),
        registry=RegistrySettings(
            database_url=database_url, zone="z1", lease_seconds=lease_seconds
        ),
    )
    return await OrchestratorApp.start(config, "127.0.0.1:0")


async def _until(condition: Callable[[], Awaitable[bool]], limit: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + limit
    while not await condition():
        assert asyncio.get_running_loop().time() < deadline, "condition never held"
        await asyncio.sleep(0.05)


async def test_an_orchestrator_registers_renews_its_lease_and_leaves_on_stop(
    tmp_path: Path, postgres_database: str
) -> None:
    registry = OrchestratorRegistry.open(postgres_database)
    app = await _start_registered(tmp_path, postgres_database, "o1", lease_seconds=0.9)
    try:
        first = registry.get("o1")
        assert first is not None
        assert first.address == app.address
        assert first.labels.zone == "z1"
        assert first.capacity.max_environments == app.config.sandbox.max_environments

        async def renewed() -> bool:
            row = await asyncio.to_thread(registry.get, "o1")
            return row is not None and row.lease_expire_time > first.lease_expire_time

        await _until(renewed)
    finally:
        await app.stop(0)
    assert registry.get("o1") is None
    registry.close()


async def test_an_orchestrator_whose_heartbeat_stops_drops_out_after_its_lease(
    tmp_path: Path, postgres_database: str
) -> None:
    registry = OrchestratorRegistry.open(postgres_database)
    app = await _start_registered(tmp_path, postgres_database, "o1", lease_seconds=0.6)
    try:
        assert app.registration is not None
        await app.registration.stop_heartbeat()

        async def expired() -> bool:
            return not await asyncio.to_thread(registry.list_live)

        await _until(expired)
        assert registry.get("o1") is not None
    finally:
        await app.stop(0)
        registry.close()


# -- A gateway following the registry ---------------------------------------------------------


@dataclass
class _Cluster:
    gateway: GatewayServer
    orchestrators: dict[str, OrchestratorApp]
    client: AsyncSandboxClient
    database_url: str
    internal_token: str


async def _start_gateway(
    database_url: str, internal_token: str, db_path: Path
) -> tuple[GatewayServer, AsyncSandboxClient]:
    gateway = await GatewayServer.start(
        GatewayConfig(
            listen="127.0.0.1:0",
            orchestrators=[],
            database_url=database_url,
            internal_token=internal_token,
            db_path=db_path,
            health_check_interval_seconds=0.2,
            registry_poll_seconds=0.2,
        )
    )
    key = gateway.keys.create("team-a", (Scope.READ, Scope.WRITE)).secret
    client = AsyncSandboxClient(f"127.0.0.1:{gateway.port}", api_key=key, retry={"max_attempts": 1})
    return gateway, client


@pytest.fixture
async def cluster(tmp_path: Path, postgres_database: str) -> AsyncIterator[_Cluster]:
    """A gateway with no static orchestrators and two that registered themselves."""
    token = secrets.token_urlsafe(32)
    orchestrators = {
        orchestrator_id: await _start_registered(
            tmp_path, postgres_database, orchestrator_id, lease_seconds=1.5, internal_token=token
        )
        for orchestrator_id in ("o1", "o2")
    }
    gateway, client = await _start_gateway(postgres_database, token, tmp_path / "gateway.db")
    try:
        yield _Cluster(gateway, orchestrators, client, postgres_database, token)
    finally:
        await client.close()
        await gateway.stop(0)
        for app in orchestrators.values():
            await app.stop(0)


async def _create_on(cluster: _Cluster, count: int) -> list[str]:
    created = [await cluster.client.create_environment() for _ in range(count)]
    return [ids.owner_of(sandbox.id) or "" for sandbox in created]


async def test_a_gateway_following_the_registry_places_on_every_registered_orchestrator(
    cluster: _Cluster,
) -> None:
    assert set(await _create_on(cluster, 4)) == {"o1", "o2"}


async def test_a_drained_orchestrator_gets_no_new_environments_and_keeps_serving_its_own(
    cluster: _Cluster,
) -> None:
    before = await cluster.client.create_environment()
    drained = ids.owner_of(before.id) or ""
    survivor = "o2" if drained == "o1" else "o1"
    registration = cluster.orchestrators[drained].registration
    assert registration is not None
    await registration.drain()

    async def drain_seen() -> bool:
        return [link.id for link in cluster.gateway.pool.placeable()] == [survivor]

    await _until(drain_seen)
    assert await _create_on(cluster, 3) == [survivor] * 3
    result = await before.exec(["echo", "still here"])
    assert result.stdout == "still here\n"


async def test_an_orchestrator_gone_without_leaving_is_reported_lost_after_its_lease(
    cluster: _Cluster, tmp_path: Path
) -> None:
    doomed = await cluster.client.create_environment()
    gone = ids.owner_of(doomed.id) or ""
    survivor = "o2" if gone == "o1" else "o1"
    app = cluster.orchestrators[gone]
    registration = app.registration
    assert registration is not None
    await registration.stop_heartbeat()
    app.registration = None  # stop below without leaving the registry: a crash
    await app.stop(0)

    async def reported_lost() -> bool:
        try:
            await doomed.refresh()
        except UnavailableError as error:
            return error.reason == ErrorReason.ORCHESTRATOR_LOST
        return False

    try:
        await _until(reported_lost)
        assert await _create_on(cluster, 2) == [survivor] * 2
        await _a_gateway_started_later_reports_it_lost_too(cluster, doomed.id, tmp_path)
    finally:
        await registration.stop()


async def _a_gateway_started_later_reports_it_lost_too(
    cluster: _Cluster, environment_id: str, tmp_path: Path
) -> None:
    gateway, client = await _start_gateway(
        cluster.database_url, cluster.internal_token, tmp_path / "later.db"
    )
    try:
        with pytest.raises(UnavailableError) as refused:
            await client.get_environment(environment_id)
        assert refused.value.reason == ErrorReason.ORCHESTRATOR_LOST
    finally:
        await client.close()
        await gateway.stop(0)


def test_sandbox_orchestrator_drain_marks_the_configured_orchestrator_draining(
    tmp_path: Path, postgres_database: str
) -> None:
    registry = OrchestratorRegistry.open(postgres_database)
    _register(registry, "o7", now=time.time())
    config = tmp_path / "server.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "orchestrator": {
                    "orchestrator_id": "o7",
                    "data_dir": str(tmp_path / "o7"),
                    "internal_token": secrets.token_urlsafe(32),
                    "registry": {"database_url": postgres_database},
                }
            }
        )
    )
    done = subprocess.run(
        [
            str(Path(sys.executable).parent / "sandbox-orchestrator"),
            "drain",
            "--config",
            str(config),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    drained = registry.get("o7")
    registry.close()
    assert drained is not None
    assert drained.draining
