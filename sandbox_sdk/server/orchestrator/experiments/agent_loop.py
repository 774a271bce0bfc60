"""The sandbox tool's bounded loop for one sample: model turn, tool calls, results, next turn.

Each turn is one model call offered the sandbox tool. A turn that ends without
tool calls is the final answer. Otherwise each call (at most
``MAX_CALLS_PER_TURN`` run; the rest are refused) is recorded as a ToolCall
event, run in the environment (see ``sandbox_tool``), recorded as a ToolResult
event, and sent back to the model as a ``tool`` message. The loop stops at the
final answer or after ``max_turns`` turns; calls asked for in the last turn are
not run, since no turn is left to read their results, and the sample's finish
reason is then ``max_turns``. The sample's output is the last text the model
wrote.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from sandbox_sdk.server.orchestrator.experiments.events import ExperimentWriter
from sandbox_sdk.server.orchestrator.experiments.generation import Generation
from sandbox_sdk.server.orchestrator.experiments.limits import MAX_TOOL_COMMAND_CHARS
from sandbox_sdk.server.orchestrator.experiments.providers.base import (
    ChatMessage,
    GenerationRequest,
    TokenUsage,
    ToolCall,
)
from sandbox_sdk.server.orchestrator.experiments.records import ToolCallEvent, ToolResultEvent
from sandbox_sdk.server.orchestrator.experiments.sandbox_tool import (
    SANDBOX_TOOL,
    SHELL,
    CommandRefusedError,
    SandboxTool,
    ToolOutcome,
    command_of,
    refused,
)

# More calls than this in one turn are refused: each runs a command and adds its output
# to the conversation, so this bounds a turn's work and the conversation's growth.
MAX_CALLS_PER_TURN = 4
MAX_TURNS_FINISH_REASON = "max_turns"

Generate = Callable[[int, int, GenerationRequest], Awaitable[Generation]]


@dataclass(frozen=True)
class AgentResult:
    """A sample's loop: the combined generation (last text, summed tokens and model time,
    the first turn's time to first token) and its counts."""

    generation: Generation
    turns: int
    tool_calls: int
    tool_errors: int


@dataclass
class _Progress:
    """What the loop has done so far."""

    turns: int = 0
    tool_calls: int = 0
    tool_errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_seconds: float = 0.0
    first_token_seconds: float | None = None
    last_text: str = ""

    def add(self, generation: Generation) -> None:
        self.turns += 1
        self.prompt_tokens += generation.usage.prompt_tokens
        self.completion_tokens += generation.usage.completion_tokens
        self.latency_seconds += generation.latency_seconds
        if self.first_token_seconds is None:
            self.first_token_seconds = generation.time_to_first_token_seconds
        if generation.output:
            self.last_text = generation.output

    def result(self, finish_reason: str, error: str = "") -> AgentResult:
        generation = Generation(
            output=self.last_text,
            usage=TokenUsage(self.prompt_tokens, self.completion_tokens),
            finish_reason=finish_reason,
            latency_seconds=self.latency_seconds,
            time_to_first_token_seconds=self.first_token_seconds or 0.0,
            error=error,
        )
        return AgentResult(generation, self.turns, self.tool_calls, self.tool_errors)


class AgentLoop:
    """Runs samples through the bounded model-tool loop, recording the transcript."""

    def __init__(
        self,
        tool: SandboxTool,
        generate: Generate,
        writer: ExperimentWriter,
        before_turn: Callable[[], None],
    ) -> None:
        self.tool = tool
        self.generate = generate
        self.writer = writer
        # Raises to stop the experiment (its environment ended).
        self.before_turn = before_turn

    async def run(self, index: int, repeat: int, request: GenerationRequest) -> AgentResult:
        """Loops until the model answers without tool calls or ``max_turns`` is reached."""
        messages = list(request.messages)
        progress = _Progress()
        max_turns = self.tool.spec.max_turns
        while True:
            self.before_turn()
            turn_request = dataclasses.replace(
                request, messages=tuple(messages), tools=(SANDBOX_TOOL,)
            )
            generation = await self.generate(index, repeat, turn_request)
            progress.add(generation)
            if generation.error:
                return progress.result("error", generation.error)
            if not generation.tool_calls:
                return progress.result(generation.finish_reason)
            if progress.turns >= max_turns:
                return progress.result(MAX_TURNS_FINISH_REASON)
            messages.append(
                ChatMessage("assistant", generation.output, tool_calls=generation.tool_calls)
            )
            for number, call in enumerate(generation.tool_calls):
                outcome = await self._call(index, repeat, progress, call, number)
                messages.append(ChatMessage("tool", outcome.for_model(), tool_call_id=call.call_id))

    async def _call(
        self, index: int, repeat: int, progress: _Progress, call: ToolCall, number: int
    ) -> ToolOutcome:
        """Records the call, runs (or refuses) it, and records its result."""
        turn = progress.turns
        command, argv, refusal = _checked(call, number)
        await self.writer.emit([ToolCallEvent(index, repeat, turn, command, argv)])
        outcome = refused(command, refusal) if refusal else await self.tool.run(command)
        progress.tool_calls += 1
        progress.tool_errors += int(outcome.is_error)
        result = ToolResultEvent(
            index,
            repeat,
            turn,
            outcome.exit_code,
            outcome.stdout,
            outcome.stderr,
            outcome.truncated,
        )
        await self.writer.emit([result])
        return outcome


def _checked(call: ToolCall, number: int) -> tuple[str, tuple[str, ...], str]:
    """The command to run and its argv, or what the call showed and why it is refused."""
    if number >= MAX_CALLS_PER_TURN:
        reason = f"at most {MAX_CALLS_PER_TURN} tool calls run per turn; call fewer at once"
        return call.arguments[:MAX_TOOL_COMMAND_CHARS], (), reason
    try:
        command = command_of(call)
    except CommandRefusedError as error:
        return call.arguments[:MAX_TOOL_COMMAND_CHARS], (), str(error)
    return command, (*SHELL, command), ""
