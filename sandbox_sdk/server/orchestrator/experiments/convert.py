"""Conversions from the engine's records to the wire's protobuf messages."""

from __future__ import annotations

from google.protobuf import struct_pb2

from sandbox_sdk.api.v1 import experiment_pb2, requests_pb2
from sandbox_sdk.models.experiment import (
    LEVEL_NUMBERS,
    STATE_NUMBERS,
    level_from_number,
    state_from_number,
)
from sandbox_sdk.models.results import AggregateMetric
from sandbox_sdk.server.orchestrator.experiments.records import (
    EventPayload,
    ExperimentRecord,
    ExperimentState,
    Failure,
    LogEvent,
    MetricEvent,
    OutputEvent,
    SampleRecord,
    StateEvent,
    StoredEvent,
    ToolCallEvent,
    ToolResultEvent,
)
from sandbox_sdk.server.orchestrator.experiments.settings import ModelConfig
from sandbox_sdk.server.orchestrator.experiments.spec import (
    CommandCheck,
    Contains,
    ExactMatch,
    ExperimentSpec,
    JsonValid,
    RegexMatch,
    SandboxToolSpec,
    ScorerSpec,
)
from sandbox_sdk.utils.units import to_duration_pb, to_timestamp_pb


def state_to_proto(state: ExperimentState) -> experiment_pb2.ExperimentState.ValueType:
    """The wire enum value of a state."""
    return experiment_pb2.ExperimentState.ValueType(STATE_NUMBERS[state])


def state_from_proto(value: int) -> ExperimentState | None:
    """The state of a wire enum value; None for UNSPECIFIED or unknown values."""
    state = state_from_number(value)
    return None if state is ExperimentState.UNSPECIFIED else state


def experiment_to_proto(
    record: ExperimentRecord,
    queue_position: int,
    spec: experiment_pb2.ExperimentSpec | None = None,
) -> experiment_pb2.Experiment:
    """The Experiment message of a record, with its current queue position; ``spec`` is the
    spec's message when the caller has it built already."""
    message = experiment_pb2.Experiment(
        id=record.id,
        environment_id=record.environment_id,
        spec=spec if spec is not None else spec_to_proto(record.spec),
        state=state_to_proto(record.state),
        queue_position=queue_position if record.state is ExperimentState.QUEUED else 0,
        completed_samples=record.completed_samples,
        total_samples=record.total_samples,
        create_time=to_timestamp_pb(record.create_time),
        last_sequence=record.last_sequence,
    )
    if record.failure is not None:
        message.failure.CopyFrom(failure_to_proto(record.failure))
    if record.start_time is not None:
        message.start_time.CopyFrom(to_timestamp_pb(record.start_time))
    if record.end_time is not None:
        message.end_time.CopyFrom(to_timestamp_pb(record.end_time))
    return message


def spec_to_proto(spec: ExperimentSpec) -> experiment_pb2.ExperimentSpec:
    """The ExperimentSpec message of an accepted spec."""
    message = experiment_pb2.ExperimentSpec(
        model=spec.model,
        inputs=[
            experiment_pb2.ExperimentInput(prompt=i.prompt, expected=i.expected)
            for i in spec.inputs
        ],
        dataset_path=spec.dataset_path,
        system_prompt=spec.system_prompt,
        scorers=[scorer_to_proto(s) for s in spec.scorers],
        repeats=spec.repeats,
        timeout=to_duration_pb(spec.timeout_seconds),
        priority=spec.priority,
        labels=spec.labels,
        fail_on_scorer_error=spec.fail_on_scorer_error,
    )
    parameters = spec.parameters
    target = message.parameters
    if parameters.temperature is not None:
        target.temperature = parameters.temperature
    if parameters.top_p is not None:
        target.top_p = parameters.top_p
    if parameters.max_tokens is not None:
        target.max_tokens = parameters.max_tokens
    if parameters.seed is not None:
        target.seed = parameters.seed
    target.stop.extend(parameters.stop)
    for key, value in parameters.extra.items():
        target.extra[key].CopyFrom(_value(value))
    if spec.sandbox_tool is not None:
        message.sandbox_tool.CopyFrom(sandbox_tool_to_proto(spec.sandbox_tool))
    return message


def sandbox_tool_to_proto(tool: SandboxToolSpec) -> experiment_pb2.SandboxTool:
    """The SandboxTool message of an accepted tool, with every default filled in."""
    return experiment_pb2.SandboxTool(
        enabled=True,
        max_turns=tool.max_turns,
        command_timeout=to_duration_pb(tool.command_timeout_seconds),
        max_output_bytes=tool.max_output_bytes,
    )


def scorer_to_proto(scorer: ScorerSpec) -> experiment_pb2.Scorer:
    """The Scorer message of an accepted scorer."""
    message = experiment_pb2.Scorer(name=scorer.name)
    check = scorer.check
    if isinstance(check, ExactMatch):
        message.exact_match.ignore_case = check.ignore_case
    elif isinstance(check, Contains):
        message.contains.ignore_case = check.ignore_case
    elif isinstance(check, RegexMatch):
        message.regex.pattern = check.pattern
    elif isinstance(check, JsonValid):
        message.json_valid.SetInParent()
    elif isinstance(check, CommandCheck):
        message.command.argv.extend(check.argv)
        message.command.timeout.CopyFrom(to_duration_pb(check.timeout_seconds))
    return message


def event_to_proto(event: StoredEvent) -> experiment_pb2.ExperimentEvent:
    """The ExperimentEvent message of a committed event."""
    message = experiment_pb2.ExperimentEvent(
        sequence=event.sequence, time=to_timestamp_pb(event.time), experiment_id=event.experiment_id
    )
    payload = event.payload
    if isinstance(payload, LogEvent):
        message.log.level = experiment_pb2.LogLevel.ValueType(LEVEL_NUMBERS[payload.level])
        message.log.message = payload.message
    elif isinstance(payload, MetricEvent):
        message.metric.CopyFrom(
            experiment_pb2.MetricSample(
                name=payload.name,
                value=payload.value,
                unit=payload.unit,
                input_index=payload.input_index,
                repeat=payload.repeat,
            )
        )
    elif isinstance(payload, StateEvent):
        message.state_change.state = state_to_proto(payload.state)
        message.state_change.queue_position = payload.queue_position
        if payload.failure is not None:
            message.state_change.failure.CopyFrom(failure_to_proto(payload.failure))
    elif isinstance(payload, OutputEvent):
        message.output.CopyFrom(
            experiment_pb2.OutputDelta(
                input_index=payload.input_index, repeat=payload.repeat, text=payload.text
            )
        )
    elif isinstance(payload, ToolCallEvent):
        message.tool_call.CopyFrom(
            experiment_pb2.ToolCall(
                input_index=payload.input_index,
                repeat=payload.repeat,
                turn=payload.turn,
                command=payload.command,
                argv=payload.argv,
            )
        )
    elif isinstance(payload, ToolResultEvent):
        message.tool_result.CopyFrom(
            experiment_pb2.ToolResult(
                input_index=payload.input_index,
                repeat=payload.repeat,
                turn=payload.turn,
                exit_code=payload.exit_code,
                stdout=payload.stdout,
                stderr=payload.stderr,
                truncated=payload.truncated,
            )
        )
    return message


def event_payload(message: experiment_pb2.ExperimentEvent) -> EventPayload:
    """What happened in an ExperimentEvent: the inverse of :func:`event_to_proto`'s payload."""
    which = message.WhichOneof("payload")
    if which == "log":
        return LogEvent(level=level_from_number(message.log.level), message=message.log.message)
    if which == "metric":
        metric = message.metric
        return MetricEvent(
            name=metric.name,
            value=metric.value,
            unit=metric.unit,
            input_index=metric.input_index,
            repeat=metric.repeat,
        )
    if which == "state_change":
        change = message.state_change
        return StateEvent(
            state=state_from_number(change.state),
            failure=(
                Failure(change.failure.reason, change.failure.message)
                if change.HasField("failure")
                else None
            ),
            queue_position=change.queue_position,
        )
    if which == "output":
        output = message.output
        return OutputEvent(input_index=output.input_index, repeat=output.repeat, text=output.text)
    if which == "tool_call":
        call = message.tool_call
        return ToolCallEvent(
            input_index=call.input_index,
            repeat=call.repeat,
            turn=call.turn,
            command=call.command,
            argv=tuple(call.argv),
        )
    if which == "tool_result":
        result = message.tool_result
        return ToolResultEvent(
            input_index=result.input_index,
            repeat=result.repeat,
            turn=result.turn,
            exit_code=result.exit_code,
            stdout=result.stdout,
            stderr=result.stderr,
            truncated=result.truncated,
        )
    raise ValueError(f"event {message.sequence} of {message.experiment_id} has no payload")


def event_bytes(event: StoredEvent) -> bytes:
    """The serialized ExperimentEvent message of a committed event."""
    return bytes(event_to_proto(event).SerializeToString())


# StreamExperimentEventsResponse.event: its tag, as a length-delimited field.
_EVENT_TAG = bytes(
    (
        requests_pb2.StreamExperimentEventsResponse.DESCRIPTOR.fields_by_name["event"].number << 3
        | 2,
    )
)


# The field's tag and length of every event shorter than 128 bytes (a one-byte varint).
_SHORT_PREFIXES = [_EVENT_TAG + bytes((length,)) for length in range(128)]


def event_response_bytes(event: bytes) -> bytes:
    """The serialized StreamExperimentEventsResponse holding a serialized ExperimentEvent:
    its only field, framed around the event's bytes as the wire format defines, without
    parsing them. The same bytes protobuf would write for the response."""
    length = len(event)
    if length < 128:  # most events: one concatenation
        return _SHORT_PREFIXES[length] + event
    return b"".join((_EVENT_TAG, _varint(length), event))


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def sample_to_proto(sample: SampleRecord) -> experiment_pb2.SampleResult:
    """The SampleResult message of a sample."""
    message = experiment_pb2.SampleResult(
        input_index=sample.input_index,
        repeat=sample.repeat,
        prompt=sample.prompt,
        expected=sample.expected,
        output=sample.output,
        scores=sample.scores,
        score_errors=sample.score_errors,
        usage=experiment_pb2.TokenUsage(
            prompt_tokens=sample.prompt_tokens, completion_tokens=sample.completion_tokens
        ),
        latency=to_duration_pb(sample.latency_seconds),
        time_to_first_token=to_duration_pb(sample.time_to_first_token_seconds),
        tokens_per_second=sample.tokens_per_second,
        finish_reason=sample.finish_reason,
        error=sample.error,
        turns=sample.turns,
        tool_calls=sample.tool_calls,
        tool_errors=sample.tool_errors,
    )
    if sample.seed is not None:
        message.seed = sample.seed
    return message


def aggregate_to_proto(name: str, metric: AggregateMetric) -> experiment_pb2.AggregateMetric:
    """The AggregateMetric message of an aggregate, under ``name``."""
    message = metric.to_proto()
    message.name = name
    return message


def model_to_proto(config: ModelConfig) -> experiment_pb2.Model:
    """The Model message of a configured model."""
    return experiment_pb2.Model(
        name=config.name,
        aliases=config.aliases,
        provider=config.provider,
        context_length=config.context_length,
        description=config.description,
    )


def failure_to_proto(failure: Failure) -> experiment_pb2.ExperimentFailure:
    """The ExperimentFailure message of a failure."""
    return experiment_pb2.ExperimentFailure(reason=failure.reason, message=failure.message)


def _value(value: float | int | bool | str) -> struct_pb2.Value:
    if isinstance(value, bool):
        return struct_pb2.Value(bool_value=value)
    if isinstance(value, str):
        return struct_pb2.Value(string_value=value)
    return struct_pb2.Value(number_value=float(value))
