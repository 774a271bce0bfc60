"""What a test may leave behind on the host, looked up: processes, mounts, loop devices,
environment cgroups and mount points. ``conftest.py`` checks the whole session with it."""

from __future__ import annotations

from pathlib import Path

import psutil

from sandbox_sdk.server.orchestrator.sandbox.settings import (
    default_cgroup_parent,
    default_mount_root,
)


def child_processes() -> list[str]:
    alive = []
    for child in psutil.Process().children(recursive=True):
        try:
            if child.status() != psutil.STATUS_ZOMBIE:
                alive.append(f"{child.pid} {' '.join(child.cmdline())[:120]}")
        except psutil.Error:
            continue
    return alive


def mounts_under(base: Path) -> list[str]:
    with open("/proc/self/mountinfo", encoding="utf-8") as mountinfo:
        points = [line.split()[4] for line in mountinfo]
    return [point for point in points if point.startswith(str(base))]


def loop_devices_under(base: Path) -> list[str]:
    leaked = []
    for device in Path("/sys/block").glob("loop*"):
        backing = device / "loop" / "backing_file"
        try:
            if backing.read_text().startswith(str(base)):
                leaked.append(device.name)
        except OSError:
            continue
    return leaked


def environment_dirs() -> set[str]:
    """Environments' cgroups (v1 and v2) and mount points under this session's default
    parents (a worker's own, see conftest.py), and the workspace file systems and start
    gates made ahead (``pool-*``)."""
    cgroup_parent = default_cgroup_parent()
    parents = [*Path("/sys/fs/cgroup").glob(f"*/{cgroup_parent}")]
    parents += [Path("/sys/fs/cgroup") / cgroup_parent, default_mount_root()]
    return {
        str(entry)
        for parent in parents
        if parent.is_dir()
        for pattern in ("env-*", "pool-*")
        for entry in parent.glob(pattern)
    }


def leaks(base: Path, before: set[str]) -> list[str]:
    return [
        *(f"process {p}" for p in child_processes()),
        *(f"mount {m}" for m in mounts_under(base)),
        *(f"loop device {d}" for d in loop_devices_under(base)),
        *(f"environment leftover {d}" for d in sorted(environment_dirs() - before)),
    ]
