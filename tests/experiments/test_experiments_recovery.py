"""Restart recovery after the orchestrator process is killed with SIGKILL mid-run."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path

from sandbox_sdk.server.database import Database
from sandbox_sdk.server.orchestrator.experiments import ExperimentSettings
from sandbox_sdk.server.orchestrator.experiments.records import (
    ExperimentState,
    OutputEvent,
    StateEvent,
    StoredEvent,
)
from sandbox_sdk.server.orchestrator.experiments.store import ExperimentStore

from .conftest import EngineFactory
from .exp_support import SubprocessSandbox, eventually, scripted_model, wait_final

CHILD = Path(__file__).with_name("exp_child_engine.py")


def _states(events: list[StoredEvent]) -> list[ExperimentState]:
    return [e.payload.state for e in events if isinstance(e.payload, StateEvent)]


async def test_kill_9_mid_run_then_restart(
    make_engine: EngineFactory, sandbox: SubprocessSandbox, tmp_path: Path
) -> None:
    db_path = tmp_path / "orchestrator.db"
    environment = sandbox.create()
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        str(CHILD),
        str(db_path),
        str(sandbox.root),
        environment,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert child.stdout is not None
        streaming, stuck, queued = json.loads(await child.stdout.readline())
        observer = ExperimentStore(Database(db_path))

        def streamed_some_output() -> bool:
            events = observer.events_after(streaming, 0, 10_000)
            return sum(isinstance(e.payload, OutputEvent) for e in events) >= 5

        await eventually(streamed_some_output)
        child.send_signal(signal.SIGKILL)
        await child.wait()
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()
    before = {i: observer.events_after(i, 0, 10_000) for i in (streaming, stuck, queued)}
    assert observer.get(streaming).state is ExperimentState.RUNNING  # type: ignore[union-attr]
    assert observer.get(stuck).state is ExperimentState.RUNNING  # type: ignore[union-attr]
    assert observer.get(queued).state is ExperimentState.QUEUED  # type: ignore[union-attr]

    engine = await make_engine(ExperimentSettings(models=[scripted_model()]), db_path=db_path)
    records = {i: await wait_final(engine, i) for i in (streaming, stuck, queued)}

    failed = records[streaming]
    assert failed.state is ExperimentState.FAILED
    assert failed.failure is not None
    assert failed.failure.reason == "ORCHESTRATOR_RESTARTED"
    assert records[stuck].state is ExperimentState.SUCCEEDED
    assert records[queued].state is ExperimentState.SUCCEEDED
    for experiment_id, old_events in before.items():
        events = engine.store.events_after(experiment_id, 0, 10_000)
        assert [e.sequence for e in events] == list(range(1, len(events) + 1))
        assert events[: len(old_events)] == old_events
        assert records[experiment_id].last_sequence == events[-1].sequence
    assert _states(engine.store.events_after(stuck, 0, 10_000)) == [
        ExperimentState.QUEUED,
        ExperimentState.RUNNING,
        ExperimentState.QUEUED,
        ExperimentState.RUNNING,
        ExperimentState.SUCCEEDED,
    ]
    assert _states(engine.store.events_after(streaming, 0, 10_000))[-1] is ExperimentState.FAILED
