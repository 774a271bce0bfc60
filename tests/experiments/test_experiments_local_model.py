"""The real SmolLM2 model through the engine (llama.cpp, offline)."""

from __future__ import annotations

import pytest

from sandbox_sdk.server.orchestrator.experiments import ExperimentHandlers
from sandbox_sdk.server.orchestrator.experiments.records import ExperimentState

from .conftest import EngineFactory, TenantContext
from .exp_support import SubprocessSandbox, create_request, make_spec, wait_final

pytestmark = pytest.mark.model
FRANCE = "What is the capital of France?"


async def test_greedy_answer_names_paris(
    smollm2: object, make_engine: EngineFactory, sandbox: SubprocessSandbox
) -> None:
    engine = await make_engine()
    spec = make_spec([FRANCE], model="smollm2", temperature=0.0, max_tokens=32)
    created = await ExperimentHandlers(engine).CreateExperiment(
        create_request(sandbox.create(), spec), TenantContext()
    )

    record = await wait_final(engine, created.experiment.id)

    assert record.state is ExperimentState.SUCCEEDED
    sample = engine.store.samples(record.id)[0]
    assert "Paris" in sample.output
    assert sample.finish_reason == "stop"
    assert sample.prompt_tokens > 10
    assert 0 < sample.completion_tokens <= 32


async def test_the_product_example_repeats_exactly_with_a_seed(
    smollm2: object, make_engine: EngineFactory, sandbox: SubprocessSandbox
) -> None:
    """model="gpt-3", "Hello, world!", temperature 0.7: the same seed gives the same text."""
    engine = await make_engine()
    spec = make_spec(
        ["Hello, world!", "Hello, world!"], model="gpt-3", temperature=0.7, seed=1234, max_tokens=32
    )
    created = await ExperimentHandlers(engine).CreateExperiment(
        create_request(sandbox.create(), spec), TenantContext()
    )

    record = await wait_final(engine, created.experiment.id)

    assert record.state is ExperimentState.SUCCEEDED
    first, second = engine.store.samples(record.id)
    assert (first.seed, second.seed) == (1234, 1234)
    assert first.output
    assert first.output == second.output
