"""What an experiment runs, as accepted and validated: the internal form of ExperimentSpec.

These are pydantic models so the accepted spec persists as JSON and reads
back unchanged after a restart.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

ExtraValue = float | int | bool | str


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ExactMatch(_Frozen):
    """1 when the output, stripped of surrounding whitespace, equals the expected text."""

    kind: Literal["exact_match"] = "exact_match"
    ignore_case: bool = False


class Contains(_Frozen):
    """1 when the output contains the expected text."""

    kind: Literal["contains"] = "contains"
    ignore_case: bool = False


class RegexMatch(_Frozen):
    """1 when the pattern matches somewhere in the output."""

    kind: Literal["regex"] = "regex"
    pattern: str


class JsonValid(_Frozen):
    """1 when the output parses as JSON."""

    kind: Literal["json_valid"] = "json_valid"


class CommandCheck(_Frozen):
    """A command run in the environment that prints the score."""

    kind: Literal["command"] = "command"
    argv: tuple[str, ...]
    timeout_seconds: float


ScorerCheck = Annotated[
    ExactMatch | Contains | RegexMatch | JsonValid | CommandCheck, Field(discriminator="kind")
]


class ScorerSpec(_Frozen):
    """One named metric computed for every output."""

    name: str
    check: ScorerCheck


class InputSpec(_Frozen):
    """One prompt and its reference answer."""

    prompt: str
    expected: str = ""


class Parameters(_Frozen):
    """Sampling parameters; None leaves a parameter at the model's default."""

    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()
    extra: dict[str, ExtraValue] = {}


class SandboxToolSpec(_Frozen):
    """The sandbox tool offered to the model: at most ``max_turns`` model turns per sample,
    each command limited to ``command_timeout_seconds`` and its stdout and stderr each cut
    at ``max_output_bytes`` before the model sees them."""

    max_turns: int
    command_timeout_seconds: float
    max_output_bytes: int


class ExperimentSpec(_Frozen):
    """A validated experiment: model, inputs or dataset, parameters, scorers and limits.

    ``model`` is the name the client asked for (possibly an alias);
    ``repeats`` is at least 1 and ``timeout_seconds`` is 0 for the
    orchestrator default. ``fail_on_scorer_error`` ends the experiment
    FAILED (SCORER_FAILED) at the first sample a scorer fails on.
    ``sandbox_tool``, when set, lets the model run commands in the environment.
    """

    model: str
    inputs: tuple[InputSpec, ...] = ()
    dataset_path: str = ""
    system_prompt: str = ""
    parameters: Parameters = Parameters()
    scorers: tuple[ScorerSpec, ...] = ()
    repeats: int = 1
    timeout_seconds: float = 0.0
    priority: int = 0
    labels: dict[str, str] = {}
    fail_on_scorer_error: bool = False
    sandbox_tool: SandboxToolSpec | None = None
