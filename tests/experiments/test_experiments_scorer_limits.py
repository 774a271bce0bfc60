"""Scorers never hold up the server: RE2 patterns, a time limit, and bounded subjects."""

from __future__ import annotations

import threading
from pathlib import Path

import grpc
import pytest

from sandbox_sdk.server.orchestrator.experiments import limits, scoring
from sandbox_sdk.server.orchestrator.experiments.providers.registry import ModelRegistry
from sandbox_sdk.server.orchestrator.experiments.settings import ExperimentSettings
from sandbox_sdk.server.orchestrator.experiments.spec import JsonValid, RegexMatch, ScorerSpec
from sandbox_sdk.server.orchestrator.experiments.validation import validate_create
from sandbox_sdk.server.status import ServiceError

from .exp_support import SubprocessSandbox, create_request, make_spec

ENVIRONMENT = "env-t1-0123456789abcdef"


def _scorer(tmp_path: Path, *specs: ScorerSpec) -> scoring.Scorer:
    return scoring.Scorer(specs, SubprocessSandbox(tmp_path), ENVIRONMENT)


async def test_a_catastrophic_pattern_is_linear_time(tmp_path: Path) -> None:
    scorer = _scorer(tmp_path, ScorerSpec(name="evil", check=RegexMatch(pattern="^(a+)+$")))

    short = await scorer.score("a" * 28 + "!", "")
    long = await scorer.score("a" * 200_000 + "!", "")

    assert (short.values, short.errors) == ({"evil": 0.0}, {})
    assert (long.values, long.errors) == ({"evil": 0.0}, {})


async def test_a_check_past_its_time_limit_is_a_scorer_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = threading.Event()
    monkeypatch.setattr(scoring.Scorer, "_builtin", lambda *_: float(release.wait(30)))
    scorer = _scorer(tmp_path, ScorerSpec(name="slow", check=JsonValid()))
    scorer.time_limit_seconds = 0.05

    try:
        scores = await scorer.score("x" * (scoring.INLINE_CHECK_CHARS + 1), "")
    finally:
        release.set()

    assert scores.values == {}
    assert "longer than 0.05s" in scores.errors["slow"]


async def test_a_subject_past_the_cap_is_a_scorer_error(tmp_path: Path) -> None:
    scorer = _scorer(tmp_path, ScorerSpec(name="re", check=RegexMatch(pattern="a")))

    scores = await scorer.score("a" * (limits.MAX_SUBJECT_CHARS + 1), "")

    assert "use a command scorer" in scores.errors["re"]


@pytest.mark.parametrize("pattern", [r"(a)\1", r"(?=a)b", r"(?<!x)y"])
def test_patterns_re2_cannot_run_are_refused_at_creation(pattern: str) -> None:
    spec = make_spec(["x"], model="scripted")
    spec.scorers.add(name="fine").regex.pattern = r"\d+"
    spec.scorers.add(name="bad").regex.pattern = pattern
    registry = ModelRegistry(ExperimentSettings().models)

    with pytest.raises(ServiceError) as error:
        validate_create(create_request(ENVIRONMENT, spec), registry, ExperimentSettings().scheduler)

    assert error.value.code == grpc.StatusCode.INVALID_ARGUMENT
    ((field, description),) = error.value.field_violations
    assert field == "spec.scorers[1].regex.pattern"
    assert "RE2" in description


def test_too_many_inline_inputs_name_the_cap_and_the_alternative() -> None:
    spec = make_spec([f"p{i}" for i in range(limits.MAX_INLINE_INPUTS + 1)], model="scripted")
    registry = ModelRegistry(ExperimentSettings().models)

    with pytest.raises(ServiceError) as error:
        validate_create(create_request(ENVIRONMENT, spec), registry, ExperimentSettings().scheduler)

    ((field, description),) = error.value.field_violations
    assert field == "spec.inputs"
    assert f"at most {limits.MAX_INLINE_INPUTS}" in description
    assert "spec.dataset_path" in description
