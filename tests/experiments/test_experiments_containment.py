"""Misbehaving evaluation code, run by the real SandboxManager, is contained and recorded.

This uses the real sandbox layer (bubblewrap, cgroups, rlimits as detected
on the machine), not the subprocess double.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import sandbox_runtimes

from sandbox_sdk.api.v1 import requests_pb2
from sandbox_sdk.server.database import Database
from sandbox_sdk.server.orchestrator.experiments import (
    ExperimentEngine,
    ExperimentHandlers,
    ExperimentSettings,
)
from sandbox_sdk.server.orchestrator.experiments.records import ExperimentState

from .conftest import TenantContext
from .exp_support import create_request, eventually, make_spec, wait_final

try:
    from sandbox_sdk.server.orchestrator.sandbox.environment_record import (
        EnvironmentSpec,
        Limits,
        NetworkPolicy,
        NewEnvironment,
    )
    from sandbox_sdk.server.orchestrator.sandbox.manager import SandboxManager
    from sandbox_sdk.server.orchestrator.sandbox.settings import SandboxSettings
except ImportError as error:  # the sandbox layer is built by another engineer
    pytest.skip(f"the real SandboxManager is not importable: {error}", allow_module_level=True)

MiB = 1 << 20
CTX = TenantContext()


@pytest.fixture
async def real_sandbox(tmp_path: Path) -> AsyncIterator[tuple[Any, ExperimentEngine]]:
    db = Database(tmp_path / "orchestrator.db")
    manager = SandboxManager(
        db,
        SandboxSettings(
            reaper_interval_seconds=0.1,
            monitor_interval_seconds=0.2,
            default_runtime=sandbox_runtimes.current(),
        ),
        "t1",
        tmp_path / "workspaces",
    )
    await manager.start()
    engine = ExperimentEngine(db, ExperimentSettings(), manager.port, "t1")
    await engine.start()
    yield manager, engine
    await engine.stop()
    await manager.stop()
    db.close()


async def _environment(manager: Any) -> str:
    spec = EnvironmentSpec(
        limits=Limits(1.0, 128 * MiB, 16 * MiB, 64, 30.0),
        env_vars={},
        labels={},
        ttl_seconds=600.0,
        idle_timeout_seconds=600.0,
        network=NetworkPolicy.NONE,
    )
    environment = await manager.create_environment("default", NewEnvironment(spec))
    return str(environment.id)


def _exists(manager: Any, environment_id: str, path: str) -> bool:
    try:
        manager.port.read_file(environment_id, path)
    except Exception:
        return False
    return True


@pytest.mark.isolation
async def test_misbehaving_scorers_are_contained(
    real_sandbox: tuple[Any, ExperimentEngine],
) -> None:
    manager, engine = real_sandbox
    handlers = ExperimentHandlers(engine)
    environment = await _environment(manager)
    spec = make_spec(["hello"], expected=["hello"])
    scorers = {
        "good": ["sh", "-c", 'test "$(cat)" = "$EXPECTED" && echo 1 || echo 0'],
        "spin": ["sh", "-c", "while :; do :; done"],
        "flood": ["sh", "-c", "cat >/dev/null; yes 0.5"],
        "crash": ["python3", "-c", "import ctypes; ctypes.string_at(0)"],
        "memory": ["python3", "-c", "x = bytearray(1 << 30); print(1)"],
    }
    for name, argv in scorers.items():
        command = spec.scorers.add(name=name).command
        command.argv.extend(argv)
        command.timeout.FromMilliseconds(1500)
    created = await handlers.CreateExperiment(create_request(environment, spec), CTX)

    record = await wait_final(engine, created.experiment.id)

    assert record.state is ExperimentState.SUCCEEDED
    results = await handlers.GetExperimentResults(
        requests_pb2.GetExperimentResultsRequest(experiment_id=record.id), CTX
    )
    sample = results.samples[0]
    assert dict(sample.scores) == {"good": 1.0}
    errors = dict(sample.score_errors)
    assert set(errors) == {"spin", "flood", "crash", "memory"}
    assert "timed out" in errors["spin"]
    assert "4096 bytes" in errors["flood"] or "timed out" in errors["flood"]
    assert "ended abnormally (signaled)" in errors["crash"]
    # The orchestrator is unharmed: the next experiment in the environment runs.
    again = await handlers.CreateExperiment(create_request(environment, make_spec(["ok"])), CTX)
    assert (await wait_final(engine, again.experiment.id)).state is ExperimentState.SUCCEEDED


@pytest.mark.isolation
async def test_deleting_the_environment_cancels_its_running_experiment(
    real_sandbox: tuple[Any, ExperimentEngine],
) -> None:
    manager, engine = real_sandbox
    handlers = ExperimentHandlers(engine)
    environment = await _environment(manager)
    spec = make_spec(["x"])
    command = spec.scorers.add(name="sleepy").command
    command.argv.extend(["sh", "-c", "touch started; exec sleep 60"])
    command.timeout.FromSeconds(120)
    created = await handlers.CreateExperiment(create_request(environment, spec), CTX)
    await eventually(lambda: _exists(manager, environment, "started"))

    await manager.delete_environment("default", environment)
    record = await wait_final(engine, created.experiment.id)

    assert record.state is ExperimentState.CANCELLED
    assert record.failure is not None
    assert record.failure.reason == "ENVIRONMENT_NOT_RUNNING"
