"""Checks that hold for the whole test session: nothing a test started outlives it.

After every other session fixture has stopped its servers, no child process of
this pytest process may be left (a sandbox agent, bubblewrap, slirp4netns, a
`sandbox-sdk serve`), nothing may stay mounted under the session's temporary
directory, no loop device may still be backed by a file there (a
workspace image), and no environment cgroup or mount point the session
created may remain. A leak fails the run.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

_GRACE_SECONDS = 15.0


def _children() -> list[str]:
    alive = []
    for child in psutil.Process().children(recursive=True):
        try:
            if child.status() != psutil.STATUS_ZOMBIE:
                alive.append(f"{child.pid} {' '.join(child.cmdline())[:120]}")
        except psutil.Error:
            continue
    return alive


def _mounts_under(base: Path) -> list[str]:
    with open("/proc/self/mountinfo", encoding="utf-8") as mountinfo:
        points = [line.split()[4] for line in mountinfo]
    return [point for point in points if point.startswith(str(base))]


def _loop_devices_under(base: Path) -> list[str]:
    leaked = []
    for device in Path("/sys/block").glob("loop*"):
        backing = device / "loop" / "backing_file"
        try:
            if backing.read_text().startswith(str(base)):
                leaked.append(device.name)
        except OSError:
            continue
    return leaked


def _environment_dirs() -> set[str]:
    """Environments' cgroups (v1 and v2) and mount points under the default parents."""
    parents = [*Path("/sys/fs/cgroup").glob("*/sandbox-sdk"), Path("/sys/fs/cgroup/sandbox-sdk")]
    parents.append(Path("/run/sandbox-sdk"))
    return {str(entry) for parent in parents if parent.is_dir() for entry in parent.glob("env-*")}


def _leaks(base: Path, before: set[str]) -> list[str]:
    return [
        *(f"process {p}" for p in _children()),
        *(f"mount {m}" for m in _mounts_under(base)),
        *(f"loop device {d}" for d in _loop_devices_under(base)),
        *(f"environment leftover {d}" for d in sorted(_environment_dirs() - before)),
    ]


@pytest.fixture(scope="session", autouse=True)
def _nothing_outlives_the_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    base = tmp_path_factory.getbasetemp().resolve()
    before = _environment_dirs()
    yield
    deadline = time.monotonic() + _GRACE_SECONDS
    while (leaks := _leaks(base, before)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not leaks, "the tests left these behind:\n" + "\n".join(leaks)
