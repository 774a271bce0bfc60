"""Environment lifecycle: create, list, update, delete, expiry, admission, restart."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from prometheus_client import CollectorRegistry
from sandbox_support import (
    ORCHESTRATOR_ID,
    TENANT,
    agent_pids,
    cgroup_dirs,
    cgroup_pids,
    command_pids,
    create,
    eventually,
    fast_settings,
    make_spec,
    needs_isolation,
    pid_alive,
    run,
    running_manager,
)

from sandbox_sdk.models.environment import IsolationRuntime
from sandbox_sdk.server.database import Database
from sandbox_sdk.server.orchestrator.sandbox.environment_record import (
    Command,
    EnvironmentState,
    EnvironmentUpdate,
    ExecEvent,
    ExecExited,
    ExecStarted,
    ExitReason,
    FileWrite,
    ListQuery,
    TerminationReason,
)
from sandbox_sdk.server.status import ServiceError

pytestmark = needs_isolation


async def test_create_get_and_delete_twice(tmp_path: Path) -> None:
    async with running_manager(tmp_path) as manager:
        environment = await create(manager, make_spec(labels={"team": "a"}))
        assert environment.state is EnvironmentState.RUNNING
        assert environment.orchestrator_id == ORCHESTRATOR_ID
        assert environment.id.startswith(f"env-{ORCHESTRATOR_ID}-")
        assert environment.isolation == manager.launcher.level(make_spec())
        assert manager.get_environment(TENANT, environment.id) == environment
        mount = manager.settings.mount_root / environment.id
        assert mount.is_mount()
        assert cgroup_dirs(environment.id)

        deleted = await manager.delete_environment(TENANT, environment.id)
        assert deleted.state is EnvironmentState.TERMINATED
        assert deleted.termination_reason is TerminationReason.USER_DELETED
        assert deleted.terminate_time is not None
        assert not mount.exists()
        assert not cgroup_dirs(environment.id)
        again = await manager.delete_environment(TENANT, environment.id)
        assert again == deleted
        with pytest.raises(ServiceError) as error:
            await run(manager, environment.id, ["true"])
        assert error.value.code is grpc.StatusCode.FAILED_PRECONDITION
        assert error.value.reason == "ENVIRONMENT_NOT_RUNNING"


async def test_request_id_makes_create_idempotent_per_tenant(tmp_path: Path) -> None:
    async with running_manager(tmp_path) as manager:
        first, concurrent = await asyncio.gather(
            create(manager, request_id="3f8a2b1c-retry"),
            create(manager, request_id="3f8a2b1c-retry"),
        )
        assert first.id == concurrent.id
        again = await create(manager, request_id="3f8a2b1c-retry")
        assert again.id == first.id
        other_tenant = await create(manager, tenant="tenant-b", request_id="3f8a2b1c-retry")
        assert other_tenant.id != first.id
        listed, _ = manager.list_environments(TENANT, ListQuery())
        assert [e.id for e in listed] == [first.id]


async def test_other_tenants_environments_are_not_found(tmp_path: Path) -> None:
    async with running_manager(tmp_path) as manager:
        environment = await create(manager)
        for call in (
            lambda: manager.get_environment("tenant-b", environment.id),
            lambda: manager.port.require_running("tenant-b", environment.id),
            lambda: manager.update_environment("tenant-b", environment.id, EnvironmentUpdate()),
        ):
            with pytest.raises(ServiceError) as error:
                call()
            assert error.value.code is grpc.StatusCode.NOT_FOUND
            assert error.value.reason == "ENVIRONMENT_NOT_FOUND"
        with pytest.raises(ServiceError):
            await manager.delete_environment("tenant-b", environment.id)
        assert manager.get_environment(TENANT, environment.id).running


async def test_list_pages_newest_first_and_filters_by_labels(tmp_path: Path) -> None:
    async with running_manager(tmp_path) as manager:
        created = [
            await create(manager, make_spec(labels={"batch": "x" if i % 2 else "y", "n": str(i)}))
            for i in range(5)
        ]
        newest_first = [e.id for e in reversed(created)]
        seen, token = [], ""
        while True:
            page, token = manager.list_environments(
                TENANT, ListQuery(page_size=2, page_token=token)
            )
            seen += [e.id for e in page]
            if not token:
                break
        assert seen == newest_first
        batch_x, token = manager.list_environments(TENANT, ListQuery(label_selector={"batch": "x"}))
        assert [e.id for e in batch_x] == [created[3].id, created[1].id]
        assert token == ""
        one, _ = manager.list_environments(
            TENANT, ListQuery(label_selector={"batch": "x", "n": "1"})
        )
        assert [e.id for e in one] == [created[1].id]

        _, token = manager.list_environments(TENANT, ListQuery(page_size=2))
        with pytest.raises(ServiceError) as error:
            manager.list_environments(
                TENANT, ListQuery(page_size=2, page_token=token, label_selector={"batch": "y"})
            )
        assert error.value.field_violations[0][0] == "page_token"

        await manager.delete_environment(TENANT, created[0].id)
        running, _ = manager.list_environments(TENANT, ListQuery())
        everything, _ = manager.list_environments(TENANT, ListQuery(show_terminated=True))
        assert created[0].id not in [e.id for e in running]
        assert created[0].id in [e.id for e in everything]
        assert manager.list_environments("tenant-b", ListQuery()) == ([], "")


async def test_update_changes_labels_ttl_and_idle_timeout(tmp_path: Path) -> None:
    async with running_manager(tmp_path) as manager:
        environment = await create(manager, make_spec(labels={"a": "1"}))
        updated = manager.update_environment(
            TENANT,
            environment.id,
            EnvironmentUpdate(labels={"b": "2"}, ttl_seconds=600, idle_timeout_seconds=120),
        )
        assert updated.spec.labels == {"b": "2"}
        assert updated.spec.ttl_seconds == 600
        assert updated.expire_time == pytest.approx(environment.create_time + 600)
        assert updated.spec.idle_timeout_seconds == 120
        assert manager.get_environment(TENANT, environment.id) == updated
        shortened = manager.update_environment(
            TENANT, environment.id, EnvironmentUpdate(ttl_seconds=0.2)
        )
        assert shortened.spec.labels == {"b": "2"}
        await eventually(
            lambda: not manager.get_environment(TENANT, environment.id).running,
            what="the shortened ttl expired",
        )


async def _rest_of(events: AsyncIterator[ExecEvent]) -> list[ExecEvent]:
    return [event async for event in events]


async def test_ttl_expiry_kills_and_cleans_up(tmp_path: Path) -> None:
    terminated: list[str] = []
    async with running_manager(tmp_path) as manager:
        manager.port.on_terminated(terminated.append)
        environment = await create(manager, make_spec())
        events = manager.exec_command(TENANT, environment.id, Command(argv=("sleep", "300")))
        assert isinstance(await anext(events), ExecStarted)
        rest = asyncio.create_task(_rest_of(events))  # read on, as a caller does
        await eventually(lambda: bool(command_pids(environment.id)), what="sleep started")
        pids = cgroup_pids(environment.id)
        # Shortened once the command runs (a ttl at create could expire before it starts,
        # under load): counted from the creation, it is due within a second.
        manager.update_environment(TENANT, environment.id, EnvironmentUpdate(ttl_seconds=1.0))
        await eventually(
            lambda: (
                manager.get_environment(TENANT, environment.id).state is EnvironmentState.TERMINATED
            ),
            what="ttl expiry",
        )
        expired = manager.get_environment(TENANT, environment.id)
        assert expired.termination_reason is TerminationReason.TTL_EXPIRED
        assert "ttl" in expired.termination_message
        exited = (await rest)[-1]
        assert isinstance(exited, ExecExited)
        assert exited.reason is ExitReason.CANCELLED
        assert not any(pid_alive(pid) for pid in pids)
        assert not cgroup_dirs(environment.id)
        assert not (manager.settings.mount_root / environment.id).exists()
        assert terminated == [environment.id]


async def test_idle_timeout_kills_and_cleans_up(tmp_path: Path) -> None:
    async with running_manager(tmp_path) as manager:
        environment = await create(manager, make_spec(idle_timeout_seconds=0.5))
        await run(manager, environment.id, ["true"])
        await eventually(
            lambda: (
                manager.get_environment(TENANT, environment.id).state is EnvironmentState.TERMINATED
            ),
            what="idle expiry",
        )
        idle = manager.get_environment(TENANT, environment.id)
        assert idle.termination_reason is TerminationReason.IDLE_TIMEOUT
        assert not cgroup_dirs(environment.id)
        assert not (manager.settings.mount_root / environment.id).exists()


async def test_admission_refuses_environments_beyond_capacity(tmp_path: Path) -> None:
    settings = fast_settings(
        max_environments=2, cpu_cores_total=1.5, tenant_share_max=1.0, fair_share_headroom=0.0
    )
    async with running_manager(tmp_path, settings=settings) as manager:
        await create(manager, make_spec(cpu_cores=1.0))
        with pytest.raises(ServiceError) as error:
            await create(manager, make_spec(cpu_cores=1.0))
        assert error.value.code is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert error.value.reason == "CAPACITY_EXHAUSTED"
        assert error.value.retry_after is not None
        assert [v[0] for v in error.value.quota_violations] == ["cpu_cores"]
        await create(manager, make_spec(cpu_cores=0.5))
        with pytest.raises(ServiceError) as error:
            await create(manager, make_spec(cpu_cores=0.1))
        assert {v[0] for v in error.value.quota_violations} == {"environments", "cpu_cores"}
        capacity = manager.capacity()
        assert (capacity.environments_running, capacity.environments_max) == (2, 2)
        assert capacity.cpu_cores_allocated == pytest.approx(1.5)


async def test_metrics_count_environments_and_commands(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    async with running_manager(tmp_path, registry=registry) as manager:
        environment = await create(manager)
        assert registry.get_sample_value("sandbox_environments_running") == 1
        await run(manager, environment.id, ["true"])
        await run(manager, environment.id, ["sleep", "10"], timeout=0.2)
        await manager.delete_environment(TENANT, environment.id)
        sample = registry.get_sample_value
        assert sample("sandbox_execs_total", {"reason": "exited"}) == 1
        assert sample("sandbox_execs_total", {"reason": "timeout"}) == 1
        assert sample("sandbox_environments_terminated_total", {"reason": "USER_DELETED"}) == 1
        assert sample("sandbox_environments_running") == 0
        assert sample("sandbox_memory_bytes_allocated") == 0


async def test_usage_is_sampled_and_streamed_until_termination(tmp_path: Path) -> None:
    async with running_manager(tmp_path) as manager:
        environment = await create(manager, files=[])
        await run(manager, environment.id, ["sh", "-c", "head -c 1000000 /dev/zero > f"])
        usage, spec = manager.environment_usage(TENANT, environment.id)
        assert usage.disk_bytes >= 1_000_000
        assert usage.cpu_seconds > 0
        assert spec.limits.memory_bytes == make_spec().limits.memory_bytes
        samples = []
        async for sample in manager.stream_usage(TENANT, environment.id, 0.1):
            samples.append(sample)
            if len(samples) == 2:
                await manager.delete_environment(TENANT, environment.id)
        assert len(samples) == 2


async def test_a_dead_agent_is_replaced_and_the_environment_lives_on(tmp_path: Path) -> None:
    async with running_manager(tmp_path) as manager:
        environment = await create(manager, files=[FileWrite("kept.txt", b"still here")])
        events = manager.exec_command(TENANT, environment.id, Command(argv=("sleep", "300")))
        assert isinstance(await anext(events), ExecStarted)
        first_agents = agent_pids(environment.id)
        assert first_agents
        for pid in first_agents:  # what the OOM killer would do to it
            # Under gVisor one's death can take the others with it before their turn.
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        ended = [event async for event in events]
        assert isinstance(ended[-1], ExecExited)
        assert (ended[-1].reason, ended[-1].signal) == (ExitReason.SIGNALED, signal.SIGKILL)
        result = await run(manager, environment.id, ["cat", "kept.txt"])
        assert result.out == "still here"
        assert manager.get_environment(TENANT, environment.id).running
        assert agent_pids(environment.id).isdisjoint(first_agents)


RESTART_CHILD = """
import asyncio, sys
from pathlib import Path
sys.path[:0] = [{support!r}, {tests!r}]
import sandbox_runtimes
from sandbox_support import create, fast_settings
from sandbox_sdk.models.environment import IsolationRuntime
sandbox_runtimes.use(IsolationRuntime({runtime!r}))
from sandbox_sdk.server.database import Database
from sandbox_sdk.server.orchestrator.sandbox import SandboxManager
from sandbox_sdk.server.orchestrator.sandbox.environment_record import Command

async def main():
    root = Path({root!r})
    manager = SandboxManager(Database(root / "orchestrator.db"), fast_settings(), {orch!r},
                             root / "workspaces")
    await manager.start()
    environment = await create(manager)
    events = manager.exec_command("tenant-a", environment.id, Command(argv=("sleep", "300")))
    await anext(events)
    print(environment.id, flush=True)
    await asyncio.sleep(300)

asyncio.run(main())
"""


async def test_restart_marks_leftovers_and_leaves_nothing_running(
    tmp_path: Path, sandbox_runtime: IsolationRuntime
) -> None:
    script = RESTART_CHILD.format(
        support=str(Path(__file__).parent),
        tests=str(Path(__file__).parents[1]),
        runtime=sandbox_runtime.value,
        root=str(tmp_path),
        orch=ORCHESTRATOR_ID,
    )
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", textwrap.dedent(script), stdout=asyncio.subprocess.PIPE
    )
    try:
        assert child.stdout is not None
        line = await asyncio.wait_for(child.stdout.readline(), 60)
        environment_id = line.decode().strip()
        assert environment_id.startswith("env-")
        await eventually(lambda: bool(command_pids(environment_id)), what="the command started")
        pids = cgroup_pids(environment_id)
    finally:
        child.send_signal(signal.SIGKILL)
        await child.wait()
    async with running_manager(tmp_path, db=Database(tmp_path / "orchestrator.db")) as manager:
        recovered = manager.get_environment(TENANT, environment_id)
        assert recovered.state is EnvironmentState.TERMINATED
        assert recovered.termination_reason is TerminationReason.ORCHESTRATOR_RESTARTED
        assert not any(pid_alive(pid) for pid in pids)
        assert not cgroup_pids(environment_id)
        assert not cgroup_dirs(environment_id)
        assert not (manager.settings.mount_root / environment_id).exists()
        assert not (tmp_path / "workspaces" / f"{environment_id}.img").exists()


async def test_stop_terminates_every_environment(tmp_path: Path) -> None:
    async with running_manager(tmp_path) as manager:
        environment = await create(manager)
    database = Database(tmp_path / "orchestrator.db")
    async with running_manager(tmp_path, db=database) as manager:
        stopped = manager.get_environment(TENANT, environment.id)
        assert stopped.termination_reason is TerminationReason.ORCHESTRATOR_RESTARTED
        assert "shut down" in stopped.termination_message
        assert not cgroup_dirs(environment.id)


async def test_start_sweeps_what_a_failed_cleanup_left(tmp_path: Path) -> None:
    straggler = await asyncio.create_subprocess_exec("sleep", "300")
    try:
        async with running_manager(tmp_path) as manager:
            environment = await create(manager)
            await manager.delete_environment(TENANT, environment.id)
            # What a cleanup interrupted halfway leaves: a cgroup with a live
            # process in it, and a workspace directory.
            driver = manager.isolation.cgroups
            assert driver is not None
            cgroup = driver.environment(environment.id)
            cgroup.create(1.0, 64 << 20, 16)
            cgroup.attach(straggler.pid)
            leftover_mount = manager.settings.mount_root / environment.id
            leftover_mount.mkdir()
        async with running_manager(tmp_path, db=Database(tmp_path / "orchestrator.db")):
            assert await asyncio.wait_for(straggler.wait(), 10) == -signal.SIGKILL
            assert not cgroup_dirs(environment.id)
            assert not leftover_mount.exists()
    finally:
        if straggler.returncode is None:
            straggler.kill()
            await straggler.wait()
