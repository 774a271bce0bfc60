"""The ``scripted`` provider: deterministic answers, and injected faults.

It answers from a table keyed by prompt, a template, or by echoing the
prompt, streamed in word-sized chunks. Its faults (latency, rate limits,
timeouts, dropped streams, hard errors) exercise the engine's retry,
timeout and cancellation paths with no network involved.

When the request offers tools, the answer is read as a *tool script*: its
leading lines of the form ``$ COMMAND`` are tool calls, one per turn (the
first turn calls the first command, and so on), and the rest is the final
answer, in which ``{output}`` stands for the last tool result. A script of
commands alone never answers: it repeats its last command. So the prompt
``"$ echo hi\nIt printed {output}"`` on the echoing model calls
``run_command`` with ``echo hi``, then answers ``It printed hi``.

It is as fast as a model can be, so it behaves as a good neighbour must:
it yields to the event loop every ``YIELD_EVERY_CHUNKS`` chunks, and
splits long texts into chunks on a worker thread.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncGenerator
from dataclasses import dataclass

from sandbox_sdk.errors import ErrorReason
from sandbox_sdk.server.orchestrator.experiments.providers.base import (
    GenerationEnd,
    GenerationRequest,
    ModelProvider,
    ProviderError,
    StreamItem,
    TextDelta,
    TokenUsage,
    ToolCall,
)
from sandbox_sdk.server.orchestrator.experiments.settings import (
    ModelConfig,
    ScriptedFault,
    ScriptedOptions,
)

_CHUNK = re.compile(r"\s*\S+|\s+")
YIELD_EVERY_CHUNKS = 32
# Texts longer than this are split into chunks on a worker thread.
THREAD_SPLIT_CHARS = 16_384
COMMAND_PREFIX = "$ "
OUTPUT_PLACEHOLDER = "{output}"
TOOL_NAME = "run_command"


@dataclass(frozen=True)
class ToolScript:
    """A scripted answer read as tool calls (one per turn) and a final answer."""

    commands: tuple[str, ...]
    answer: str

    @classmethod
    def parse(cls, text: str) -> ToolScript:
        """The ``$ COMMAND`` lines leading ``text``, and the rest as the answer."""
        lines = text.split("\n")
        count = 0
        while count < len(lines) and lines[count].startswith(COMMAND_PREFIX):
            count += 1
        commands = tuple(line[len(COMMAND_PREFIX) :] for line in lines[:count])
        return cls(commands, "\n".join(lines[count:]).strip("\n"))

    def turn(self, request: GenerationRequest) -> tuple[str, ToolCall | None]:
        """The text and tool call of the request's turn."""
        taken = _turns_taken(request)
        if self.commands and (taken < len(self.commands) or not self.answer):
            command = self.commands[min(taken, len(self.commands) - 1)]
            arguments = json.dumps({"command": command})
            return "", ToolCall(f"call-{taken + 1}", TOOL_NAME, arguments)
        output = _last(request, "tool").strip()
        return self.answer.replace(OUTPUT_PLACEHOLDER, output), None


class ScriptedProvider(ModelProvider):
    """Answers deterministically and injects the configured faults in order."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        self.options = config.options_of(ScriptedOptions)
        self._faults_left = [fault.calls for fault in self.options.faults]
        self.calls = 0

    def answer(self, request: GenerationRequest) -> str:
        """The full answer to ``request``, before max_tokens and stop strings apply."""
        prompt = _last(request, "user")
        if prompt in self.options.responses:
            return self.options.responses[prompt]
        if not self.options.template:
            return prompt
        try:
            return self.options.template.format(
                prompt=prompt, system=_last(request, "system"), seed=request.seed
            )
        except (KeyError, IndexError, ValueError) as error:
            raise ProviderError(f"the scripted template is invalid: {error!r}") from error

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[StreamItem, None]:
        """Streams the scripted answer, applying the next matching fault first."""
        self.calls += 1
        fault = self._take_fault(_last(request, "user"))
        if fault is not None:
            await _raise_or_delay(fault)
        text, call = self._turn(request)
        chunks, finish_reason, prompt_tokens = await self._prepare(request, text)
        for index, chunk in enumerate(chunks):
            if fault is not None and fault.kind == "mid_stream" and index == fault.after_chunks:
                raise ProviderError(
                    f"scripted fault: the stream dropped after {index} chunks", retryable=True
                )
            if self.options.chunk_delay_seconds:
                await asyncio.sleep(self.options.chunk_delay_seconds)
            elif index % YIELD_EVERY_CHUNKS == YIELD_EVERY_CHUNKS - 1:
                await asyncio.sleep(0)
            yield TextDelta(chunk)
        if call is not None:
            yield call
            finish_reason = "tool_calls"
        yield GenerationEnd(
            finish_reason=finish_reason,
            usage=TokenUsage(prompt_tokens=prompt_tokens, completion_tokens=len(chunks)),
        )

    def _turn(self, request: GenerationRequest) -> tuple[str, ToolCall | None]:
        """This turn's text, and its tool call when the request offers tools."""
        text = self.answer(request)
        if not request.tools:
            return text, None
        return ToolScript.parse(text).turn(request)

    async def _prepare(self, request: GenerationRequest, text: str) -> tuple[list[str], str, int]:
        """The text's chunks, its finish reason and the prompt's token count; long
        texts are handled on a worker thread."""
        size = sum(len(m.content) for m in request.messages) + len(text)
        if size > THREAD_SPLIT_CHARS:
            return await asyncio.to_thread(self._prepare_now, request, text)
        return self._prepare_now(request, text)

    def _prepare_now(self, request: GenerationRequest, text: str) -> tuple[list[str], str, int]:
        chunks, finish_reason = self._chunks(request, text)
        prompt_tokens = sum(len(_CHUNK.findall(m.content)) for m in request.messages)
        return chunks, finish_reason, prompt_tokens

    def _chunks(self, request: GenerationRequest, text: str) -> tuple[list[str], str]:
        finish_reason = "stop"
        stops = [text.find(s) for s in request.stop if s in text]
        if stops:
            text = text[: min(stops)]
        chunks = _CHUNK.findall(text)
        limit = request.max_tokens or self.config.default_max_tokens
        if len(chunks) > limit:
            chunks, finish_reason = chunks[:limit], "length"
        return chunks, finish_reason

    def _take_fault(self, prompt: str) -> ScriptedFault | None:
        for index, fault in enumerate(self.options.faults):
            if self._faults_left[index] > 0 and fault.prompt in (None, prompt):
                self._faults_left[index] -= 1
                return fault
        return None


async def _raise_or_delay(fault: ScriptedFault) -> None:
    if fault.kind == "latency":
        await asyncio.sleep(fault.seconds)
    elif fault.kind == "rate_limit":
        raise ProviderError(
            "scripted fault: rate limited",
            reason=ErrorReason.RATE_LIMITED,
            retryable=True,
            retry_after=fault.seconds,
        )
    elif fault.kind == "timeout":
        await asyncio.sleep(fault.seconds)
        raise ProviderError(
            "scripted fault: the request timed out", reason=ErrorReason.TIMEOUT, retryable=True
        )
    elif fault.kind == "error":
        raise ProviderError("scripted fault: the model failed")


def _turns_taken(request: GenerationRequest) -> int:
    """The model turns already in the conversation since its last user message."""
    taken = 0
    for message in reversed(request.messages):
        if message.role == "user":
            break
        taken += message.role == "assistant"
    return taken


def _last(request: GenerationRequest, role: str) -> str:
    for message in reversed(request.messages):
        if message.role == role:
            return message.content
    return ""
