"""Event streams resume after a broken connection or a server restart, yielding every
event exactly once and in order; closing a stream cancels the call."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime

import pytest
from sdk_drivers import DRIVERS, Driver
from sdk_fake_gateway import API_KEY, FakeGateway, FakeServer

from sandbox_sdk import RetryPolicy, SandboxClient, UnavailableError
from sandbox_sdk.api.v1 import experiment_pb2
from sandbox_sdk.models import (
    ExperimentEvent,
    ExperimentFailure,
    ExperimentState,
    LogLevel,
    LogLine,
    MetricSample,
    OutputDelta,
    StateChange,
)

REAL_TIME = RetryPolicy(max_attempts=5, initial_backoff=0.05, max_backoff=0.5, deadline=20.0)


def _log(gateway: FakeGateway, experiment_id: str, text: str) -> None:
    gateway.emit(experiment_id, log=experiment_pb2.LogLine(level=2, message=text))


def _pending_experiment(gateway: FakeGateway, driver: Driver, logs: int) -> str:
    gateway.auto_complete = False
    environment_id = driver.create_environment().id
    experiment_id = driver.run_experiment(environment_id, model="gpt-3", prompt="hi").id
    for index in range(logs):
        _log(gateway, experiment_id, f"line {index}")
    return experiment_id


def _wait_until(predicate: object, seconds: float = 10.0) -> None:
    ends = time.monotonic() + seconds
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > ends:
            raise AssertionError("condition not reached")
        time.sleep(0.02)


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_stream_resumes_after_server_restart_on_the_same_port(
    gateway: FakeGateway, kind: str
) -> None:
    server = FakeServer(gateway).start()
    driver = DRIVERS[kind](server.target, api_key=API_KEY, retry=REAL_TIME)
    try:
        experiment_id = _pending_experiment(gateway, driver, logs=5)
        seen: list[int] = []
        restarted = threading.Event()

        def restart_later() -> None:
            server.stop()
            time.sleep(0.3)  # the client reconnects against a closed port meanwhile
            server.start()
            for index in range(5, 10):
                _log(gateway, experiment_id, f"line {index}")
            gateway.finish(experiment_id)
            restarted.set()

        def collect() -> None:
            if kind == "sync":
                client: SandboxClient = driver.client  # type: ignore[assignment]
                with client.get_experiment(experiment_id).events() as stream:
                    for event in stream:
                        seen.append(event.sequence)
                        if event.sequence == 6:  # QUEUED, then 5 logs: all sent before the restart
                            threading.Thread(target=restart_later).start()
            else:

                async def consume() -> None:
                    experiment = await driver.client.get_experiment(experiment_id)  # type: ignore[union-attr]
                    async with experiment.events() as stream:
                        async for event in stream:
                            seen.append(event.sequence)
                            if event.sequence == 6:
                                threading.Thread(target=restart_later).start()

                driver.run(consume())  # type: ignore[union-attr]

        collect()
        assert restarted.is_set()
        # 1 QUEUED state change + 5 logs before, 5 logs + 1 final state after the restart.
        assert seen == list(range(1, 13))
    finally:
        driver.close()
        server.stop()


def test_broken_stream_resumes_from_the_last_sequence(gateway: FakeGateway, driver: Driver) -> None:
    experiment_id = _pending_experiment(gateway, driver, logs=6)
    gateway.finish(experiment_id)
    gateway.break_stream_after = 3
    events = driver.events(experiment_id)
    assert [e.sequence for e in events] == list(range(1, 9))
    requests = gateway.calls("StreamExperimentEvents")
    assert [seen.request.after_sequence for seen in requests] == [0, 3]
    assert isinstance(events[1].payload, LogLine)
    assert isinstance(events[-1].payload, StateChange)
    assert events[-1].payload.state.is_final


def test_stream_gives_up_after_the_policy_deadline(
    gateway: FakeGateway, server: FakeServer
) -> None:
    driver = DRIVERS["sync"](server.target, api_key=API_KEY, retry=REAL_TIME)
    try:
        experiment_id = _pending_experiment(gateway, driver, logs=1)
        client: SandboxClient = driver.client  # type: ignore[assignment]
        stream = client.get_experiment(experiment_id).events(
            retry=RetryPolicy(initial_backoff=0.05, max_backoff=0.1, deadline=0.5)
        )
        assert next(stream).sequence == 1
        server.stop()
        with pytest.raises(UnavailableError, match="sandbox-sdk serve"):
            for _ in stream:
                pass
    finally:
        driver.close()


def test_closing_a_stream_cancels_the_call(gateway: FakeGateway, client: SandboxClient) -> None:
    gateway.auto_complete = False
    sandbox = client.create_environment()
    experiment = sandbox.run_experiment(model="gpt-3", prompt="hi")
    stream = experiment.events()
    assert next(stream).sequence == 1
    _wait_until(lambda: gateway.active_streams == 1)
    stream.close()
    with pytest.raises(StopIteration):
        next(stream)
    _wait_until(lambda: gateway.active_streams == 0)


def test_dropping_a_stream_cancels_the_call(gateway: FakeGateway, client: SandboxClient) -> None:
    gateway.auto_complete = False
    sandbox = client.create_environment()
    experiment = sandbox.run_experiment(model="gpt-3", prompt="hi")
    logs = experiment.stream_logs()
    _log(gateway, experiment.id, "first")
    assert next(logs).message == "first"
    _wait_until(lambda: gateway.active_streams == 1)
    del logs
    _wait_until(lambda: gateway.active_streams == 0)


async def test_async_stream_aclose_cancels_the_call(gateway, aclient) -> None:  # type: ignore[no-untyped-def]
    gateway.auto_complete = False
    sandbox = await aclient.create_environment()
    experiment = await sandbox.run_experiment(model="gpt-3", prompt="hi")
    stream = experiment.events()
    assert (await stream.__anext__()).sequence == 1
    await stream.aclose()
    with pytest.raises(StopAsyncIteration):
        await stream.__anext__()
    _wait_until(lambda: gateway.active_streams == 0)


STAMP = datetime(2025, 1, 2, 3, 4, 5, 250000, tzinfo=UTC)
FAILURE = experiment_pb2.ExperimentFailure(reason="MODEL_FAILED", message="out of memory")
WIRE_PAYLOADS = {
    "log": (
        {"log": experiment_pb2.LogLine(level=3, message="hot")},
        LogLine(LogLevel.WARNING, "hot"),
    ),
    "metric": (
        {"metric": experiment_pb2.MetricSample(name="tps", value=2.5, unit="1/s", repeat=1)},
        MetricSample("tps", 2.5, "1/s", 0, 1),
    ),
    "output": (
        {"output": experiment_pb2.OutputDelta(input_index=2, repeat=1, text="ok")},
        OutputDelta(2, 1, "ok"),
    ),
    "state_change": (
        {"state_change": experiment_pb2.StateChange(state=4, failure=FAILURE)},
        StateChange(ExperimentState.FAILED, ExperimentFailure("MODEL_FAILED", "out of memory")),
    ),
}


@pytest.mark.parametrize("kind", sorted(WIRE_PAYLOADS))
def test_event_read_from_the_wire_equals_the_event_built_from_values(kind: str) -> None:
    wire, payload = WIRE_PAYLOADS[kind]
    message = experiment_pb2.ExperimentEvent(sequence=7, experiment_id="exp-o1-1", **wire)
    message.time.FromDatetime(STAMP)
    event = ExperimentEvent.from_proto(message)
    assert event == ExperimentEvent(7, "exp-o1-1", kind, payload, STAMP)
    assert (event.sequence, event.kind, event.payload, event.time) == (7, kind, payload, STAMP)
    assert event.time is event.time  # converted once
    assert repr(event) == repr(ExperimentEvent(7, "exp-o1-1", kind, payload, STAMP))


def test_event_of_an_unknown_kind_has_no_payload_and_an_unset_time_is_none() -> None:
    event = ExperimentEvent.from_proto(experiment_pb2.ExperimentEvent(sequence=1))
    assert (event.kind, event.payload, event.time) == ("", None, None)
    assert event != ExperimentEvent(2, "", "", None)
