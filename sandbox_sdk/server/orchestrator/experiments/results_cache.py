"""Aggregates of finished experiments, kept so a results page does not recompute them.

Aggregating means reading every sample; for an experiment with 100,000
samples that is most of a results call. A finished experiment's samples
never change, so its aggregates are computed once (on a reader thread) and
served from here afterwards. Running experiments are always recomputed.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable, Callable

from sandbox_sdk.server.orchestrator.experiments.records import ExperimentRecord
from sandbox_sdk.server.orchestrator.experiments.results import Aggregates

DEFAULT_SIZE = 128


class AggregateCache:
    """Aggregates by experiment id, for experiments in a final state."""

    def __init__(self, size: int = DEFAULT_SIZE) -> None:
        self._size = size
        self._entries: OrderedDict[tuple[str, int], Aggregates] = OrderedDict()

    async def get(
        self, record: ExperimentRecord, compute: Callable[[str], Awaitable[Aggregates]]
    ) -> Aggregates:
        """The experiment's aggregates: cached when it is finished, else ``compute(id)``."""
        key = (record.id, record.completed_samples)
        cached = self._entries.get(key)
        if cached is not None:
            self._entries.move_to_end(key)
            return cached
        aggregates = await compute(record.id)
        if record.state.is_final:
            self._entries[key] = aggregates
            while len(self._entries) > self._size:
                self._entries.popitem(last=False)
        return aggregates
