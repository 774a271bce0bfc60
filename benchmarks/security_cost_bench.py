"""What the security layers cost: the seccomp filter and the egress network.

* seccomp: the same commands (``true``, and ``python3 -c pass``, which makes
  a few thousand system calls) in an environment with the filter vs one
  without it, on the same machine, samples interleaved.
* egress: ``create_environment`` with ``network="egress"`` (slirp4netns and
  the nftables firewall on top) vs ``network="none"``, interleaved.

Each row is a ratio against the baseline measured in the same run.
"""

from __future__ import annotations

import asyncio
import dataclasses
import statistics
import tempfile
import time
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
from sandbox_sdk.server.orchestrator.sandbox.isolation import detect_isolation

EXECS = 100
CREATES = 30
WARMUP = 3
TENANT = "bench"


def _spec(network: NetworkPolicy) -> EnvironmentSpec:
    return EnvironmentSpec(
        limits=Limits(1.0, 256 << 20, 64 << 20, 64, 30.0),
        env_vars={},
        labels={},
        ttl_seconds=600.0,
        idle_timeout_seconds=600.0,
        network=network,
    )


async def _timed_exec(manager: SandboxManager, environment_id: str, argv: list[str]) -> float:
    started = time.perf_counter()
    result = await manager.port.run_command(environment_id, argv)
    if result.exit_code != 0:
        raise RuntimeError(f"{argv} failed in the sandbox: {result}")
    return time.perf_counter() - started


async def _measure(root: Path) -> dict[str, Any]:
    settings = SandboxSettings(egress_denied_cidrs=())
    isolation = await asyncio.to_thread(detect_isolation, settings, probe_dir=root)
    if isolation.seccomp is None:
        raise RuntimeError("no seccomp filter on this machine: nothing to compare")
    unfiltered = dataclasses.replace(isolation, seccomp=None)
    filtered_manager = SandboxManager(
        Database(root / "a.db"), settings, "benca", root / "a", isolation=isolation
    )
    plain_manager = SandboxManager(
        Database(root / "b.db"), settings, "bencb", root / "b", isolation=unfiltered
    )
    await filtered_manager.start()
    await plain_manager.start()
    try:
        none = _spec(NetworkPolicy.NONE)
        filtered = await filtered_manager.create_environment(TENANT, NewEnvironment(none))
        plain = await plain_manager.create_environment(TENANT, NewEnvironment(none))
        samples: dict[str, list[float]] = {}
        for name, argv in (("true", ["true"]), ("python", ["python3", "-c", "pass"])):
            for index in range(EXECS + WARMUP):
                with_filter = await _timed_exec(filtered_manager, filtered.id, argv)
                without = await _timed_exec(plain_manager, plain.id, argv)
                if index >= WARMUP:
                    samples.setdefault(f"{name}-seccomp", []).append(with_filter)
                    samples.setdefault(f"{name}-plain", []).append(without)
        for index in range(CREATES + WARMUP):
            for network in (NetworkPolicy.EGRESS, NetworkPolicy.NONE):
                started = time.perf_counter()
                created = await filtered_manager.create_environment(
                    TENANT, NewEnvironment(_spec(network))
                )
                elapsed = time.perf_counter() - started
                await filtered_manager.delete_environment(TENANT, created.id)
                if index >= WARMUP:
                    samples.setdefault(f"create-{network.value}", []).append(elapsed)
        return {"samples": samples, "level": isolation.level}
    finally:
        await filtered_manager.stop()
        await plain_manager.stop()


def _row(metric: str, value: list[float], baseline: list[float], goal: str) -> dict[str, Any]:
    median, base = statistics.median(value), statistics.median(baseline)
    return ratio_row("security layers", metric, median, base, goal)


def run() -> list[dict[str, Any]]:
    """Measures and returns the benchmark rows."""
    with tempfile.TemporaryDirectory(prefix="security-bench-") as scratch:
        measured = asyncio.run(_measure(Path(scratch)))
    s = measured["samples"]
    return [
        _row("exec `true` p50, seccomp vs none", s["true-seccomp"], s["true-plain"], "ratio < 1.1"),
        _row(
            "exec `python3 -c pass` p50, seccomp vs none",
            s["python-seccomp"],
            s["python-plain"],
            "ratio < 1.1",
        ),
        _row("create p50, egress vs none", s["create-EGRESS"], s["create-NONE"], "report"),
    ]


if __name__ == "__main__":
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from run_all import print_table

    print_table(run())
