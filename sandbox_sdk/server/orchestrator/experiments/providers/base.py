"""The interface every model provider implements, and the values that cross it.

A request may offer the model tools (:class:`ToolDefinition`); a generation
then may end with :class:`ToolCall` items instead of, or after, its text. The
caller runs the calls and sends their results back as ``tool`` messages.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from sandbox_sdk.errors import ErrorReason
from sandbox_sdk.server.orchestrator.experiments.settings import ModelConfig

ExtraValue = float | int | str | bool


@dataclass(frozen=True)
class ToolDefinition:
    """A tool the model may call: its name, what it does, and its arguments' JSON schema."""

    name: str
    description: str
    parameters: Mapping[str, Any]


@dataclass(frozen=True)
class ToolCall:
    """The model's request to call a tool; ``arguments`` is the JSON text the model wrote,
    unparsed (model output: the caller parses it strictly)."""

    call_id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class ChatMessage:
    """One message of a chat conversation.

    An assistant message may carry ``tool_calls``; a ``tool`` message answers the call
    named by ``tool_call_id`` with the tool's result in ``content``.
    """

    role: Literal["system", "user", "assistant", "tool"]
    content: str
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str = ""


@dataclass(frozen=True)
class GenerationRequest:
    """What to generate: the conversation and validated sampling parameters.

    ``None`` leaves a parameter at the provider's default.
    """

    messages: tuple[ChatMessage, ...]
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()
    extra: Mapping[str, ExtraValue] = field(default_factory=dict)
    tools: tuple[ToolDefinition, ...] = ()


@dataclass(frozen=True)
class TokenUsage:
    """Token counts of one generation."""

    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True)
class TextDelta:
    """New text streamed by the model."""

    text: str


@dataclass(frozen=True)
class GenerationEnd:
    """The last item of a stream: why generation stopped, and the token counts."""

    finish_reason: str
    usage: TokenUsage


StreamItem = TextDelta | ToolCall | GenerationEnd


class ProviderError(Exception):
    """A failed model call.

    ``retryable`` marks transient failures (rate limits, server errors,
    timeouts, dropped connections); ``retry_after`` is the delay the server
    asked for, in seconds, when it named one.
    """

    def __init__(
        self,
        message: str,
        *,
        reason: ErrorReason = ErrorReason.MODEL_ERROR,
        retryable: bool = False,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason
        self.retryable = retryable
        self.retry_after = retry_after


@dataclass(frozen=True)
class ExtraParameter:
    """A provider-specific parameter accepted in ``parameters.extra``, with its bounds."""

    kind: type[float] | type[int] | type[bool] | type[str]
    minimum: float | None = None
    maximum: float | None = None

    def describe(self) -> str:
        """The accepted values, for error messages."""
        kind = {float: "a number", int: "an integer", bool: "true or false", str: "a string"}
        bounds = ""
        if self.minimum is not None and self.maximum is not None:
            bounds = f" from {self.minimum:g} to {self.maximum:g}"
        elif self.minimum is not None:
            bounds = f" of at least {self.minimum:g}"
        return kind[self.kind] + bounds


class ModelProvider(abc.ABC):
    """Generates chat completions for one configured model.

    Implementations stream :class:`TextDelta` items, then any :class:`ToolCall`
    items (only when the request offers tools), and end with one
    :class:`GenerationEnd`; they raise :class:`ProviderError` for failures.
    Cancelling the consuming task stops the generation.
    """

    #: The largest seed the provider accepts.
    max_seed: int = 2**63 - 1

    def __init__(self, config: ModelConfig) -> None:
        self.config = config

    @property
    def extra_parameters(self) -> Mapping[str, ExtraParameter]:
        """The keys accepted in ``parameters.extra`` and their bounds."""
        return {}

    def unavailable_reason(self) -> str | None:
        """Why the model cannot serve requests at all (a missing extra, a missing file), or None."""
        return None

    @abc.abstractmethod
    def generate(self, request: GenerationRequest) -> AsyncGenerator[StreamItem, None]:
        """Streams the completion of ``request``."""

    async def aclose(self) -> None:  # noqa: B027 -- most providers hold nothing to release
        """Releases network clients and other resources."""
