"""The numerical libraries, imported on first use with an error that names the extra."""

from __future__ import annotations

from types import ModuleType

_EXTRA_HINT = "pip install 'sandbox-sdk[analysis]'"


class AnalysisDependencyError(ImportError):
    """scipy, numpy or matplotlib is missing: statistics and plots need the ``[analysis]`` extra."""


def scipy_stats() -> ModuleType:
    """``scipy.stats``, or :class:`AnalysisDependencyError` naming the extra to install."""
    try:
        import scipy.stats
    except ImportError as error:
        raise AnalysisDependencyError(
            f"statistics need scipy: {_EXTRA_HINT}", name="scipy"
        ) from error
    module: ModuleType = scipy.stats
    return module


def numpy() -> ModuleType:
    """``numpy``, or :class:`AnalysisDependencyError` naming the extra to install."""
    try:
        import numpy
    except ImportError as error:
        raise AnalysisDependencyError(
            f"statistics need numpy: {_EXTRA_HINT}", name="numpy"
        ) from error
    return numpy
