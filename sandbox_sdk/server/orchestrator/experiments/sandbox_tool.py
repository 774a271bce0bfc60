"""The sandbox tool: shell commands a model asks for, run in the experiment's environment.

A tool call is written by the model, so by an attacker: its arguments are
parsed strictly (a JSON object whose only key is a ``command`` string), and the
command is never run or interpreted by the orchestrator. It goes to the
environment as the argv ``/bin/sh -c COMMAND`` through ``SandboxPort.run_command``,
the path every exec takes: the shell runs inside the sandbox, under its
namespaces, seccomp filter, cgroup and rlimits, with the tool's timeout, and
each output stream is cut at ``max_output_bytes`` by the sandbox layer.

A call is a *tool error* when it does not run to an exit of its own: a refused
call (unknown tool, bad arguments), a command that could not start, or one the
timeout or a signal ended. A non-zero exit code is an ordinary result.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from sandbox_sdk.models.execution import ExitReason
from sandbox_sdk.server.orchestrator.experiments.limits import MAX_TOOL_COMMAND_CHARS
from sandbox_sdk.server.orchestrator.experiments.providers.base import ToolCall, ToolDefinition
from sandbox_sdk.server.orchestrator.experiments.spec import SandboxToolSpec
from sandbox_sdk.server.orchestrator.ports import CommandResult, SandboxPort
from sandbox_sdk.server.status import ServiceError

TOOL_NAME = "run_command"
SHELL = ("/bin/sh", "-c")
SANDBOX_TOOL = ToolDefinition(
    name=TOOL_NAME,
    description=(
        "Run a shell command (/bin/sh -c) in the sandbox: an isolated Linux environment whose"
        " working directory is the workspace. Returns its stdout, its stderr and its exit code."
    ),
    parameters={
        "type": "object",
        "properties": {
            "command": {"type": "string", "description": "The shell command to run."},
        },
        "required": ["command"],
        "additionalProperties": False,
    },
)
# Arguments longer than this are refused before they are parsed.
_MAX_ARGUMENT_CHARS = 2 * MAX_TOOL_COMMAND_CHARS + 64


@dataclass(frozen=True)
class ToolOutcome:
    """What one tool call did: the command (clipped), the argv that ran (empty if none
    did), and the result the model is shown."""

    command: str
    argv: tuple[str, ...]
    exit_code: int
    stdout: str
    stderr: str
    truncated: bool
    is_error: bool
    ending: str = ""

    def for_model(self) -> str:
        """The result as the ``tool`` message the model reads next."""
        if not self.argv:
            return f"error: {self.stderr}"
        parts = [self.stdout]
        if self.stderr:
            parts.append(f"[stderr]\n{self.stderr}")
        if self.ending:
            parts.append(f"[{self.ending}]")
        elif self.exit_code != 0:
            parts.append(f"[exit code {self.exit_code}]")
        if self.truncated:
            parts.append("[output cut]")
        return "\n".join(part for part in parts if part)


class CommandRefusedError(ValueError):
    """A tool call that is not run; the message tells the model what to do instead."""


def command_of(call: ToolCall) -> str:
    """The command of a tool call; CommandRefusedError when the call is not a valid
    ``run_command`` call."""
    if call.name != TOOL_NAME:
        raise CommandRefusedError(f"there is no tool {call.name[:64]!r}; call {TOOL_NAME}")
    if len(call.arguments) > _MAX_ARGUMENT_CHARS:
        raise CommandRefusedError(f"the command is longer than {MAX_TOOL_COMMAND_CHARS} characters")
    try:
        arguments = json.loads(call.arguments)
    except (ValueError, RecursionError) as error:
        raise CommandRefusedError(f"the arguments are not JSON: {error}") from error
    if not isinstance(arguments, dict) or set(arguments) != {"command"}:
        raise CommandRefusedError('pass a JSON object with one key, "command"')
    command = arguments["command"]
    if not isinstance(command, str) or not command.strip():
        raise CommandRefusedError('"command" must be a non-empty string')
    if len(command) > MAX_TOOL_COMMAND_CHARS:
        raise CommandRefusedError(f"the command is longer than {MAX_TOOL_COMMAND_CHARS} characters")
    if "\x00" in command:
        raise CommandRefusedError("the command contains a NUL character")
    return command


class SandboxTool:
    """Runs an experiment's tool calls in its environment, within the spec's limits."""

    def __init__(self, spec: SandboxToolSpec, sandbox: SandboxPort, environment_id: str) -> None:
        self.spec = spec
        self.sandbox = sandbox
        self.environment_id = environment_id

    async def run(self, command: str) -> ToolOutcome:
        """Runs a command ``command_of`` accepted; never raises for the command's doing."""
        argv = (*SHELL, command)
        try:
            result = await self.sandbox.run_command(
                self.environment_id,
                argv,
                timeout=self.spec.command_timeout_seconds,
                output_limit_bytes=self.spec.max_output_bytes,
            )
        except ServiceError as error:
            return refused(command, f"the command could not run: {error.message}")
        except OSError as error:
            return refused(command, f"the command could not run: {error}")
        return self._outcome(command, argv, result)

    def _outcome(self, command: str, argv: tuple[str, ...], result: CommandResult) -> ToolOutcome:
        limit = self.spec.max_output_bytes
        exited = result.reason is ExitReason.EXITED
        return ToolOutcome(
            command=command,
            argv=argv,
            exit_code=result.exit_code if exited else -1,
            stdout=result.stdout[:limit].decode(errors="replace"),
            stderr=result.stderr[:limit].decode(errors="replace"),
            truncated=result.stdout_truncated or result.stderr_truncated,
            is_error=not exited,
            ending="" if exited else _ending(result, self.spec.command_timeout_seconds),
        )


def refused(command: str, reason: str) -> ToolOutcome:
    """The outcome of a call that did not run, telling the model why."""
    return ToolOutcome(
        command=command,
        argv=(),
        exit_code=-1,
        stdout="",
        stderr=reason,
        truncated=False,
        is_error=True,
    )


def _ending(result: CommandResult, timeout_seconds: float) -> str:
    if result.reason is ExitReason.TIMEOUT:
        return f"timed out after {timeout_seconds:g}s and was killed"
    if result.reason is ExitReason.OUT_OF_MEMORY:
        return "killed: out of memory"
    if result.reason is ExitReason.CPU_LIMIT:
        return "killed: CPU time limit"
    return f"ended abnormally ({result.reason.value.lower()})"
