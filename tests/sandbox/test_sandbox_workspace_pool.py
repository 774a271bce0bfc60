"""Workspace file systems made ahead: handed out once, as made on demand, never leaked.

A create of a pooled disk size adopts a file system made ahead; it is mounted
and owned exactly as one made on demand, is destroyed with its environment
(never handed out again), the pool refills behind, and stop and the start-up
sweep leave nothing of the pool behind.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from leak_checks import loop_devices_under, mounts_under
from sandbox_support import (
    TENANT,
    create,
    eventually,
    fast_settings,
    make_spec,
    needs_isolation,
    run,
    running_manager,
)

from sandbox_sdk.server.orchestrator.sandbox.settings import MiB
from sandbox_sdk.server.orchestrator.sandbox.workspace import Workspace, WorkspaceLayout

pytestmark = needs_isolation


def _mount_options(mount_point: Path) -> set[str]:
    with open("/proc/self/mountinfo", encoding="utf-8") as mountinfo:
        for line in mountinfo:
            fields = line.split()
            if fields[4] == str(mount_point):
                return set(fields[5].split(","))
    raise AssertionError(f"{mount_point} is not mounted")


def _pool_entries(manager_root: Path, mount_root: Path) -> list[str]:
    return [
        entry.name
        for root in (manager_root, mount_root)
        if root.is_dir()
        for entry in root.iterdir()
        if entry.name.startswith("pool-t1-")
    ]


async def test_a_pooled_file_system_is_adopted_once_and_the_pool_refills(tmp_path: Path) -> None:
    async with running_manager(tmp_path) as manager:
        pool = manager._lifecycle.pool
        assert pool is not None
        await eventually(lambda: pool.ready_count() == 2, what="the pool filled")
        ready_images = {p.name for p in manager.workspace_root.glob("pool-*.img")}
        environment = await create(manager, make_spec(disk_bytes=16 * MiB))
        layout = manager.environment_layout(TENANT, environment.id)
        # One of the ready ones, renamed: not made on demand.
        assert len(ready_images - {p.name for p in manager.workspace_root.glob("pool-*")}) == 1
        assert layout.image.exists()
        assert {"nosuid", "nodev", "noatime"} <= _mount_options(layout.mount_point)
        uid, gid = manager.isolation.sandbox_user or (0, 0)
        for directory in (layout.mount_point, layout.files_dir, layout.tmp_dir):
            info = os.stat(directory)
            assert stat.S_IMODE(info.st_mode) == 0o700, directory
            assert (info.st_uid, info.st_gid) == (uid, gid), directory
        assert set(os.listdir(layout.mount_point)) == {"workspace", "tmp"}
        # The quota is the file system's: writing past it fails in the sandbox.
        result = await run(
            manager,
            environment.id,
            ["sh", "-c", "dd if=/dev/zero of=big bs=1M count=32 2>/dev/null; echo $?"],
        )
        assert result.out.strip() not in ("", "0"), result.out
        await eventually(lambda: pool.ready_count() == 2, what="the pool refilled")
        await manager.delete_environment(TENANT, environment.id)
        # Destroyed with its environment, never handed out again.
        assert not layout.image.exists()
        assert not mounts_under(layout.mount_point)
        # Another size is made on demand.
        other = await create(manager, make_spec(disk_bytes=24 * MiB))
        assert pool.ready_count() == 2
        await manager.delete_environment(TENANT, other.id)
    assert _pool_entries(manager.workspace_root, manager.settings.mount_root) == []
    await eventually(
        lambda: not loop_devices_under(tmp_path), what="every loop device of the pool released"
    )


async def test_the_start_up_sweep_removes_what_a_crash_left_in_the_pool(tmp_path: Path) -> None:
    settings = fast_settings(workspace_pool_depth=0)
    workspace_root = tmp_path / "workspaces"
    workspace_root.mkdir()
    left = WorkspaceLayout.for_environment(
        workspace_root, settings.mount_root, "pool-t1-00112233aabbccdd"
    )
    settings.mount_root.mkdir(parents=True, exist_ok=True)
    await Workspace.make_ready(left, quota_bytes=16 * MiB)
    assert mounts_under(left.mount_point)
    async with running_manager(tmp_path, settings=settings) as manager:
        assert manager._lifecycle.pool is not None
        assert manager._lifecycle.pool.ready_count() == 0
        assert not left.image.exists()
        assert not mounts_under(left.mount_point)
        assert not left.mount_point.exists()
    await eventually(
        lambda: not loop_devices_under(tmp_path), what="the left file system's loop device freed"
    )


async def test_without_a_pool_creates_make_their_own(tmp_path: Path) -> None:
    async with running_manager(tmp_path, settings=fast_settings(workspace_pool_depth=0)) as manager:
        environment = await create(manager)
        assert (await run(manager, environment.id, ["true"])).result.exit_code == 0
        assert _pool_entries(manager.workspace_root, manager.settings.mount_root) == []
