"""The experiment RPCs through a real grpc.aio server with the ErrorInterceptor."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from google.protobuf import struct_pb2

from sandbox_sdk.api.v1 import orchestrator_service_pb2_grpc, requests_pb2
from sandbox_sdk.errors import InvalidArgumentError, NotFoundError, from_rpc_error
from sandbox_sdk.server.orchestrator.experiments import ExperimentHandlers, ExperimentSettings

from .conftest import EngineFactory
from .exp_support import (
    SubprocessSandbox,
    create_request,
    make_spec,
    scripted_model,
    serve_experiments,
)

TENANT_A = (("x-sandbox-tenant", "tenant-a"),)
TENANT_B = (("x-sandbox-tenant", "tenant-b"),)


@pytest.fixture
async def stub(
    make_engine: EngineFactory,
) -> AsyncIterator[orchestrator_service_pb2_grpc.OrchestratorServiceStub]:
    settings = ExperimentSettings(
        models=[*ExperimentSettings().models, scripted_model("slow", chunk_delay_seconds=0.01)]
    )
    engine = await make_engine(settings)
    server, address = await serve_experiments(ExperimentHandlers(engine))
    channel = grpc.aio.insecure_channel(address)
    yield orchestrator_service_pb2_grpc.OrchestratorServiceStub(channel)
    await channel.close()
    await server.stop(None)


async def _error_of(call: object) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        await call  # type: ignore[misc]
    return caught.value


async def test_bad_parameters_name_their_fields(
    stub: orchestrator_service_pb2_grpc.OrchestratorServiceStub, sandbox: SubprocessSandbox
) -> None:
    environment = sandbox.create("tenant-a")
    spec = make_spec(model="gpt-3", temperature=2.5, top_p=1.5, max_tokens=5000, stop=["x"] * 5)
    spec.parameters.extra["foo"].CopyFrom(struct_pb2.Value(number_value=1))
    spec.parameters.extra["top_k"].CopyFrom(struct_pb2.Value(number_value=2.5))
    spec.scorers.add().regex.pattern = "("

    error = from_rpc_error(
        await _error_of(stub.CreateExperiment(create_request(environment, spec), metadata=TENANT_A))
    )

    assert isinstance(error, InvalidArgumentError)
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    fields = {v.field: v.description for v in error.field_violations}
    assert set(fields) == {
        "spec.parameters.temperature",
        "spec.parameters.top_p",
        "spec.parameters.max_tokens",
        "spec.parameters.stop",
        "spec.parameters.extra.foo",
        "spec.parameters.extra.top_k",
        "spec.scorers[0].regex.pattern",
    }
    assert "repeat_penalty" in fields["spec.parameters.extra.foo"]
    assert "2047" in fields["spec.parameters.max_tokens"]


async def test_unknown_model_is_not_found_and_lists_the_models(
    stub: orchestrator_service_pb2_grpc.OrchestratorServiceStub, sandbox: SubprocessSandbox
) -> None:
    environment = sandbox.create("tenant-a")
    request = create_request(environment, make_spec(model="gpt-9"))

    error = from_rpc_error(await _error_of(stub.CreateExperiment(request, metadata=TENANT_A)))

    assert isinstance(error, NotFoundError)
    assert error.reason == "MODEL_NOT_FOUND"
    assert "smollm2 (aliases: local, gpt-3)" in error.message
    assert "scripted" in error.message


async def test_scripted_provider_rejects_every_extra_key(
    stub: orchestrator_service_pb2_grpc.OrchestratorServiceStub, sandbox: SubprocessSandbox
) -> None:
    spec = make_spec(model="echo")
    spec.parameters.extra["repeat_penalty"].CopyFrom(struct_pb2.Value(number_value=1.1))
    request = create_request(sandbox.create("tenant-a"), spec)

    error = from_rpc_error(await _error_of(stub.CreateExperiment(request, metadata=TENANT_A)))

    assert [v.field for v in error.field_violations] == ["spec.parameters.extra.repeat_penalty"]


async def test_other_tenants_see_not_found(
    stub: orchestrator_service_pb2_grpc.OrchestratorServiceStub, sandbox: SubprocessSandbox
) -> None:
    environment = sandbox.create("tenant-a")
    created = await stub.CreateExperiment(
        create_request(environment, make_spec()), metadata=TENANT_A
    )
    experiment_id = created.experiment.id

    for call in (
        stub.GetExperiment(
            requests_pb2.GetExperimentRequest(experiment_id=experiment_id), metadata=TENANT_B
        ),
        stub.CancelExperiment(
            requests_pb2.CancelExperimentRequest(experiment_id=experiment_id), metadata=TENANT_B
        ),
        stub.GetExperimentResults(
            requests_pb2.GetExperimentResultsRequest(experiment_id=experiment_id),
            metadata=TENANT_B,
        ),
    ):
        error = from_rpc_error(await _error_of(call))
        assert isinstance(error, NotFoundError)
        assert error.reason == "EXPERIMENT_NOT_FOUND"
    stream = stub.StreamExperimentEvents(
        requests_pb2.StreamExperimentEventsRequest(experiment_id=experiment_id), metadata=TENANT_B
    )
    with pytest.raises(grpc.RpcError) as caught:
        async for _ in stream:
            pass
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    # Environments of another tenant are not found either.
    error = from_rpc_error(
        await _error_of(
            stub.CreateExperiment(create_request(environment, make_spec()), metadata=TENANT_B)
        )
    )
    assert error.reason == "ENVIRONMENT_NOT_FOUND"


async def test_a_disconnected_stream_resumes_without_gaps_or_duplicates(
    stub: orchestrator_service_pb2_grpc.OrchestratorServiceStub, sandbox: SubprocessSandbox
) -> None:
    environment = sandbox.create("tenant-a")
    words = " ".join(f"word{i}" for i in range(40))
    created = await stub.CreateExperiment(
        create_request(environment, make_spec([words], model="slow", repeats=2)),
        metadata=TENANT_A,
    )
    experiment_id = created.experiment.id
    received: list[requests_pb2.StreamExperimentEventsResponse] = []

    first = stub.StreamExperimentEvents(
        requests_pb2.StreamExperimentEventsRequest(experiment_id=experiment_id, follow=True),
        metadata=TENANT_A,
    )
    async for response in first:
        received.append(response)
        if len(received) == 10:
            first.cancel()  # the client goes away mid-run
            break
    resumed = stub.StreamExperimentEvents(
        requests_pb2.StreamExperimentEventsRequest(
            experiment_id=experiment_id, after_sequence=received[-1].event.sequence, follow=True
        ),
        metadata=TENANT_A,
    )
    received += [response async for response in resumed]

    sequences = [r.event.sequence for r in received]
    assert sequences == list(range(1, len(sequences) + 1))
    last = received[-1].event
    assert last.WhichOneof("payload") == "state_change"
    assert last.state_change.state == 3  # SUCCEEDED ends a followed stream
    text = "".join(
        r.event.output.text for r in received if r.event.WhichOneof("payload") == "output"
    )
    assert text == words + words
    final = await stub.GetExperiment(
        requests_pb2.GetExperimentRequest(experiment_id=experiment_id), metadata=TENANT_A
    )
    assert final.experiment.last_sequence == last.sequence
