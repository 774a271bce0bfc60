"""The process RPCs' requests checked, and processes converted to protobuf."""

from __future__ import annotations

from google.protobuf import timestamp_pb2

from sandbox_sdk.api.v1 import environment_pb2, process_pb2, requests_pb2
from sandbox_sdk.server.field_violations import FieldViolations
from sandbox_sdk.server.orchestrator.sandbox import request_fields as fields
from sandbox_sdk.server.orchestrator.sandbox import validation
from sandbox_sdk.server.orchestrator.sandbox.environment_record import Command, ExitReason
from sandbox_sdk.server.orchestrator.sandbox.processes import (
    ALLOWED_SIGNALS,
    MAX_INPUT_BYTES,
    ManagedProcess,
    OutputEvent,
    terminal_size,
)
from sandbox_sdk.server.status import invalid_argument

_PROCESS_ID_LENGTH = 14
_MAX_PAGE_SIZE = 1000
_DEFAULT_PAGE_SIZE = 50


def process_id(value: str) -> str:
    """A process id shaped as StartProcess makes them ("p-" and 12 hex digits)."""
    hex_part = value[2:]
    if (
        len(value) != _PROCESS_ID_LENGTH
        or not value.startswith("p-")
        or any(c not in "0123456789abcdef" for c in hex_part)
    ):
        raise invalid_argument(
            [
                (
                    "process_id",
                    f"{value[:40]!r} is not a process id: use the id StartProcess returned",
                )
            ]
        )
    return value


def start(request: requests_pb2.StartProcessRequest) -> tuple[Command, tuple[int, int] | None]:
    """A StartProcess request's command and pty size."""
    violations = FieldViolations()
    validation._argv(violations, request.argv)
    fields.checked_path(violations, "cwd", request.cwd, allow_root=True)
    env_vars = fields.checked_env_vars(violations, "env", request.env)
    pty = None
    if request.HasField("pty"):
        pty = terminal_size(request.pty.rows, request.pty.cols)
        if pty is None:
            violations.add("pty", "rows and cols must each be 1 to 1000")
    violations.raise_if_any()
    return Command(argv=tuple(request.argv), cwd=request.cwd, env_vars=env_vars), pty


def page(request: requests_pb2.ListProcessesRequest) -> tuple[int, int]:
    """(page size, offset) of a ListProcesses request."""
    size = request.page_size or _DEFAULT_PAGE_SIZE
    if not 0 < size <= _MAX_PAGE_SIZE:
        raise invalid_argument([("page_size", f"must be 1 to {_MAX_PAGE_SIZE} (0: 50)")])
    offset = 0
    if request.page_token:
        if not request.page_token.isdigit() or len(request.page_token) > 9:
            raise invalid_argument([("page_token", "use next_page_token of the previous page")])
        offset = int(request.page_token)
    return size, offset


def input_data(request: requests_pb2.WriteProcessInputRequest) -> bytes:
    """The bytes of a WriteProcessInput request, within the per-call bound."""
    if len(request.data) > MAX_INPUT_BYTES:
        raise invalid_argument(
            [("data", f"{len(request.data)} bytes; at most {MAX_INPUT_BYTES} per call")]
        )
    return request.data


def signal_number(value: int) -> int:
    """An allowed signal number."""
    if value not in ALLOWED_SIGNALS:
        allowed = ", ".join(str(int(s)) for s in sorted(ALLOWED_SIGNALS))
        raise invalid_argument([("signal", f"{value} is not allowed; use one of {allowed}")])
    return value


def resize(request: requests_pb2.ResizeProcessTerminalRequest) -> tuple[int, int]:
    """The new terminal size."""
    size = terminal_size(request.size.rows, request.size.cols)
    if size is None:
        raise invalid_argument([("size", "rows and cols must each be 1 to 1000")])
    return size


def _timestamp(seconds: float) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


def process(value: ManagedProcess) -> process_pb2.Process:
    """The Process resource."""
    message = process_pb2.Process(
        id=value.id,
        environment_id=value.environment_id,
        argv=value.argv,
        cwd=value.cwd,
        pid=value.pid,
        state=process_pb2.ProcessState.Value(f"PROCESS_STATE_{value.state}"),
        exit_code=value.exit_code,
        signal=value.signal,
        cpu_seconds=value.cpu_seconds,
        max_rss_bytes=value.max_rss_bytes,
        start_time=_timestamp(value.start_time),
        pty=value.pty,
        stdin_open=value.stdin_open,
        start_error=value.start_error,
    )
    if value.reason is not ExitReason.UNSPECIFIED:
        message.termination_reason = environment_pb2.ExitReason.Value(
            f"EXIT_REASON_{value.reason.value}"
        )
    if value.end_time is not None:
        message.end_time.CopyFrom(_timestamp(value.end_time))
    return message


def output_event(event: OutputEvent, owner: ManagedProcess) -> process_pb2.ProcessOutputEvent:
    """One event of StreamProcessOutput."""
    message = process_pb2.ProcessOutputEvent(sequence=event.sequence, time=_timestamp(event.time))
    if event.kind == "stdout":
        message.stdout = event.data
    elif event.kind == "stderr":
        message.stderr = event.data
    else:
        message.exited.CopyFrom(process(owner))
    return message
