"""One model call's outcome, as the runner and the sandbox tool's loop see it."""

from __future__ import annotations

from dataclasses import dataclass

from sandbox_sdk.server.orchestrator.experiments.providers.base import TokenUsage, ToolCall


@dataclass(frozen=True)
class Generation:
    """One model call's outcome, after retries: its text, the tool calls it ended with,
    and its timings; ``error`` is set when the call failed for good."""

    output: str
    usage: TokenUsage
    finish_reason: str
    latency_seconds: float
    time_to_first_token_seconds: float
    error: str = ""
    tool_calls: tuple[ToolCall, ...] = ()

    @property
    def tokens_per_second(self) -> float:
        """Completion tokens per second from request to last token."""
        if self.latency_seconds <= 0:
            return 0.0
        return self.usage.completion_tokens / self.latency_seconds
