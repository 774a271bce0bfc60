"""Runs one experiment: every input and repeat through the model, then the scorers.

With the sandbox tool, a sample's answer comes from the bounded model-tool loop
(``agent_loop``), whose turns, tool calls and tool errors are the sample's
metrics too.

A scorer that fails on an output is logged once (its first failure) and
counted at the end; with ``fail_on_scorer_error`` the experiment instead
ends FAILED (SCORER_FAILED) right after that sample is recorded.

The runner yields to the event loop at least once per sample, whatever the
provider does, and its slow steps (reading and parsing a dataset, scoring)
run on threads, so one experiment never stalls other callers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time

from sandbox_sdk.errors import ErrorReason
from sandbox_sdk.server.orchestrator.experiments.agent_loop import AgentLoop, AgentResult
from sandbox_sdk.server.orchestrator.experiments.events import ExperimentWriter
from sandbox_sdk.server.orchestrator.experiments.generation import Generation
from sandbox_sdk.server.orchestrator.experiments.limits import MAX_INPUTS, MAX_PROMPT_CHARS
from sandbox_sdk.server.orchestrator.experiments.metrics import EngineMetrics
from sandbox_sdk.server.orchestrator.experiments.providers.base import (
    ChatMessage,
    GenerationEnd,
    GenerationRequest,
    ProviderError,
    TextDelta,
    TokenUsage,
    ToolCall,
)
from sandbox_sdk.server.orchestrator.experiments.providers.registry import ServedModel
from sandbox_sdk.server.orchestrator.experiments.providers.retry import RetryPolicy
from sandbox_sdk.server.orchestrator.experiments.records import (
    EventPayload,
    ExperimentChanges,
    ExperimentRecord,
    ExperimentState,
    Failure,
    LogEvent,
    LogLevel,
    MetricEvent,
    OutputEvent,
    SampleRecord,
)
from sandbox_sdk.server.orchestrator.experiments.sandbox_tool import SandboxTool
from sandbox_sdk.server.orchestrator.experiments.scoring import Scorer, ScorerFailures, Scores
from sandbox_sdk.server.orchestrator.experiments.spec import InputSpec
from sandbox_sdk.server.orchestrator.ports import SandboxPort
from sandbox_sdk.server.status import ServiceError

# The environment's usage is recorded with a sample at most this often.
USAGE_INTERVAL_SECONDS = 1.0
_LATER_FAILURES_COUNTED = "; its later failures are counted when the experiment ends"


class ExperimentFailedError(Exception):
    """The experiment cannot go on; it ends in ``state`` and ``failure`` says why."""

    state = ExperimentState.FAILED

    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.message)
        self.failure = failure


class EnvironmentEndedError(ExperimentFailedError):
    """The experiment's environment ended while it ran, which cancels the experiment."""

    state = ExperimentState.CANCELLED


class ExperimentRunner:
    """Runs a RUNNING experiment's samples, committing events and results as it goes."""

    def __init__(
        self,
        record: ExperimentRecord,
        model: ServedModel,
        sandbox: SandboxPort,
        writer: ExperimentWriter,
        metrics: EngineMetrics,
    ) -> None:
        self.record = record
        self.spec = record.spec
        self.model = model
        self.sandbox = sandbox
        self.writer = writer
        self.metrics = metrics
        self.retry = RetryPolicy(model.config.retry)
        self.scorer = Scorer(self.spec.scorers, sandbox, record.environment_id)
        self.scorer_failures = ScorerFailures()
        self._usage_sampled_at = -math.inf
        self.agent = self._agent_loop()

    def _agent_loop(self) -> AgentLoop | None:
        """The sandbox tool's loop when the spec offers the tool, else None."""
        if self.spec.sandbox_tool is None:
            return None
        tool = SandboxTool(self.spec.sandbox_tool, self.sandbox, self.record.environment_id)
        return AgentLoop(tool, self._generate, self.writer, self._check_environment)

    async def run(self) -> None:
        """Runs every sample; raises ExperimentFailedError when the experiment fails as a whole."""
        inputs = await self._inputs()
        total = len(inputs) * self.spec.repeats
        await self.writer.emit(
            [LogEvent(LogLevel.INFO, f"running {total} samples on model {self.model.config.name}")],
            ExperimentChanges(total_samples=total),
        )
        failed: list[str] = []
        for index, item in enumerate(inputs):
            for repeat in range(self.spec.repeats):
                self._check_environment()
                # A provider that never suspends (a fast scripted model) must not
                # keep the loop from other callers: yield once per sample.
                await asyncio.sleep(0)
                sample = await self._run_sample(index, repeat, item)
                if sample.error:
                    failed.append(sample.error)
                elif sample.score_errors and self.spec.fail_on_scorer_error:
                    # A scorer that failed because the environment went away is not the
                    # scorer's fault: that cancels the experiment instead.
                    self._check_environment()
                    raise ExperimentFailedError(_scorer_failure(sample))
        summary = self.scorer_failures.summary()
        if summary:
            await self.writer.emit([LogEvent(LogLevel.WARNING, line) for line in summary])
        # Scorers that failed because the environment went away do not make a success.
        self._check_environment()
        if failed and len(failed) == total:
            raise ExperimentFailedError(
                Failure(
                    ErrorReason.MODEL_ERROR,
                    f"every model call failed; the last error: {failed[-1]}",
                )
            )

    def _check_environment(self) -> None:
        try:
            self.sandbox.require_running(self.record.tenant, self.record.environment_id)
        except ServiceError as error:
            raise EnvironmentEndedError(
                Failure(
                    ErrorReason.ENVIRONMENT_NOT_RUNNING,
                    f"environment {self.record.environment_id} ended: {error.message}",
                )
            ) from error

    async def _inputs(self) -> list[InputSpec]:
        if self.spec.inputs:
            return list(self.spec.inputs)
        path = self.spec.dataset_path
        try:
            inputs = await asyncio.to_thread(self._read_dataset, path)
        except ServiceError as error:
            raise ExperimentFailedError(
                Failure(error.reason, f"cannot read the dataset {path}: {error.message}")
            ) from error
        await self.writer.emit([LogEvent(LogLevel.INFO, f"read {len(inputs)} inputs from {path}")])
        return inputs

    def _read_dataset(self, path: str) -> list[InputSpec]:
        """Reads and parses the dataset file (on a worker thread: it may be large)."""
        return parse_dataset(self.sandbox.read_file(self.record.environment_id, path), path)

    async def _run_sample(self, index: int, repeat: int, item: InputSpec) -> SampleRecord:
        parameters = self.spec.parameters
        seed = parameters.seed + repeat if parameters.seed is not None else None
        request = GenerationRequest(
            messages=self._messages(item.prompt),
            temperature=parameters.temperature,
            top_p=parameters.top_p,
            max_tokens=parameters.max_tokens,
            seed=seed,
            stop=parameters.stop,
            extra=parameters.extra,
        )
        loop = await self._generate_answer(index, repeat, request)
        generation = loop.generation
        scores = Scores()
        first_failures: list[str] = []
        if not generation.error:
            scores = await self.scorer.score(generation.output, item.expected)
            first_failures = self.scorer_failures.add(scores)
        sample = SampleRecord(
            input_index=index,
            repeat=repeat,
            seed=seed,
            prompt=item.prompt,
            expected=item.expected,
            output=generation.output,
            scores=scores.values,
            score_errors=scores.errors,
            prompt_tokens=generation.usage.prompt_tokens,
            completion_tokens=generation.usage.completion_tokens,
            latency_seconds=generation.latency_seconds,
            time_to_first_token_seconds=generation.time_to_first_token_seconds,
            tokens_per_second=generation.tokens_per_second,
            finish_reason=generation.finish_reason,
            error=generation.error,
            turns=loop.turns,
            tool_calls=loop.tool_calls,
            tool_errors=loop.tool_errors,
        )
        events = self._sample_events(sample, scores, first_failures)
        await self.writer.emit(events, sample=sample)
        self._count(sample)
        with contextlib.suppress(ServiceError, KeyError):
            self.sandbox.touch(self.record.environment_id)
        return sample

    async def _generate_answer(
        self, index: int, repeat: int, request: GenerationRequest
    ) -> AgentResult:
        """The sample's answer: one model call, or the sandbox tool's loop."""
        if self.agent is not None:
            return await self.agent.run(index, repeat, request)
        return AgentResult(await self._generate(index, repeat, request), 0, 0, 0)

    def _messages(self, prompt: str) -> tuple[ChatMessage, ...]:
        system = self.spec.system_prompt or self.model.config.default_system_prompt
        user = ChatMessage("user", prompt)
        return (ChatMessage("system", system), user) if system else (user,)

    async def _generate(self, index: int, repeat: int, request: GenerationRequest) -> Generation:
        attempt = 1
        while True:
            started = time.monotonic()
            first_token: float | None = None
            parts: list[str] = []
            calls: list[ToolCall] = []
            end = GenerationEnd("stop", TokenUsage(0, 0))
            try:
                async with contextlib.aclosing(self.model.provider.generate(request)) as stream:
                    async for item in stream:
                        if isinstance(item, TextDelta):
                            first_token = first_token or time.monotonic()
                            parts.append(item.text)
                            self.writer.output(OutputEvent(index, repeat, item.text))
                        elif isinstance(item, ToolCall):
                            calls.append(item)
                        else:
                            end = item
            except ProviderError as error:
                delay = self.retry.delay_before_retry(attempt, error)
                if delay is None:
                    message = f"model call failed after {attempt} attempt(s): {error.message}"
                    await self.writer.emit([_log(LogLevel.ERROR, index, repeat, message)])
                    return Generation("", TokenUsage(0, 0), "error", 0.0, 0.0, error=message)
                await self._log_retry(index, repeat, attempt, error, delay, streamed=bool(parts))
                await asyncio.sleep(delay)
                attempt += 1
                continue
            finished = time.monotonic()
            return Generation(
                output="".join(parts),
                usage=end.usage,
                finish_reason=end.finish_reason,
                latency_seconds=finished - started,
                time_to_first_token_seconds=(first_token or finished) - started,
                tool_calls=tuple(calls),
            )

    async def _log_retry(
        self,
        index: int,
        repeat: int,
        attempt: int,
        error: ProviderError,
        delay: float,
        *,
        streamed: bool,
    ) -> None:
        self.metrics.retries.labels(self.model.config.name).inc()
        message = f"attempt {attempt} failed ({error.message}); retrying in {delay:.2f}s"
        if streamed:
            message += "; the retry's output replaces the text streamed so far"
        await self.writer.emit([_log(LogLevel.WARNING, index, repeat, message)])

    def _sample_events(
        self, sample: SampleRecord, scores: Scores, first_failures: list[str]
    ) -> list[EventPayload]:
        """The sample's metrics, and a warning for each scorer failing for the first time
        (a scorer failing on every sample would otherwise flood the log)."""
        at = {"input_index": sample.input_index, "repeat": sample.repeat}
        events: list[EventPayload] = []
        if not sample.error:
            events += [
                MetricEvent("latency_seconds", sample.latency_seconds, "s", **at),
                MetricEvent(
                    "time_to_first_token_seconds", sample.time_to_first_token_seconds, "s", **at
                ),
                MetricEvent("tokens_per_second", sample.tokens_per_second, "tokens/s", **at),
                MetricEvent("prompt_tokens", sample.prompt_tokens, "tokens", **at),
                MetricEvent("completion_tokens", sample.completion_tokens, "tokens", **at),
            ]
        if self.agent is not None:
            events += [
                MetricEvent("turns", sample.turns, "turns", **at),
                MetricEvent("tool_calls", sample.tool_calls, "calls", **at),
                MetricEvent("tool_errors", sample.tool_errors, "calls", **at),
            ]
        events += self._environment_usage(sample.input_index, sample.repeat)
        for name in first_failures:
            message = f"scorer {name} failed: {scores.errors[name]}" + (
                "" if self.spec.fail_on_scorer_error else _LATER_FAILURES_COUNTED
            )
            events.append(_log(LogLevel.WARNING, sample.input_index, sample.repeat, message))
        return events

    def _environment_usage(self, index: int, repeat: int) -> list[EventPayload]:
        """The environment's CPU and memory, sampled at most every USAGE_INTERVAL_SECONDS:
        a sample reads cgroup files, and a fast model finishes thousands of samples a
        second."""
        now = time.monotonic()
        if now - self._usage_sampled_at < USAGE_INTERVAL_SECONDS:
            return []
        self._usage_sampled_at = now
        try:
            usage = self.sandbox.usage(self.record.environment_id)
        except (ServiceError, KeyError, OSError):
            return []
        return [
            MetricEvent("env_cpu_percent", usage.cpu_percent, "%", index, repeat),
            MetricEvent("env_memory_bytes", float(usage.memory_bytes), "bytes", index, repeat),
        ]

    def _count(self, sample: SampleRecord) -> None:
        name = self.model.config.name
        self.metrics.samples.labels(name, "model_error" if sample.error else "ok").inc()
        if not sample.error:
            self.metrics.completion_tokens.labels(name).inc(sample.completion_tokens)
            self.metrics.sample_latency.labels(name).observe(sample.latency_seconds)
        if sample.tool_calls:
            ok = sample.tool_calls - sample.tool_errors
            self.metrics.tool_calls.labels(name, "ok").inc(ok)
            self.metrics.tool_calls.labels(name, "error").inc(sample.tool_errors)


def parse_dataset(content: bytes, path: str) -> list[InputSpec]:
    """Inputs from a JSONL file: one ``{"prompt": ..., "expected": ...}`` object per line."""
    inputs: list[InputSpec] = []
    try:
        lines = content.decode().splitlines()
    except UnicodeDecodeError as error:
        raise _dataset_error(f"{path} is not UTF-8 text: {error}") from error
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except ValueError as error:
            raise _dataset_error(f"line {number} of {path} is not JSON: {error}") from error
        prompt = item.get("prompt") if isinstance(item, dict) else None
        expected = item.get("expected", "") if isinstance(item, dict) else None
        if not isinstance(prompt, str) or not prompt or not isinstance(expected, str):
            raise _dataset_error(
                f'line {number} of {path} must be an object with a non-empty "prompt" string'
                ' and an optional "expected" string'
            )
        if len(prompt) > MAX_PROMPT_CHARS:
            raise _dataset_error(
                f"line {number} of {path}: the prompt exceeds {MAX_PROMPT_CHARS} characters"
            )
        inputs.append(InputSpec(prompt=prompt, expected=expected))
        if len(inputs) > MAX_INPUTS:
            raise _dataset_error(f"{path} has more than {MAX_INPUTS} inputs")
    if not inputs:
        raise _dataset_error(f"{path} holds no inputs")
    return inputs


def _dataset_error(message: str) -> ExperimentFailedError:
    return ExperimentFailedError(Failure(ErrorReason.INVALID_ARGUMENT, message))


def _scorer_failure(sample: SampleRecord) -> Failure:
    """Why an experiment with ``fail_on_scorer_error`` failed on ``sample``."""
    name, reason = next(iter(sample.score_errors.items()))
    message = f"scorer {name} failed on input {sample.input_index} repeat {sample.repeat}: {reason}"
    others = len(sample.score_errors) - 1
    if others:
        message += f" ({others} more scorer(s) failed on it; see its score_errors)"
    message += "; fail_on_scorer_error is set, so the experiment stopped there"
    return Failure(ErrorReason.SCORER_FAILED, message)


def _log(level: LogLevel, index: int, repeat: int, message: str) -> LogEvent:
    return LogEvent(level, f"input {index} repeat {repeat}: {message}")
