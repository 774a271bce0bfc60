"""Cost that does not grow with history: experiment and environment throughput through the
whole server (SDK, gateway with its per-tenant quotas, orchestrator) with HISTORY past
experiments and HISTORY past environments in its database, against a fresh server.

Both servers run at once, each in a child process; the history is written before the
server starts, through the stores' own write paths (not measured). Rounds alternate which
server goes first, and the reported ratio is the median of the per-round ratios (history
rate over fresh rate; goal >= 0.95), so both sides of each ratio see the same machine load,
with the 95% interval of that median.

* experiments: EXPERIMENTS scripted one-input experiments created CONCURRENT at a time
  through the SDK and waited for (create, quota count, queue, run, events), per second.
* environments: ENVIRONMENTS environments created, given one ``true`` and deleted, per
  second (each create also counts the tenant's live environments for its quota).
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
from pathlib import Path
from typing import Any

from bench_common import build_history, median_ratio, start_server, throughput_rounds

HISTORY = 10_000
ROUNDS = 20  # even: each server goes first in as many rounds as the other
EXPERIMENTS = 150
CONCURRENT = 16  # under the default quota of 50 queued or running experiments
ENVIRONMENTS = 10
GOAL = 0.95


def run() -> list[dict[str, Any]]:
    """Experiment and environment throughput with HISTORY past ones, against fresh."""
    with tempfile.TemporaryDirectory() as scratch:
        fresh_dir, history_dir = Path(scratch) / "fresh", Path(scratch) / "history"
        build_seconds = build_history(history_dir, HISTORY)
        started = [start_server(fresh_dir), start_server(history_dir)]
        try:
            servers = {"fresh": started[0][2], "history": started[1][2]}
            rates = asyncio.run(
                throughput_rounds(
                    servers,
                    rounds=ROUNDS,
                    experiments=EXPERIMENTS,
                    concurrent=CONCURRENT,
                    environments=ENVIRONMENTS,
                )
            )
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
                **median_ratio(ratios),
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
