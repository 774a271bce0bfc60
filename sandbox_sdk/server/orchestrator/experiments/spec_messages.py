"""Experiments' specs as wire messages, built once per experiment.

Every Experiment message carries its spec, and a spec with thousands of
inline inputs takes tens of milliseconds of Python to convert. A spec never
changes after creation, so its message is built once and copied (in C) into
every reply after that.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from sandbox_sdk.api.v1 import experiment_pb2
from sandbox_sdk.server.orchestrator.experiments.convert import spec_to_proto
from sandbox_sdk.server.orchestrator.experiments.records import ExperimentRecord

DEFAULT_SIZE = 256


class SpecMessages:
    """ExperimentSpec messages by experiment id, least recently used dropped first."""

    def __init__(self, size: int = DEFAULT_SIZE) -> None:
        self._size = size
        self._messages: OrderedDict[str, experiment_pb2.ExperimentSpec] = OrderedDict()
        self._lock = threading.Lock()

    def cached(self, experiment_id: str) -> bool:
        """Whether the experiment's message is built already."""
        with self._lock:
            return experiment_id in self._messages

    def of(self, record: ExperimentRecord) -> experiment_pb2.ExperimentSpec:
        """The spec message of ``record``; do not modify it (copy it into a reply)."""
        with self._lock:
            message = self._messages.get(record.id)
            if message is not None:
                self._messages.move_to_end(record.id)
                return message
        message = spec_to_proto(record.spec)
        with self._lock:
            self._messages[record.id] = message
            while len(self._messages) > self._size:
                self._messages.popitem(last=False)
        return message
