"""An environment's message, and its GetEnvironmentResponse's bytes, are made once per
record: an unchanged record (an idle environment polled with GetEnvironment) reuses them,
and any change of the record shows."""

from __future__ import annotations

from dataclasses import replace

from sandbox_sdk.api.v1 import environment_pb2, requests_pb2
from sandbox_sdk.models.environment import EnvironmentState, NetworkPolicy, TerminationReason
from sandbox_sdk.server.orchestrator.sandbox import convert
from sandbox_sdk.server.orchestrator.sandbox.environment_record import (
    Environment,
    EnvironmentSpec,
    Limits,
)

_SPEC = EnvironmentSpec(
    limits=Limits(
        cpu_cores=1.0,
        memory_bytes=256 << 20,
        disk_bytes=64 << 20,
        max_pids=64,
        exec_timeout_seconds=60.0,
    ),
    env_vars={},
    labels={"team": "a"},
    ttl_seconds=3600.0,
    idle_timeout_seconds=600.0,
    network=NetworkPolicy.NONE,
)
_RECORD = Environment(
    id="env-o1-00000000000000aa",
    tenant="t",
    spec=_SPEC,
    state=EnvironmentState.RUNNING,
    termination_reason=TerminationReason.UNSPECIFIED,
    termination_message="",
    isolation="test",
    orchestrator_id="o1",
    create_time=100.0,
    expire_time=3700.0,
    last_activity_time=100.0,
    terminate_time=None,
)


def test_an_unchanged_record_reuses_its_message() -> None:
    assert convert.environment(_RECORD) is convert.environment(_RECORD)


def test_every_change_of_the_record_shows() -> None:
    first = convert.environment(_RECORD)
    deleted = replace(
        _RECORD,
        state=EnvironmentState.TERMINATED,
        termination_reason=TerminationReason.USER_DELETED,
        terminate_time=200.0,
        last_activity_time=150.0,
    )
    message = convert.environment(deleted)
    assert message.state == environment_pb2.ENVIRONMENT_STATE_TERMINATED
    assert message.terminate_time.seconds == 200
    assert message.last_activity_time.seconds == 150
    assert message.spec == first.spec  # the same spec object: its part is reused
    relabelled = replace(deleted, spec=replace(_SPEC, labels={"team": "b"}))
    assert dict(convert.environment(relabelled).spec.labels) == {"team": "b"}


def test_a_response_holding_the_message_cannot_change_the_cached_one() -> None:
    response = requests_pb2.GetEnvironmentResponse(environment=convert.environment(_RECORD))
    response.environment.state = environment_pb2.ENVIRONMENT_STATE_TERMINATED
    response.environment.spec.labels["team"] = "changed"
    cached = convert.environment(_RECORD)
    assert cached.state == environment_pb2.ENVIRONMENT_STATE_RUNNING
    assert dict(cached.spec.labels) == {"team": "a"}


def test_the_get_environment_response_is_serialized_once_per_record() -> None:
    expected = requests_pb2.GetEnvironmentResponse(environment=convert.environment(_RECORD))
    response = convert.get_environment_response(_RECORD)
    assert requests_pb2.GetEnvironmentResponse.FromString(response) == expected
    assert convert.get_environment_response(_RECORD) is response
    touched = replace(_RECORD, last_activity_time=160.0)
    changed = requests_pb2.GetEnvironmentResponse.FromString(
        convert.get_environment_response(touched)
    )
    assert changed.environment.last_activity_time.seconds == 160
