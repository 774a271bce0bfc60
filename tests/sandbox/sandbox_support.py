"""Shared helpers of the sandbox tests: fast settings, a running manager, commands."""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
import sandbox_runtimes
from prometheus_client import CollectorRegistry

from sandbox_sdk.models.environment import IsolationRuntime
from sandbox_sdk.server.database import Database
from sandbox_sdk.server.orchestrator.sandbox import SandboxManager, SandboxSettings
from sandbox_sdk.server.orchestrator.sandbox.environment_record import (
    Command,
    Environment,
    EnvironmentSpec,
    ExecExited,
    ExecOutput,
    ExecStarted,
    FileWrite,
    Limits,
    NetworkPolicy,
    NewEnvironment,
)
from sandbox_sdk.server.orchestrator.sandbox.isolation import Isolation
from sandbox_sdk.server.orchestrator.sandbox.settings import (
    LimitValues,
    MiB,
    default_cgroup_parent,
)

T = TypeVar("T")

TENANT = "tenant-a"
ORCHESTRATOR_ID = "t1"

HAS_ISOLATION = (
    os.geteuid() == 0
    and shutil.which("bwrap") is not None
    and (
        Path("/sys/fs/cgroup/memory").is_dir() or Path("/sys/fs/cgroup/cgroup.controllers").exists()
    )
)
needs_isolation = [
    pytest.mark.isolation,
    pytest.mark.skipif(not HAS_ISOLATION, reason="needs root, bubblewrap and cgroups"),
]


def fast_settings(**overrides: Any) -> SandboxSettings:
    """Small default limits and quick background loops, for tests."""
    values: dict[str, Any] = {
        "default_limits": LimitValues(
            cpu_cores=1.0,
            memory_bytes=128 * MiB,
            disk_bytes=16 * MiB,
            max_pids=64,
            exec_timeout_seconds=30.0,
        ),
        "reaper_interval_seconds": 0.1,
        "monitor_interval_seconds": 0.2,
        "default_runtime": sandbox_runtimes.current(),
    }
    values.update(overrides)
    return SandboxSettings(**values)


def make_spec(
    *,
    cpu_cores: float = 1.0,
    memory_bytes: int = 128 * MiB,
    disk_bytes: int = 16 * MiB,
    max_pids: int = 64,
    exec_timeout_seconds: float = 30.0,
    labels: Mapping[str, str] | None = None,
    env_vars: Mapping[str, str] | None = None,
    ttl_seconds: float = 300.0,
    idle_timeout_seconds: float = 300.0,
    network: NetworkPolicy = NetworkPolicy.NONE,
    egress_allow_cidrs: Sequence[str] = (),
    egress_deny_cidrs: Sequence[str] = (),
    runtime: IsolationRuntime | None = None,
) -> EnvironmentSpec:
    """An environment spec with test-sized limits, under the test's runtime by default."""
    return EnvironmentSpec(
        limits=Limits(cpu_cores, memory_bytes, disk_bytes, max_pids, exec_timeout_seconds),
        env_vars=dict(env_vars or {}),
        labels=dict(labels or {}),
        ttl_seconds=ttl_seconds,
        idle_timeout_seconds=idle_timeout_seconds,
        network=network,
        egress_allow_cidrs=tuple(egress_allow_cidrs),
        egress_deny_cidrs=tuple(egress_deny_cidrs),
        runtime=runtime or sandbox_runtimes.current(),
    )


@asynccontextmanager
async def running_manager(
    tmp_path: Path,
    *,
    settings: SandboxSettings | None = None,
    isolation: Isolation | None = None,
    registry: CollectorRegistry | None = None,
    db: Database | None = None,
) -> AsyncIterator[SandboxManager]:
    """A started manager on a database in ``tmp_path``; stopped (environments ended) after."""
    database = db or Database(tmp_path / "orchestrator.db")
    manager = SandboxManager(
        database,
        settings or fast_settings(),
        ORCHESTRATOR_ID,
        tmp_path / "workspaces",
        registry=registry,
        isolation=isolation,
    )
    await manager.start()
    try:
        yield manager
    finally:
        await manager.stop()


async def create(
    manager: SandboxManager,
    spec: EnvironmentSpec | None = None,
    *,
    tenant: str = TENANT,
    files: Sequence[FileWrite] = (),
    request_id: str = "",
) -> Environment:
    """Creates an environment."""
    new = NewEnvironment(spec or make_spec(), tuple(files), request_id)
    return await manager.create_environment(tenant, new)


@dataclass
class Run:
    """Everything a command produced."""

    started: ExecStarted | None = None
    stdout: bytearray = field(default_factory=bytearray)
    stderr: bytearray = field(default_factory=bytearray)
    chunks: list[ExecOutput] = field(default_factory=list)
    exited: ExecExited | None = None

    @property
    def out(self) -> str:
        return self.stdout.decode(errors="replace")

    @property
    def err(self) -> str:
        return self.stderr.decode(errors="replace")

    @property
    def result(self) -> ExecExited:
        assert self.exited is not None, "the command did not report its exit"
        return self.exited


async def run(
    manager: SandboxManager,
    environment_id: str,
    argv: Sequence[str],
    *,
    timeout: float = 30.0,
    cwd: str = "",
    stdin: bytes = b"",
    env_vars: Mapping[str, str] | None = None,
    output_cap_bytes: int = 64 * MiB,
    tenant: str = TENANT,
) -> Run:
    """Runs a command to its end and collects its events."""
    command = Command(
        argv=tuple(argv),
        cwd=cwd,
        env_vars=dict(env_vars or {}),
        stdin=stdin,
        timeout_seconds=timeout,
        output_cap_bytes=output_cap_bytes,
    )
    result = Run()
    async for event in manager.exec_command(tenant, environment_id, command):
        if isinstance(event, ExecStarted):
            result.started = event
        elif isinstance(event, ExecOutput):
            result.chunks.append(event)
            (result.stdout if event.stream == "stdout" else result.stderr).extend(event.data)
        else:
            result.exited = event
    return result


async def eventually(
    condition: Callable[[], bool], *, within: float = 15.0, what: str = "condition"
) -> None:
    """Polls ``condition`` until it holds; fails after ``within`` seconds (a deadline, not a
    timing assertion)."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not happen within {within}s")
        await asyncio.sleep(0.05)


async def eventually_async(
    read: Callable[[], Awaitable[T]], wanted: T, *, within: float = 15.0, what: str = "condition"
) -> None:
    """Reads until ``read()`` gives ``wanted``; fails after ``within`` seconds (a deadline,
    not a timing assertion)."""
    deadline = time.monotonic() + within
    while (last := await read()) != wanted:
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not happen within {within}s (last read: {last!r})")
        await asyncio.sleep(0.05)


def cgroup_dirs(environment_id: str, parent: str | None = None) -> list[Path]:
    """The environment's cgroup directories that exist now (v1 hierarchies or v2), under
    ``parent`` (default: the settings' default, this test session's own)."""
    parent = parent or default_cgroup_parent()
    root = Path("/sys/fs/cgroup")
    candidates = [root / c / parent / environment_id for c in ("memory", "cpu", "cpuacct", "pids")]
    candidates.append(root / parent / environment_id)
    return [c for c in candidates if c.is_dir()]


def cgroup_pids(environment_id: str) -> set[int]:
    """Every process in the environment's cgroups, children included."""
    pids: set[int] = set()
    for directory in cgroup_dirs(environment_id):
        for procs in directory.rglob("cgroup.procs"):
            pids.update(int(p) for p in procs.read_text().split())
    return pids


def _is_agent(pid: int) -> bool:
    """Whether ``pid`` is an environment's agent (or the bubblewrap process around it), or
    under gVisor one of its host processes, which hold the agent."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            args = cmdline.read().split(b"\0")
    except OSError:
        return False
    if args[0].endswith(b"runsc") or args[0].startswith(b"runsc-"):
        return True
    return len(args) >= 3 and args[-3] == b"sandbox-agent"  # [..., name, fd, ""]


def agent_pids(environment_id: str) -> set[int]:
    """The environment's agent processes (they live as long as the environment)."""
    return {pid for pid in cgroup_pids(environment_id) if _is_agent(pid)}


def command_pids(environment_id: str) -> set[int]:
    """Every process of the environment's commands: its cgroups' processes but the agent's."""
    return {pid for pid in cgroup_pids(environment_id) if not _is_agent(pid)}


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` is a live (not zombie) process."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


_PROCESS_PROBE = """
import os
for entry in os.listdir("/proc"):
    if entry.isdigit() and int(entry) not in (1, os.getpid()):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                print(cmdline.read().replace(b"\\0", b" ").decode().strip())
        except OSError:
            pass
"""


async def processes_inside(manager: SandboxManager, environment_id: str) -> list[str]:
    """The command lines of the environment's live processes as its own kernel sees them
    (under any runtime), but its agent's (pid 1) and this probe's."""
    probe = await run(manager, environment_id, ["python3", "-I", "-S", "-c", _PROCESS_PROBE])
    return [line for line in probe.out.splitlines() if line and "_PROCESS_PROBE" not in line]


def under_gvisor() -> bool:
    """Whether the running test's sandboxes run under gVisor."""
    return sandbox_runtimes.current() is IsolationRuntime.GVISOR
