"""A child process running an ExperimentEngine on a database file, for the kill -9 test.

Usage: python exp_child_engine.py DB_PATH WORKSPACE_ROOT ENVIRONMENT_ID

It starts three experiments of tenant "default" in the environment (one
streaming slowly, one stuck before its first token, one queued behind them),
prints their ids as one JSON line and runs until it is killed.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from exp_support import (
    SubprocessSandbox,
    create_request,
    make_spec,
    scripted_model,
)

from sandbox_sdk.server.database import Database
from sandbox_sdk.server.orchestrator.experiments import (
    ExperimentEngine,
    ExperimentSettings,
)
from sandbox_sdk.server.orchestrator.experiments.settings import SchedulerSettings
from sandbox_sdk.server.orchestrator.experiments.validation import validate_create

STUCK_PROMPT = "stuck before the first token"


async def main(db_path: str, root: str, environment_id: str) -> None:
    sandbox = SubprocessSandbox(Path(root))
    sandbox.adopt(environment_id, "default")
    settings = ExperimentSettings(
        models=[
            scripted_model(
                chunk_delay_seconds=0.05,
                faults=[{"kind": "latency", "seconds": 600, "prompt": STUCK_PROMPT}],
            )
        ],
        scheduler=SchedulerSettings(max_concurrent=2),
    )
    engine = ExperimentEngine(Database(db_path), settings, sandbox, "t1")
    await engine.start()
    ids = []
    for prompt in (" ".join(["streaming"] * 400), STUCK_PROMPT, "queued behind the others"):
        request = create_request(environment_id, make_spec([prompt], model="scripted"))
        validated = validate_create(request, engine.models, settings.scheduler)
        ids.append((await engine.create("default", validated)).id)
    print(json.dumps(ids), flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
