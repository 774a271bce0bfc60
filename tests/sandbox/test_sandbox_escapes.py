"""Escape attempts against real bubblewrap, cgroups and rlimits: each is contained."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest
from sandbox_support import (
    TENANT,
    cgroup_dirs,
    cgroup_pids,
    command_pids,
    create,
    eventually,
    eventually_async,
    fast_settings,
    make_spec,
    needs_isolation,
    pid_alive,
    processes_inside,
    run,
    running_manager,
    under_gvisor,
)

from sandbox_sdk.server.orchestrator.sandbox.environment_record import (
    Command,
    ExecExited,
    ExecStarted,
    ExitReason,
    FileWrite,
    NetworkPolicy,
)
from sandbox_sdk.server.orchestrator.sandbox.settings import MiB

pytestmark = needs_isolation

FORK_BOMB = """
import os, time
children = 0
while True:
    try:
        if os.fork() == 0:
            time.sleep(60)
            os._exit(0)
        children += 1
    except OSError as error:
        print(f"fork refused after {children} children: {error}", flush=True)
        break
"""

MEMORY_BOMB = """
hoard = []
while True:
    hoard.append(bytearray(8 << 20))
"""


async def test_fork_bomb_is_stopped_by_the_pids_limit(tmp_path: Path) -> None:
    async with running_manager(tmp_path) as manager:
        environment = await create(manager, make_spec(max_pids=16))
        result = await run(manager, environment.id, ["python3", "-c", FORK_BOMB])
        assert "fork refused after" in result.out, result.err
        children = int(result.out.split("after ")[1].split()[0])
        assert children < 16
        if under_gvisor():  # its processes live in gVisor's kernel, not as host processes
            await eventually_async(
                lambda: processes_inside(manager, environment.id), [], what="the bomb died"
            )
        else:
            await eventually(lambda: not command_pids(environment.id), what="the bomb died")


async def test_memory_bomb_is_killed_and_reported_out_of_memory(tmp_path: Path) -> None:
    async with running_manager(tmp_path) as manager:
        environment = await create(manager, make_spec(memory_bytes=64 * MiB))
        result = await run(manager, environment.id, ["python3", "-c", MEMORY_BOMB])
        exited = result.result
        assert exited.reason is ExitReason.OUT_OF_MEMORY, (exited, result.err)
        assert exited.exit_code == -1
        assert exited.memory_peak_bytes <= 64 * MiB
        # The environment survives its command's OOM and still runs commands.
        assert (await run(manager, environment.id, ["true"])).result.reason is ExitReason.EXITED


async def test_cpu_spin_past_the_cpu_time_limit_is_killed_as_cpu_limit(tmp_path: Path) -> None:
    async with running_manager(tmp_path) as manager:
        # cpu_cores x exec_timeout = 1 CPU second per command, even with a longer wall timeout.
        environment = await create(manager, make_spec(cpu_cores=1.0, exec_timeout_seconds=1.0))
        result = await run(
            manager, environment.id, ["python3", "-c", "while True: pass"], timeout=60
        )
        assert result.result.reason is ExitReason.CPU_LIMIT, result.result
        # wait4's user+system time is the kernel's tick-split estimate: within a few percent.
        assert result.result.cpu_seconds >= 0.9


async def test_cpu_quota_throttles_a_spinning_command(tmp_path: Path) -> None:
    async with running_manager(tmp_path) as manager:
        environment = await create(manager, make_spec(cpu_cores=0.1))
        result = await run(
            manager, environment.id, ["python3", "-c", "while True: pass"], timeout=1
        )
        assert result.result.reason is ExitReason.TIMEOUT
        throttled = [
            int(line.split()[1])
            for directory in cgroup_dirs(environment.id)
            if (directory / "cpu.stat").exists()
            for line in (directory / "cpu.stat").read_text().splitlines()
            if line.startswith("nr_throttled")
        ]
        assert throttled, "no cpu.stat found for the environment"
        assert max(throttled) > 0


async def test_filling_the_disk_stops_at_the_quota(tmp_path: Path) -> None:
    async with running_manager(tmp_path) as manager:
        environment = await create(manager, make_spec(disk_bytes=8 * MiB))
        fill = "open('big', 'wb').write(b'x' * (32 << 20))"
        result = await run(manager, environment.id, ["python3", "-c", fill])
        assert result.result.exit_code != 0
        assert "No space left" in result.err or "File too large" in result.err, result.err
        assert manager.port.usage(environment.id).disk_bytes <= 8 * MiB


async def test_system_directories_are_read_only(tmp_path: Path) -> None:
    async with running_manager(tmp_path) as manager:
        environment = await create(manager)
        for target in ("/etc/escaped", "/usr/escaped", "/escaped", "/proc/sys/kernel/hostname"):
            result = await run(manager, environment.id, ["sh", "-c", f"echo x > {target}"])
            assert result.result.exit_code != 0, target
            assert "Read-only file system" in result.err or "ermission denied" in result.err
        _assert_absent(Path("/etc/escaped"), Path("/usr/escaped"))


def _assert_absent(*paths: Path) -> None:
    for path in paths:
        assert not path.exists(), path


async def test_commands_run_unprivileged_in_their_own_namespaces(tmp_path: Path) -> None:
    async with running_manager(tmp_path) as manager:
        environment = await create(manager)
        result = await run(
            manager,
            environment.id,
            ["sh", "-c", "id -u; hostname; set -- /proc/[0-9]*; echo $#; unshare -U true"],
        )
        uid, hostname, visible_pids = result.out.split()[:3]
        assert uid == str(manager.settings.sandbox_uid)
        assert hostname == "sandbox"
        assert int(visible_pids) < 10  # only the sandbox's own processes
        # No nested user namespaces on the host kernel; gVisor's are its own kernel's, where
        # they reach nothing of the host.
        assert under_gvisor() or result.result.exit_code != 0


async def test_another_environments_workspace_is_not_visible(tmp_path: Path) -> None:
    async with running_manager(tmp_path) as manager:
        secret = FileWrite("secret.txt", b"top secret")
        owner = await create(manager, files=[secret])
        intruder = await create(manager)
        host_path = manager.settings.mount_root / owner.id / "workspace" / "secret.txt"
        assert host_path.read_bytes() == b"top secret"
        result = await run(
            manager,
            intruder.id,
            ["sh", "-c", f"cat {host_path}; ls {manager.settings.mount_root}; ls /workspace"],
        )
        assert "top secret" not in result.out
        assert "No such file" in result.err
        assert owner.id not in result.out


@pytest.mark.bubblewrap_only(
    reason="gVisor environments have no network but loopback here (docs/security.md); "
    "test_sandbox_gvisor checks that one asking for a network is refused"
)
async def test_network_is_unreachable_unless_the_operator_allows_host(tmp_path: Path) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    connect = (
        "import socket\n"
        "try:\n"
        f"    socket.create_connection(('127.0.0.1', {port}), timeout=5); print('connected')\n"
        "except OSError as error:\n"
        "    print('failed', error)\n"
    )
    try:
        settings = fast_settings(host_network_tenants=(TENANT,))
        async with running_manager(tmp_path, settings=settings) as manager:
            isolated = await create(manager)
            result = await run(manager, isolated.id, ["python3", "-c", connect])
            assert result.out.startswith("failed"), result.out
            host = await create(manager, make_spec(network=NetworkPolicy.HOST))
            result = await run(manager, host.id, ["python3", "-c", connect])
            assert result.out.startswith("connected"), result.out + result.err
    finally:
        listener.close()


@pytest.mark.bubblewrap_only(
    reason="watches the commands as host processes, which gVisor's are not; "
    "test_background_processes_outlive_their_command_inside checks it under both"
)
async def test_background_processes_outlive_their_command_until_delete(tmp_path: Path) -> None:
    # The command's process group dies with it; a process in a session of its
    # own lives on, as in a persistent environment, until the environment ends.
    async with running_manager(tmp_path) as manager:
        environment = await create(manager)
        # The command ends only once the daemon is in its session ("ready" is written after
        # setsid), or the group kill at its exit could catch the daemon still in the group.
        script = (
            "sleep 300 & setsid sh -c 'echo > ready; exec sleep 300' >/dev/null 2>&1 </dev/null &"
            " while [ ! -e ready ]; do sleep 0.01; done; echo started"
        )
        result = await run(manager, environment.id, ["sh", "-c", script])
        assert result.out.strip() == "started"
        await eventually(lambda: len(command_pids(environment.id)) == 1, what="the group died")
        (daemon,) = command_pids(environment.id)
        assert pid_alive(daemon)
        await manager.delete_environment(TENANT, environment.id)
        assert not pid_alive(daemon)


async def test_processes_are_dead_after_delete(tmp_path: Path) -> None:
    async with running_manager(tmp_path) as manager:
        environment = await create(manager)
        command = Command(argv=("sh", "-c", "sleep 300 & sleep 300 & echo up; wait"))
        events = manager.exec_command(TENANT, environment.id, command)
        first = await anext(events)
        assert isinstance(first, ExecStarted)
        assert (await anext(events)).data == b"up\n"  # type: ignore[union-attr]
        await eventually(lambda: len(command_pids(environment.id)) >= 3, what="sleeps started")
        pids = cgroup_pids(environment.id)
        deleted = await manager.delete_environment(TENANT, environment.id)
        assert deleted.termination_reason.value == "USER_DELETED"
        remaining = [event async for event in events]
        assert isinstance(remaining[-1], ExecExited)
        assert remaining[-1].reason is ExitReason.CANCELLED
        assert not any(pid_alive(pid) for pid in pids)
        assert not cgroup_dirs(environment.id)
        assert not (manager.settings.mount_root / environment.id).exists()
        await asyncio.sleep(0)


async def test_background_processes_outlive_their_command_inside(tmp_path: Path) -> None:
    async with running_manager(tmp_path) as manager:
        environment = await create(manager)
        script = (
            "sleep 301 & setsid sh -c 'echo > ready; exec sleep 302' >/dev/null 2>&1 </dev/null &"
            " while [ ! -e ready ]; do sleep 0.01; done; echo started"
        )
        result = await run(manager, environment.id, ["sh", "-c", script])
        assert result.out.strip() == "started"
        # The command's group (sleep 301) died with it; the daemon in its own session lives.
        assert await processes_inside(manager, environment.id) == ["sleep 302"]
