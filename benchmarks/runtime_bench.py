"""What gVisor costs: environment create and exec under gVisor vs bubblewrap, and vs bare runsc.

* create: ``SandboxManager.create_environment`` with ``runtime=GVISOR`` until
  RUNNING (its agent answering from inside gVisor's kernel) vs the same
  create under bubblewrap, and vs ``runsc do true`` (gVisor's own start-up,
  no agent, no workspace, as root with the host's root file system).
* exec: ``true`` through the environment's agent under gVisor vs under
  bubblewrap, and vs ``subprocess.run(["true"])``.

Samples alternate between gVisor, bubblewrap and the baselines so all see the
same machine load. Skipped (no rows) when runsc is not installed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_common import plain_exec, ratio_row

from sandbox_sdk.models.environment import IsolationRuntime
from sandbox_sdk.server.database import Database
from sandbox_sdk.server.orchestrator.sandbox import SandboxManager, SandboxSettings
from sandbox_sdk.server.orchestrator.sandbox.environment_record import (
    EnvironmentSpec,
    Limits,
    NetworkPolicy,
    NewEnvironment,
)
from sandbox_sdk.server.orchestrator.sandbox.settings import MiB

TENANT = "bench"
CREATES = 15
EXECS = 100
WARMUP = 2
BUBBLEWRAP = EnvironmentSpec(
    limits=Limits(1.0, 512 * MiB, 32 * MiB, 256, 30.0),
    env_vars={},
    labels={},
    ttl_seconds=600.0,
    idle_timeout_seconds=600.0,
    network=NetworkPolicy.NONE,
)
GVISOR = dataclasses.replace(BUBBLEWRAP, runtime=IsolationRuntime.GVISOR)


async def _timed_create(manager: SandboxManager, spec: EnvironmentSpec) -> float:
    started = time.perf_counter()
    environment = await manager.create_environment(TENANT, NewEnvironment(spec))
    elapsed = time.perf_counter() - started
    await manager.delete_environment(TENANT, environment.id)
    return elapsed


async def _timed_exec(manager: SandboxManager, environment_id: str) -> float:
    started = time.perf_counter()
    result = await manager.port.run_command(environment_id, ["true"])
    if result.exit_code != 0:
        raise RuntimeError(f"`true` failed in the sandbox: {result}")
    return time.perf_counter() - started


def _bare_runsc(runsc: str, state: Path) -> float:
    started = time.perf_counter()
    subprocess.run(
        [runsc, "--rootless", "--network=none", f"--root={state}", "do", "true"],
        check=True,
        capture_output=True,
    )
    return time.perf_counter() - started


async def _measure(scratch: Path, runsc: str) -> dict[str, Any]:
    settings = SandboxSettings(max_environments=64)
    manager = SandboxManager(Database(scratch / "bench.db"), settings, "rtbench", scratch / "ws")
    await manager.start()
    samples: dict[str, list[float]] = {
        name: [] for name in ("gvisor", "bubblewrap", "runsc", "gvisor_exec", "bwrap_exec", "plain")
    }
    try:
        for index in range(CREATES + WARMUP):
            gvisor = await _timed_create(manager, GVISOR)
            bubblewrap = await _timed_create(manager, BUBBLEWRAP)
            bare = await asyncio.to_thread(_bare_runsc, runsc, scratch / "runsc-state")
            if index >= WARMUP:
                samples["gvisor"].append(gvisor)
                samples["bubblewrap"].append(bubblewrap)
                samples["runsc"].append(bare)
        under_gvisor = await manager.create_environment(TENANT, NewEnvironment(GVISOR))
        under_bwrap = await manager.create_environment(TENANT, NewEnvironment(BUBBLEWRAP))
        for index in range(EXECS + WARMUP):
            gvisor = await _timed_exec(manager, under_gvisor.id)
            bubblewrap = await _timed_exec(manager, under_bwrap.id)
            plain = plain_exec()
            if index >= WARMUP:
                samples["gvisor_exec"].append(gvisor)
                samples["bwrap_exec"].append(bubblewrap)
                samples["plain"].append(plain)
        return {"level": under_gvisor.isolation, "samples": samples}
    finally:
        await manager.stop()


def run() -> list[dict[str, Any]]:
    """Measures and returns the benchmark rows (none without runsc)."""
    runsc = shutil.which("runsc")
    if runsc is None:
        return []
    with tempfile.TemporaryDirectory(prefix="runtime-bench-") as scratch:
        measured = asyncio.run(_measure(Path(scratch), runsc))
    level, samples = measured["level"], measured["samples"]
    name = f"runtimes ({level})"
    median = {key: statistics.median(values) for key, values in samples.items()}
    comparisons = (
        ("gVisor create p50 vs bubblewrap", "gvisor", "bubblewrap"),
        ("gVisor create p50 vs `runsc do true`", "gvisor", "runsc"),
        ("gVisor exec p50 vs bubblewrap", "gvisor_exec", "bwrap_exec"),
        ("gVisor exec p50 vs subprocess.run", "gvisor_exec", "plain"),
    )
    return [
        ratio_row(name, metric, median[value], median[baseline], "report")
        for metric, value, baseline in comparisons
    ]


if __name__ == "__main__":
    for row in run():
        print(row)
