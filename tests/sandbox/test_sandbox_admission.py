"""Admission between tenants, creates that wait for room, and disk promised against real space."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from sandbox_support import (
    TENANT,
    create,
    eventually,
    fast_settings,
    make_spec,
    needs_isolation,
    running_manager,
)

from sandbox_sdk.server.orchestrator.sandbox.environment_record import (
    EnvironmentState,
    FileWrite,
    NewEnvironment,
)
from sandbox_sdk.server.orchestrator.sandbox.manager import SandboxManager
from sandbox_sdk.server.status import ServiceError

pytestmark = needs_isolation

SMALL = make_spec(cpu_cores=0.1, memory_bytes=64 << 20, disk_bytes=4 << 20)


async def _fill(manager: SandboxManager, tenant: str) -> list[str]:
    """Creates environments for ``tenant`` until refused; returns their ids."""
    created: list[str] = []
    while len(created) <= 100:
        try:
            created.append((await create(manager, SMALL, tenant=tenant)).id)
        except ServiceError as error:
            refusal = error
            break
    else:
        pytest.fail("admission never refused")
    assert refusal.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert refusal.reason == "CAPACITY_EXHAUSTED"
    return created


async def test_one_tenant_cannot_take_the_room_every_other_tenant_needs(tmp_path: Path) -> None:
    async with running_manager(tmp_path, settings=fast_settings(max_environments=8)) as manager:
        greedy = await _fill(manager, "greedy")
        assert len(greedy) == 6  # at most 75% of the orchestrator
        modest = await _fill(manager, "modest")
        assert len(modest) == 2  # the rest, which the greedy tenant could not take
        with pytest.raises(ServiceError, match="queue_when_full"):
            await create(manager, SMALL, tenant="latecomer")


async def test_above_its_fair_share_a_tenant_leaves_the_last_room_to_others(
    tmp_path: Path,
) -> None:
    settings = fast_settings(max_environments=8, tenant_share_max=1.0)
    async with running_manager(tmp_path, settings=settings) as manager:
        for _ in range(4):
            await create(manager, SMALL, tenant="big")
        for _ in range(2):
            await create(manager, SMALL, tenant="small")
        # Two of eight left (the 25% headroom): "big" is at its fair share of 4 and
        # is refused; "small" is below its share and gets in, as does a newcomer.
        with pytest.raises(ServiceError) as above_share:
            await create(manager, SMALL, tenant="big")
        assert "fair share of 4 among 2 tenants" in str(above_share.value.quota_violations)
        await create(manager, SMALL, tenant="small")
        await create(manager, SMALL, tenant="newcomer")
        with pytest.raises(ServiceError) as full:
            await create(manager, SMALL, tenant="small")
        assert "the orchestrator is full" in str(full.value.quota_violations)


async def test_a_create_may_wait_in_the_queue_with_its_position(tmp_path: Path) -> None:
    settings = fast_settings(max_environments=2, tenant_share_max=1.0, fair_share_headroom=0.0)
    async with running_manager(tmp_path, settings=settings) as manager:
        holders = [(await create(manager, SMALL)).id for _ in range(2)]
        waiting = [
            await manager.create_environment(
                "patient", NewEnvironment(SMALL, request_id=f"q{index}", queue_when_full=True)
            )
            for index in range(3)
        ]
        assert [w.state for w in waiting] == [EnvironmentState.QUEUED] * 3
        assert [w.queue_position for w in waiting] == [1, 2, 3]
        again = await manager.create_environment(
            "patient", NewEnvironment(SMALL, request_id="q1", queue_when_full=True)
        )
        assert (again.id, again.queue_position) == (waiting[1].id, 2)
        await manager.delete_environment("patient", waiting[0].id)
        assert manager.get_environment("patient", waiting[1].id).queue_position == 1
        await manager.delete_environment(TENANT, holders[0])
        await eventually(
            lambda: (
                manager.get_environment("patient", waiting[1].id).state is EnvironmentState.RUNNING
            ),
            what="the first waiting create started once room freed up",
        )
        third = manager.get_environment("patient", waiting[2].id)
        assert (third.state, third.queue_position) == (EnvironmentState.QUEUED, 1)
        deleted = manager.get_environment("patient", waiting[0].id)
        assert deleted.state is EnvironmentState.TERMINATED


async def test_disk_quotas_are_promised_only_against_real_free_space(tmp_path: Path) -> None:
    async with running_manager(tmp_path) as manager:
        free = manager._capacity.admission.free_disk_bytes()
        too_big = make_spec(disk_bytes=free + (1 << 30))
        with pytest.raises(ServiceError) as refused:
            await create(manager, too_big)
        assert refused.value.code is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert [v[0] for v in refused.value.quota_violations] == ["disk_bytes"]
        assert "smaller spec.limits.disk_bytes" in str(refused.value.quota_violations)
        # Two quotas that each fit, but not together, are not both promised.
        half = max(free // 2 + (64 << 20), 64 << 20)
        first = await create(manager, make_spec(disk_bytes=half))
        with pytest.raises(ServiceError):
            await create(manager, make_spec(disk_bytes=half))
        await manager.delete_environment(TENANT, first.id)
        await create(manager, make_spec(disk_bytes=half))


async def test_the_queue_holds_a_bounded_amount_of_files(tmp_path: Path) -> None:
    settings = fast_settings(
        max_environments=1,
        tenant_share_max=1.0,
        fair_share_headroom=0.0,
        max_queued_file_bytes=3 << 20,
    )
    async with running_manager(tmp_path, settings=settings) as manager:
        await create(manager, SMALL)
        payload = (FileWrite("data.bin", b"x" * (2 << 20)),)
        first = await manager.create_environment(
            "patient", NewEnvironment(SMALL, files=payload, queue_when_full=True)
        )
        assert first.state is EnvironmentState.QUEUED
        with pytest.raises(ServiceError) as refused:
            await manager.create_environment(
                "patient", NewEnvironment(SMALL, files=payload, queue_when_full=True)
            )
        assert refused.value.code is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "bytes of their files" in str(refused.value)
        await manager.delete_environment("patient", first.id)
        again = await manager.create_environment(
            "patient", NewEnvironment(SMALL, files=payload, queue_when_full=True)
        )
        assert again.state is EnvironmentState.QUEUED
