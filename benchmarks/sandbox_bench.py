"""What isolation costs: environment create and command round trip vs plain processes.

* create: ``SandboxManager.create_environment`` until RUNNING (workspace file
  system, cgroups, database row) vs making a temp directory and running
  ``true`` in it.
* create: also starts the environment's agent (gate, setpriv, bubblewrap,
  ``python3 -I -S``) and waits for its ready message.
* create from a template: the same, from a cached Debian minbase template (a
  read-only root shared through overlayfs with a private writable layer) vs
  create today, interleaved; the first run builds the template with
  mmdebstrap (about 30 s) into ``$SANDBOX_SDK_TEMPLATE_CACHE`` or
  ``~/.cache/sandbox-sdk/templates``, later runs reuse it.
* exec: ``true`` through ``SandboxManager.run_command`` (a spawn request to
  the environment's agent with the pipes' fds, ``posix_spawn`` inside the
  sandbox, output streaming, the exit report with ``wait4`` usage) vs
  ``subprocess.run(["true"])``.

Samples alternate between the measured path and its baseline so both see the
same machine load. The isolation layers in force are named in each row.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench_common import ratio_row

from sandbox_sdk.server.database import Database
from sandbox_sdk.server.orchestrator.sandbox import SandboxManager, SandboxSettings
from sandbox_sdk.server.orchestrator.sandbox.environment_record import (
    EnvironmentSpec,
    Limits,
    NetworkPolicy,
    NewEnvironment,
)
from sandbox_sdk.server.orchestrator.templates import (
    DebianBase,
    Template,
    TemplateBuilder,
    TemplateCache,
    TemplateSpec,
    validate_template_spec,
)

CREATES = 60
EXECS = 200
WARMUP = 5
TENANT = "bench"
SPEC = EnvironmentSpec(
    limits=Limits(
        cpu_cores=1.0,
        memory_bytes=256 << 20,
        disk_bytes=256 << 20,
        max_pids=64,
        exec_timeout_seconds=30.0,
    ),
    env_vars={},
    labels={},
    ttl_seconds=600.0,
    idle_timeout_seconds=600.0,
    network=NetworkPolicy.NONE,
)


def _percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def _plain_create(scratch: Path) -> float:
    started = time.perf_counter()
    directory = Path(tempfile.mkdtemp(dir=scratch))
    subprocess.run(["true"], cwd=directory, check=True)
    elapsed = time.perf_counter() - started
    shutil.rmtree(directory)
    return elapsed


def _plain_exec() -> float:
    started = time.perf_counter()
    subprocess.run(["true"], check=True)
    return time.perf_counter() - started


def _template_cache() -> TemplateCache:
    configured = os.environ.get("SANDBOX_SDK_TEMPLATE_CACHE")
    root = Path(configured) if configured else Path.home() / ".cache/sandbox-sdk/templates"
    return TemplateCache(root)


async def _timed_create(manager: SandboxManager, spec: EnvironmentSpec) -> float:
    started = time.perf_counter()
    environment = await manager.create_environment(TENANT, NewEnvironment(spec))
    elapsed = time.perf_counter() - started
    await manager.delete_environment(TENANT, environment.id)
    return elapsed


async def _minbase(manager: SandboxManager, cache: TemplateCache) -> Template:
    spec = validate_template_spec(TemplateSpec(base=DebianBase("bookworm", "minbase")))
    return await cache.build(spec, TemplateBuilder(manager.launcher), lambda line: None)


async def _measure(root: Path) -> dict[str, Any]:
    cache = _template_cache()
    await cache.start()
    manager = SandboxManager(
        Database(root / "bench.db"),
        SandboxSettings(),
        "bench",
        root / "workspaces",
        templates=cache,
    )
    await manager.start()
    try:
        template_spec = replace(SPEC, template=(await _minbase(manager, cache)).digest)
        creates, template_creates, plain_creates = [], [], []
        for index in range(CREATES + WARMUP):
            elapsed = await _timed_create(manager, SPEC)
            from_template = await _timed_create(manager, template_spec)
            plain = _plain_create(root)
            if index >= WARMUP:
                creates.append(elapsed)
                template_creates.append(from_template)
                plain_creates.append(plain)

        environment = await manager.create_environment(TENANT, NewEnvironment(SPEC))
        execs, plain_execs = [], []
        for index in range(EXECS + WARMUP):
            started = time.perf_counter()
            result = await manager.port.run_command(environment.id, ["true"])
            elapsed = time.perf_counter() - started
            if result.exit_code != 0:
                raise RuntimeError(f"`true` failed in the sandbox: {result}")
            plain = _plain_exec()
            if index >= WARMUP:
                execs.append(elapsed)
                plain_execs.append(plain)
        return {
            "isolation": manager.isolation.level,
            "creates": creates,
            "template_creates": template_creates,
            "plain_creates": plain_creates,
            "execs": execs,
            "plain_execs": plain_execs,
        }
    finally:
        await manager.stop()


def _row(metric: str, value: float, baseline: float, goal: str, isolation: str) -> dict[str, Any]:
    return ratio_row(f"sandbox ({isolation})", metric, value, baseline, goal)


def run() -> list[dict[str, Any]]:
    """Measures and returns the benchmark rows."""
    with tempfile.TemporaryDirectory(prefix="sandbox-bench-") as scratch:
        measured = asyncio.run(_measure(Path(scratch)))
    isolation = measured["isolation"]
    creates, plain_creates = measured["creates"], measured["plain_creates"]
    execs, plain_execs = measured["execs"], measured["plain_execs"]
    return [
        _row(
            "environment create p50",
            statistics.median(creates),
            statistics.median(plain_creates),
            "value < 50 ms",
            isolation,
        ),
        _row(
            "environment create p99",
            _percentile(creates, 0.99),
            _percentile(plain_creates, 0.99),
            "report",
            isolation,
        ),
        _row(
            "environment create p50 from a cached template (baseline: create today)",
            statistics.median(measured["template_creates"]),
            statistics.median(creates),
            "ratio <= 1.5",
            isolation,
        ),
        _row(
            "exec `true` round trip p50",
            statistics.median(execs),
            statistics.median(plain_execs),
            "ratio < 2",
            isolation,
        ),
        _row(
            "exec `true` round trip p99",
            _percentile(execs, 0.99),
            _percentile(plain_execs, 0.99),
            "report",
            isolation,
        ),
    ]


if __name__ == "__main__":
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from run_all import print_table

    print_table(run())
