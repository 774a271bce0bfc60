"""Commands for inspect: the SDK's exec, with inspect's cwd, timeout, exit status and limits.

Commands start in the workspace (``/workspace``), the per-sample directory inspect
resolves relative paths against. The SDK's ``cwd`` reaches only inside the workspace;
inspect's may be anywhere (``/usr/bin``), so a command with a ``cwd`` starts under a
``/bin/sh`` (by absolute path) that changes directory and then ``exec`` s it, looking
the program up in the environment's own ``PATH`` as inspect requires.
"""

from __future__ import annotations

import signal
from collections.abc import Mapping, Sequence

from inspect_ai.util import ExecResult as InspectExecResult
from inspect_ai.util import SandboxEnvironmentLimits, SandboxUnavailableError

from sandbox_sdk import AsyncSandbox, ExecResult, ExitReason
from sandbox_sdk.integrations.inspect_ai.errors import inspect_errors

SHELL = "/bin/sh"
_CHANGE_DIRECTORY = 'cd -- "$1" || exit; shift; exec "$@"'
_CANNOT_EXECUTE = 126


def with_cwd(cmd: Sequence[str], cwd: str | None) -> list[str]:
    """``cmd`` run in ``cwd`` (absolute, or relative to the workspace)."""
    if cwd is None:
        return list(cmd)
    return [SHELL, "-c", _CHANGE_DIRECTORY, "sh", cwd, *cmd]


async def run_checked(
    sandbox: AsyncSandbox,
    argv: Sequence[str],
    *,
    stdin: bytes | str | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,
) -> ExecResult:
    """Runs ``argv`` and returns the SDK's result of a command that ended by itself or by
    a signal; a timeout raises TimeoutError and an environment that went away
    SandboxUnavailableError."""
    with inspect_errors():
        result = await sandbox.exec(argv, stdin=stdin, env=env, timeout=timeout)
    if result.reason is ExitReason.TIMEOUT:
        raise _timed_out(result, timeout)
    if result.reason is ExitReason.CANCELLED:
        raise SandboxUnavailableError(
            f"the command was cancelled because environment {sandbox.id} is ending"
        )
    return result


def inspect_result(result: ExecResult, cmd: Sequence[str]) -> InspectExecResult[str]:
    """The SDK's result as inspect's: a shell-style exit status (128 + signal), and each
    stream cut to its last ``MAX_EXEC_OUTPUT_SIZE`` bytes as inspect's local provider does.

    A program the sandbox cannot execute for lack of permission raises PermissionError.
    """
    returncode = exit_status(result)
    stdout = _tail(result.stdout_bytes)
    stderr = _tail(result.stderr_bytes)
    if returncode == _CANNOT_EXECUTE and _could_not_execute(stderr, cmd[0]):
        raise PermissionError(f"permission denied executing {cmd[0]!r}: {stderr.strip()}")
    return InspectExecResult(
        success=returncode == 0, returncode=returncode, stdout=stdout, stderr=stderr
    )


def exit_status(result: ExecResult) -> int:
    """The status a shell reports: the exit code, or 128 + the signal that ended it."""
    if result.reason is ExitReason.EXITED:
        return result.exit_code
    return 128 + (result.signal or signal.SIGKILL)


def _tail(output: bytes) -> str:
    limit = SandboxEnvironmentLimits.MAX_EXEC_OUTPUT_SIZE
    return output[-limit:].decode("utf-8", errors="replace")


def _could_not_execute(stderr: str, program: str) -> bool:
    """Whether the agent (``cannot run 'X'``) or the cwd shell (``exec: X:``) refused it."""
    folded = stderr.casefold()
    return "permission denied" in folded and (
        f"cannot run '{program}'".casefold() in folded or f"{program}:".casefold() in folded
    )


def _timed_out(result: ExecResult, timeout: float | None) -> TimeoutError:
    limit = f"{timeout:g} seconds" if timeout is not None else "the environment's exec_timeout"
    error = TimeoutError(f"Command timed out after {limit}")
    partial = result.stdout + result.stderr
    if partial:
        error.truncated_output = partial  # type: ignore[attr-defined]  # inspect reads it
    return error
