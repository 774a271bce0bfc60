"""Environments under gVisor: the same API, gVisor's own kernel underneath.

Each test creates a real environment under ``runsc`` (rootless, as the
sandbox uid, inside the environment's cgroups) and checks behaviour through
the manager, as the bubblewrap tests do, plus what only gVisor gives: a
kernel that is not the host's.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sandbox_support import (
    HAS_ISOLATION,
    TENANT,
    create,
    make_spec,
    run,
    running_manager,
)

from sandbox_sdk.models.environment import IsolationRuntime
from sandbox_sdk.server.orchestrator.sandbox import SandboxManager
from sandbox_sdk.server.orchestrator.sandbox.environment_record import (
    Environment,
    EnvironmentState,
    FileWrite,
)
from sandbox_sdk.server.orchestrator.sandbox.gvisor import (
    GvisorBundle,
    GvisorUsers,
    Mount,
    agent_source_mount,
    oci_spec,
)
from sandbox_sdk.server.orchestrator.sandbox.rlimits import ProcessLimits
from sandbox_sdk.server.orchestrator.sandbox.settings import MiB

# Not marked `isolation`: these create gVisor environments by name, so they run once,
# not once per runtime.
pytestmark = [
    pytest.mark.skipif(not HAS_ISOLATION, reason="needs root, bubblewrap and cgroups"),
    pytest.mark.skipif(
        shutil.which("runsc") is None, reason="needs gVisor (apt-get install runsc)"
    ),
]


def gvisor_spec(**overrides: object) -> object:
    spec = make_spec(memory_bytes=256 * MiB, max_pids=128, **overrides)  # type: ignore[arg-type]
    return dataclasses.replace(spec, runtime=IsolationRuntime.GVISOR)


@pytest.fixture
async def manager(tmp_path: Path) -> AsyncIterator[SandboxManager]:
    async with running_manager(tmp_path) as started:
        assert IsolationRuntime.GVISOR in started.isolation.installed_runtimes()
        yield started


@pytest.fixture
async def environment(manager: SandboxManager) -> Environment:
    return await create(manager, gvisor_spec(env_vars={"GREETING": "hello"}))  # type: ignore[arg-type]


async def test_the_environment_reports_gvisor_and_its_layers(environment: Environment) -> None:
    assert environment.state is EnvironmentState.RUNNING
    assert environment.spec.runtime is IsolationRuntime.GVISOR
    assert environment.isolation.startswith("gvisor(ptrace)+cgroup-v1+rlimits")


async def test_commands_run_on_gvisors_kernel_not_the_hosts(
    manager: SandboxManager, environment: Environment
) -> None:
    result = await run(manager, environment.id, ["sh", "-c", "dmesg | head -1; uname -r"])
    assert result.result.exit_code == 0, result.err
    assert "Starting gVisor" in result.out
    host_release = os.uname().release
    assert host_release not in result.out


async def test_exec_takes_stdin_env_cwd_and_reports_exit_codes(
    manager: SandboxManager, environment: Environment
) -> None:
    result = await run(
        manager,
        environment.id,
        ["sh", "-c", 'mkdir -p sub; cd sub; read line; echo "$line $GREETING $PWD"; exit 3'],
        stdin=b"got\n",
    )
    assert result.out == "got hello /workspace/sub\n"
    assert result.result.exit_code == 3
    missing = await run(manager, environment.id, ["no-such-program"])
    assert missing.result.exit_code == 127


async def test_files_cross_between_host_and_sandbox(
    manager: SandboxManager, environment: Environment
) -> None:
    await manager.write_file(TENANT, environment.id, FileWrite("in/data.txt", b"from host\n"))
    result = await run(
        manager, environment.id, ["sh", "-c", "cat in/data.txt; echo from-sandbox > out.txt"]
    )
    assert result.out == "from host\n"
    _, content = await manager.read_workspace_file(TENANT, environment.id, "out.txt")
    assert content == b"from-sandbox\n"


async def test_the_host_is_out_of_sight(manager: SandboxManager, environment: Environment) -> None:
    probes = (
        f"test -e {Path.cwd()} && echo HOST-FILES; "
        # Only the environment's own processes: the agent and this shell's.
        "ls_pids=$(cd /proc && echo [0-9]*); echo pids: $ls_pids; "
        # No network but loopback.
        'echo "interfaces: $(grep -c : /proc/net/dev)"; '
        # The agent is pid 1 of gVisor's kernel, and another uid: commands can neither
        # kill it nor open its fds or memory (gVisor would let its own uid do both).
        "kill -9 1 2>/dev/null; echo still-here; "
        "for path in /proc/1/fd/0 /proc/1/fd/3 /proc/1/mem; do "
        "  cat $path >/dev/null 2>&1 </dev/null && echo OPENED $path; "
        "done"
    )
    result = await run(manager, environment.id, ["sh", "-c", probes])
    assert "HOST-FILES" not in result.out
    lines = dict(line.split(": ", 1) for line in result.out.splitlines() if ": " in line)
    assert len(lines["pids"].split()) < 10, result.out
    assert int(lines["interfaces"]) <= 1, result.out  # loopback at most
    assert "still-here" in result.out
    assert "OPENED" not in result.out
    again = await run(manager, environment.id, ["true"])
    assert again.result.exit_code == 0


async def test_commands_have_no_capabilities_inside(
    manager: SandboxManager, environment: Environment
) -> None:
    result = await run(manager, environment.id, ["sh", "-c", "grep Cap /proc/self/status"])
    effective = [line for line in result.out.splitlines() if line.startswith("CapEff")]
    assert effective == ["CapEff:\t0000000000000000"], result.out


async def test_an_exec_timeout_kills_the_command(
    manager: SandboxManager, environment: Environment
) -> None:
    result = await run(manager, environment.id, ["sleep", "30"], timeout=0.5)
    assert result.result.reason.value == "TIMEOUT"


async def test_the_sandbox_lives_inside_the_environments_cgroup(
    manager: SandboxManager, environment: Environment
) -> None:
    await run(manager, environment.id, ["sh", "-c", "head -c 20000000 /dev/zero > /dev/null"])
    usage, _ = manager.environment_usage(TENANT, environment.id)
    # gVisor's own processes (its kernel, its file proxy) are counted with the commands.
    assert usage.memory_bytes > 10 * MiB


async def test_deleting_ends_every_gvisor_process(
    manager: SandboxManager, environment: Environment
) -> None:
    ended = await manager.delete_environment(TENANT, environment.id)
    assert ended.state in (EnvironmentState.TERMINATING, EnvironmentState.TERMINATED)
    assert await asyncio.to_thread(_host_processes_naming, environment.id) == []


def _host_processes_naming(environment_id: str) -> list[str]:
    """The host processes whose command line names the environment (runsc's name it)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and environment_id.encode() in (entry / "cmdline").read_bytes():
                found.append(entry.name)
        except OSError:
            continue
    return found


def test_the_spec_maps_two_users_and_applies_its_limits_inside() -> None:
    limits = ProcessLimits(
        address_space_bytes=1 << 30, cpu_seconds=10, file_size_bytes=1 << 20, open_files=64
    )
    spec = oci_spec(
        argv=["agent"],
        env={"PATH": "/bin"},
        limits=limits,
        max_processes=32,
        mounts=[],
        root=None,
        users=GvisorUsers(agent=(65532, 65532), command=(65534, 65534)),
    )
    process = spec["process"]
    # The agent may switch its commands' user and signal them; commands get nothing.
    assert process["capabilities"]["effective"] == ["CAP_SETUID", "CAP_SETGID", "CAP_KILL"]
    assert process["capabilities"]["ambient"] == process["capabilities"]["inheritable"] == []
    assert spec["linux"]["uidMappings"] == [
        {"containerID": 0, "hostID": 65532, "size": 1},
        {"containerID": 65534, "hostID": 65534, "size": 1},
    ]
    assert process["noNewPrivileges"] is True
    rlimits = {entry["type"]: entry["hard"] for entry in process["rlimits"]}
    assert rlimits == {
        "RLIMIT_AS": 1 << 30,
        "RLIMIT_FSIZE": 1 << 20,
        "RLIMIT_NOFILE": 64,
        "RLIMIT_CORE": 0,
        "RLIMIT_NPROC": 31,
    }
    assert {entry["type"] for entry in spec["linux"]["namespaces"]} >= {"pid", "network", "mount"}


def test_the_bundle_makes_nothing_in_a_template_root(tmp_path: Path) -> None:
    # A template environment's root is its sandbox's to write: a symlink planted at a mount
    # point must not lead the orchestrator (root) to make directories where it points.
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "template-root"
    root.mkdir()
    (root / ".sandbox-agent-code").symlink_to(outside)
    (root / "workspace").symlink_to(outside)
    bundle = GvisorBundle(tmp_path / "bundle")
    limits = ProcessLimits(
        address_space_bytes=1 << 30, cpu_seconds=10, file_size_bytes=1 << 20, open_files=64
    )
    mounts = [Mount(tmp_path, "/workspace/deeper", writable=True), agent_source_mount(bundle)]
    spec = oci_spec(
        argv=["agent"],
        env={},
        limits=limits,
        max_processes=8,
        mounts=mounts,
        root=root,
        users=GvisorUsers(agent=(65532, 65532), command=(65534, 65534)),
    )
    bundle.write(spec, {"/bin": "usr/bin"}, "print('agent')")
    assert list(outside.iterdir()) == []
    assert not (root / "bin").exists()
    assert (bundle.agent_dir / "agent.py").read_text() == "print('agent')"
