"""Experiments: lifecycle, snapshots and the events they stream."""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from sandbox_sdk.api.v1 import experiment_pb2
from sandbox_sdk.models._enums import enum_numbers, enum_table
from sandbox_sdk.utils.units import from_timestamp_pb


class ExperimentState(enum.StrEnum):
    """Lifecycle of an experiment."""

    UNSPECIFIED = "UNSPECIFIED"
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    TIMED_OUT = "TIMED_OUT"

    @property
    def is_final(self) -> bool:
        """Whether the experiment can change no more."""
        return self in FINAL_STATES


FINAL_STATES = frozenset(
    {
        ExperimentState.SUCCEEDED,
        ExperimentState.FAILED,
        ExperimentState.CANCELLED,
        ExperimentState.TIMED_OUT,
    }
)


class LogLevel(enum.StrEnum):
    """Severity of an experiment log line."""

    UNSPECIFIED = "UNSPECIFIED"
    DEBUG = "DEBUG"
    INFO = "INFO"
    WARNING = "WARNING"
    ERROR = "ERROR"


_STATES = enum_table(experiment_pb2.ExperimentState.items(), "EXPERIMENT_STATE_", ExperimentState)
STATE_NUMBERS = enum_numbers(_STATES)
_LEVELS = enum_table(experiment_pb2.LogLevel.items(), "LOG_LEVEL_", LogLevel)
LEVEL_NUMBERS = enum_numbers(_LEVELS)


def state_from_number(number: int) -> ExperimentState:
    """The :class:`ExperimentState` of a wire enum number."""
    return _STATES.get(number, ExperimentState.UNSPECIFIED)


def level_from_number(number: int) -> LogLevel:
    """The :class:`LogLevel` of a wire enum number."""
    return _LEVELS.get(number, LogLevel.UNSPECIFIED)


@dataclass(slots=True)
class ExperimentFailure:
    """Why an experiment did not succeed: an UPPER_SNAKE reason and a message."""

    reason: str = ""
    message: str = ""

    @classmethod
    def from_proto(cls, message: experiment_pb2.ExperimentFailure) -> ExperimentFailure | None:
        """Converts the wire form; ``None`` when no failure is set."""
        if not message.reason and not message.message:
            return None
        return cls(reason=message.reason, message=message.message)


@dataclass(slots=True)
class ExperimentInfo:
    """A snapshot of an experiment as the service last reported it."""

    id: str
    environment_id: str
    state: ExperimentState
    model: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    failure: ExperimentFailure | None = None
    queue_position: int = 0
    completed_samples: int = 0
    total_samples: int = 0
    create_time: datetime | None = None
    start_time: datetime | None = None
    end_time: datetime | None = None
    last_sequence: int = 0

    @classmethod
    def from_proto(cls, message: experiment_pb2.Experiment) -> ExperimentInfo:
        """Converts the wire form."""
        return cls(
            id=message.id,
            environment_id=message.environment_id,
            state=state_from_number(message.state),
            model=message.spec.model,
            labels=dict(message.spec.labels),
            failure=ExperimentFailure.from_proto(message.failure),
            queue_position=message.queue_position,
            completed_samples=message.completed_samples,
            total_samples=message.total_samples,
            create_time=from_timestamp_pb(message.create_time),
            start_time=from_timestamp_pb(message.start_time),
            end_time=from_timestamp_pb(message.end_time),
            last_sequence=message.last_sequence,
        )


@dataclass(slots=True)
class LogLine:
    """A log line of an experiment."""

    level: LogLevel
    message: str


@dataclass(slots=True)
class MetricSample:
    """One metric value; ``input_index`` is -1 for experiment-wide samples."""

    name: str
    value: float
    unit: str = ""
    input_index: int = -1
    repeat: int = 0


@dataclass(slots=True)
class StateChange:
    """The experiment moved to ``state``."""

    state: ExperimentState
    failure: ExperimentFailure | None = None
    queue_position: int = 0


@dataclass(slots=True)
class OutputDelta:
    """Generated text as it streams from the model."""

    input_index: int
    repeat: int
    text: str


@dataclass(slots=True)
class ToolCall:
    """The model asked the sandbox tool to run ``command`` (as ``argv``) in its turn."""

    input_index: int
    repeat: int
    turn: int
    command: str
    argv: tuple[str, ...]


@dataclass(slots=True)
class ToolResult:
    """What a tool call's command produced; ``exit_code`` is -1 when a signal or the
    timeout ended it, and ``truncated`` says the output was cut at the tool's limit."""

    input_index: int
    repeat: int
    turn: int
    exit_code: int
    stdout: str
    stderr: str
    truncated: bool


EventPayload = LogLine | MetricSample | StateChange | OutputDelta | ToolCall | ToolResult


class _Pending(enum.Enum):
    """Marks a field of :class:`ExperimentEvent` not read from the wire yet."""

    FIELD = enum.auto()


_PENDING = _Pending.FIELD
_NO_MESSAGE = experiment_pb2.ExperimentEvent()


class ExperimentEvent:
    """One persisted event; ``sequence`` increases by one per event, from 1.

    ``kind`` is ``"log"``, ``"metric"``, ``"state_change"``, ``"output"``,
    ``"tool_call"`` or ``"tool_result"`` and
    ``payload`` the matching dataclass (``None`` for kinds this SDK predates).
    ``time`` is when the service recorded the event, in UTC.

    Events are read-only values. One that came over the wire keeps its message
    and converts ``kind``, ``payload`` and ``time`` on first access: fields nobody
    reads cost nothing, so iterating a stream costs about what iterating the raw
    messages does.
    """

    __slots__ = ("_experiment_id", "_kind", "_message", "_payload", "_sequence", "_time")
    __match_args__ = ("sequence", "experiment_id", "kind", "payload", "time")

    def __init__(
        self,
        sequence: int,
        experiment_id: str,
        kind: str,
        payload: EventPayload | None,
        time: datetime | None = None,
    ) -> None:
        self._message = _NO_MESSAGE
        self._sequence = sequence
        self._experiment_id = experiment_id
        self._kind: str | _Pending = kind
        self._payload: EventPayload | _Pending | None = payload
        self._time: datetime | _Pending | None = time

    @classmethod
    def from_proto(cls, message: experiment_pb2.ExperimentEvent) -> ExperimentEvent:
        """Wraps the wire form; fields are converted when first read."""
        event = cls.__new__(cls)
        event._message = message
        event._sequence = message.sequence
        event._experiment_id = message.experiment_id
        event._kind = event._payload = event._time = _PENDING
        return event

    @property
    def sequence(self) -> int:
        """The event's position in the experiment's event log, from 1."""
        return self._sequence

    @property
    def experiment_id(self) -> str:
        """The experiment the event belongs to."""
        return self._experiment_id

    @property
    def kind(self) -> str:
        """``"log"``, ``"metric"``, ``"state_change"``, ``"output"``, or ``""`` if unknown."""
        if self._kind is _PENDING:
            self._kind = self._message.WhichOneof("payload") or ""
        return self._kind

    @property
    def payload(self) -> EventPayload | None:
        """The dataclass matching ``kind``; ``None`` for kinds this SDK predates."""
        if self._payload is _PENDING:
            self._payload = _payload_from_proto(self.kind, self._message)
        return self._payload

    @property
    def time(self) -> datetime | None:
        """When the service recorded the event (timezone-aware, UTC)."""
        if self._time is _PENDING:
            self._time = from_timestamp_pb(self._message.time)
        return self._time

    def _fields(self) -> tuple[object, ...]:
        return (self.sequence, self.experiment_id, self.kind, self.payload, self.time)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ExperimentEvent):
            return NotImplemented
        return self._fields() == other._fields()

    __hash__ = None  # type: ignore[assignment]  # payloads are mutable dataclasses

    def __repr__(self) -> str:
        return (
            f"ExperimentEvent(sequence={self.sequence!r}, experiment_id={self.experiment_id!r}, "
            f"kind={self.kind!r}, payload={self.payload!r}, time={self.time!r})"
        )


def _output(message: experiment_pb2.ExperimentEvent) -> OutputDelta:
    delta = message.output
    return OutputDelta(delta.input_index, delta.repeat, delta.text)


def _metric(message: experiment_pb2.ExperimentEvent) -> MetricSample:
    metric = message.metric
    return MetricSample(metric.name, metric.value, metric.unit, metric.input_index, metric.repeat)


def _log(message: experiment_pb2.ExperimentEvent) -> LogLine:
    return LogLine(level_from_number(message.log.level), message.log.message)


def _state_change(message: experiment_pb2.ExperimentEvent) -> StateChange:
    change = message.state_change
    return StateChange(
        state_from_number(change.state),
        ExperimentFailure.from_proto(change.failure),
        change.queue_position,
    )


def _tool_call(message: experiment_pb2.ExperimentEvent) -> ToolCall:
    call = message.tool_call
    return ToolCall(call.input_index, call.repeat, call.turn, call.command, tuple(call.argv))


def _tool_result(message: experiment_pb2.ExperimentEvent) -> ToolResult:
    result = message.tool_result
    return ToolResult(
        result.input_index,
        result.repeat,
        result.turn,
        result.exit_code,
        result.stdout,
        result.stderr,
        result.truncated,
    )


# Each oneof case of ExperimentEvent.payload and how it becomes its dataclass.
_PAYLOADS: dict[str, Callable[[experiment_pb2.ExperimentEvent], EventPayload]] = {
    "output": _output,
    "metric": _metric,
    "log": _log,
    "state_change": _state_change,
    "tool_call": _tool_call,
    "tool_result": _tool_result,
}


def _payload_from_proto(kind: str, message: experiment_pb2.ExperimentEvent) -> EventPayload | None:
    convert = _PAYLOADS.get(kind)
    return convert(message) if convert is not None else None
