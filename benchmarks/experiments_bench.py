"""Scheduling overhead: scripted experiments per second end to end through the engine
(create, queue, run, record, SUCCEEDED) against calling the scripted provider directly."""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from sandbox.v1 import experiment_pb2, requests_pb2
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
        ids = [
            (
                await engine.create(
                    "bench", validate_create(request, engine.models, settings.scheduler)
                )
            ).id
            for _ in range(EXPERIMENTS)
        ]
        for experiment_id in ids:
            async for _ in engine.stream("bench", experiment_id, 0, follow=True):
                pass
        elapsed = time.perf_counter() - started
        await engine.stop()
        db.close()
    return EXPERIMENTS / elapsed


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
    return [
        {
            "benchmark": "experiments",
            "metric": "scripted experiments end to end",
            "value": engine_rate,
            "baseline": direct_rate,
            "ratio": engine_rate / direct_rate,
            "unit": "experiments/s",
            "goal": ">= 200 experiments/s through the engine",
        }
    ]


if __name__ == "__main__":
    for row in run():
        print(
            f"{row['benchmark']:<12} {row['metric']:<34} {row['value']:>10.1f} "
            f"baseline {row['baseline']:>10.1f} ratio {row['ratio']:.4f} {row['unit']}"
            f"  goal: {row['goal']}"
        )
