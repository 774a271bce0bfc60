"""The real SmolLM2 model through SDK, gateway, orchestrator and scheduler."""

from __future__ import annotations

import pytest

from sandbox_sdk import ExperimentState, OutputDelta, SandboxClient

pytestmark = pytest.mark.model

QUESTION = "What is the capital of France?"


def test_greedy_decoding_knows_the_capital_of_france(client: SandboxClient) -> None:
    with client.create_environment() as sandbox:
        experiment = sandbox.run_experiment(
            model="smollm2",
            prompt=QUESTION,
            parameters={"temperature": 0, "max_tokens": 24},
            labels={"suite": "e2e"},
        )
        with experiment.events(follow=True) as events:
            streamed = "".join(
                event.payload.text for event in events if isinstance(event.payload, OutputDelta)
            )
        results = experiment.get_results()

    [sample] = results.samples
    assert "Paris" in sample.output
    assert streamed == sample.output, "the streamed tokens and the stored output differ"
    assert sample.finish_reason in {"stop", "length"}
    assert 0 < sample.usage.completion_tokens <= 24
    assert results.experiment.state is ExperimentState.SUCCEEDED
    assert results.experiment.labels == {"suite": "e2e"}


def test_greedy_decoding_scores_against_the_expected_answer(client: SandboxClient) -> None:
    with client.create_environment() as sandbox:
        results = sandbox.run_experiment(
            model="local",
            inputs=[{"prompt": QUESTION, "expected": "paris"}],
            parameters={"temperature": 0, "max_tokens": 24},
            scorers=[{"contains": {"ignore_case": True}}],
        ).get_results()
    assert results.samples[0].scores == {"contains": 1.0}
    assert results.metrics["contains"].mean == 1.0


def test_a_fixed_seed_reproduces_sampled_text(client: SandboxClient) -> None:
    parameters = {"temperature": 0.7, "seed": 1234, "max_tokens": 24}
    with client.create_environment() as sandbox:
        first, second = (
            sandbox.run_experiment(model="smollm2", prompt=QUESTION, parameters=parameters)
            .get_results()
            .samples[0]
            for _ in range(2)
        )
    assert first.output.strip()
    assert first.output == second.output
    assert first.seed == second.seed == 1234
    assert first.usage == second.usage
