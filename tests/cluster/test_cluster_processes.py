"""A real cluster of processes (``LocalCluster``): load spreads, and kill -9 of a gateway or
an orchestrator.

Real PostgreSQL and redis-server, two ``sandbox-gateway`` and three
``sandbox-orchestrator`` processes on loopback, the orchestrators registered with a
short lease; one cluster for the module. Every wait polls with a deadline; nothing
asserts how long anything took. Each test leaves the cluster whole again (what it
killed is started again).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import worker_places

from sandbox_sdk import AsyncSandbox, AsyncSandboxClient, RetryPolicy
from sandbox_sdk.errors import ErrorReason, UnavailableError
from sandbox_sdk.server import ids
from sandbox_sdk.server.cluster import LocalCluster
from sandbox_sdk.server.cluster.postgres import find_bin_dir
from sandbox_sdk.server.cluster.redis import REDIS_SERVER

pytestmark = pytest.mark.slow

LEASE_SECONDS = 2.5
ORCHESTRATORS = {"o1", "o2", "o3"}
SURVIVORS = ORCHESTRATORS - {"o3"}  # once o3 is killed
# Bounds on the waits, far above what they take, so a stuck cluster fails instead of hanging.
WAIT_SECONDS = 60.0
# Retries that ride out a dead gateway: the SDK moves to the other one.
FAILING_OVER = RetryPolicy(max_attempts=20, initial_backoff=0.05, max_backoff=0.5, deadline=60.0)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    if find_bin_dir() is None:
        pytest.skip("PostgreSQL is not installed (make install)")
    if not Path(REDIS_SERVER).exists():
        pytest.skip("redis-server is not installed (make install)")
    with LocalCluster(
        gateways=2,
        orchestrators=3,
        directory=tmp_path_factory.mktemp("local-cluster"),
        lease_seconds=LEASE_SECONDS,
        # Its processes get no SANDBOX_* variables: the session's host places, said here.
        orchestrator_settings={"sandbox": worker_places.sandbox_section()},
    ) as started:
        yield started


@pytest.fixture
async def tenant_key(cluster: LocalCluster) -> str:
    """An API key of a tenant of this test's own."""
    async with AsyncSandboxClient(cluster.target, api_key=cluster.admin_key) as admin:
        created = await admin.create_api_key(tenant=f"t-{uuid.uuid4().hex[:8]}")
    return created.secret


@pytest.fixture
async def client(cluster: LocalCluster, tenant_key: str) -> AsyncIterator[AsyncSandboxClient]:
    """A client of the test's tenant, given both gateways."""
    tenant_client = AsyncSandboxClient(
        cluster.target, api_key=tenant_key, retry=FAILING_OVER, timeout=20.0
    )
    try:
        yield tenant_client
    finally:
        await tenant_client.close()


def _owner(environment_id: str) -> str:
    return ids.owner_of(environment_id) or ""


async def test_environments_spread_over_every_orchestrator(
    cluster: LocalCluster, client: AsyncSandboxClient
) -> None:
    created = [await client.create_environment() for _ in range(9)]
    try:
        assert {_owner(sandbox.id) for sandbox in created} == ORCHESTRATORS
    finally:
        await asyncio.gather(*(sandbox.delete() for sandbox in created))


async def test_a_gateway_killed_mid_load_leaves_every_call_completed_by_the_other(
    cluster: LocalCluster, client: AsyncSandboxClient
) -> None:
    existing = await client.create_environment()
    completed = 0
    enough_started = asyncio.Event()

    async def worker() -> list[str]:
        # Idempotent calls only: creates (each with its request id), reads and deletes.
        nonlocal completed
        created = await client.create_environment()
        for _ in range(15):
            assert (await client.get_environment(existing.id)).id == existing.id
            assert (await client.get_environment(created.id)).id == created.id
            completed += 1
            if completed >= 20:
                enough_started.set()
        await created.delete()
        return [created.id]

    workers = [asyncio.ensure_future(worker()) for _ in range(8)]
    try:
        await asyncio.wait_for(enough_started.wait(), WAIT_SECONDS)
        await asyncio.to_thread(cluster.kill, "g1")
        results = await asyncio.wait_for(asyncio.gather(*workers), WAIT_SECONDS)
        assert len(results) == 8
        assert completed == 8 * 15
        assert (await client.get_environment(existing.id)).id == existing.id
    finally:
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        await existing.delete()
        if not cluster.servers["g1"].running:
            await asyncio.to_thread(cluster.restart, "g1")


async def test_a_killed_orchestrator_is_reported_lost_and_new_environments_go_elsewhere(
    cluster: LocalCluster, client: AsyncSandboxClient, tenant_key: str
) -> None:
    doomed = None
    spare = []
    for _ in range(12):
        sandbox = await client.create_environment()
        if _owner(sandbox.id) == "o3" and doomed is None:
            doomed = sandbox
        else:
            spare.append(sandbox)
        if doomed is not None:
            break
    assert doomed is not None, "no environment was placed on o3"
    await asyncio.gather(*(sandbox.delete() for sandbox in spare))

    await asyncio.to_thread(cluster.kill, "o3")
    try:
        for gateway in cluster.gateway_addresses:
            error = await _reported_lost(gateway, tenant_key, doomed.id)
            assert error.reason == ErrorReason.ORCHESTRATOR_LOST
            assert error.metadata.get("orchestrator_id") == "o3"
            assert "orchestrator o3" in str(error)
            assert "gone" in str(error)
        assert "o3" not in await asyncio.to_thread(cluster.live_orchestrators)

        # Placement picks the most free capacity, so an orchestrator still holding other
        # tests' environments may take none of the first few creates: the survivors must
        # all take some, and o3 none, before the bound.
        created: list[AsyncSandbox] = []
        try:
            while len(created) < 12 and {_owner(s.id) for s in created} != SURVIVORS:
                created.append(await client.create_environment())
            assert {_owner(sandbox.id) for sandbox in created} == SURVIVORS
        finally:
            await asyncio.gather(*(sandbox.delete() for sandbox in created))
    finally:
        await asyncio.to_thread(cluster.restart, "o3")


async def _reported_lost(gateway: str, api_key: str, environment_id: str) -> UnavailableError:
    """The error one gateway gives for ``environment_id`` once it reports its owner lost."""
    async with AsyncSandboxClient(gateway, api_key=api_key, retry=RetryPolicy.disabled()) as one:
        deadline = asyncio.get_running_loop().time() + LEASE_SECONDS + WAIT_SECONDS
        while True:
            try:
                await one.get_environment(environment_id, timeout=5.0)
            except UnavailableError as error:
                if error.reason == ErrorReason.ORCHESTRATOR_LOST:
                    return error
            assert asyncio.get_running_loop().time() < deadline, f"{gateway} never reported it"
            await asyncio.sleep(0.1)
