"""Start gates made ahead: each in cgroups of its own before it is pooled, used by one
environment only, whose cgroups (renamed) hold every process of it under its limits;
a gate that died is never used, and nothing of the pool outlives a stop or a crash.

The pool is bubblewrap's under cgroup v1 (what this machine has); gVisor's
creates start their gates as before, which one test checks.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import worker_places
from sandbox_support import (
    ORCHESTRATOR_ID,
    cgroup_dirs,
    cgroup_pids,
    create,
    eventually,
    fast_settings,
    make_spec,
    needs_isolation,
    pid_alive,
    run,
    running_manager,
    under_gvisor,
)

from sandbox_sdk.server.database import Database
from sandbox_sdk.server.orchestrator.sandbox import SandboxManager
from sandbox_sdk.server.orchestrator.sandbox.cgroups import CPU_PERIOD_US
from sandbox_sdk.server.orchestrator.sandbox.gate_pool import (
    GatePool,
    PooledGate,
    _process_identity,
)
from sandbox_sdk.server.orchestrator.sandbox.isolation import detect_isolation
from sandbox_sdk.server.orchestrator.sandbox.settings import MiB, default_cgroup_parent

pytestmark = needs_isolation

V1 = Path("/sys/fs/cgroup")
PARENT = default_cgroup_parent()  # this test session's own
HIERARCHIES = ("memory", "cpu", "cpuacct", "pids")
# This test process's own pool cgroups: other test runs beside it have theirs.
POOL_PREFIX = f"pool-{ORCHESTRATOR_ID}-{_process_identity(os.getpid())}-"
bubblewrap_only = pytest.mark.bubblewrap_only(reason="the gate pool is bubblewrap's")


def _gate_pool(manager: SandboxManager) -> GatePool:
    gates = manager._lifecycle.gates
    assert gates is not None
    return gates


def _pooled(manager: SandboxManager) -> list[PooledGate]:
    return list(_gate_pool(manager)._ready)


async def _filled(manager: SandboxManager, depth: int = 2) -> list[PooledGate]:
    gates = _gate_pool(manager)
    await eventually(lambda: gates.ready_count() == depth, what="the gate pool filled")
    return _pooled(manager)


def _pool_dirs(prefix: str = POOL_PREFIX) -> list[Path]:
    """This process's pool cgroups (by default), in every hierarchy."""
    return [
        entry
        for hierarchy in HIERARCHIES
        if (V1 / hierarchy / PARENT).is_dir()
        for entry in (V1 / hierarchy / PARENT).iterdir()
        if entry.name.startswith(prefix)
    ]


def _cgroup_of(pid: int, hierarchy: str) -> str:
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if hierarchy in controllers.split(","):
            return path
    raise AssertionError(f"{pid} is in no {hierarchy} cgroup")


def _limits_of(environment_id: str) -> dict[str, str]:
    memory, cpu, pids = (V1 / c / PARENT / environment_id for c in ("memory", "cpu", "pids"))
    return {
        "memory": (memory / "memory.limit_in_bytes").read_text().strip(),
        "quota": (cpu / "cpu.cfs_quota_us").read_text().strip(),
        "period": (cpu / "cpu.cfs_period_us").read_text().strip(),
        "pids": (pids / "pids.max").read_text().strip(),
    }


@bubblewrap_only
async def test_a_create_takes_a_pooled_gate_and_its_cgroups_become_the_environments(
    tmp_path: Path,
) -> None:
    async with running_manager(tmp_path) as manager:
        pooled = await _filled(manager)
        pool_names = {gate.cgroup.dirs[0].name for gate in pooled}
        spec = make_spec(cpu_cores=0.5, memory_bytes=96 * MiB, max_pids=40)
        environment = await create(manager, spec)
        agent = manager._environments.runtimes[environment.id].agent
        assert agent is not None
        # Its agent's process is one of the gates, with a cgroup no longer in the pool.
        taken = [gate for gate in pooled if gate.process.pid == agent.pid]
        assert len(taken) == 1
        assert taken[0].opened
        (taken_name,) = pool_names - {gate.cgroup.dirs[0].name for gate in _pooled(manager)}
        assert not any(directory.name == taken_name for directory in _pool_dirs())
        # Every process of the environment, a command's too, is in its cgroups...
        limits = await run(manager, environment.id, ["cat", "/proc/self/limits"])
        members = cgroup_pids(environment.id)
        assert agent.pid in members
        for pid in members:
            for hierarchy in HIERARCHIES:
                assert _cgroup_of(pid, hierarchy) == f"/{PARENT}/{environment.id}"
        # ... which carry its limits, and its processes its rlimits.
        assert _limits_of(environment.id) == {
            "memory": str(96 * MiB),
            "quota": str(CPU_PERIOD_US // 2),
            "period": str(CPU_PERIOD_US),
            "pids": "40",
        }
        address_space = 96 * MiB + manager.settings.address_space_headroom_bytes
        limits_line = next(
            line for line in limits.out.splitlines() if line.startswith("Max address space")
        )
        assert limits_line.split()[3:5] == [str(address_space)] * 2
        # A command cannot fork past its pids limit (the environment's cgroup counts it).
        forks = await run(
            manager,
            environment.id,
            ["sh", "-c", "for i in $(seq 60); do sleep 1 & done; wait"],
        )
        assert "fork" in forks.err or "Resource temporarily unavailable" in forks.err
        # The pool refills behind, with new gates in new cgroups.
        refilled = await _filled(manager)
        assert agent.pid not in {gate.process.pid for gate in refilled}


@bubblewrap_only
async def test_a_pooled_gate_killed_before_use_is_not_used(tmp_path: Path) -> None:
    async with running_manager(tmp_path) as manager:
        pooled = await _filled(manager)
        for gate in pooled:
            gate.process.send_signal(signal.SIGKILL)
        await asyncio.gather(*(gate.process.wait() for gate in pooled))
        environment = await create(manager)
        agent = manager._environments.runtimes[environment.id].agent
        assert agent is not None
        assert agent.pid not in {gate.process.pid for gate in pooled}
        assert (await run(manager, environment.id, ["echo", "fine"])).out == "fine\n"
        # The dead gates' cgroups are removed, and live gates take their places.
        refilled = await _filled(manager)
        names = {directory.name for directory in _pool_dirs()}
        assert names == {gate.cgroup.dirs[0].name for gate in refilled}


@bubblewrap_only
async def test_two_creates_never_share_a_pooled_gate_or_its_cgroups(tmp_path: Path) -> None:
    async with running_manager(tmp_path) as manager:
        await _filled(manager)
        environments = await asyncio.gather(*(create(manager) for _ in range(4)))
        agents = [manager._environments.runtimes[e.id].agent for e in environments]
        pids = [agent.pid for agent in agents if agent is not None]
        assert len(set(pids)) == 4
        memberships = [cgroup_pids(e.id) for e in environments]
        for index, environment in enumerate(environments):
            assert pids[index] in memberships[index]
            for other in memberships[:index] + memberships[index + 1 :]:
                assert memberships[index].isdisjoint(other)
            assert (await run(manager, environment.id, ["true"])).result.exit_code == 0


@bubblewrap_only
async def test_a_pooled_cgroup_that_moved_is_not_used(tmp_path: Path) -> None:
    async with running_manager(tmp_path) as manager:
        pooled = await _filled(manager)
        moved = []
        for gate in pooled:  # as if someone renamed them away: the adoption fails
            directory = gate.cgroup.dirs[-1]
            target = directory.with_name(f"moved-{directory.name}")
            directory.rename(target)
            moved.append(target)
        try:
            for _ in pooled:  # each create takes one of them, oldest first
                environment = await create(manager)
                assert (await run(manager, environment.id, ["echo", "fine"])).out == "fine\n"
                agent = manager._environments.runtimes[environment.id].agent
                assert agent is not None
                assert agent.pid not in {gate.process.pid for gate in pooled}
            assert all(not pid_alive(gate.process.pid) for gate in pooled)
        finally:
            for directory in moved:
                await eventually(lambda d=directory: _removed(d), what=f"{directory} removed")


def _removed(directory: Path) -> bool:
    try:
        directory.rmdir()
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return True


@bubblewrap_only
async def test_stop_ends_the_pooled_gates_and_removes_their_cgroups(tmp_path: Path) -> None:
    async with running_manager(tmp_path) as manager:
        pooled = await _filled(manager)
        assert len(_pool_dirs()) == 2 * len(HIERARCHIES)
    assert not _pool_dirs()
    assert all(gate.process.returncode is not None for gate in pooled)


CRASHING_CHILD = """
import asyncio, sys
from pathlib import Path
sys.path[:0] = [{support!r}, {tests!r}]
from sandbox_support import fast_settings
from sandbox_sdk.server.database import Database
from sandbox_sdk.server.orchestrator.sandbox import SandboxManager

async def main():
    root = Path({root!r})
    manager = SandboxManager(Database(root / "orchestrator.db"), fast_settings(), {orch!r},
                             root / "workspaces")
    await manager.start()
    gates = manager._lifecycle.gates
    while gates.ready_count() < 2:
        await asyncio.sleep(0.05)
    print(" ".join(str(gate.process.pid) for gate in gates._ready), flush=True)
    await asyncio.sleep(300)

asyncio.run(main())
"""


@bubblewrap_only
async def test_a_restart_leaves_no_pool_cgroups_or_gates_behind(tmp_path: Path) -> None:
    script = CRASHING_CHILD.format(
        support=str(Path(__file__).parent),
        tests=str(Path(__file__).parents[1]),
        root=str(tmp_path),
        orch=ORCHESTRATOR_ID,
    )
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", textwrap.dedent(script), stdout=asyncio.subprocess.PIPE
    )
    try:
        assert child.stdout is not None
        line = await asyncio.wait_for(child.stdout.readline(), 60)
        gate_pids = [int(pid) for pid in line.split()]
    finally:
        child.send_signal(signal.SIGKILL)
        await child.wait()
    leftovers = sorted({d.name for d in _pool_dirs(f"pool-{ORCHESTRATOR_ID}-{child.pid}.")})
    assert len(leftovers) == 2
    # A gate that would not go away with its orchestrator: a process left in a pool cgroup.
    stray = await asyncio.to_thread(subprocess.Popen, ["sleep", "300"], start_new_session=True)
    try:
        for hierarchy in HIERARCHIES:
            procs = V1 / hierarchy / PARENT / leftovers[0] / "cgroup.procs"
            procs.write_text(str(stray.pid))
        async with running_manager(tmp_path, db=Database(tmp_path / "orchestrator.db")) as manager:
            assert await asyncio.to_thread(stray.wait, 10) == -signal.SIGKILL
            assert not any(pid_alive(pid) for pid in gate_pids)
            assert not _pool_dirs(f"pool-{ORCHESTRATOR_ID}-{child.pid}.")
            await _filled(manager)
    finally:
        if stray.poll() is None:
            stray.kill()
            stray.wait()
    assert not _pool_dirs()


async def test_no_pool_without_cgroup_v1_or_with_depth_zero(tmp_path: Path) -> None:
    # Without cgroups the pids limit is RLIMIT_NPROC of the sandbox uid, host-wide: a uid of
    # this worker's own keeps the other worker's sandboxes from counting against it.
    uid = worker_places.sandbox_uid_of_its_own()
    settings = fast_settings(sandbox_uid=uid, sandbox_gid=uid)
    isolation = dataclasses.replace(
        await asyncio.to_thread(detect_isolation, settings), cgroups=None
    )
    async with running_manager(
        tmp_path / "none", settings=settings, isolation=isolation
    ) as manager:
        assert _gate_pool(manager).driver is None
        environment = await create(manager)
        assert (await run(manager, environment.id, ["true"])).result.exit_code == 0
        assert not _pool_dirs()
    off = fast_settings(gate_pool_depth=0)
    async with running_manager(tmp_path / "off", settings=off) as manager:
        environment = await create(manager)
        assert (await run(manager, environment.id, ["true"])).result.exit_code == 0
        assert _gate_pool(manager).ready_count() == 0
        assert not _pool_dirs()


async def test_gvisor_creates_start_their_own_gates(tmp_path: Path) -> None:
    if not under_gvisor():
        pytest.skip("checks gVisor's creates")
    async with running_manager(tmp_path) as manager:
        pooled = await _filled(manager)
        environment = await create(manager)
        assert (await run(manager, environment.id, ["true"])).result.exit_code == 0
        assert _pooled(manager) == pooled
        assert all(gate.process.returncode is None for gate in pooled)
        assert cgroup_dirs(environment.id)
