"""The layer's dataclasses as ``sandbox.v1`` protobuf messages."""

from __future__ import annotations

from collections import OrderedDict

from sandbox_sdk.api.v1 import (
    common_pb2,
    environment_pb2,
    orchestrator_service_pb2,
    requests_pb2,
)
from sandbox_sdk.models.environment import EnvironmentState, IsolationRuntime, TerminationReason
from sandbox_sdk.server.orchestrator.sandbox.environment_record import (
    Capacity,
    Environment,
    EnvironmentSpec,
    ExecEvent,
    ExecExited,
    ExecOutput,
    ExecStarted,
    FileEntry,
    Limits,
    Usage,
)
from sandbox_sdk.utils.units import to_duration_pb, to_timestamp_pb

_STATES = {
    state: environment_pb2.EnvironmentState.Value(f"ENVIRONMENT_STATE_{state.value}")
    for state in EnvironmentState
}
_RUNTIMES = {
    runtime: environment_pb2.IsolationRuntime.Value(f"ISOLATION_RUNTIME_{runtime.value}")
    for runtime in IsolationRuntime
}
_REASONS = {
    reason: environment_pb2.TerminationReason.Value(f"TERMINATION_REASON_{reason.value}")
    for reason in TerminationReason
}


class _Converted:
    """A record, its message, and its GetEnvironmentResponse's bytes once asked for."""

    __slots__ = ("message", "record", "response")

    def __init__(self, record: Environment, message: environment_pb2.Environment) -> None:
        self.record = record
        self.message = message
        self.response: bytes | None = None


# Environment id -> its last conversion. Records are frozen dataclasses replaced on every
# change, so a conversion is reused only for the very record it was made from (an idle
# environment polled with GetEnvironment converts and serializes once), and a changed
# record reuses its spec's part when the spec object is the same; the least recently
# converted leave first. Callers put the message into a response, which copies it:
# nobody changes a cached one.
_CONVERTED: OrderedDict[str, _Converted] = OrderedDict()
_CONVERTED_SIZE = 4096


def limits(value: Limits) -> common_pb2.ResourceLimits:
    """ResourceLimits."""
    return common_pb2.ResourceLimits(
        cpu_cores=value.cpu_cores,
        memory_bytes=value.memory_bytes,
        disk_bytes=value.disk_bytes,
        max_pids=value.max_pids,
        exec_timeout=to_duration_pb(value.exec_timeout_seconds),
    )


def spec(value: EnvironmentSpec) -> environment_pb2.EnvironmentSpec:
    """EnvironmentSpec."""
    network = common_pb2.NetworkPolicy.Value(f"NETWORK_POLICY_{value.network.value}")
    return environment_pb2.EnvironmentSpec(
        limits=limits(value.limits),
        env_vars=dict(value.env_vars),
        labels=dict(value.labels),
        ttl=to_duration_pb(value.ttl_seconds),
        idle_timeout=to_duration_pb(value.idle_timeout_seconds),
        network_policy=network,
        egress_allow_cidrs=value.egress_allow_cidrs,
        egress_deny_cidrs=value.egress_deny_cidrs,
        template=value.template_id or "",
        runtime=_RUNTIMES[value.runtime],
    )


def environment(value: Environment) -> environment_pb2.Environment:
    """Environment; made once per record (see ``_CONVERTED``): do not change the message."""
    return _converted(value).message


def get_environment_response(value: Environment) -> bytes:
    """GetEnvironmentResponse for ``value``, serialized once per record."""
    converted = _converted(value)
    response = converted.response
    if response is None:
        response = converted.response = requests_pb2.GetEnvironmentResponse(
            environment=converted.message
        ).SerializeToString()
    return response


def _converted(value: Environment) -> _Converted:
    cached = _CONVERTED.get(value.id)
    if cached is not None and cached.record is value:
        _CONVERTED.move_to_end(value.id)
        return cached
    same_spec = cached is not None and cached.record.spec is value.spec
    message = environment_pb2.Environment(
        id=value.id,
        spec=cached.message.spec if cached is not None and same_spec else spec(value.spec),
        state=_STATES[value.state],
        termination_reason=_REASONS[value.termination_reason],
        termination_message=value.termination_message,
        isolation=value.isolation,
        orchestrator_id=value.orchestrator_id,
        create_time=to_timestamp_pb(value.create_time),
        expire_time=to_timestamp_pb(value.expire_time),
        last_activity_time=to_timestamp_pb(value.last_activity_time),
        queue_position=value.queue_position,
        template_id=value.spec.template_id or "",
    )
    if value.terminate_time is not None:
        message.terminate_time.CopyFrom(to_timestamp_pb(value.terminate_time))
    converted = _CONVERTED[value.id] = _Converted(value, message)
    _CONVERTED.move_to_end(value.id)
    while len(_CONVERTED) > _CONVERTED_SIZE:
        _CONVERTED.popitem(last=False)
    return converted


def usage(value: Usage) -> common_pb2.ResourceUsage:
    """ResourceUsage."""
    return common_pb2.ResourceUsage(
        cpu_seconds=value.cpu_seconds,
        cpu_percent=value.cpu_percent,
        memory_bytes=value.memory_bytes,
        memory_peak_bytes=value.memory_peak_bytes,
        pids=value.pids,
        disk_bytes=value.disk_bytes,
        sample_time=to_timestamp_pb(value.sample_time),
    )


def file_info(value: FileEntry) -> environment_pb2.FileInfo:
    """FileInfo."""
    return environment_pb2.FileInfo(
        path=value.path,
        size_bytes=value.size_bytes,
        is_dir=value.is_dir,
        mode=value.mode,
        modify_time=to_timestamp_pb(value.modify_time),
        is_symlink=value.is_symlink,
    )


def _exited(value: ExecExited) -> environment_pb2.ExecExited:
    return environment_pb2.ExecExited(
        exit_code=value.exit_code,
        signal=value.signal,
        reason=environment_pb2.ExitReason.Value(f"EXIT_REASON_{value.reason.value}"),
        usage=common_pb2.ResourceUsage(
            cpu_seconds=value.cpu_seconds, memory_peak_bytes=value.memory_peak_bytes
        ),
        duration=to_duration_pb(value.duration_seconds),
        stdout_truncated=value.stdout_truncated,
        stderr_truncated=value.stderr_truncated,
    )


def exec_event(value: ExecEvent) -> requests_pb2.ExecCommandResponse:
    """ExecCommandResponse carrying one event."""
    if isinstance(value, ExecStarted):
        return requests_pb2.ExecCommandResponse(started=environment_pb2.ExecStarted(pid=value.pid))
    if isinstance(value, ExecOutput):
        if value.stream == "stdout":
            return requests_pb2.ExecCommandResponse(stdout=value.data)
        return requests_pb2.ExecCommandResponse(stderr=value.data)
    return requests_pb2.ExecCommandResponse(exited=_exited(value))


def capacity(value: Capacity) -> orchestrator_service_pb2.GetCapacityResponse:
    """GetCapacityResponse; the experiment counts are the experiments engine's to fill."""
    return orchestrator_service_pb2.GetCapacityResponse(
        orchestrator_id=value.orchestrator_id,
        environments_running=value.environments_running,
        environments_max=value.environments_max,
        cpu_cores_allocated=value.cpu_cores_allocated,
        cpu_cores_total=value.cpu_cores_total,
        memory_bytes_allocated=value.memory_bytes_allocated,
        memory_bytes_total=value.memory_bytes_total,
        isolation=value.isolation,
    )
