"""The errors the sandbox layer raises, with what the caller should do next."""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from pathlib import Path

import grpc

from sandbox_sdk.errors import ErrorReason
from sandbox_sdk.server.orchestrator.sandbox.environment_record import (
    Environment,
    TerminationReason,
)
from sandbox_sdk.server.orchestrator.sandbox.workspace import (
    WorkspaceFileTooLarge,
    WorkspacePathError,
    WorkspaceQuotaExceeded,
)
from sandbox_sdk.server.status import ServiceError, disk_full, invalid_argument, not_found

# Less than this free on the host's file system counts as full.
_HOST_DISK_FULL_BYTES = 1 << 20


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


def _host_disk_full(host_root: Path | None) -> bool:
    if host_root is None:
        return False
    try:
        info = os.statvfs(host_root)
    except OSError:
        return False
    return info.f_bavail * info.f_frsize < _HOST_DISK_FULL_BYTES


@contextlib.contextmanager
def file_errors(
    field_path: str, path: str, quota_bytes: int, host_root: Path | None = None
) -> Iterator[None]:
    """Turns workspace errors into the statuses the file calls promise.

    ``host_root`` is where workspaces live on the host: a write that failed for
    want of space there is DISK_FULL, not the workspace's quota.
    """
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
        if error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO):
            if _host_disk_full(host_root):
                raise disk_full() from error
            if error.errno != errno.EIO:
                raise quota_exceeded(quota_bytes) from error
        raise
