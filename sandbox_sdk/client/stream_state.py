"""What sync and async streams share: resume cursors and command output collection."""

from __future__ import annotations

from sandbox_sdk.api.v1 import requests_pb2
from sandbox_sdk.errors import InternalError
from sandbox_sdk.models.execution import ExecResult, OutputChunk
from sandbox_sdk.models.experiment import ExperimentEvent
from sandbox_sdk.models.processes import ProcessInfo
from sandbox_sdk.models.templates import TemplateBuildEvent
from sandbox_sdk.models.usage import ResourceUsage


class EventCursor:
    """Tracks the last event sequence seen, so a reconnect asks only for newer events
    and a replayed event is never yielded twice."""

    __slots__ = ("experiment_id", "follow", "last_sequence")

    def __init__(self, experiment_id: str, after_sequence: int, follow: bool) -> None:
        self.experiment_id = experiment_id
        self.last_sequence = after_sequence
        self.follow = follow

    def request(self) -> requests_pb2.StreamExperimentEventsRequest:
        """The request that resumes after the last event seen."""
        return requests_pb2.StreamExperimentEventsRequest(
            experiment_id=self.experiment_id,
            after_sequence=self.last_sequence,
            follow=self.follow,
        )

    def convert(
        self, message: requests_pb2.StreamExperimentEventsResponse
    ) -> ExperimentEvent | None:
        """The event, or ``None`` if it was seen already."""
        event = message.event
        sequence = event.sequence
        if sequence <= self.last_sequence:
            return None
        self.last_sequence = sequence
        return ExperimentEvent.from_proto(event)


class TemplateEventCursor:
    """Like :class:`EventCursor`, for a template's build events."""

    __slots__ = ("follow", "last_sequence", "template_id")

    def __init__(self, template_id: str, after_sequence: int, follow: bool) -> None:
        self.template_id = template_id
        self.last_sequence = after_sequence
        self.follow = follow

    def request(self) -> requests_pb2.StreamTemplateBuildEventsRequest:
        """The request that resumes after the last event seen."""
        return requests_pb2.StreamTemplateBuildEventsRequest(
            template_id=self.template_id, after_sequence=self.last_sequence, follow=self.follow
        )

    def convert(
        self, message: requests_pb2.StreamTemplateBuildEventsResponse
    ) -> TemplateBuildEvent | None:
        """The event, or ``None`` if it was seen already."""
        if message.event.sequence <= self.last_sequence:
            return None
        self.last_sequence = message.event.sequence
        return TemplateBuildEvent.from_proto(message.event)


class ProcessOutputCursor:
    """Like :class:`EventCursor`, for a background process's output; keeps the final
    state the stream's last event carries."""

    __slots__ = ("environment_id", "final", "follow", "last_sequence", "process_id")

    def __init__(
        self, environment_id: str, process_id: str, after_sequence: int, follow: bool
    ) -> None:
        self.environment_id = environment_id
        self.process_id = process_id
        self.last_sequence = after_sequence
        self.follow = follow
        self.final: ProcessInfo | None = None

    def request(self) -> requests_pb2.StreamProcessOutputRequest:
        """The request that resumes after the last event seen."""
        return requests_pb2.StreamProcessOutputRequest(
            environment_id=self.environment_id,
            process_id=self.process_id,
            after_sequence=self.last_sequence,
            follow=self.follow,
        )

    def convert(self, message: requests_pb2.StreamProcessOutputResponse) -> OutputChunk | None:
        """The output an event carries; ``None`` for one seen already and for the exit."""
        event = message.event
        if event.sequence <= self.last_sequence:
            return None
        self.last_sequence = event.sequence
        kind = event.WhichOneof("payload")
        if kind == "stdout":
            return OutputChunk("stdout", event.stdout, event.sequence)
        if kind == "stderr":
            return OutputChunk("stderr", event.stderr, event.sequence)
        if kind == "exited":
            self.final = ProcessInfo.from_proto(event.exited)
        return None


def usage_from_response(message: requests_pb2.StreamEnvironmentUsageResponse) -> ResourceUsage:
    """One usage sample of ``StreamEnvironmentUsage``."""
    return ResourceUsage.from_proto(message.usage)


class ExecCollector:
    """Turns ``ExecCommand`` responses into output chunks and, at the end, an ExecResult."""

    __slots__ = ("_argv", "_pid", "_result", "_stderr", "_stdout")

    def __init__(self, argv: tuple[str, ...]) -> None:
        self._argv = argv
        self._stdout: list[bytes] = []
        self._stderr: list[bytes] = []
        self._pid = 0
        self._result: ExecResult | None = None

    def convert(self, message: requests_pb2.ExecCommandResponse) -> OutputChunk | None:
        """The chunk a response carries; ``None`` for the started and exited events."""
        kind = message.WhichOneof("event")
        if kind == "stdout":
            self._stdout.append(message.stdout)
            return OutputChunk("stdout", message.stdout)
        if kind == "stderr":
            self._stderr.append(message.stderr)
            return OutputChunk("stderr", message.stderr)
        if kind == "started":
            self._pid = message.started.pid
        elif kind == "exited":
            self._result = ExecResult.from_exit(
                self._argv,
                message.exited,
                stdout=b"".join(self._stdout),
                stderr=b"".join(self._stderr),
                pid=self._pid,
            )
        return None

    @property
    def result(self) -> ExecResult:
        """The command's result; raises if the stream ended without an exit event."""
        if self._result is None:
            raise InternalError(
                f"the output stream of {list(self._argv)} ended without the command's exit "
                "status; the environment may have been deleted meanwhile, check it with "
                "sandbox.refresh()"
            )
        return self._result

    @property
    def finished(self) -> bool:
        """Whether the exit event arrived."""
        return self._result is not None
