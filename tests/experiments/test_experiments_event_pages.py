"""StreamExperimentEvents across pages: each page's messages are made on a reader thread
and the next page is read once one is sent, without gaps, duplicates or leftovers."""

from __future__ import annotations

import pytest

from sandbox_sdk.api.v1 import requests_pb2
from sandbox_sdk.server.orchestrator.experiments import ExperimentHandlers, events
from sandbox_sdk.server.response_page import each_response
from sandbox_sdk.server.status import ServiceError

from .conftest import EngineFactory, TenantContext
from .exp_support import SubprocessSandbox, create_request, make_spec, wait_final

CTX = TenantContext()
# Small pages, so that a short experiment spans many of them.
FIRST_PAGE = 3
PAGE = 7


@pytest.fixture(autouse=True)
def _small_pages(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(events, "FIRST_PAGE_SIZE", FIRST_PAGE)
    monkeypatch.setattr(events, "STREAM_PAGE_SIZE", PAGE)


async def _sequences(
    handlers: ExperimentHandlers, experiment_id: str, after: int = 0, *, follow: bool
) -> list[requests_pb2.StreamExperimentEventsResponse]:
    request = requests_pb2.StreamExperimentEventsRequest(
        experiment_id=experiment_id, after_sequence=after, follow=follow
    )
    return [
        requests_pb2.StreamExperimentEventsResponse.FromString(response)
        async for response in each_response(handlers.StreamExperimentEvents(request, CTX))
    ]


async def _experiment(handlers: ExperimentHandlers, sandbox: SubprocessSandbox) -> str:
    spec = make_spec([f"prompt {index}" for index in range(12)])
    created = await handlers.CreateExperiment(create_request(sandbox.create(), spec), CTX)
    return created.experiment.id


async def test_a_finished_experiment_streams_every_page_in_order(
    make_engine: EngineFactory, sandbox: SubprocessSandbox
) -> None:
    engine = await make_engine()
    handlers = ExperimentHandlers(engine)
    experiment_id = await _experiment(handlers, sandbox)
    record = await wait_final(engine, experiment_id)
    assert record.last_sequence > 3 * PAGE

    streamed = await _sequences(handlers, experiment_id, follow=False)

    assert [r.event.sequence for r in streamed] == list(range(1, record.last_sequence + 1))
    assert {r.event.experiment_id for r in streamed} == {experiment_id}
    assert streamed[-1].event.state_change.state == 3  # SUCCEEDED


async def test_a_followed_stream_spans_pages_while_the_experiment_runs(
    make_engine: EngineFactory, sandbox: SubprocessSandbox
) -> None:
    engine = await make_engine()
    handlers = ExperimentHandlers(engine)
    experiment_id = await _experiment(handlers, sandbox)

    streamed = await _sequences(handlers, experiment_id, follow=True)

    record = await engine.get("default", experiment_id)
    assert [r.event.sequence for r in streamed] == list(range(1, record.last_sequence + 1))
    assert streamed[-1].event.WhichOneof("payload") == "state_change"


@pytest.mark.parametrize("after", [1, FIRST_PAGE, FIRST_PAGE + PAGE, 2 * PAGE + 1])
async def test_a_resumed_stream_starts_right_after_its_sequence_at_any_page_edge(
    make_engine: EngineFactory, sandbox: SubprocessSandbox, after: int
) -> None:
    engine = await make_engine()
    handlers = ExperimentHandlers(engine)
    experiment_id = await _experiment(handlers, sandbox)
    record = await wait_final(engine, experiment_id)

    streamed = await _sequences(handlers, experiment_id, after, follow=True)

    assert [r.event.sequence for r in streamed] == list(range(after + 1, record.last_sequence + 1))


async def test_a_stream_stopped_mid_page_leaves_no_waiter(
    make_engine: EngineFactory, sandbox: SubprocessSandbox
) -> None:
    engine = await make_engine()
    handlers = ExperimentHandlers(engine)
    experiment_id = await _experiment(handlers, sandbox)
    await wait_final(engine, experiment_id)
    request = requests_pb2.StreamExperimentEventsRequest(experiment_id=experiment_id)
    stream = handlers.StreamExperimentEvents(request, CTX)

    pages = [await anext(stream) for _ in range(2)]  # paused after the second page
    await stream.aclose()

    sequences = [
        [requests_pb2.StreamExperimentEventsResponse.FromString(r).event.sequence for r in page]
        for page in pages
    ]
    assert sequences[0] == list(range(1, FIRST_PAGE + 1))
    assert sequences[1][0] == FIRST_PAGE + 1
    assert experiment_id not in engine.events._waiters


async def test_another_tenants_experiment_is_not_found_before_any_read(
    make_engine: EngineFactory, sandbox: SubprocessSandbox
) -> None:
    engine = await make_engine()
    handlers = ExperimentHandlers(engine)
    experiment_id = await _experiment(handlers, sandbox)
    request = requests_pb2.StreamExperimentEventsRequest(experiment_id=experiment_id)

    with pytest.raises(ServiceError) as caught:
        await anext(handlers.StreamExperimentEvents(request, TenantContext("intruder")))

    assert caught.value.reason == "EXPERIMENT_NOT_FOUND"
    await wait_final(engine, experiment_id)
