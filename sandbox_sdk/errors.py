"""Typed errors raised by the SDK, and the error reasons the services send.

Every failed call surfaces as a :class:`SandboxError` subclass chosen from the
gRPC status code and the ``google.rpc.ErrorInfo`` reason the server attached.
The original :class:`grpc.RpcError` is kept as ``__cause__``.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

ERROR_DOMAIN = "sandbox.v1"
STATUS_DETAILS_KEY = "grpc-status-details-bin"
REQUEST_ID_KEY = "x-request-id"


class ErrorReason(enum.StrEnum):
    """Values of ``ErrorInfo.reason`` in the ``sandbox.v1`` domain."""

    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    API_KEY_MISSING = "API_KEY_MISSING"
    API_KEY_MALFORMED = "API_KEY_MALFORMED"
    API_KEY_INVALID = "API_KEY_INVALID"
    API_KEY_REVOKED = "API_KEY_REVOKED"
    API_KEY_EXPIRED = "API_KEY_EXPIRED"
    SCOPE_MISSING = "SCOPE_MISSING"
    CROSS_TENANT_DENIED = "CROSS_TENANT_DENIED"
    ENVIRONMENT_NOT_FOUND = "ENVIRONMENT_NOT_FOUND"
    EXPERIMENT_NOT_FOUND = "EXPERIMENT_NOT_FOUND"
    MODEL_NOT_FOUND = "MODEL_NOT_FOUND"
    API_KEY_NOT_FOUND = "API_KEY_NOT_FOUND"
    FILE_NOT_FOUND = "FILE_NOT_FOUND"
    ENVIRONMENT_NOT_RUNNING = "ENVIRONMENT_NOT_RUNNING"
    EXPERIMENT_FINISHED = "EXPERIMENT_FINISHED"
    CAPACITY_EXHAUSTED = "CAPACITY_EXHAUSTED"
    QUOTA_EXCEEDED = "QUOTA_EXCEEDED"
    RATE_LIMITED = "RATE_LIMITED"
    RATE_LIMITER_UNAVAILABLE = "RATE_LIMITER_UNAVAILABLE"
    ORCHESTRATOR_UNAVAILABLE = "ORCHESTRATOR_UNAVAILABLE"
    NO_HEALTHY_ORCHESTRATOR = "NO_HEALTHY_ORCHESTRATOR"
    ORCHESTRATOR_RESTARTED = "ORCHESTRATOR_RESTARTED"
    ORCHESTRATOR_LOST = "ORCHESTRATOR_LOST"
    MODEL_ERROR = "MODEL_ERROR"
    EVALUATION_ERROR = "EVALUATION_ERROR"
    SCORER_FAILED = "SCORER_FAILED"
    TIMEOUT = "TIMEOUT"
    NETWORK_NOT_ALLOWED = "NETWORK_NOT_ALLOWED"
    NETWORK_UNAVAILABLE = "NETWORK_UNAVAILABLE"
    DISK_FULL = "DISK_FULL"
    LISTING_IN_PROGRESS = "LISTING_IN_PROGRESS"
    DIRECTORY_TOO_LARGE = "DIRECTORY_TOO_LARGE"
    CANCELLED = "CANCELLED"
    INTERNAL = "INTERNAL"
    # The server does not serve this call (yet): an older orchestrator behind the gateway.
    NOT_IMPLEMENTED = "NOT_IMPLEMENTED"
    # Templates (#14).
    TEMPLATE_NOT_FOUND = "TEMPLATE_NOT_FOUND"
    TEMPLATE_IN_USE = "TEMPLATE_IN_USE"
    TEMPLATE_NOT_READY = "TEMPLATE_NOT_READY"
    TEMPLATE_READ_ONLY = "TEMPLATE_READ_ONLY"
    # Files (#14): a rename's destination exists; a directory to remove is not empty.
    FILE_EXISTS = "FILE_EXISTS"
    DIRECTORY_NOT_EMPTY = "DIRECTORY_NOT_EMPTY"
    # Processes (#15): no such process in the environment; the process has ended;
    # its stdin was closed or never opened; it has no terminal to resize; the output
    # asked for is older than the oldest kept (metadata "oldest_sequence").
    PROCESS_NOT_FOUND = "PROCESS_NOT_FOUND"
    PROCESS_NOT_RUNNING = "PROCESS_NOT_RUNNING"
    STDIN_CLOSED = "STDIN_CLOSED"
    NOT_A_TERMINAL = "NOT_A_TERMINAL"
    OUTPUT_EXPIRED = "OUTPUT_EXPIRED"
    # Port forwarding (#15): nothing listens on the port inside the environment; the
    # server there reset the connection.
    PORT_NOT_LISTENING = "PORT_NOT_LISTENING"
    CONNECTION_RESET = "CONNECTION_RESET"
    # Isolation runtimes (#17): the runtime asked for is weaker than the operator's
    # minimum for the tenant; the runtime resolved to is not installed on the orchestrator.
    RUNTIME_NOT_ALLOWED = "RUNTIME_NOT_ALLOWED"
    RUNTIME_NOT_INSTALLED = "RUNTIME_NOT_INSTALLED"


@dataclass(frozen=True)
class FieldViolation:
    """One invalid field: its dotted path and what is wrong with it."""

    field: str
    description: str


@dataclass(frozen=True)
class QuotaViolation:
    """One exceeded quota: what was limited and by how much."""

    subject: str
    description: str


class SandboxError(Exception):
    """Base of every error the SDK raises.

    Attributes:
        code: the gRPC status code, or ``None`` for errors raised before any call.
        reason: the ``ErrorInfo.reason`` (UPPER_SNAKE_CASE), or ``""``.
        request_id: the server's id for the failed call; quote it in bug reports.
        metadata: ``ErrorInfo.metadata``, extra facts about the failure.
        retry_after: seconds the server asked the client to wait, if any.
        advice: what to do about this kind of error when retrying is not enough.
    """

    default_code: grpc.StatusCode | None = None
    advice: ClassVar[str] = ""

    def __init__(
        self,
        message: str,
        *,
        code: grpc.StatusCode | None = None,
        reason: str = "",
        request_id: str = "",
        metadata: Mapping[str, str] | None = None,
        retry_after: float | None = None,
        field_violations: Sequence[FieldViolation] = (),
        quota_violations: Sequence[QuotaViolation] = (),
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code if code is not None else self.default_code
        self.reason = reason
        self.request_id = request_id
        self.metadata: dict[str, str] = dict(metadata or {})
        self.retry_after = retry_after
        self.field_violations: tuple[FieldViolation, ...] = tuple(field_violations)
        self.quota_violations: tuple[QuotaViolation, ...] = tuple(quota_violations)

    def __str__(self) -> str:
        parts = [self.message]
        parts.extend(f"  {v.field}: {v.description}" for v in self.field_violations)
        parts.extend(f"  {v.subject}: {v.description}" for v in self.quota_violations)
        if self.retry_after is not None:
            parts.append(f"  retry after {self.retry_after:.1f}s")
        if self.request_id:
            parts.append(f"  (request id {self.request_id})")
        return "\n".join(parts)


class ConfigError(SandboxError):
    """The client's configuration is invalid; the message names the key."""


class AuthenticationError(SandboxError):
    """No API key, or one that is malformed, unknown, revoked or expired."""

    default_code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDeniedError(SandboxError):
    """The API key is valid but lacks the scope the call needs, or names another tenant."""

    default_code = grpc.StatusCode.PERMISSION_DENIED


class NotFoundError(SandboxError):
    """The environment, experiment, model or file does not exist for this tenant."""

    default_code = grpc.StatusCode.NOT_FOUND


class AlreadyExistsError(SandboxError):
    """The resource exists already."""

    default_code = grpc.StatusCode.ALREADY_EXISTS


class InvalidArgumentError(SandboxError):
    """The request was rejected; ``field_violations`` says which fields and why."""

    default_code = grpc.StatusCode.INVALID_ARGUMENT


class FailedPreconditionError(SandboxError):
    """The resource is not in a state that allows the call (e.g. a deleted environment)."""

    default_code = grpc.StatusCode.FAILED_PRECONDITION


class ResourceExhaustedError(SandboxError):
    """Something ran out; the subclass says what: capacity, a quota or the rate limit.

    ``retry_after`` is how long the server asked the caller to wait, when it did.
    """

    default_code = grpc.StatusCode.RESOURCE_EXHAUSTED
    advice: ClassVar[str] = "retry later, or ask for less"


class CapacityExhaustedError(ResourceExhaustedError):
    """The orchestrators have no room now (reason CAPACITY_EXHAUSTED), for every tenant.

    Deletes free room within a second, so ``retry_after`` is short and the SDK
    retries by itself within its retry deadline.
    """

    advice: ClassVar[str] = (
        "delete environments you no longer need, ask for smaller limits, or allow a longer "
        "wait with a larger retry deadline (RetryPolicy(deadline=...), retry.deadline)"
    )


class QuotaExceededError(ResourceExhaustedError):
    """A quota of the tenant or the environment is used up (reason QUOTA_EXCEEDED).

    ``quota_violations`` names the quota; waiting helps only once something is freed.
    """

    advice: ClassVar[str] = (
        "free what the quota counts (delete environments, wait for or cancel experiments, "
        "delete files) or ask the operator to raise the tenant's quota"
    )


class RateLimitedError(ResourceExhaustedError):
    """The tenant sent more calls per second than its rate limit (reason RATE_LIMITED).

    ``retry_after`` is when the tenant's token bucket has a token again for this caller.
    """

    advice: ClassVar[str] = (
        "send fewer calls per second (spread them out, or share one client), allow a longer "
        "wait with a larger retry deadline, or ask the operator to raise the tenant's "
        "requests_per_second or burst"
    )


class SandboxTimeoutError(SandboxError):
    """The call's deadline, or a wait on an experiment, ran out."""

    default_code = grpc.StatusCode.DEADLINE_EXCEEDED


class CancelledError(SandboxError):
    """The call was cancelled."""

    default_code = grpc.StatusCode.CANCELLED


class UnavailableError(SandboxError):
    """The service or the orchestrator owning the resource cannot be reached now."""

    default_code = grpc.StatusCode.UNAVAILABLE


class InternalError(SandboxError):
    """The service failed; quote ``request_id`` when reporting it."""

    default_code = grpc.StatusCode.INTERNAL


class ExperimentFailedError(SandboxError):
    """An experiment ended FAILED, TIMED_OUT or CANCELLED; ``reason`` says why."""


class TemplateBuildFailedError(SandboxError):
    """A template's build ended FAILED; the message says why, its build log says more."""


class TemplateInUseError(FailedPreconditionError):
    """A template environments still use cannot be deleted (reason TEMPLATE_IN_USE).

    The message names those environments: delete them first.
    """


_CLASS_BY_CODE: dict[grpc.StatusCode, type[SandboxError]] = {
    grpc.StatusCode.UNAUTHENTICATED: AuthenticationError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExistsError,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.OUT_OF_RANGE: InvalidArgumentError,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPreconditionError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    grpc.StatusCode.DEADLINE_EXCEEDED: SandboxTimeoutError,
    grpc.StatusCode.CANCELLED: CancelledError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.INTERNAL: InternalError,
    grpc.StatusCode.UNKNOWN: InternalError,
    grpc.StatusCode.DATA_LOSS: InternalError,
    grpc.StatusCode.UNIMPLEMENTED: InternalError,
    grpc.StatusCode.ABORTED: UnavailableError,
}

# The reason refines the code: the class follows the ErrorInfo reason, whichever
# service (gateway or orchestrator) produced the error.
_CLASS_BY_REASON: dict[str, type[SandboxError]] = {
    ErrorReason.CAPACITY_EXHAUSTED: CapacityExhaustedError,
    ErrorReason.QUOTA_EXCEEDED: QuotaExceededError,
    ErrorReason.RATE_LIMITED: RateLimitedError,
    ErrorReason.TEMPLATE_IN_USE: TemplateInUseError,
}


@dataclass
class _StatusDetails:
    reason: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    request_id: str = ""
    retry_after: float | None = None
    field_violations: list[FieldViolation] = field(default_factory=list)
    quota_violations: list[QuotaViolation] = field(default_factory=list)


def _unpack_details(details: Sequence[any_pb2.Any]) -> _StatusDetails:
    parsed = _StatusDetails()
    for detail in details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            parsed.reason = info.reason
            parsed.metadata = dict(info.metadata)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            parsed.field_violations = [
                FieldViolation(v.field, v.description) for v in bad.field_violations
            ]
        elif detail.Is(error_details_pb2.QuotaFailure.DESCRIPTOR):
            quota = error_details_pb2.QuotaFailure()
            detail.Unpack(quota)
            parsed.quota_violations = [
                QuotaViolation(v.subject, v.description) for v in quota.violations
            ]
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            detail.Unpack(retry)
            parsed.retry_after = retry.retry_delay.ToTimedelta().total_seconds()
        elif detail.Is(error_details_pb2.RequestInfo.DESCRIPTOR):
            request = error_details_pb2.RequestInfo()
            detail.Unpack(request)
            parsed.request_id = request.request_id
    return parsed


def _metadata_value(metadata: Any, key: str) -> str | bytes | None:
    for item in metadata or ():
        if item[0] == key:
            value: str | bytes = item[1]
            return value
    return None


def error_class(code: grpc.StatusCode, reason: str) -> type[SandboxError]:
    """The class of an error with this status code and ``ErrorInfo`` reason.

    The reason picks the class when it names a narrower one of the code's class
    (CAPACITY_EXHAUSTED, QUOTA_EXCEEDED and RATE_LIMITED under RESOURCE_EXHAUSTED);
    otherwise the code does.
    """
    by_code = _CLASS_BY_CODE.get(code, SandboxError)
    by_reason = _CLASS_BY_REASON.get(reason)
    if by_reason is not None and issubclass(by_reason, by_code):
        return by_reason
    return by_code


def from_rpc_error(error: grpc.RpcError) -> SandboxError:
    """Turns a gRPC error (sync or aio) into the matching :class:`SandboxError`."""
    code: grpc.StatusCode = error.code()
    message: str = error.details() or code.name
    trailing = error.trailing_metadata()
    details = _StatusDetails()
    raw = _metadata_value(trailing, STATUS_DETAILS_KEY)
    if isinstance(raw, bytes):
        status = status_pb2.Status.FromString(raw)
        details = _unpack_details(status.details)
    if not details.request_id:
        request_id = _metadata_value(trailing, REQUEST_ID_KEY)
        details.request_id = request_id if isinstance(request_id, str) else ""
    cls = error_class(code, details.reason)
    return cls(
        message,
        code=code,
        reason=details.reason,
        request_id=details.request_id,
        metadata=details.metadata,
        retry_after=details.retry_after,
        field_violations=details.field_violations,
        quota_violations=details.quota_violations,
    )
