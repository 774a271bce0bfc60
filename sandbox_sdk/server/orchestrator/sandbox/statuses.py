"""The errors the sandbox layer raises, with what the caller should do next."""

from __future__ import annotations

import contextlib
import errno
from collections.abc import Iterator

import grpc

from sandbox_sdk.errors import ErrorReason
from sandbox_sdk.server.orchestrator.sandbox.model import Environment, TerminationReason
from sandbox_sdk.server.orchestrator.sandbox.workspace import (
    WorkspaceFileTooLarge,
    WorkspacePathError,
    WorkspaceQuotaExceeded,
)
from sandbox_sdk.server.status import ServiceError, invalid_argument, not_found


def not_running(environment: Environment) -> ServiceError:
    """FAILED_PRECONDITION: the environment is not RUNNING (and why)."""
    detail = environment.state.value
    if environment.termination_reason is not TerminationReason.UNSPECIFIED:
        detail += f" ({environment.termination_reason.value}: {environment.termination_message})"
    return ServiceError(
        grpc.StatusCode.FAILED_PRECONDITION,
        ErrorReason.ENVIRONMENT_NOT_RUNNING,
        f"environment {environment.id} is {detail}; create a new environment",
    )


def environment_not_found(environment_id: str) -> ServiceError:
    """NOT_FOUND: no such environment for this tenant."""
    return not_found(
        ErrorReason.ENVIRONMENT_NOT_FOUND,
        f"environment {environment_id} not found; ListEnvironments shows yours",
    )


def quota_exceeded(quota_bytes: int) -> ServiceError:
    """RESOURCE_EXHAUSTED: the workspace is full."""
    return ServiceError(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        ErrorReason.QUOTA_EXCEEDED,
        f"the workspace's disk quota of {quota_bytes} bytes is used up; delete files or "
        "create the environment with a larger spec.limits.disk_bytes",
        quota_violations=[("disk_bytes", f"the workspace may hold {quota_bytes} bytes")],
    )


@contextlib.contextmanager
def file_errors(field_path: str, path: str, quota_bytes: int) -> Iterator[None]:
    """Turns workspace errors into the statuses the file calls promise."""
    try:
        yield
    except WorkspacePathError as error:
        raise invalid_argument([(field_path, f"'{path}' {error}")]) from error
    except WorkspaceFileTooLarge as error:
        raise invalid_argument([(field_path, f"'{path}' {error}")]) from error
    except FileNotFoundError as error:
        raise not_found(
            ErrorReason.FILE_NOT_FOUND,
            f"'{path}' does not exist in the workspace; ListFiles shows what is there",
        ) from error
    except WorkspaceQuotaExceeded as error:
        raise quota_exceeded(quota_bytes) from error
    except OSError as error:
        if error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            raise quota_exceeded(quota_bytes) from error
        raise
