"""Isolation detection, and the weaker fallbacks it chooses when layers are missing."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
import worker_places
from sandbox_support import (
    HAS_ISOLATION,
    TENANT,
    create,
    eventually,
    fast_settings,
    make_spec,
    needs_isolation,
    pid_alive,
    run,
    running_manager,
)

from sandbox_sdk.server.orchestrator.sandbox.cgroups import (
    CgroupV1Driver,
    CgroupV2Driver,
    read_cgroup_mounts,
)
from sandbox_sdk.server.orchestrator.sandbox.environment_record import ExitReason, FileWrite
from sandbox_sdk.server.orchestrator.sandbox.isolation import detect_isolation
from sandbox_sdk.server.status import ServiceError

# Starts a sleep in its own session and reports its pid once it has left the group.
ESCAPE_THE_PROCESS_GROUP = """
setsid sleep 300 >/dev/null 2>&1 </dev/null &
pid=$!
until [ "$(cut -d' ' -f6 /proc/$pid/stat)" = "$pid" ]; do sleep 0.01; done
echo $pid
"""


def _mounts_file(tmp_path: Path, lines: list[str]) -> Path:
    mounts = tmp_path / "mounts"
    mounts.write_text("".join(f"{line}\n" for line in lines))
    return mounts


def test_cgroup_mounts_are_parsed_per_controller(tmp_path: Path) -> None:
    mounts = read_cgroup_mounts(
        _mounts_file(
            tmp_path,
            [
                "cgroup /sys/fs/cgroup/memory cgroup rw,relatime,memory 0 0",
                "cgroup /sys/fs/cgroup/cpu,cpuacct cgroup rw,relatime,cpu,cpuacct 0 0",
                "cgroup /sys/fs/cgroup/pids cgroup rw,relatime,pids 0 0",
                "cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0",
                "proc /proc proc rw 0 0",
            ],
        )
    )
    assert mounts.v1 == {
        "memory": Path("/sys/fs/cgroup/memory"),
        "cpu": Path("/sys/fs/cgroup/cpu,cpuacct"),
        "cpuacct": Path("/sys/fs/cgroup/cpu,cpuacct"),
        "pids": Path("/sys/fs/cgroup/pids"),
    }
    assert mounts.v2 == Path("/sys/fs/cgroup/unified")


def test_v2_is_chosen_only_when_its_controllers_are_enabled(tmp_path: Path) -> None:
    unified = tmp_path / "unified"
    unified.mkdir()
    (unified / "cgroup.subtree_control").write_text("")
    mounts = _mounts_file(tmp_path, [f"cgroup2 {unified} cgroup2 rw 0 0"])
    settings = fast_settings(bwrap_path="/nonexistent/bwrap", loop_disk_quota=False)

    (unified / "cgroup.controllers").write_text("cpuset io\n")
    without = detect_isolation(settings, mounts_file=mounts)
    assert without.cgroups is None
    assert any("lacks controllers memory, cpu, pids" in w for w in without.warnings)

    (unified / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    (unified / settings.cgroup_parent).mkdir()
    (unified / settings.cgroup_parent / "cgroup.subtree_control").write_text("")
    chosen = detect_isolation(settings, mounts_file=mounts)
    assert isinstance(chosen.cgroups, CgroupV2Driver)
    assert "cgroup-v2" in chosen.level
    assert set((unified / "cgroup.subtree_control").read_text().split()) == {
        "+memory",
        "+cpu",
        "+pids",
    }


@pytest.mark.skipif(not HAS_ISOLATION, reason="needs root, bubblewrap and cgroups")
def test_this_machine_gets_every_layer() -> None:
    isolation = detect_isolation(fast_settings())
    assert isolation.bwrap_path is not None
    assert isolation.cgroups is not None
    assert isolation.loop_quota
    assert isolation.level == (
        f"bubblewrap+seccomp+cgroup-v{isolation.cgroups.version}+rlimits+disk-quota"
    )
    if Path("/sys/fs/cgroup/memory/memory.limit_in_bytes").exists():
        assert isinstance(isolation.cgroups, CgroupV1Driver)


# Without cgroups the pids limit is per uid (RLIMIT_NPROC): a uid no other process has.
_UID = worker_places.sandbox_uid_of_its_own()
_UID_OF_ITS_OWN = {"sandbox_uid": _UID, "sandbox_gid": _UID}


@pytest.mark.skipif(os.geteuid() != 0, reason="the fallback drops privileges, which needs root")
@pytest.mark.bubblewrap_only(
    reason="checks bubblewrap's fallbacks without cgroups or without bubblewrap, where gVisor is "
    "not offered at all (test_sandbox_runtime_policy checks that refusal)"
)
async def test_without_bubblewrap_cgroups_or_loop_devices_commands_still_run(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = fast_settings(
        bwrap_path="/nonexistent/bwrap", loop_disk_quota=False, **_UID_OF_ITS_OWN
    )
    with caplog.at_level(logging.WARNING):
        isolation = detect_isolation(settings, mounts_file=_mounts_file(tmp_path, []))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 4
    assert any("bubblewrap not found" in w for w in warnings)
    assert any("no seccomp filter" in w for w in warnings)
    assert any("no usable cgroups" in w for w in warnings)
    assert isolation.level == "rlimits"

    async with running_manager(tmp_path, settings=settings, isolation=isolation) as manager:
        environment = await create(manager, make_spec(disk_bytes=4 << 20))
        assert environment.isolation == "rlimits"
        assert manager.capacity().isolation == "rlimits"
        result = await run(manager, environment.id, ["sh", "-c", "id -u; echo hi > f; cat f"])
        assert result.out.split() == [str(settings.sandbox_uid), "hi"]
        timed_out = await run(manager, environment.id, ["sleep", "30"], timeout=0.3)
        assert timed_out.result.reason is ExitReason.TIMEOUT
        escaped = await run(
            manager,
            environment.id,
            ["sh", "-c", ESCAPE_THE_PROCESS_GROUP],
        )
        stray = int(escaped.out)
        assert pid_alive(stray)  # no pid namespace or cgroup holds it here...

        # No loop-mounted file system: the monitor enforces the disk quota.
        fill = "for i in 1 2 3; do head -c 2000000 /dev/zero > f$i; done; sleep 60"
        filled = await run(manager, environment.id, ["sh", "-c", fill], timeout=60)
        assert filled.result.reason is ExitReason.CANCELLED
        with pytest.raises(ServiceError) as error:
            await manager.write_file(TENANT, environment.id, FileWrite("more", b"x"))
        assert error.value.reason == "QUOTA_EXCEEDED"

        await manager.delete_environment(TENANT, environment.id)
        await eventually(lambda: not pid_alive(stray), what="delete killed the stray process")
        assert not (settings.mount_root / environment.id).exists()
        assert not (tmp_path / "workspaces" / environment.id).exists()


@pytest.mark.skipif(not HAS_ISOLATION, reason="needs root, bubblewrap and cgroups")
@pytest.mark.bubblewrap_only(
    reason="checks bubblewrap's fallbacks without cgroups or without bubblewrap, where gVisor is "
    "not offered at all (test_sandbox_runtime_policy checks that refusal)"
)
async def test_without_cgroups_bubblewrap_still_isolates(tmp_path: Path) -> None:
    settings = fast_settings(**_UID_OF_ITS_OWN)
    isolation = detect_isolation(settings, mounts_file=_mounts_file(tmp_path, []))
    assert isolation.level == "bubblewrap+seccomp+rlimits+disk-quota"
    async with running_manager(tmp_path, settings=settings, isolation=isolation) as manager:
        environment = await create(manager)
        result = await run(manager, environment.id, ["sh", "-c", "pwd; touch /etc/x"])
        assert result.out == "/workspace\n"
        assert "Read-only" in result.err
        usage = manager.port.usage(environment.id)
        assert usage.pids == 2  # the environment's agent and bubblewrap's process around it
        spin = await run(manager, environment.id, ["python3", "-c", "x = [0] * 10**6"])
        assert spin.result.reason is ExitReason.EXITED


pytestmark = [mark for mark in needs_isolation if mark.name == "isolation"]
