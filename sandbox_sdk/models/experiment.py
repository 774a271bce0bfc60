"""Experiments: lifecycle, snapshots and the events they stream."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime

from sandbox.v1 import experiment_pb2
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


def state_from_number(number: int) -> ExperimentState:
    """The :class:`ExperimentState` of a wire enum number."""
    return _STATES.get(number, ExperimentState.UNSPECIFIED)


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


EventPayload = LogLine | MetricSample | StateChange | OutputDelta


@dataclass(slots=True)
class ExperimentEvent:
    """One persisted event; ``sequence`` increases by one per event, from 1.

    ``kind`` is ``"log"``, ``"metric"``, ``"state_change"`` or ``"output"`` and
    ``payload`` the matching dataclass (``None`` for kinds this SDK predates).
    """

    sequence: int
    experiment_id: str
    kind: str
    payload: EventPayload | None
    time: datetime | None = None

    @classmethod
    def from_proto(cls, message: experiment_pb2.ExperimentEvent) -> ExperimentEvent:
        """Converts the wire form."""
        kind = message.WhichOneof("payload") or ""
        payload: EventPayload | None = None
        if kind == "output":
            delta = message.output
            payload = OutputDelta(delta.input_index, delta.repeat, delta.text)
        elif kind == "metric":
            metric = message.metric
            payload = MetricSample(
                metric.name, metric.value, metric.unit, metric.input_index, metric.repeat
            )
        elif kind == "log":
            log = message.log
            payload = LogLine(_LEVELS.get(log.level, LogLevel.UNSPECIFIED), log.message)
        elif kind == "state_change":
            change = message.state_change
            payload = StateChange(
                state_from_number(change.state),
                ExperimentFailure.from_proto(change.failure),
                change.queue_position,
            )
        return cls(
            sequence=message.sequence,
            experiment_id=message.experiment_id,
            kind=kind,
            payload=payload,
            time=from_timestamp_pb(message.time),
        )
