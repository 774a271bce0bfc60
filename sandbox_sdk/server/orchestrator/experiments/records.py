"""The engine's records: experiments, their events and their per-sample results.

An experiment's state and a log event's level are the SDK's own enums
(:mod:`sandbox_sdk.models.experiment`), so that the engine and its callers
name them alike; the engine never stores or sends ``UNSPECIFIED``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Generic, TypeVar

from sandbox_sdk.models.experiment import ExperimentState, LogLevel
from sandbox_sdk.server.orchestrator.experiments.spec import ExperimentSpec

T = TypeVar("T")

__all__ = [
    "EventPage",
    "EventPayload",
    "ExperimentChanges",
    "ExperimentRecord",
    "ExperimentState",
    "Failure",
    "LogEvent",
    "LogLevel",
    "MetricEvent",
    "OutputEvent",
    "SampleRecord",
    "StateEvent",
    "StoredEvent",
    "ToolCallEvent",
    "ToolResultEvent",
]


@dataclass(frozen=True)
class Failure:
    """Why an experiment did not succeed: an UPPER_SNAKE reason and a message."""

    reason: str
    message: str


@dataclass(frozen=True)
class ExperimentRecord:
    """An experiment as stored."""

    id: str
    tenant: str
    environment_id: str
    spec: ExperimentSpec
    model_name: str
    state: ExperimentState
    failure: Failure | None
    completed_samples: int
    total_samples: int
    create_time: float
    start_time: float | None
    end_time: float | None
    last_sequence: int
    request_id: str
    queue_order: int
    has_output: bool


@dataclass(frozen=True)
class LogEvent:
    """A log line."""

    level: LogLevel
    message: str


@dataclass(frozen=True)
class MetricEvent:
    """One metric sample; ``input_index`` -1 means the whole experiment."""

    name: str
    value: float
    unit: str
    input_index: int = -1
    repeat: int = 0


@dataclass(frozen=True)
class StateEvent:
    """A state change."""

    state: ExperimentState
    failure: Failure | None = None
    queue_position: int = 0


@dataclass(frozen=True)
class OutputEvent:
    """Text streamed by the model."""

    input_index: int
    repeat: int
    text: str


@dataclass(frozen=True)
class ToolCallEvent:
    """The model called the sandbox tool in ``turn`` (from 1) of a sample; ``argv`` is
    what ran, empty when the call was refused."""

    input_index: int
    repeat: int
    turn: int
    command: str
    argv: tuple[str, ...]


@dataclass(frozen=True)
class ToolResultEvent:
    """What a sandbox tool call produced; ``exit_code`` is -1 when the command did not
    exit by itself (a signal, the timeout) or did not run (then ``stderr`` says why)."""

    input_index: int
    repeat: int
    turn: int
    exit_code: int
    stdout: str
    stderr: str
    truncated: bool


EventPayload = LogEvent | MetricEvent | StateEvent | OutputEvent | ToolCallEvent | ToolResultEvent


@dataclass(frozen=True)
class StoredEvent:
    """A committed event with its per-experiment sequence number."""

    experiment_id: str
    sequence: int
    time: float
    payload: EventPayload


@dataclass(frozen=True)
class EventPage(Generic[T]):
    """Committed events read in one query, oldest first, each as its reader made it (a
    :class:`StoredEvent`, or the bytes a stream sends)."""

    events: list[T]
    # The sequence of the last event read; the sequence read after when there is none.
    last_sequence: int
    # The index in ``events`` of the state event that ended the experiment, if read.
    final_at: int | None


@dataclass(frozen=True)
class SampleRecord:
    """The outcome of one input and repeat; ``turns``, ``tool_calls`` and ``tool_errors``
    count the sandbox tool's loop (all 0 without the tool)."""

    input_index: int
    repeat: int
    seed: int | None
    prompt: str
    expected: str
    output: str
    scores: dict[str, float] = field(default_factory=dict)
    score_errors: dict[str, str] = field(default_factory=dict)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_seconds: float = 0.0
    time_to_first_token_seconds: float = 0.0
    tokens_per_second: float = 0.0
    finish_reason: str = ""
    error: str = ""
    turns: int = 0
    tool_calls: int = 0
    tool_errors: int = 0


@dataclass(frozen=True)
class ExperimentChanges:
    """Column updates committed together with events; None leaves a column as it is."""

    state: ExperimentState | None = None
    failure: Failure | None = None
    start_time: float | None = None
    end_time: float | None = None
    total_samples: int | None = None
    clear_start_time: bool = False
