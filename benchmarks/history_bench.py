"""Cost that does not grow with history: experiment and environment throughput through the
whole server (SDK, gateway with its per-tenant quotas, orchestrator) with HISTORY past
experiments and HISTORY past environments in its database, against a fresh server.

Both servers run at once, each in a child process; the history is written before the
server starts, through the stores' own write paths (not measured). Rounds alternate which
server goes first, and the reported ratio is the median of the per-round ratios (history
rate over fresh rate; goal >= 0.95), so both sides of each ratio see the same machine load.

* experiments: EXPERIMENTS scripted one-input experiments created CONCURRENT at a time
  through the SDK and waited for (create, quota count, queue, run, events), per second.
* environments: ENVIRONMENTS environments created, given one ``true`` and deleted, per
  second (each create also counts the tenant's live environments for its quota).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import statistics
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from bench_common import serve_in_child

from sandbox_sdk import AsyncSandboxClient
from sandbox_sdk.server.database import Database
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
from sandbox_sdk.server.orchestrator.sandbox.environment_record import (
    Environment,
    EnvironmentSpec,
    EnvironmentState,
    Limits,
    NetworkPolicy,
    TerminationReason,
)
from sandbox_sdk.server.orchestrator.sandbox.store import EnvironmentStore
from sandbox_sdk.server.tenancy import DEFAULT_TENANT

HISTORY = 10_000
ROUNDS = 7
EXPERIMENTS = 150
CONCURRENT = 16  # under the default quota of 50 queued or running experiments
ENVIRONMENTS = 10
GOAL = 0.95


def _sample() -> SampleRecord:
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


async def _experiment_history(db_path: Path) -> None:
    """HISTORY finished experiments of the default tenant, each with its events and sample,
    written as the engine writes them (insert, RUNNING, output and sample, SUCCEEDED)."""
    store = ExperimentStore(Database(db_path))
    spec = ExperimentSpec(model="scripted", inputs=(InputSpec(prompt="ping", expected="pong"),))
    last = None
    for number in range(HISTORY):
        experiment_id = f"exp-o1-history{number:010d}"
        new = NewExperiment(
            id=experiment_id,
            tenant=DEFAULT_TENANT,
            environment_id=f"env-o1-history{number:010d}",
            spec=spec,
            model_name="scripted",
            total_samples=1,
            request_id=f"history-{number}",
            queue_order=number + 1,
            create_time=time.time() - HISTORY + number,
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
            sample=_sample(),
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


def _environment_history(db_path: Path) -> None:
    """HISTORY terminated environments of the default tenant, through the store."""
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
    for number in range(HISTORY):
        environment = Environment(
            id=f"env-o1-history{number:010d}",
            tenant=DEFAULT_TENANT,
            spec=spec,
            state=EnvironmentState.RUNNING,
            termination_reason=TerminationReason.UNSPECIFIED,
            termination_message="",
            isolation="history",
            orchestrator_id="o1",
            create_time=now - HISTORY + number,
            expire_time=now,
            last_activity_time=now,
            terminate_time=None,
            request_id=f"history-{number}",
        )
        store.insert(environment)
        store.update(
            environment,
            state=EnvironmentState.TERMINATED,
            termination_reason=TerminationReason.USER_DELETED,
            terminate_time=now,
        )
    database.close()


def _build_history(data_dir: Path) -> float:
    started = time.perf_counter()
    db_path = data_dir / "orchestrator" / "orchestrator.db"
    db_path.parent.mkdir(mode=0o700, parents=True)
    data_dir.chmod(0o700)
    asyncio.run(_experiment_history(db_path))
    _environment_history(db_path)
    return time.perf_counter() - started


async def _experiment_rate(client: AsyncSandboxClient, environment_id: str) -> float:
    sandbox = await client.get_environment(environment_id)
    gate = asyncio.Semaphore(CONCURRENT)

    async def one() -> None:
        async with gate:
            experiment = await sandbox.run_experiment(model="scripted", prompt="ping")
            await experiment.wait()

    started = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(EXPERIMENTS)))
    return EXPERIMENTS / (time.perf_counter() - started)


async def _environment_rate(client: AsyncSandboxClient) -> float:
    started = time.perf_counter()
    for _ in range(ENVIRONMENTS):
        sandbox = await client.create_environment()
        await sandbox.exec("true")
        await sandbox.delete()
    return ENVIRONMENTS / (time.perf_counter() - started)


def _start(data_dir: Path) -> tuple[Any, Connection, dict[str, str]]:
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    process = context.Process(target=serve_in_child, args=(str(data_dir), child), daemon=True)
    process.start()
    child.close()
    return process, parent, parent.recv()


async def _measure(servers: dict[str, dict[str, str]]) -> dict[str, dict[str, list[float]]]:
    rates: dict[str, dict[str, list[float]]] = {
        name: {"experiments": [], "environments": []} for name in servers
    }
    clients = {
        name: AsyncSandboxClient(endpoints["gateway"], api_key=endpoints["admin_key"])
        for name, endpoints in servers.items()
    }
    try:
        # One environment per server for the experiments, and one warm-up of each path.
        hosts = {}
        for name, client in clients.items():
            host = await client.create_environment()
            hosts[name] = host.id
            await _environment_rate(client)
            await (await host.run_experiment(model="scripted", prompt="ping")).wait()
        for round_number in range(ROUNDS):
            order = list(servers) if round_number % 2 == 0 else list(reversed(servers))
            for name in order:
                rates[name]["experiments"].append(
                    await _experiment_rate(clients[name], hosts[name])
                )
            for name in order:
                rates[name]["environments"].append(await _environment_rate(clients[name]))
    finally:
        for client in clients.values():
            await client.close()
    return rates


def run() -> list[dict[str, Any]]:
    """Experiment and environment throughput with HISTORY past ones, against fresh."""
    with tempfile.TemporaryDirectory() as scratch:
        fresh_dir, history_dir = Path(scratch) / "fresh", Path(scratch) / "history"
        build_seconds = _build_history(history_dir)
        started = [_start(fresh_dir), _start(history_dir)]
        try:
            servers = {"fresh": started[0][2], "history": started[1][2]}
            rates = asyncio.run(_measure(servers))
        finally:
            for process, conn, _ in started:
                conn.close()
                process.join(30)
    rows = []
    for kind, unit in (("experiments", "experiments/s"), ("environments", "environments/s")):
        fresh, history = rates["fresh"][kind], rates["history"][kind]
        ratios = [h / f for h, f in zip(history, fresh, strict=True)]
        rows.append(
            {
                "benchmark": "history",
                "metric": f"{kind} with {HISTORY:,} past experiments and environments"
                f" (history built in {build_seconds:.0f} s)",
                "value": statistics.median(history),
                "baseline": statistics.median(fresh),
                "ratio": statistics.median(ratios),
                "unit": unit,
                "goal": f">= {GOAL} of a fresh server",
            }
        )
    return rows


if __name__ == "__main__":
    for row in run():
        print(
            f"{row['benchmark']:<8} {row['metric']:<72} {row['value']:>8.1f} "
            f"baseline {row['baseline']:>8.1f} ratio {row['ratio']:.3f} {row['unit']}"
            f"  goal: {row['goal']}"
        )
