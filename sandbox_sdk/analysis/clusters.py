"""A metric's values grouped by input: repeats of one input are a cluster, not new samples."""

from __future__ import annotations

import functools
import math
from collections.abc import Hashable, Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Clusters:
    """One tuple of values per input (its repeats), in the order the inputs were first seen.

    Immutable, so every derived number is computed once (a summary asks for the count and
    the mean a dozen times)."""

    keys: tuple[Hashable, ...]
    groups: tuple[tuple[float, ...], ...]

    @classmethod
    def of(cls, keyed_values: Iterable[tuple[Hashable, float]]) -> Clusters:
        """Groups ``(input key, value)`` pairs by key."""
        grouped: dict[Hashable, list[float]] = {}
        for key, value in keyed_values:
            grouped.setdefault(key, []).append(float(value))
        return cls(tuple(grouped), tuple(tuple(values) for values in grouped.values()))

    @functools.cached_property
    def values(self) -> tuple[float, ...]:
        """Every value, input by input."""
        return tuple(value for group in self.groups for value in group)

    @functools.cached_property
    def count(self) -> int:
        """Number of values, every repeat counted."""
        return sum(len(group) for group in self.groups)

    @property
    def inputs(self) -> int:
        """Number of inputs (clusters)."""
        return len(self.groups)

    @property
    def repeats(self) -> int:
        """Most repeats any input has (0 when there are no values)."""
        return max((len(group) for group in self.groups), default=0)

    @functools.cached_property
    def mean(self) -> float:
        """The arithmetic mean of every value; 0 when there are none."""
        return math.fsum(self.values) / self.count if self.count else 0.0

    def input_means(self) -> dict[Hashable, float]:
        """Each input's mean over its repeats."""
        return {key: math.fsum(g) / len(g) for key, g in zip(self.keys, self.groups, strict=True)}

    def is_binary(self) -> bool:
        """Whether every value is 0 or 1 (a pass/fail score), and there is at least one."""
        return self.count > 0 and all(value in (0.0, 1.0) for value in self.values)

    def sample_stddev(self) -> float | None:
        """The sample standard deviation of the values (divisor n - 1); None below two values."""
        values = self.values
        if len(values) < 2:
            return None
        center = self.mean
        return math.sqrt(math.fsum((v - center) ** 2 for v in values) / (len(values) - 1))

    def clustered_variance(self) -> float:
        """The cluster-robust variance of the mean without small-sample correction
        (Miller 2024, eq. 4): the squared sums of each cluster's residuals, over n²."""
        return self._clustered_variance

    @functools.cached_property
    def _clustered_variance(self) -> float:
        center = self.mean
        residuals = (math.fsum(v - center for v in group) for group in self.groups)
        return math.fsum(r * r for r in residuals) / self.count**2

    def standard_error(self) -> float | None:
        """The cluster-robust standard error of the mean, with the k / (k - 1) correction
        for k clusters; None below two inputs. With every input repeated equally often it
        is the standard deviation of the per-input means over √k, and with one repeat the
        usual s / √n."""
        k = self.inputs
        if k < 2:
            return None
        return math.sqrt(self.clustered_variance() * k / (k - 1))
