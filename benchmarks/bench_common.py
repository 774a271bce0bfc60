"""What several benchmarks share: a server in a child process, a row of ratios, the
floors (a plain exec, the orchestrator's bubblewrap line), throughput through the SDK,
a server's history written ahead, and the interval of a median over rounds."""

from __future__ import annotations

import asyncio
import math
import multiprocessing
import os
import random
import shutil
import statistics
import subprocess
import time
from collections.abc import Awaitable, Callable
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from sandbox_sdk import AsyncSandboxClient
from sandbox_sdk.server.database import Database
from sandbox_sdk.server.embedded import EmbeddedServer
from sandbox_sdk.server.orchestrator.experiments.records import (
    ExperimentChanges,
    ExperimentState,
    LogEvent,
    LogLevel,
    OutputEvent,
    SampleRecord,
    StateEvent,
)
from sandbox_sdk.server.orchestrator.experiments.spec import ExperimentSpec, InputSpec
from sandbox_sdk.server.orchestrator.experiments.store import ExperimentStore, NewExperiment
from sandbox_sdk.server.orchestrator.sandbox import SandboxManager
from sandbox_sdk.server.orchestrator.sandbox.bubblewrap import bwrap_command, system_mounts
from sandbox_sdk.server.orchestrator.sandbox.environment_record import (
    Environment,
    EnvironmentSpec,
    EnvironmentState,
    Limits,
    NetworkPolicy,
    TerminationReason,
)
from sandbox_sdk.server.orchestrator.sandbox.host_env import host_process_env
from sandbox_sdk.server.orchestrator.sandbox.store import EnvironmentStore
from sandbox_sdk.server.tenancy import DEFAULT_TENANT

# Started beside the embedded server in its process and event loop: returns more
# endpoints to send the parent, and a coroutine function that stops what it started.
Beside = Callable[[EmbeddedServer], Awaitable[tuple[dict[str, str], Callable[[], Awaitable[None]]]]]


def serve_in_child(
    data_dir: str,
    conn: Connection,
    in_process: bool = True,
    config_path: str | None = None,
    beside: Beside | None = None,
) -> None:
    """Child process: runs the embedded server as ``sandbox-sdk serve`` does (start-up
    objects frozen out of the garbage collector), with the config file ``config_path`` if
    given, and ``beside`` it what that starts; sends the endpoints on ``conn``, and stops
    when the parent closes its end."""
    from sandbox_sdk.server.embedded import run_embedded
    from sandbox_sdk.server.garbage import freeze_startup_objects

    async def main() -> None:
        server = await run_embedded("127.0.0.1", 0, data_dir, config_path, in_process=in_process)
        more, stop_beside = await beside(server) if beside else ({}, None)
        freeze_startup_objects()
        conn.send(
            {
                "gateway": f"127.0.0.1:{server.port}",
                "orchestrator": server.orchestrator.address,
                "internal_token": server.orchestrator.config.internal_token,
                "admin_key": server.admin_key_path.read_text().strip(),
                **more,
            }
        )
        try:
            # Returns (or raises EOFError) when the parent closes its end.
            await asyncio.get_running_loop().run_in_executor(None, conn.recv_bytes)
        except EOFError:
            pass
        finally:
            if stop_beside is not None:
                await stop_beside()
            await server.stop(1.0)

    asyncio.run(main())


def ratio_row(
    benchmark: str, metric: str, seconds: float, baseline_seconds: float, goal: str
) -> dict[str, Any]:
    """A table row of a time and its baseline from the same run, in milliseconds."""
    return {
        "benchmark": benchmark,
        "metric": metric,
        "value": seconds * 1000,
        "baseline": baseline_seconds * 1000,
        "ratio": seconds / baseline_seconds,
        "unit": "ms",
        "goal": goal,
    }


def median_interval(values: list[float], confidence: float = 0.95) -> tuple[float, float] | None:
    """A distribution-free interval of the median of ``values``: the k-th smallest and
    the k-th largest value, for the largest k whose coverage is still ``confidence``.

    A value falls below the median with probability one half, so the k-th smallest of n
    lies below it unless fewer than k do: the pair covers the median with probability
    1 - 2 P(Binomial(n, 1/2) < k). No assumption about the spread of the values (a noisy
    machine's are skewed) is needed. ``None`` when even the extremes cover too little
    (fewer than 6 values at 95 per cent).
    """
    ordered = sorted(values)
    count = len(ordered)
    best: tuple[float, float] | None = None
    below = 0  # P(Binomial(n, 1/2) < k), times 2**n
    for k in range(1, count // 2 + 1):
        below += math.comb(count, k - 1)
        if 1 - 2 * below / 2**count < confidence:
            break
        best = (ordered[k - 1], ordered[count - k])
    return best


def median_ratio(ratios: list[float]) -> dict[str, Any]:
    """A row's ``ratio``, the median of its rounds' ratios, and ``interval``, that median's
    95% interval as a table cell (``low-high``, or empty without one)."""
    interval = median_interval(ratios)
    return {
        "ratio": statistics.median(ratios),
        "interval": "" if interval is None else f"{interval[0]:.3f}-{interval[1]:.3f}",
    }


def percentile(samples: list[float], fraction: float) -> float:
    """The sample at ``fraction`` of the sorted samples (nearest rank below)."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def plain_exec() -> float:
    """Seconds of ``subprocess.run(["true"])``: the floor of an exec round trip."""
    started = time.perf_counter()
    subprocess.run(["true"], check=True)
    return time.perf_counter() - started


class BubblewrapFloor:
    """The orchestrator's own setpriv + bubblewrap command line (namespaces, system
    mounts, workspace and /tmp binds, seccomp) starting ``python3 -I -S -c pass``: the
    floor of an environment create. ``manager`` is a started :class:`SandboxManager`,
    whose isolation layers and settings it uses."""

    def __init__(self, manager: SandboxManager, scratch: Path) -> None:
        self._manager = manager
        isolation = manager.isolation
        self.base = (
            manager.settings.mount_root / f"floor-bench-{os.getpid()}"
            if isolation.sandbox_user is not None
            else scratch / "floor"
        )
        self.base.mkdir(mode=0o700)
        for directory in (self.base, self.base / "workspace", self.base / "tmp"):
            directory.mkdir(mode=0o700, exist_ok=True)
            if isolation.sandbox_user is not None:
                os.chown(directory, *isolation.sandbox_user)

    async def start(self) -> float:
        """Seconds from spawning the command line to its exit."""
        manager = self._manager
        isolation = manager.isolation
        if not isolation.bwrap_path:
            raise RuntimeError("the floor needs bubblewrap")
        started = time.perf_counter()
        seccomp_fd = isolation.seccomp.to_fd() if isolation.seccomp is not None else None
        try:
            argv = isolation.drop_privileges() + bwrap_command(
                isolation.bwrap_path,
                system=system_mounts(manager.settings.read_only_paths),
                workspace_dir=self.base / "workspace",
                tmp_dir=self.base / "tmp",
                cwd="",
                network=NetworkPolicy.NONE,
                command=[manager.settings.agent_python, "-I", "-S", "-c", "pass"],
                seccomp_fd=seccomp_fd,
            )
            process = await asyncio.create_subprocess_exec(
                *argv,
                env=host_process_env(),
                pass_fds=() if seccomp_fd is None else (seccomp_fd,),
            )
        finally:
            if seccomp_fd is not None:
                os.close(seccomp_fd)
        if await process.wait() != 0:
            raise RuntimeError(f"the floor's command line failed ({process.returncode})")
        return time.perf_counter() - started

    def remove(self) -> None:
        """Removes the floor's directories."""
        shutil.rmtree(self.base, ignore_errors=True)


def start_server(
    data_dir: Path, config_path: Path | None = None, beside: Beside | None = None
) -> tuple[BaseProcess, Connection, dict[str, str]]:
    """The embedded server in a child process (see :func:`serve_in_child`): the process,
    the connection whose closing stops it, and its endpoints. ``beside`` must be a
    module-level function (the child imports it by name)."""
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    config = None if config_path is None else str(config_path)
    process = context.Process(
        target=serve_in_child, args=(str(data_dir), child, True, config, beside), daemon=True
    )
    process.start()
    child.close()
    return process, parent, parent.recv()


async def experiment_rate(
    client: AsyncSandboxClient, environment_id: str, experiments: int, concurrent: int
) -> float:
    """Scripted one-input experiments per second through the SDK: ``experiments`` of them,
    ``concurrent`` created and waited for at a time, in ``environment_id``."""
    sandbox = await client.get_environment(environment_id)
    gate = asyncio.Semaphore(concurrent)

    async def one() -> None:
        async with gate:
            experiment = await sandbox.run_experiment(model="scripted", prompt="ping")
            await experiment.wait()

    started = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(experiments)))
    return experiments / (time.perf_counter() - started)


async def environment_rate(client: AsyncSandboxClient, environments: int) -> float:
    """Environments per second through the SDK, each created, given one ``true`` and
    deleted, one after another."""
    started = time.perf_counter()
    for _ in range(environments):
        sandbox = await client.create_environment()
        await sandbox.exec("true")
        await sandbox.delete()
    return environments / (time.perf_counter() - started)


async def throughput_rounds(
    servers: dict[str, dict[str, str]],
    *,
    rounds: int,
    experiments: int,
    concurrent: int,
    environments: int,
) -> dict[str, dict[str, list[float]]]:
    """Per server (by name, its endpoints from :func:`start_server`), ``rounds`` samples
    of :func:`experiment_rate` and of :func:`environment_rate`, under keys "experiments"
    and "environments". Each round measures every server in turn, in an order that
    reverses every other round, so all see the same machine load (an even ``rounds`` has
    each server measured first as often as the others).

    Each server first runs one whole block of experiments and of environments, unmeasured:
    a server's first block pays one-time costs (reader threads and their connections,
    caches, allocator arenas). With one experiment of warm-up instead, two fresh servers
    measured this way came out unequal in the first round, the second below the first in
    each of 6 runs (by 12 per cent on average), which pulled the median ratio down."""
    rates: dict[str, dict[str, list[float]]] = {
        name: {"experiments": [], "environments": []} for name in servers
    }
    clients = {
        name: AsyncSandboxClient(endpoints["gateway"], api_key=endpoints["admin_key"])
        for name, endpoints in servers.items()
    }
    try:
        # One environment per server for the experiments, and one warm-up block of each.
        hosts = {}
        for name, client in clients.items():
            host = await client.create_environment()
            hosts[name] = host.id
            await environment_rate(client, environments)
            await experiment_rate(client, host.id, experiments, concurrent)
        for round_number in range(rounds):
            order = list(servers) if round_number % 2 == 0 else list(reversed(servers))
            for name in order:
                rates[name]["experiments"].append(
                    await experiment_rate(clients[name], hosts[name], experiments, concurrent)
                )
            for name in order:
                rates[name]["environments"].append(
                    await environment_rate(clients[name], environments)
                )
    finally:
        for client in clients.values():
            await client.close()
    return rates


def _history_sample() -> SampleRecord:
    return SampleRecord(
        input_index=0,
        repeat=0,
        seed=None,
        prompt="ping",
        expected="pong",
        output="pong",
        scores={"exact_match": 1.0},
        score_errors={},
        prompt_tokens=3,
        completion_tokens=3,
        latency_seconds=0.01,
        time_to_first_token_seconds=0.001,
        tokens_per_second=300.0,
        finish_reason="stop",
        error="",
    )


def _history_ids(count: int) -> list[tuple[str, str, str]]:
    """``count`` (experiment id, environment id, request id) triples shaped as the server
    makes them (16 random hex digits; request ids as the SDK's, 32): spread over the
    indexes as real ones are, so the rounds' new rows land among the history's, not all
    after it. Seeded, so every run builds the same history."""
    draw = random.Random(16)  # benchmark data, not a secret
    return [
        (
            f"exp-o1-{draw.getrandbits(64):016x}",
            f"env-o1-{draw.getrandbits(64):016x}",
            f"{draw.getrandbits(128):032x}",
        )
        for _ in range(count)
    ]


async def _experiment_history(db_path: Path, count: int) -> None:
    """``count`` finished experiments of the default tenant, each with its events and
    sample, written as the engine writes them (insert, RUNNING, output and sample,
    SUCCEEDED)."""
    store = ExperimentStore(Database(db_path))
    spec = ExperimentSpec(model="scripted", inputs=(InputSpec(prompt="ping", expected="pong"),))
    last = None
    for number, (experiment_id, environment_id, request_id) in enumerate(_history_ids(count)):
        new = NewExperiment(
            id=experiment_id,
            tenant=DEFAULT_TENANT,
            environment_id=environment_id,
            spec=spec,
            model_name="scripted",
            total_samples=1,
            request_id=request_id,
            queue_order=number + 1,
            create_time=time.time() - count + number,
        )
        store.submit_insert(new, StateEvent(ExperimentState.QUEUED))
        store.submit_commit(
            experiment_id,
            [StateEvent(ExperimentState.RUNNING), LogEvent(LogLevel.INFO, "started")],
            ExperimentChanges(state=ExperimentState.RUNNING, start_time=time.time()),
        )
        store.submit_commit(
            experiment_id,
            [OutputEvent(0, 0, "pong")],
            sample=_history_sample(),
            has_output=True,
        )
        last = store.submit_commit(
            experiment_id,
            [StateEvent(ExperimentState.SUCCEEDED)],
            ExperimentChanges(state=ExperimentState.SUCCEEDED, end_time=time.time()),
        )
        if number % 500 == 499:
            await last
    if last is not None:
        await last
    await store.aclose()
    store.db.close()


def _environment_history(db_path: Path, count: int) -> None:
    """``count`` terminated environments of the default tenant, through the store."""
    database = Database(db_path)
    store = EnvironmentStore(database)
    spec = EnvironmentSpec(
        limits=Limits(1.0, 256 << 20, 256 << 20, 64, 30.0),
        env_vars={},
        labels={},
        ttl_seconds=3600.0,
        idle_timeout_seconds=600.0,
        network=NetworkPolicy.NONE,
    )
    now = time.time()
    for number, (_, environment_id, request_id) in enumerate(_history_ids(count)):
        environment = Environment(
            id=environment_id,
            tenant=DEFAULT_TENANT,
            spec=spec,
            state=EnvironmentState.RUNNING,
            termination_reason=TerminationReason.UNSPECIFIED,
            termination_message="",
            isolation="history",
            orchestrator_id="o1",
            create_time=now - count + number,
            expire_time=now,
            last_activity_time=now,
            terminate_time=None,
            request_id=request_id,
        )
        store.insert(environment)
        store.update(
            environment,
            state=EnvironmentState.TERMINATED,
            termination_reason=TerminationReason.USER_DELETED,
            terminate_time=now,
        )
    database.close()


def build_history(data_dir: Path, count: int) -> float:
    """Writes ``count`` past experiments and ``count`` past environments into the embedded
    server's database under ``data_dir`` (before the server starts), through the stores'
    own write paths; returns the seconds it took."""
    started = time.perf_counter()
    db_path = data_dir / "orchestrator" / "orchestrator.db"
    db_path.parent.mkdir(mode=0o700, parents=True)
    data_dir.chmod(0o700)
    asyncio.run(_experiment_history(db_path, count))
    _environment_history(db_path, count)
    return time.perf_counter() - started
