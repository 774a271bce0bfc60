"""Statistics for experiment results: intervals, comparisons, power; plots.

Every module here is importable by a client-only install: scipy, numpy and
matplotlib (the ``[analysis]`` extra) are imported only when a function that
needs them runs. See docs/statistics.md for what each number means.
"""

from sandbox_sdk.analysis.power import PowerPlan, sample_size

__all__ = ["PowerPlan", "sample_size"]
