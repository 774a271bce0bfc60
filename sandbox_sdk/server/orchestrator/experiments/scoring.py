"""Scorers: built-in checks of an output, and user commands run inside the sandbox.

A scorer that fails (a command that crashes, times out, prints too much or
prints no number) yields an error message for that metric instead of a
score; the experiment goes on, unless its spec sets ``fail_on_scorer_error``
(the runner decides that). ``ScorerFailures`` counts the failures so the
experiment's log says once per scorer that it fails, and how often.

Built-in checks of long texts run on a small pool of worker threads, never
on the event loop, each with a time limit (``BUILTIN_TIME_LIMIT_SECONDS``):
one that runs over gives a scorer error on that sample instead of holding
anything up. Every built-in check is linear in its input, so checks of short
texts (``INLINE_CHECK_CHARS``) run inline, which is cheaper than a thread hop.
Regular expressions are RE2 (linear time; see ``patterns``), and subjects
longer than ``MAX_SUBJECT_CHARS`` are refused with a scorer error.
"""

from __future__ import annotations

import asyncio
import collections
import json
import math
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from sandbox_sdk.models.execution import ExitReason
from sandbox_sdk.server.orchestrator.experiments.limits import (
    BUILTIN_TIME_LIMIT_SECONDS,
    MAX_SUBJECT_CHARS,
)
from sandbox_sdk.server.orchestrator.experiments.patterns import CompiledPattern, compile_pattern
from sandbox_sdk.server.orchestrator.experiments.spec import (
    CommandCheck,
    Contains,
    ExactMatch,
    JsonValid,
    RegexMatch,
    ScorerSpec,
)
from sandbox_sdk.server.orchestrator.ports import CommandResult, SandboxPort
from sandbox_sdk.server.status import ServiceError

# The score is one number; more output than this is garbage, not a score.
COMMAND_OUTPUT_LIMIT_BYTES = 4096
_DETAIL_CHARS = 200
# Built-in checks share these threads: a check that overruns its time limit
# keeps at most one of them busy, never the event loop.
_BUILTIN_THREADS = 2
_executor = ThreadPoolExecutor(max_workers=_BUILTIN_THREADS, thread_name_prefix="scorer")
# Checks of texts this short run inline: every built-in check is linear in its
# input (RE2 included), so they take microseconds, less than a thread hop.
INLINE_CHECK_CHARS = 8192


class ScorerLimitError(ValueError):
    """A built-in check refused its input (too long); the message says what to do."""


@dataclass
class Scores:
    """The scores of one output, and the scorers that failed with their reasons."""

    values: dict[str, float] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)


@dataclass
class ScorerFailures:
    """How many of an experiment's scored outputs each scorer failed on."""

    scored: int = 0
    counts: collections.Counter[str] = field(default_factory=collections.Counter)

    def add(self, scores: Scores) -> list[str]:
        """Counts one scored output; returns the scorers that failed on it for the first time."""
        self.scored += 1
        first = [name for name in scores.errors if not self.counts[name]]
        self.counts.update(scores.errors.keys())
        return first

    def summary(self) -> list[str]:
        """One line per scorer that failed: on how many of the scored outputs."""
        return [
            f"scorer {name} failed on {count} of {self.scored} scored samples;"
            " each sample's score_errors says why"
            for name, count in self.counts.items()
        ]


class Scorer:
    """Applies an experiment's scorers to outputs, in the experiment's environment."""

    def __init__(
        self, scorers: Sequence[ScorerSpec], sandbox: SandboxPort, environment_id: str
    ) -> None:
        self.scorers = scorers
        self.sandbox = sandbox
        self.environment_id = environment_id
        self.time_limit_seconds = BUILTIN_TIME_LIMIT_SECONDS
        self._patterns: dict[str, CompiledPattern] = {
            s.name: compile_pattern(s.check.pattern)
            for s in scorers
            if isinstance(s.check, RegexMatch)
        }

    async def score(self, output: str, expected: str) -> Scores:
        """Every scorer's result for one output."""
        scores = Scores()
        for scorer in self.scorers:
            check = scorer.check
            if isinstance(check, CommandCheck):
                value, error = await self._run_command(check, output, expected)
            else:
                value, error = await self._run_builtin(scorer, output, expected)
            if error is not None:
                scores.errors[scorer.name] = error
            else:
                scores.values[scorer.name] = value
        return scores

    async def _run_builtin(
        self, scorer: ScorerSpec, output: str, expected: str
    ) -> tuple[float, str | None]:
        """A built-in check: inline for short texts, else on a scorer thread within the
        time limit."""
        if len(output) + len(expected) <= INLINE_CHECK_CHARS:
            return self._builtin(scorer, output, expected), None
        check: Callable[[], float] = lambda: self._builtin(scorer, output, expected)  # noqa: E731
        future = asyncio.get_running_loop().run_in_executor(_executor, check)
        try:
            return await asyncio.wait_for(future, self.time_limit_seconds), None
        except TimeoutError:
            return 0.0, (
                f"the {scorer.check.kind} check took longer than {self.time_limit_seconds:g}s"
                " and was abandoned; simplify it or use a command scorer"
            )
        except ScorerLimitError as error:
            return 0.0, str(error)

    def _builtin(self, scorer: ScorerSpec, output: str, expected: str) -> float:
        check = scorer.check
        if isinstance(check, ExactMatch):
            a, b = output.strip(), expected.strip()
            if check.ignore_case:
                a, b = a.casefold(), b.casefold()
            return float(a == b)
        if isinstance(check, Contains):
            if check.ignore_case:
                return float(expected.casefold() in output.casefold())
            return float(expected in output)
        if isinstance(check, RegexMatch):
            if len(output) > MAX_SUBJECT_CHARS:
                raise ScorerLimitError(
                    f"the output has {len(output)} characters; a regex check reads at most"
                    f" {MAX_SUBJECT_CHARS}: use a command scorer for longer outputs"
                )
            return float(self._patterns[scorer.name].search(output) is not None)
        if isinstance(check, JsonValid):
            return float(_is_json(output))
        raise TypeError(f"unknown scorer kind {check!r}")

    async def _run_command(
        self, check: CommandCheck, output: str, expected: str
    ) -> tuple[float, str | None]:
        try:
            result = await self.sandbox.run_command(
                self.environment_id,
                check.argv,
                stdin=output.encode(),
                timeout=check.timeout_seconds,
                env_vars={"EXPECTED": expected},
                output_limit_bytes=COMMAND_OUTPUT_LIMIT_BYTES,
            )
        except ServiceError as error:
            return 0.0, f"the scorer command could not run: {error.message}"
        except OSError as error:
            return 0.0, f"the scorer command could not run: {error}"
        return parse_command_score(result, check.timeout_seconds)


def parse_command_score(result: CommandResult, timeout_seconds: float) -> tuple[float, str | None]:
    """The score a finished scorer command printed, or why there is none."""
    problem = _run_problem(result, timeout_seconds)
    if problem is not None:
        return 0.0, problem
    text = result.stdout.decode(errors="replace").strip()
    try:
        value = float(text)
    except ValueError:
        return 0.0, f"the scorer command printed {text[:_DETAIL_CHARS]!r}, not a number"
    if not math.isfinite(value):
        return 0.0, f"the scorer command printed {text!r}, not a finite number"
    return value, None


def _run_problem(result: CommandResult, timeout_seconds: float) -> str | None:
    if result.reason is ExitReason.TIMEOUT:
        return f"the scorer command timed out after {timeout_seconds:g}s"
    if result.reason is not ExitReason.EXITED:
        ending = result.reason.value.lower()
        return f"the scorer command ended abnormally ({ending}){_stderr(result)}"
    if result.exit_code != 0:
        return f"the scorer command exited with code {result.exit_code}{_stderr(result)}"
    if result.stdout_truncated:
        return (
            f"the scorer command printed more than {COMMAND_OUTPUT_LIMIT_BYTES} bytes;"
            " it must print only the score"
        )
    return None


def _stderr(result: CommandResult) -> str:
    text = result.stderr.decode(errors="replace").strip()
    return f": {text[-_DETAIL_CHARS:]}" if text else ""


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except (ValueError, RecursionError):
        return False
    return True
