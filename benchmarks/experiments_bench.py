"""Scheduling overhead: scripted experiments per second end to end through the engine
(create, queue, run, record, SUCCEEDED) against calling the scripted provider directly,
and samples per second of one big experiment.

The experiments are submitted concurrently, as a fleet of clients would: a
create answers only once the experiment is durable, so one client creating
them one after another measures the commit latency, not the engine's rate.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from sandbox_sdk.api.v1 import experiment_pb2, requests_pb2
from sandbox_sdk.server.database import Database
from sandbox_sdk.server.orchestrator.experiments import ExperimentEngine, ExperimentSettings
from sandbox_sdk.server.orchestrator.experiments.providers.base import (
    ChatMessage,
    GenerationRequest,
)
from sandbox_sdk.server.orchestrator.experiments.providers.scripted import ScriptedProvider
from sandbox_sdk.server.orchestrator.experiments.settings import default_models
from sandbox_sdk.server.orchestrator.experiments.validation import validate_create
from sandbox_sdk.server.orchestrator.ports import CommandResult, UsageSample

EXPERIMENTS = 1000
BIG_INPUTS = 10_000
# samples/s of this same 10,000-input experiment with the code before the writer thread
# (commit 728d048), measured on this machine on 2026-11-30 interleaved with the new code:
# 800, 734, 883 (the new code measured 1068, 978, 877 in between).
BIG_BEFORE = 805.0
PROMPT = "The quick brown fox jumps over the lazy dog"
ENVIRONMENT = "env-b1-0123456789abcdef"


class _IdleSandbox:
    """A SandboxPort with one always-running environment and no commands: the benchmark
    measures the engine, not the sandbox."""

    def require_running(self, tenant: str, environment_id: str) -> None:
        """Every environment is running."""

    async def run_command(
        self,
        environment_id: str,
        argv: Sequence[str],
        *,
        stdin: bytes = b"",
        timeout: float = 10.0,
        env_vars: Mapping[str, str] | None = None,
        output_limit_bytes: int = 1 << 20,
    ) -> CommandResult:
        raise NotImplementedError("the benchmark uses no command scorers")

    def read_file(self, environment_id: str, path: str) -> bytes:
        raise NotImplementedError("the benchmark uses inline inputs")

    def usage(self, environment_id: str) -> UsageSample:
        return UsageSample(0.0, 0.0, 0, 0, 0, 0)

    def touch(self, environment_id: str) -> None:
        """Nothing expires."""

    def on_terminated(self, callback: Callable[[str], None]) -> None:
        """Environments never end."""


async def _engine_rate() -> float:
    with tempfile.TemporaryDirectory() as directory:
        db = Database(Path(directory) / "bench.db")
        settings = ExperimentSettings()
        engine = ExperimentEngine(db, settings, _IdleSandbox(), "b1")
        await engine.start()
        spec = experiment_pb2.ExperimentSpec(
            model="scripted", inputs=[experiment_pb2.ExperimentInput(prompt=PROMPT)]
        )
        spec.scorers.add().exact_match.SetInParent()
        request = requests_pb2.CreateExperimentRequest(environment_id=ENVIRONMENT, spec=spec)
        started = time.perf_counter()
        validated = validate_create(request, engine.models, settings.scheduler)
        created = await asyncio.gather(
            *(engine.create("bench", validated) for _ in range(EXPERIMENTS))
        )
        ids = [record.id for record in created]
        for experiment_id in ids:
            async for _ in engine.stream("bench", experiment_id, 0, follow=True):
                pass
        elapsed = time.perf_counter() - started
        await engine.stop()
        db.close()
    return EXPERIMENTS / elapsed


async def _big_experiment_rate() -> float:
    """Samples per second of one BIG_INPUTS-input experiment, from create to SUCCEEDED."""
    with tempfile.TemporaryDirectory() as directory:
        db = Database(Path(directory) / "bench.db")
        settings = ExperimentSettings()
        engine = ExperimentEngine(db, settings, _IdleSandbox(), "b1")
        await engine.start()
        spec = experiment_pb2.ExperimentSpec(model="scripted")
        for index in range(BIG_INPUTS):
            spec.inputs.add(prompt=f"{PROMPT} {index}", expected=PROMPT)
        spec.scorers.add().exact_match.SetInParent()
        request = requests_pb2.CreateExperimentRequest(environment_id=ENVIRONMENT, spec=spec)
        started = time.perf_counter()
        record = await engine.create(
            "bench", validate_create(request, engine.models, settings.scheduler)
        )
        async for _ in engine.stream("bench", record.id, 0, follow=True):
            pass
        elapsed = time.perf_counter() - started
        await engine.stop()
        db.close()
    return BIG_INPUTS / elapsed


async def _direct_rate() -> float:
    provider = ScriptedProvider(default_models()[1])
    request = GenerationRequest(messages=(ChatMessage("user", PROMPT),))
    started = time.perf_counter()
    for _ in range(EXPERIMENTS):
        async for _item in provider.generate(request):
            pass
    return EXPERIMENTS / (time.perf_counter() - started)


def run() -> list[dict[str, object]]:
    """Experiments per second through the engine, against the bare provider loop."""
    engine_rate = asyncio.run(_engine_rate())
    direct_rate = asyncio.run(_direct_rate())
    big_rate = asyncio.run(_big_experiment_rate())
    return [
        {
            "benchmark": "experiments",
            "metric": "scripted experiments end to end",
            "value": engine_rate,
            "baseline": direct_rate,
            "ratio": engine_rate / direct_rate,
            "unit": "experiments/s",
            "goal": ">= 200 experiments/s through the engine",
        },
        {
            "benchmark": "experiments",
            "metric": f"samples of one {BIG_INPUTS:,}-input scripted experiment",
            "value": big_rate,
            "baseline": BIG_BEFORE,
            "ratio": big_rate / BIG_BEFORE,
            "unit": "samples/s",
            "goal": ">= the rate before the writer thread",
        },
    ]


if __name__ == "__main__":
    for row in run():
        print(
            f"{row['benchmark']:<12} {row['metric']:<34} {row['value']:>10.1f} "
            f"baseline {row['baseline']:>10.1f} ratio {row['ratio']:.4f} {row['unit']}"
            f"  goal: {row['goal']}"
        )
