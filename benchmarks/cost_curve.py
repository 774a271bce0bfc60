"""Cost curve: what each live environment, each concurrent experiment and each past
experiment costs, through the whole server (SDK, gateway, orchestrator) in a child
process, each point against a baseline measured in the same run.

* Live environments: with N environments held open (created through the SDK, each a
  real bubblewrap sandbox with its agent; N from ``--live``, default 0, 10, 50, 200),
  besides the one the execs run in:

  - environment create p50/p95 through the SDK (timed to RUNNING; each deleted after,
    untimed) against the floor: the orchestrator's own setpriv + bubblewrap line
    starting ``python3 -I -S -c pass``, interleaved with the creates;
  - exec ``true`` round trip p50/p95 through the SDK against ``subprocess.run(["true"])``,
    interleaved;
  - memory, read from /proc after each point: the server process's RSS (``sandbox-sdk
    serve`` runs the gateway and the orchestrator in one process) against its RSS with
    no environment held, and the RSS and PSS of the environments' own processes (their
    agent and their bubblewrap), summed per kind, against the live count.

* Concurrent experiments: scripted one-input experiments per second with C submitted at
  a time (``--concurrency``, default 1, 4, 16) on a fresh server, against C = 1;
  rounds rotate the order of the levels.

* History: experiment and environment throughput with H past experiments and H past
  environments in the server's database (``--history``, default 0, 1,000, 10,000;
  written ahead through the stores, as ``history_bench`` does), one server per size
  running at once, against the fresh one (H = 0) in the same rounds.

The server's capacity settings are raised in its config file here (not in the
defaults): per-tenant and per-orchestrator environment counts, CPU and memory totals,
and a 128 MiB workspace, so that the largest N fits on this machine's disk.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import yaml
from bench_common import (
    BubblewrapFloor,
    build_history,
    experiment_rate,
    percentile,
    plain_exec,
    start_server,
    throughput_rounds,
)

from sandbox_sdk import AsyncSandbox, AsyncSandboxClient
from sandbox_sdk.server.database import Database
from sandbox_sdk.server.orchestrator.sandbox import SandboxManager, SandboxSettings

LIVE = (0, 10, 50, 200)
CONCURRENCY = (1, 4, 16)
HISTORY = (0, 1_000, 10_000)

CREATES = 20  # per live level, each interleaved with a floor run
EXECS = 100  # per live level, each interleaved with subprocess.run
WARMUP = 3
HOLD_AT_ONCE = 4  # creates in flight while the held environments are made
IDLE_SECONDS = 2.0  # how long the server's CPU is read while no call is made
EXPERIMENTS = 150  # per concurrency level and round (shorter samples swing with the load)
CONCURRENCY_ROUNDS = 7
HISTORY_ROUNDS = 7
HISTORY_EXPERIMENTS = 150
HISTORY_CONCURRENT = 16
HISTORY_ENVIRONMENTS = 10

MiB = 1 << 20
DISK_BYTES = 128 * MiB
MEMORY_BYTES = 256 * MiB
ROOM = 16  # environments beyond the largest N: the exec target, creates, the pool


def live_config(largest: int) -> dict[str, Any]:
    """The live-curve server's config: room for ``largest`` held environments and the
    measured ones, for one tenant, and a rate limit the bench never meets."""
    room = largest + ROOM
    return {
        "gateway": {
            "limits": {
                "default": {
                    "max_environments": None,
                    "requests_per_second": 1e6,
                    "burst": 1_000_000,
                }
            }
        },
        "orchestrator": {
            "sandbox": {
                "max_environments": room,
                "cpu_cores_total": float(room),
                "memory_bytes_total": room * MEMORY_BYTES,
                "tenant_share_max": 1.0,
                "default_limits": {
                    "cpu_cores": 1.0,
                    "memory_bytes": MEMORY_BYTES,
                    "disk_bytes": DISK_BYTES,
                    "max_pids": 64,
                    "exec_timeout_seconds": 60.0,
                },
            }
        },
    }


# --- memory, from /proc ----------------------------------------------------------------


@dataclass
class Memory:
    """Resident memory of the server and of its environments' processes, in bytes."""

    server_rss: int
    agent_rss: int = 0
    agent_pss: int = 0
    agents: int = 0
    bwrap_rss: int = 0
    bwrap_pss: int = 0
    bwraps: int = 0
    other_rss: int = 0


def _is_agent(process: psutil.Process) -> bool:
    return "sandbox-agent" in process.cmdline()


def measure_memory(server_pid: int) -> Memory:
    """The server's RSS and its descendants' RSS and PSS by kind: environment agents,
    their bubblewrap, and anything else (commands, mounts in flight)."""
    server = psutil.Process(server_pid)
    memory = Memory(server_rss=server.memory_info().rss)
    for process in server.children(recursive=True):
        try:
            if process.name() == "bwrap":
                info = process.memory_full_info()
                memory.bwrap_rss += info.rss
                memory.bwrap_pss += info.pss
                memory.bwraps += 1
            elif _is_agent(process):
                info = process.memory_full_info()
                memory.agent_rss += info.rss
                memory.agent_pss += info.pss
                memory.agents += 1
            else:
                memory.other_rss += process.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return memory


def _host_mounts(server_pid: int) -> int:
    """Mounts in the server's mount namespace (the host's), which every new sandbox's
    bubblewrap copies before it unmounts what it does not keep."""
    with open(f"/proc/{server_pid}/mounts") as mounts:
        return sum(1 for _ in mounts)


async def _idle_cpu(server_pid: int) -> float:
    """The server's CPU seconds per second over IDLE_SECONDS without a call: what its
    background work (usage monitor, reaper) costs with the environments it holds."""
    server = psutil.Process(server_pid)
    before = sum(server.cpu_times()[:2])
    await asyncio.sleep(IDLE_SECONDS)
    return (sum(server.cpu_times()[:2]) - before) / IDLE_SECONDS


# --- live environments -------------------------------------------------------------------


@dataclass
class LivePoint:
    """What one live count measured."""

    live: int
    creates: list[float] = field(default_factory=list)
    floors: list[float] = field(default_factory=list)
    execs: list[float] = field(default_factory=list)
    plain_execs: list[float] = field(default_factory=list)
    memory: Memory | None = None
    idle_cpu: float = 0.0  # server CPU seconds per second while nothing is asked of it
    host_mounts: int = 0


async def _hold(client: AsyncSandboxClient, held: list[AsyncSandbox], count: int) -> None:
    """Creates environments until ``count`` are held, HOLD_AT_ONCE at a time."""
    gate = asyncio.Semaphore(HOLD_AT_ONCE)

    async def one() -> AsyncSandbox:
        async with gate:
            return await client.create_environment()

    held.extend(await asyncio.gather(*(one() for _ in range(count - len(held)))))


async def _timed_create(client: AsyncSandboxClient) -> float:
    started = time.perf_counter()
    sandbox = await client.create_environment()
    elapsed = time.perf_counter() - started
    await sandbox.delete()
    return elapsed


async def _timed_exec(sandbox: AsyncSandbox) -> float:
    started = time.perf_counter()
    result = await sandbox.exec(["true"])
    elapsed = time.perf_counter() - started
    if result.exit_code != 0:
        raise RuntimeError(f"`true` failed in the sandbox: {result}")
    return elapsed


async def _measure_point(
    client: AsyncSandboxClient, target: AsyncSandbox, floor: BubblewrapFloor, point: LivePoint
) -> None:
    for index in range(CREATES + WARMUP):
        create = await _timed_create(client)
        floor_start = await floor.start()
        if index >= WARMUP:
            point.creates.append(create)
            point.floors.append(floor_start)
    for index in range(EXECS + WARMUP):
        elapsed = await _timed_exec(target)
        plain = plain_exec()
        if index >= WARMUP:
            point.execs.append(elapsed)
            point.plain_execs.append(plain)


async def _live_curve(
    endpoints: dict[str, str], server_pid: int, levels: Sequence[int], scratch: Path
) -> list[LivePoint]:
    # A sandbox manager of the bench's own, started only for the floor's command line
    # (its isolation layers and system mounts): no pool, its own orchestrator id.
    manager = SandboxManager(
        Database(scratch / "floor.db"),
        SandboxSettings(workspace_pool_depth=0),
        "costfloor",
        scratch / "floor-workspaces",
    )
    await manager.start()
    floor = BubblewrapFloor(manager, scratch)
    client = AsyncSandboxClient(endpoints["gateway"], api_key=endpoints["admin_key"])
    held: list[AsyncSandbox] = []
    points = []
    try:
        target = await client.create_environment()
        for level in sorted(levels):
            print(f"  holding {level} environments ...", file=sys.stderr, flush=True)
            await _hold(client, held, level)
            point = LivePoint(level, host_mounts=_host_mounts(server_pid))
            point.idle_cpu = await _idle_cpu(server_pid)
            await _measure_point(client, target, floor, point)
            point.memory = await asyncio.to_thread(measure_memory, server_pid)
            points.append(point)
    finally:
        gate = asyncio.Semaphore(HOLD_AT_ONCE)

        async def delete(sandbox: AsyncSandbox) -> None:
            async with gate:
                await sandbox.delete()

        await asyncio.gather(*(delete(sandbox) for sandbox in held), return_exceptions=True)
        await client.close()
        floor.remove()
        await manager.stop()
    return points


def _run_live(levels: Sequence[int], scratch: Path) -> list[LivePoint]:
    config = scratch / "live.yaml"
    config.write_text(yaml.safe_dump(live_config(max(levels))))
    process, conn, endpoints = start_server(scratch / "live", config)
    try:
        assert process.pid is not None
        return asyncio.run(_live_curve(endpoints, process.pid, levels, scratch))
    finally:
        conn.close()
        process.join(120)


# --- concurrent experiments and history ----------------------------------------------------


async def _concurrency_curve(
    endpoints: dict[str, str], levels: Sequence[int]
) -> dict[int, list[float]]:
    rates: dict[int, list[float]] = {level: [] for level in levels}
    client = AsyncSandboxClient(endpoints["gateway"], api_key=endpoints["admin_key"])
    try:
        host = await client.create_environment()
        await experiment_rate(client, host.id, max(levels), max(levels))  # warm-up
        for round_number in range(CONCURRENCY_ROUNDS):
            shift = round_number % len(levels)
            for level in [*levels[shift:], *levels[:shift]]:
                rates[level].append(await experiment_rate(client, host.id, EXPERIMENTS, level))
        await host.delete()
    finally:
        await client.close()
    return rates


@dataclass
class ServerCurves:
    """Experiments/s by concurrency (fresh server), and throughput by history size."""

    concurrency: dict[int, list[float]]
    history: dict[int, dict[str, list[float]]]
    build_seconds: dict[int, float]


def _run_servers(concurrency: Sequence[int], sizes: Sequence[int], scratch: Path) -> ServerCurves:
    sizes = sorted({0, *sizes})
    build_seconds = {}
    for size in sizes:
        if size:
            print(f"  writing a history of {size:,} ...", file=sys.stderr, flush=True)
            build_seconds[size] = build_history(scratch / f"history-{size}", size)
    started = {size: start_server(scratch / f"history-{size}") for size in sizes}
    try:
        servers = {str(size): endpoints for size, (_, _, endpoints) in started.items()}
        print("  concurrent experiments ...", file=sys.stderr, flush=True)
        by_concurrency = asyncio.run(_concurrency_curve(servers["0"], concurrency))
        print("  throughput by history size ...", file=sys.stderr, flush=True)
        rates = asyncio.run(
            throughput_rounds(
                servers,
                rounds=HISTORY_ROUNDS,
                experiments=HISTORY_EXPERIMENTS,
                concurrent=HISTORY_CONCURRENT,
                environments=HISTORY_ENVIRONMENTS,
            )
        )
    finally:
        for process, conn, _ in started.values():
            conn.close()
            process.join(30)
    history = {size: rates[str(size)] for size in sizes}
    return ServerCurves(by_concurrency, history, build_seconds)


# --- rows ----------------------------------------------------------------------------------


def _ms_row(metric: str, value: float, baseline: float, goal: str = "report") -> dict[str, Any]:
    return {
        "benchmark": "cost curve",
        "metric": metric,
        "value": value * 1000,
        "baseline": baseline * 1000,
        "ratio": value / baseline,
        "unit": "ms",
        "goal": goal,
    }


def _row(metric: str, value: float, baseline: float, unit: str) -> dict[str, Any]:
    return {
        "benchmark": "cost curve",
        "metric": metric,
        "value": value,
        "baseline": baseline,
        "ratio": value / baseline if baseline else float("nan"),
        "unit": unit,
        "goal": "report",
    }


def live_rows(points: Sequence[LivePoint]) -> list[dict[str, Any]]:
    """Latency rows against their floors and memory rows against the first point."""
    rows = []
    first = points[0].memory
    assert first is not None
    for point in points:
        memory = point.memory
        assert memory is not None
        live = f"{point.live} held"
        rows += [
            _ms_row(
                f"create p50, {live} (baseline: bubblewrap floor p50)",
                statistics.median(point.creates),
                statistics.median(point.floors),
            ),
            _ms_row(
                f"create p95, {live} (baseline: floor p95)",
                percentile(point.creates, 0.95),
                percentile(point.floors, 0.95),
            ),
            _ms_row(
                f"exec `true` p50, {live} (baseline: subprocess.run p50)",
                statistics.median(point.execs),
                statistics.median(point.plain_execs),
            ),
            _ms_row(
                f"exec `true` p95, {live} (baseline: subprocess.run p95)",
                percentile(point.execs, 0.95),
                percentile(point.plain_execs, 0.95),
            ),
            _row(
                f"server RSS, {live} (baseline: {points[0].live} held)",
                memory.server_rss / MiB,
                first.server_rss / MiB,
                "MiB",
            ),
            _row(
                f"agents' RSS summed, {live} ({memory.agents} agents; baseline: their PSS)",
                memory.agent_rss / MiB,
                memory.agent_pss / MiB,
                "MiB",
            ),
            _row(
                f"bubblewrap RSS summed, {live} ({memory.bwraps} bwrap; baseline: their PSS)",
                memory.bwrap_rss / MiB,
                memory.bwrap_pss / MiB,
                "MiB",
            ),
            _row(
                f"server CPU while idle, {live} (baseline: {points[0].live} held)",
                point.idle_cpu * 100,
                points[0].idle_cpu * 100,
                "% of a core",
            ),
        ]
    return rows


def _median_ratio(values: Sequence[float], baselines: Sequence[float]) -> float:
    """The median of the per-round ratios: each ratio is of samples taken minutes apart at
    most, so a change of the machine's load between rounds moves it less."""
    return statistics.median(v / b for v, b in zip(values, baselines, strict=True))


def server_rows(curves: ServerCurves) -> list[dict[str, Any]]:
    """Experiments/s against one at a time, and throughput against a fresh server."""
    levels = sorted(curves.concurrency)
    single = curves.concurrency[levels[0]]
    rows = []
    for level in levels:
        by_round = curves.concurrency[level]
        row = _row(
            f"scripted experiments/s, {level} concurrent (baseline: {levels[0]} concurrent;"
            " ratio: median of rounds)",
            statistics.median(by_round),
            statistics.median(single),
            "experiments/s",
        )
        row["ratio"] = _median_ratio(by_round, single)
        rows.append(row)
    fresh = curves.history[0]
    for size, rates in sorted(curves.history.items()):
        if not size:
            continue
        built = f"history written in {curves.build_seconds[size]:.0f} s"
        for kind, unit in (("experiments", "experiments/s"), ("environments", "environments/s")):
            row = _row(
                f"{kind}/s with {size:,} past experiments and environments ({built};"
                " baseline: fresh server, ratio: median of rounds)",
                statistics.median(rates[kind]),
                statistics.median(fresh[kind]),
                unit,
            )
            row["ratio"] = _median_ratio(rates[kind], fresh[kind])
            rows.append(row)
    return rows


def run(
    live: Sequence[int] = LIVE,
    concurrency: Sequence[int] = CONCURRENCY,
    history: Sequence[int] = HISTORY,
) -> list[dict[str, Any]]:
    """Measures the three curves and returns their rows."""
    with tempfile.TemporaryDirectory(prefix="cost-curve-") as directory:
        points, curves = _measure(live, concurrency, history, Path(directory))
    return live_rows(points) + server_rows(curves)


def _measure(
    live: Sequence[int], concurrency: Sequence[int], history: Sequence[int], scratch: Path
) -> tuple[list[LivePoint], ServerCurves]:
    print("  live environments ...", file=sys.stderr, flush=True)
    points = _run_live(live, scratch)
    return points, _run_servers(concurrency, history, scratch)


def _markdown(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")


def print_curve(points: Sequence[LivePoint]) -> None:
    """The live-environment curve as two Markdown tables: latency in ms against its
    floors, and memory in MiB (per environment: divided by the agents counted, the held
    ones and the exec target), the server's idle CPU (of one core) and the host's mounts."""
    latency = []
    memory_rows = []
    for point in points:
        memory = point.memory
        assert memory is not None
        create, floor = statistics.median(point.creates), statistics.median(point.floors)
        execute, plain = statistics.median(point.execs), statistics.median(point.plain_execs)
        latency.append(
            [
                f"{point.live}",
                f"{create * 1000:.1f}",
                f"{percentile(point.creates, 0.95) * 1000:.1f}",
                f"{floor * 1000:.1f}",
                f"{create / floor:.2f}",
                f"{execute * 1000:.2f}",
                f"{percentile(point.execs, 0.95) * 1000:.2f}",
                f"{plain * 1000:.2f}",
                f"{execute / plain:.2f}",
            ]
        )
        environments = max(memory.agents, 1)
        memory_rows.append(
            [
                f"{point.live}",
                f"{memory.agents}",
                f"{memory.server_rss / MiB:.1f}",
                f"{memory.agent_rss / MiB:.0f}",
                f"{memory.bwrap_rss / MiB:.0f}",
                f"{memory.agent_rss / environments / MiB:.2f}",
                f"{memory.bwrap_rss / environments / MiB:.2f}",
                f"{(memory.agent_pss + memory.bwrap_pss) / environments / MiB:.2f}",
                f"{point.idle_cpu:.1%}",
                f"{point.host_mounts}",
            ]
        )
    _markdown(
        (
            "held",
            "create p50",
            "create p95",
            "floor p50",
            "create/floor",
            "exec p50",
            "exec p95",
            "subprocess.run p50",
            "exec/subprocess",
        ),
        latency,
    )
    print()
    _markdown(
        (
            "held",
            "agents",
            "server RSS",
            "agents RSS",
            "bwrap RSS",
            "agent RSS/env",
            "bwrap RSS/env",
            "agent+bwrap PSS/env",
            "server idle CPU",
            "host mounts",
        ),
        memory_rows,
    )


def _sizes(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def main(argv: Sequence[str]) -> None:
    """``python benchmarks/cost_curve.py [--live 0,10,50,200] [--concurrency 1,4,16]
    [--history 0,1000,10000]``: prints the rows as a table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--live", type=_sizes, default=list(LIVE))
    parser.add_argument("--concurrency", type=_sizes, default=list(CONCURRENCY))
    parser.add_argument("--history", type=_sizes, default=list(HISTORY))
    options = parser.parse_args(argv)
    from run_all import print_table

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="cost-curve-") as directory:
        points, curves = _measure(
            options.live, options.concurrency, options.history, Path(directory)
        )
    print_table(live_rows(points) + server_rows(curves))
    print()
    print_curve(points)
    print(f"cost curve measured in {time.perf_counter() - started:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main(sys.argv[1:])
