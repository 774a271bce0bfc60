"""Fair scheduling: round-robin between tenants, priority, FIFO, limits, queue positions."""

from __future__ import annotations

import asyncio

from sandbox_sdk.api.v1 import experiment_pb2, requests_pb2
from sandbox_sdk.server.orchestrator.experiments import ExperimentHandlers, ExperimentSettings
from sandbox_sdk.server.orchestrator.experiments.records import ExperimentState, StateEvent
from sandbox_sdk.server.orchestrator.experiments.scheduler import FairQueue, QueueEntry
from sandbox_sdk.server.orchestrator.experiments.settings import SchedulerSettings

from .conftest import EngineFactory, TenantContext
from .exp_support import (
    SubprocessSandbox,
    create_request,
    eventually,
    make_spec,
    scripted_model,
)


def test_round_robin_then_priority_then_arrival() -> None:
    queue = FairQueue()
    for order, (experiment_id, tenant, priority) in enumerate(
        [("a1", "a", 0), ("a2", "a", 5), ("a3", "a", 0), ("b1", "b", 0), ("c1", "c", 1)], 1
    ):
        queue.add(QueueEntry(experiment_id, tenant, priority, order))

    assert [queue.position(i) for i in ("a2", "b1", "c1", "a1", "a3")] == [1, 2, 3, 4, 5]
    popped = [queue.pop_next(lambda _: True) for _ in range(5)]
    assert [e.experiment_id for e in popped if e] == ["a2", "b1", "c1", "a1", "a3"]
    assert queue.pop_next(lambda _: True) is None


def test_removed_entries_leave_no_trace_and_limits_skip_tenants() -> None:
    queue = FairQueue()
    for order, (experiment_id, tenant) in enumerate([("a1", "a"), ("a2", "a"), ("b1", "b")], 1):
        queue.add(QueueEntry(experiment_id, tenant, 0, order))

    assert queue.remove("a1")
    assert not queue.remove("a1")
    assert queue.position("a1") == 0
    entry = queue.pop_next(lambda tenant: tenant != "a")
    assert entry is not None
    assert entry.experiment_id == "b1"
    assert len(queue) == 1


async def test_two_hundred_experiments_finish_fairly_with_positions(
    make_engine: EngineFactory, sandbox: SubprocessSandbox
) -> None:
    engine = await make_engine(
        ExperimentSettings(
            models=[scripted_model(chunk_delay_seconds=0.001)],
            scheduler=SchedulerSettings(max_concurrent=4),
        )
    )
    handlers = ExperimentHandlers(engine)
    tenants = {"tenant-a": sandbox.create("tenant-a"), "tenant-b": sandbox.create("tenant-b")}
    spec = make_spec(["a few words to stream"], model="scripted")

    async def submit(tenant: str) -> experiment_pb2.Experiment:
        response = await handlers.CreateExperiment(
            create_request(tenants[tenant], spec), TenantContext(tenant)
        )
        return response.experiment

    # Submitted as concurrent clients would: each create answers once it is durable.
    first_a = list(await asyncio.gather(*(submit("tenant-a") for _ in range(100))))
    then_b = list(await asyncio.gather(*(submit("tenant-b") for _ in range(100))))

    # Everything past the four running slots waited in the queue with a position.
    queued = [e for e in first_a + then_b if e.state == experiment_pb2.EXPERIMENT_STATE_QUEUED]
    assert len(queued) >= 150
    assert all(e.queue_position >= 1 for e in queued)
    assert then_b[0].queue_position < first_a[-1].queue_position
    live = await handlers.GetExperiment(
        requests_pb2.GetExperimentRequest(experiment_id=then_b[-1].id), TenantContext("tenant-b")
    )
    assert live.experiment.state != experiment_pb2.EXPERIMENT_STATE_QUEUED or (
        live.experiment.queue_position >= 1
    )

    start_order: list[tuple[float, str]] = []
    for tenant, experiments in (("tenant-a", first_a), ("tenant-b", then_b)):
        for experiment in experiments:
            events = [e async for e in engine.stream(tenant, experiment.id, 0, follow=True)]
            running = next(
                e
                for e in events
                if isinstance(e.payload, StateEvent) and e.payload.state is ExperimentState.RUNNING
            )
            assert (await engine.get(tenant, experiment.id)).state is ExperimentState.SUCCEEDED
            start_order.append((running.time, tenant))

    start_order.sort()
    tenants_in_start_order = [tenant for _, tenant in start_order]
    # Once B has work queued, A and B alternate: B's first 100 starts are not
    # postponed behind the rest of A's 100.
    first_b = tenants_in_start_order.index("tenant-b")
    window = tenants_in_start_order[first_b : first_b + 100]
    assert window.count("tenant-b") >= 45
    await eventually(lambda: engine.capacity() == (0, 0))
