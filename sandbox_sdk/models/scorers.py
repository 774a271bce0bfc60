"""Scorers: what computes a metric from each model output.

``run_experiment(scorers=[...])`` takes these dataclasses or the short forms
``"exact_match"``, ``"contains"``, ``"json_valid"``, ``{"regex": "..."}`` and
``{"command": [...]}``.
"""

from __future__ import annotations

from dataclasses import dataclass

from sandbox_sdk.api.v1 import experiment_pb2
from sandbox_sdk.utils.units import to_duration_pb


@dataclass(frozen=True, slots=True)
class ExactMatch:
    """1 when the output equals the input's expected text."""

    ignore_case: bool = False
    name: str = ""

    def to_proto(self) -> experiment_pb2.Scorer:
        """The wire form."""
        scorer = experiment_pb2.ExactMatchScorer(ignore_case=self.ignore_case)
        return experiment_pb2.Scorer(name=self.name, exact_match=scorer)


@dataclass(frozen=True, slots=True)
class Contains:
    """1 when the output contains the input's expected text."""

    ignore_case: bool = False
    name: str = ""

    def to_proto(self) -> experiment_pb2.Scorer:
        """The wire form."""
        return experiment_pb2.Scorer(
            name=self.name, contains=experiment_pb2.ContainsScorer(ignore_case=self.ignore_case)
        )


@dataclass(frozen=True, slots=True)
class Regex:
    """1 when the Python regular expression ``pattern`` matches the output."""

    pattern: str
    name: str = ""

    def to_proto(self) -> experiment_pb2.Scorer:
        """The wire form."""
        return experiment_pb2.Scorer(
            name=self.name, regex=experiment_pb2.RegexScorer(pattern=self.pattern)
        )


@dataclass(frozen=True, slots=True)
class JsonValid:
    """1 when the output parses as JSON."""

    name: str = ""

    def to_proto(self) -> experiment_pb2.Scorer:
        """The wire form."""
        return experiment_pb2.Scorer(name=self.name, json_valid=experiment_pb2.JsonValidScorer())


@dataclass(frozen=True, slots=True)
class Command:
    """Runs ``argv`` in the environment with the output on stdin and ``$EXPECTED`` set.

    The command prints one number, the score. ``timeout`` is in seconds (0: 10 s).
    """

    argv: tuple[str, ...]
    timeout: float = 0.0
    name: str = ""

    def to_proto(self) -> experiment_pb2.Scorer:
        """The wire form."""
        return experiment_pb2.Scorer(
            name=self.name,
            command=experiment_pb2.CommandScorer(
                argv=list(self.argv), timeout=to_duration_pb(self.timeout)
            ),
        )


Scorer = ExactMatch | Contains | Regex | JsonValid | Command
