"""The ``openai`` provider: any OpenAI-compatible chat-completions endpoint, streamed.

The official client's own retries are disabled: failures become
:class:`ProviderError` values marked retryable (429, 408, 409, 5xx, timeouts,
dropped connections) with the server's ``Retry-After``, and the engine's
single retry policy decides what happens next. The client's retries honour
Retry-After too, but cover only the opening request, not a stream that drops
midway, and would retry unseen by the experiment's log and retry metric.
"""

from __future__ import annotations

import email.utils
import os
import time
from collections.abc import AsyncGenerator, Mapping
from typing import Any

import openai

from sandbox_sdk.errors import ErrorReason
from sandbox_sdk.server.orchestrator.experiments.providers.base import (
    ChatMessage,
    ExtraParameter,
    GenerationEnd,
    GenerationRequest,
    ModelProvider,
    ProviderError,
    StreamItem,
    TextDelta,
    TokenUsage,
    ToolCall,
    ToolDefinition,
)
from sandbox_sdk.server.orchestrator.experiments.settings import ModelConfig, OpenAIOptions

_STANDARD_EXTRA: Mapping[str, ExtraParameter] = {
    "presence_penalty": ExtraParameter(float, -2.0, 2.0),
    "frequency_penalty": ExtraParameter(float, -2.0, 2.0),
    "user": ExtraParameter(str),
}
_SERVER_SPECIFIC_EXTRA: Mapping[str, ExtraParameter] = {
    "repeat_penalty": ExtraParameter(float, 0.0, 10.0),
    "top_k": ExtraParameter(int, 0, 100_000),
    "min_p": ExtraParameter(float, 0.0, 1.0),
    "typical_p": ExtraParameter(float, 0.0, 1.0),
}
_RETRYABLE_STATUS = frozenset({408, 409, 429})
# Streamed tool calls are assembled from fragments sent by the server: at most this many
# calls, each with at most this many characters of name and arguments, are kept. Longer
# arguments arrive cut, and the caller refuses them as not JSON.
_MAX_STREAMED_CALLS = 16
_MAX_CALL_CHARS = 65_536


class OpenAICompatibleProvider(ModelProvider):
    """Streams chat completions from an OpenAI-compatible server with ``AsyncOpenAI``."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        self.options = config.options_of(OpenAIOptions)
        self._client: openai.AsyncOpenAI | None = None
        self._extra: dict[str, ExtraParameter] = {
            **_STANDARD_EXTRA,
            **{k: _SERVER_SPECIFIC_EXTRA[k] for k in self.options.extra_body_parameters},
        }

    @property
    def extra_parameters(self) -> Mapping[str, ExtraParameter]:
        """Standard OpenAI parameters plus the configured server-specific ones."""
        return self._extra

    def base_url(self) -> str:
        """The configured base URL, else the one in ``base_url_env``."""
        return self.options.base_url or os.environ.get(self.options.base_url_env, "")

    def unavailable_reason(self) -> str | None:
        """Names the missing base URL or API key."""
        if not self.base_url():
            return (
                f"model {self.config.name!r} has no endpoint: set options.base_url "
                f"or ${self.options.base_url_env}"
            )
        if not self._api_key():
            return (
                f"model {self.config.name!r} has no API key: set options.api_key "
                f"or ${self.options.api_key_env}"
            )
        return None

    def _api_key(self) -> str:
        return self.options.api_key or os.environ.get(self.options.api_key_env, "")

    def client(self) -> openai.AsyncOpenAI:
        """The shared client, created on first use."""
        if self._client is None:
            self._client = openai.AsyncOpenAI(
                base_url=self.base_url(),
                api_key=self._api_key(),
                max_retries=0,
                timeout=self.options.request_timeout_seconds,
            )
        return self._client

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[StreamItem, None]:
        """Streams the completion; errors become (possibly retryable) ProviderErrors."""
        reason = self.unavailable_reason()
        if reason is not None:
            raise ProviderError(reason)
        finish_reason = "stop"
        usage: TokenUsage | None = None
        chunks_with_text = 0
        calls = _StreamedCalls()
        try:
            stream = await self.client().chat.completions.create(**self._arguments(request))
            async for chunk in stream:
                if chunk.usage is not None:
                    usage = TokenUsage(
                        prompt_tokens=chunk.usage.prompt_tokens,
                        completion_tokens=chunk.usage.completion_tokens,
                    )
                for choice in chunk.choices:
                    if choice.delta.content:
                        chunks_with_text += 1
                        yield TextDelta(choice.delta.content)
                    for fragment in choice.delta.tool_calls or ():
                        calls.add(fragment)
                    if choice.finish_reason:
                        finish_reason = choice.finish_reason
        except openai.APIError as error:
            raise _provider_error(error) from error
        if request.tools:
            for call in calls.assembled():
                yield call
        # Servers that ignore stream_options send no usage; one chunk is about one token.
        yield GenerationEnd(
            finish_reason=finish_reason,
            usage=usage or TokenUsage(prompt_tokens=0, completion_tokens=chunks_with_text),
        )

    def _arguments(self, request: GenerationRequest) -> dict[str, Any]:
        arguments: dict[str, Any] = {
            "model": self.options.remote_model or self.config.name,
            "messages": [_message(m) for m in request.messages],
            "stream": True,
            "stream_options": {"include_usage": True},
            "max_tokens": request.max_tokens or self.config.default_max_tokens,
        }
        if request.temperature is not None:
            arguments["temperature"] = request.temperature
        if request.top_p is not None:
            arguments["top_p"] = request.top_p
        if request.seed is not None:
            arguments["seed"] = request.seed
        if request.stop:
            arguments["stop"] = list(request.stop)
        extra_body = {k: v for k, v in request.extra.items() if k in _SERVER_SPECIFIC_EXTRA}
        arguments.update({k: v for k, v in request.extra.items() if k in _STANDARD_EXTRA})
        if extra_body:
            arguments["extra_body"] = extra_body
        if request.tools:
            arguments["tools"] = [_tool(t) for t in request.tools]
        return arguments

    async def aclose(self) -> None:
        """Closes the HTTP client."""
        if self._client is not None:
            await self._client.close()
            self._client = None


def _message(message: ChatMessage) -> dict[str, Any]:
    """A chat message in the chat-completions format, tool calls and results included."""
    if message.role == "tool":
        return {"role": "tool", "tool_call_id": message.tool_call_id, "content": message.content}
    encoded: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.tool_calls:
        encoded["content"] = message.content or None
        encoded["tool_calls"] = [
            {
                "id": call.call_id,
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments},
            }
            for call in message.tool_calls
        ]
    return encoded


def _tool(tool: ToolDefinition) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {
            "name": tool.name,
            "description": tool.description,
            "parameters": dict(tool.parameters),
        },
    }


class _StreamedCalls:
    """Tool calls assembled from a stream's fragments, keyed by their index."""

    def __init__(self) -> None:
        self._calls: dict[int, list[str]] = {}

    def add(self, fragment: Any) -> None:
        """Adds one ``ChoiceDeltaToolCall`` fragment; fragments past the caps are dropped."""
        index = fragment.index
        if index not in self._calls and len(self._calls) >= _MAX_STREAMED_CALLS:
            return
        call = self._calls.setdefault(index, ["", "", ""])
        function = fragment.function
        # The id and name come whole (in the first fragment, or repeated); arguments in pieces.
        call[0] = call[0] or (fragment.id or "")[:_MAX_CALL_CHARS]
        call[1] = call[1] or ((function.name if function else None) or "")[:_MAX_CALL_CHARS]
        piece = (function.arguments if function else None) or ""
        call[2] += piece[: max(_MAX_CALL_CHARS - len(call[2]), 0)]

    def assembled(self) -> list[ToolCall]:
        """The calls in index order; a call the server sent no id for gets one."""
        return [
            ToolCall(call_id or f"call-{index}", name, arguments)
            for index, (call_id, name, arguments) in sorted(self._calls.items())
        ]


def _provider_error(error: openai.APIError) -> ProviderError:
    if isinstance(error, openai.APITimeoutError):
        return ProviderError(
            f"the model server timed out: {error}", reason=ErrorReason.TIMEOUT, retryable=True
        )
    if isinstance(error, openai.APIConnectionError):
        return ProviderError(f"cannot reach the model server: {error}", retryable=True)
    if isinstance(error, openai.APIStatusError):
        status = error.status_code
        retryable = status in _RETRYABLE_STATUS or status >= 500
        reason = ErrorReason.RATE_LIMITED if status == 429 else ErrorReason.MODEL_ERROR
        return ProviderError(
            f"the model server answered HTTP {status}: {error.message}",
            reason=reason,
            retryable=retryable,
            retry_after=retry_after_seconds(error.response.headers) if retryable else None,
        )
    return ProviderError(f"the model server failed: {error.message}")


def retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    """The delay a response asks for: ``retry-after-ms``, or ``Retry-After`` in seconds or as
    an HTTP date; None when absent or unreadable."""
    milliseconds = headers.get("retry-after-ms")
    if milliseconds is not None:
        try:
            return max(float(milliseconds) / 1000.0, 0.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - time.time(), 0.0)
