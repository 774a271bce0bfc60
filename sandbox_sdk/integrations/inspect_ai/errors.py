"""The SDK's typed errors as the exceptions inspect's sandbox contract names."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from inspect_ai.util import SandboxUnavailableError

from sandbox_sdk import (
    ErrorReason,
    FailedPreconditionError,
    NotFoundError,
    SandboxTimeoutError,
    UnavailableError,
)

_GONE_REASONS = (
    ErrorReason.ENVIRONMENT_NOT_FOUND,
    ErrorReason.ENVIRONMENT_NOT_RUNNING,
    ErrorReason.ORCHESTRATOR_LOST,
)


@contextlib.contextmanager
def inspect_errors() -> Iterator[None]:
    """Re-raises a call's deadline as TimeoutError and an environment that is gone or
    unreachable as SandboxUnavailableError (so a tool call reports it as the sandbox's
    failure, not the command's); other SDK errors pass through with their advice."""
    try:
        yield
    except SandboxTimeoutError as error:
        raise TimeoutError(str(error)) from error
    except UnavailableError as error:
        raise SandboxUnavailableError(
            f"the sandbox-sdk gateway or the environment's orchestrator cannot be reached: {error}"
        ) from error
    except (NotFoundError, FailedPreconditionError) as error:
        if error.reason not in _GONE_REASONS:
            raise
        raise SandboxUnavailableError(
            f"the sandbox-sdk environment is no longer running (deleted, expired, or its "
            f"orchestrator stopped): {error}"
        ) from error
