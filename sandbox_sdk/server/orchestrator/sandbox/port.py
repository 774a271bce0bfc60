"""The sandbox layer as the experiment engine sees it: ``ports.SandboxPort``.

Experiments run commands and read files in environments their tenant owns;
these calls come from inside the orchestrator, after the engine checked the
tenant once (:meth:`SandboxPortAdapter.require_running`), so they take an
environment id alone.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence

from sandbox_sdk.server.orchestrator.ports import CommandResult, UsageSample
from sandbox_sdk.server.orchestrator.sandbox import validation
from sandbox_sdk.server.orchestrator.sandbox.activity import Activity
from sandbox_sdk.server.orchestrator.sandbox.environment_record import ExecExited, ExecOutput
from sandbox_sdk.server.orchestrator.sandbox.environments import LiveEnvironments
from sandbox_sdk.server.orchestrator.sandbox.execution import Execution


class SandboxPortAdapter:
    """Implements ``ports.SandboxPort`` over the live environments."""

    def __init__(
        self, environments: LiveEnvironments, activity: Activity, execution: Execution
    ) -> None:
        self._environments = environments
        self._activity = activity
        self._execution = execution

    def require_running(self, tenant: str, environment_id: str) -> None:
        """Raises NOT_FOUND (unknown, another tenant's) or FAILED_PRECONDITION (not RUNNING)."""
        self._environments.running(tenant, environment_id)

    async def run_command(
        self,
        environment_id: str,
        argv: Sequence[str],
        *,
        stdin: bytes = b"",
        timeout: float = 10.0,
        env_vars: Mapping[str, str] | None = None,
        output_limit_bytes: int = 1 << 20,
    ) -> CommandResult:
        """Runs a command in the environment's sandbox and waits for it."""
        environments = self._environments
        runtime = environments.live(environment_id) or environments.running_by_id(environment_id)[1]
        command = validation.internal_command(
            argv,
            env_vars=env_vars or {},
            stdin=stdin,
            timeout_seconds=timeout,
            output_cap_bytes=output_limit_bytes,
        )
        output: dict[str, bytearray] = {"stdout": bytearray(), "stderr": bytearray()}
        exited: ExecExited | None = None
        events = self._execution.exec(environment_id, runtime, command)
        async with contextlib.aclosing(events):
            async for event in events:
                if isinstance(event, ExecOutput):
                    output[event.stream] += event.data
                elif isinstance(event, ExecExited):
                    exited = event
        if exited is None:
            raise RuntimeError(f"command {argv[0]!r} ended without an exit event")
        return CommandResult(
            exit_code=exited.exit_code,
            reason=exited.reason,
            stdout=bytes(output["stdout"]),
            stderr=bytes(output["stderr"]),
            stdout_truncated=exited.stdout_truncated,
            stderr_truncated=exited.stderr_truncated,
            cpu_seconds=exited.cpu_seconds,
            memory_peak_bytes=exited.memory_peak_bytes,
            duration_seconds=exited.duration_seconds,
        )

    def read_file(self, environment_id: str, path: str) -> bytes:
        """Reads a workspace file; INVALID_ARGUMENT or NOT_FOUND on bad paths."""
        _, runtime = self._environments.running_by_id(environment_id)
        return self._execution.read(environment_id, runtime, path)[1]

    def exec_timeout_seconds(self, environment_id: str) -> float:
        """The environment's exec timeout: the longest a command in it may run."""
        _, runtime = self._environments.running_by_id(environment_id)
        return runtime.spec.limits.exec_timeout_seconds

    def usage(self, environment_id: str) -> UsageSample:
        """A fresh usage sample of the environment."""
        _, runtime = self._environments.running_by_id(environment_id)
        sample = runtime.sample()
        return UsageSample(
            cpu_seconds=sample.cpu_seconds,
            cpu_percent=sample.cpu_percent,
            memory_bytes=sample.memory_bytes,
            memory_peak_bytes=sample.memory_peak_bytes,
            pids=sample.pids,
            disk_bytes=sample.disk_bytes,
        )

    def touch(self, environment_id: str) -> None:
        """Records activity, which postpones idle expiry (see ``activity.Activity.touch``)."""
        self._activity.touch(environment_id)

    def on_terminated(self, callback: Callable[[str], None]) -> None:
        """Calls ``callback(environment_id)`` when an environment ends for any reason."""
        self._environments.on_terminated(callback)
