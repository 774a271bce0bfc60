"""Experiment lifecycle through the whole stack: datasets, cancellation, retried creates."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from e2e_support import EmbeddedStack

from sandbox_sdk import (
    ExperimentFailedError,
    ExperimentState,
    OutputDelta,
    SandboxClient,
    StateChange,
)
from sandbox_sdk.api.v1 import experiment_pb2, gateway_service_pb2_grpc, requests_pb2

LONG_PROMPT = " ".join(f"word{i}" for i in range(200))
CONFIG = {
    "orchestrator": {
        "experiments": {
            "models": [
                {"name": "slow", "provider": "scripted", "options": {"chunk_delay_seconds": 0.05}},
                {"name": "echo", "provider": "scripted"},
            ]
        }
    }
}


@pytest.fixture
def slow_stack(start_stack: Callable[[dict[str, Any]], EmbeddedStack]) -> EmbeddedStack:
    return start_stack(CONFIG)


def _wait_for_output(experiment_events: Any) -> None:
    for event in experiment_events:
        if isinstance(event.payload, OutputDelta):
            return


def test_a_dataset_in_the_workspace_is_run_and_scored(client: SandboxClient) -> None:
    dataset = '{"prompt": "same", "expected": "same"}\n{"prompt": "echo", "expected": "other"}\n'
    with client.create_environment(files={"data/eval.jsonl": dataset}) as sandbox:
        results = sandbox.run_experiment(
            model="echo", dataset_path="data/eval.jsonl", scorers=["exact_match"], repeats=2
        ).get_results()
    assert [(s.input_index, s.repeat, s.output) for s in results.samples] == [
        (0, 0, "same"),
        (0, 1, "same"),
        (1, 0, "echo"),
        (1, 1, "echo"),
    ]
    assert [s.scores["exact_match"] for s in results.samples] == [1.0, 1.0, 0.0, 0.0]
    assert results.metrics["exact_match"].mean == 0.5
    assert results.metrics["exact_match"].count == 4


def test_cancelling_a_running_experiment_ends_its_stream_and_keeps_partial_output(
    slow_stack: EmbeddedStack,
) -> None:
    with slow_stack.client() as client, client.create_environment() as sandbox:
        experiment = sandbox.run_experiment(model="slow", prompt=LONG_PROMPT)
        with experiment.events(follow=True, timeout=60) as events:
            _wait_for_output(events)
            assert experiment.cancel().state is ExperimentState.CANCELLED
            rest = list(events)  # the follow stream ends at the final state
        final = rest[-1].payload
        assert isinstance(final, StateChange)
        assert final.state is ExperimentState.CANCELLED
        assert final.failure is not None
        assert final.failure.reason == "CANCELLED"
        with pytest.raises(ExperimentFailedError) as caught:
            experiment.get_results()
        assert caught.value.reason == "CANCELLED"
        partial = experiment.get_results(raise_on_failure=False)
        assert partial.experiment.state is ExperimentState.CANCELLED
        # Cancelling again changes nothing.
        assert experiment.cancel().state is ExperimentState.CANCELLED


def test_deleting_the_environment_stops_its_running_experiment(slow_stack: EmbeddedStack) -> None:
    with slow_stack.client() as client:
        sandbox = client.create_environment()
        experiment = sandbox.run_experiment(model="slow", prompt=LONG_PROMPT)
        with experiment.events(follow=True, timeout=60) as events:
            _wait_for_output(events)
            sandbox.delete()
            rest = list(events)
        final = rest[-1].payload
        assert isinstance(final, StateChange)
        assert final.state.is_final
        assert final.state is not ExperimentState.SUCCEEDED
        assert final.failure is not None
        assert final.failure.reason == "ENVIRONMENT_NOT_RUNNING"
        assert experiment.refresh().state is final.state


def test_a_retried_create_returns_the_first_resource(stack: EmbeddedStack) -> None:
    """What the SDK's retries rely on: the same request_id creates once, through the gateway."""
    metadata = (("authorization", f"Bearer {stack.admin_key}"),)
    with grpc.insecure_channel(stack.target) as channel, stack.client() as client:
        stub = gateway_service_pb2_grpc.GatewayServiceStub(channel)
        create_environment = requests_pb2.CreateEnvironmentRequest(request_id=str(uuid.uuid4()))
        first, again = (
            stub.CreateEnvironment(create_environment, metadata=metadata, timeout=30)
            for _ in range(2)
        )
        environment_id = first.environment.id
        try:
            assert again.environment.id == environment_id
            create_experiment = requests_pb2.CreateExperimentRequest(
                environment_id=environment_id,
                spec=experiment_pb2.ExperimentSpec(
                    model="echo", inputs=[experiment_pb2.ExperimentInput(prompt="once")]
                ),
                request_id=str(uuid.uuid4()),
            )
            ids = {
                stub.CreateExperiment(
                    create_experiment, metadata=metadata, timeout=30
                ).experiment.id
                for _ in range(2)
            }
            assert len(ids) == 1
            listed = client.list_experiments(environment_id=environment_id)
            assert [e.id for e in listed] == list(ids)
        finally:
            client.get_environment(environment_id).delete()
