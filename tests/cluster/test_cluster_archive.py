"""Results outlive their node: the experiment archive on SQLite and PostgreSQL, and a gateway
serving a finished experiment after the orchestrator that ran it is gone for good."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from sandbox_sdk import AsyncSandboxClient
from sandbox_sdk.api.v1 import gateway_service_pb2_grpc, requests_pb2
from sandbox_sdk.errors import ErrorReason, NotFoundError, UnavailableError
from sandbox_sdk.server.gateway.api_keys import Scope
from sandbox_sdk.server.gateway.config import GatewayConfig
from sandbox_sdk.server.gateway.server import GatewayServer
from sandbox_sdk.server.orchestrator.app import OrchestratorApp
from sandbox_sdk.server.orchestrator.config import (
    ArchiveSettings,
    OrchestratorConfig,
    RegistrySettings,
)
from sandbox_sdk.server.store.archive import (
    ArchivedEvent,
    ArchivedExperiment,
    ArchivedSample,
    ExperimentArchive,
)

# -- The archive's store, on both backends -------------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def archive(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ExperimentArchive]:
    """A migrated, empty archive on each backend."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'gateway.db'}"
    else:
        url = str(request.getfixturevalue("postgres_database"))
    opened = ExperimentArchive.open(url)
    yield opened
    opened.close()


def _experiment(
    experiment_id: str = "exp-o1-00000000000000aa", tenant: str = "t1", inputs: int = 3
) -> ArchivedExperiment:
    return ArchivedExperiment(
        tenant=tenant,
        experiment_id=experiment_id,
        experiment=b"\x0a\x03exp\x00\xff",
        summary=b"summary",
        samples=[
            ArchivedSample(i, r, f"sample {i}/{r}".encode())
            for i in reversed(range(inputs))
            for r in range(2)
        ],
        events=[ArchivedEvent(s, f"event {s}".encode()) for s in range(1, 8)],
    )


def test_a_stored_experiment_reads_back_byte_for_byte(archive: ExperimentArchive) -> None:
    stored = _experiment()
    assert archive.store(stored, now=1000.0)
    header = archive.experiment("t1", stored.experiment_id)
    assert header is not None
    assert (header.experiment, header.summary, header.archive_time) == (
        stored.experiment,
        stored.summary,
        1000.0,
    )
    assert [
        (s.input_index, s.repeat, s.sample)
        for s in archive.samples("t1", header.experiment_id, 100)
    ] == [(i, r, f"sample {i}/{r}".encode()) for i in range(3) for r in range(2)]
    assert [e.event for e in archive.events("t1", header.experiment_id, 0, 100)] == [
        f"event {s}".encode() for s in range(1, 8)
    ]


def test_storing_an_experiment_twice_is_storing_it_once(archive: ExperimentArchive) -> None:
    first = _experiment()
    assert archive.store(first, now=1000.0)
    changed = ArchivedExperiment(
        tenant="t1",
        experiment_id=first.experiment_id,
        experiment=b"other",
        summary=b"other",
        samples=[ArchivedSample(9, 9, b"x")],
        events=[ArchivedEvent(99, b"x")],
    )
    assert not archive.store(changed, now=2000.0)
    assert not archive.store(first, now=3000.0)
    header = archive.experiment("t1", first.experiment_id)
    assert header is not None
    assert (header.experiment, header.archive_time) == (first.experiment, 1000.0)
    assert len(archive.samples("t1", first.experiment_id, 100)) == 6
    assert len(archive.events("t1", first.experiment_id, 0, 100)) == 7


def test_samples_page_by_input_and_repeat_and_events_by_sequence(
    archive: ExperimentArchive,
) -> None:
    stored = _experiment(inputs=3)
    archive.store(stored)
    pages: list[list[tuple[int, int]]] = []
    after: tuple[int, int] | None = None
    while True:
        page = archive.samples("t1", stored.experiment_id, 4, after)
        if not page:
            break
        pages.append([(s.input_index, s.repeat) for s in page])
        after = (page[-1].input_index, page[-1].repeat)
    assert pages == [[(0, 0), (0, 1), (1, 0), (1, 1)], [(2, 0), (2, 1)]]
    assert [e.sequence for e in archive.events("t1", stored.experiment_id, 3, 2)] == [4, 5]
    assert archive.events("t1", stored.experiment_id, 7, 100) == []


def test_another_tenants_experiment_is_not_found(archive: ExperimentArchive) -> None:
    stored = _experiment(tenant="t1")
    archive.store(stored)
    assert archive.experiment("t2", stored.experiment_id) is None
    assert archive.samples("t2", stored.experiment_id, 100) == []
    assert archive.events("t2", stored.experiment_id, 0, 100) == []
    assert archive.experiment("t1", "exp-o1-00000000000000bb") is None


# -- Through a gateway, after the orchestrator is gone ----------------------------------------


@dataclass
class _Cluster:
    gateway: GatewayServer
    orchestrator: OrchestratorApp
    client: AsyncSandboxClient
    other_tenant: AsyncSandboxClient
    key: str
    database_url: str
    orchestrator_stopped: bool = False

    async def stop_orchestrator_for_good(self) -> None:
        """Stops the orchestrator (it leaves the registry) and waits until the gateway
        has dropped it."""
        self.orchestrator_stopped = True
        await self.orchestrator.stop(0)

        async def gone() -> bool:
            return self.gateway.pool.owner("o1") is None

        await _until(gone)


async def _until(condition: Callable[[], Awaitable[bool]], limit: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + limit
    while not await condition():
        assert asyncio.get_running_loop().time() < deadline, "condition never held"
        await asyncio.sleep(0.05)


@pytest.fixture
async def cluster(tmp_path: Path, postgres_database: str) -> AsyncIterator[_Cluster]:
    """A gateway following the registry and one orchestrator that archives to PostgreSQL."""
    token = secrets.token_urlsafe(32)
    orchestrator = await OrchestratorApp.start(
        OrchestratorConfig(
            orchestrator_id="o1",
            data_dir=tmp_path / "o1",
            internal_token=token,
            registry=RegistrySettings(database_url=postgres_database, lease_seconds=1.5),
            archive=ArchiveSettings(database_url=postgres_database),
        ),
        "127.0.0.1:0",
    )
    gateway = await GatewayServer.start(
        GatewayConfig(
            listen="127.0.0.1:0",
            orchestrators=[],
            database_url=postgres_database,
            internal_token=token,
            db_path=tmp_path / "gateway.db",
            health_check_interval_seconds=0.2,
            registry_poll_seconds=0.2,
        )
    )
    address = f"127.0.0.1:{gateway.port}"
    key = gateway.keys.create("team-a", (Scope.READ, Scope.WRITE)).secret
    other_key = gateway.keys.create("team-b", (Scope.READ, Scope.WRITE)).secret
    client = AsyncSandboxClient(address, api_key=key, retry={"max_attempts": 1})
    other = AsyncSandboxClient(address, api_key=other_key, retry={"max_attempts": 1})
    cluster_ = _Cluster(gateway, orchestrator, client, other, key, postgres_database)
    try:
        yield cluster_
    finally:
        await client.close()
        await other.close()
        await gateway.stop(0)
        if not cluster_.orchestrator_stopped:
            await orchestrator.stop(0)


async def _raw_results_pages(cluster: _Cluster, experiment_id: str) -> list[bytes]:
    """GetExperimentResults page by page (2 samples a page), as serialized responses."""
    pages: list[bytes] = []
    metadata = (("authorization", f"Bearer {cluster.key}"),)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{cluster.gateway.port}") as channel:
        stub = gateway_service_pb2_grpc.GatewayServiceStub(channel)
        token = ""
        while True:
            response = await stub.GetExperimentResults(
                requests_pb2.GetExperimentResultsRequest(
                    experiment_id=experiment_id, page_size=2, page_token=token
                ),
                metadata=metadata,
                timeout=10,
            )
            token = response.next_page_token
            response.next_page_token = ""
            pages.append(response.SerializeToString())
            if not token:
                return pages


async def test_a_finished_experiment_is_read_from_the_archive_after_its_orchestrator_is_gone(
    cluster: _Cluster,
) -> None:
    sandbox = await cluster.client.create_environment()
    experiment = await sandbox.run_experiment(
        model="echo",
        inputs=[{"prompt": f"p{i}", "expected": "p0"} for i in range(3)],
        scorers=["exact_match"],
        repeats=2,
    )
    results = await experiment.get_results()
    info = (await cluster.client.get_experiment(experiment.id)).info
    async with experiment.events(follow=False) as stream:
        events = [event async for event in stream]
    pages = await _raw_results_pages(cluster, experiment.id)
    assert len(pages) == 3

    archive = await asyncio.to_thread(ExperimentArchive.open, cluster.database_url)
    try:

        async def archived() -> bool:
            found = await asyncio.to_thread(archive.experiment, "team-a", experiment.id)
            return found is not None

        await _until(archived)
    finally:
        await asyncio.to_thread(archive.close)

    await cluster.stop_orchestrator_for_good()

    again = await cluster.client.get_experiment(experiment.id)
    assert again.info == info
    assert await again.get_results() == results
    async with again.events(follow=True) as stream:
        assert [event async for event in stream] == events
    async with again.events(after_sequence=events[2].sequence, follow=False) as stream:
        assert [event async for event in stream] == events[3:]
    assert await _raw_results_pages(cluster, experiment.id) == pages
    assert (await again.cancel()) == info  # finished: returned unchanged

    with pytest.raises(UnavailableError) as other_tenant:
        await cluster.other_tenant.get_experiment(experiment.id)
    assert other_tenant.value.reason == ErrorReason.ORCHESTRATOR_LOST


async def test_an_experiment_never_archived_is_reported_lost_with_a_clear_message(
    cluster: _Cluster,
) -> None:
    await cluster.stop_orchestrator_for_good()
    with pytest.raises(UnavailableError) as never:
        await cluster.client.get_experiment("exp-o1-0123456789abcdef")
    assert never.value.reason == ErrorReason.ORCHESTRATOR_LOST
    assert "archive" in str(never.value)
    with pytest.raises(NotFoundError):
        await cluster.client.get_experiment("exp-zz-0123456789abcdef")
