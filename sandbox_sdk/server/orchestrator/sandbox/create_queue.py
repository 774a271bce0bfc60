"""Creates that asked to wait for room (``queue_when_full``), first come, first served."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass

from sandbox_sdk.server.orchestrator.sandbox.model import Environment, FileWrite


@dataclass(frozen=True)
class QueuedCreate:
    """An accepted create waiting for room: its QUEUED record and the files to write."""

    environment: Environment
    files: tuple[FileWrite, ...]


class CreateQueue:
    """At most ``limit`` waiting creates, in arrival order."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._entries: OrderedDict[str, QueuedCreate] = OrderedDict()

    @property
    def full(self) -> bool:
        """Whether another create would exceed the limit."""
        return len(self._entries) >= self.limit

    def add(self, entry: QueuedCreate) -> int:
        """Queues ``entry`` last; returns its 1-based position."""
        self._entries[entry.environment.id] = entry
        return len(self._entries)

    def position(self, environment_id: str) -> int:
        """The 1-based position of a waiting create; 0 if it is not waiting."""
        for index, queued in enumerate(self._entries, start=1):
            if queued == environment_id:
                return index
        return 0

    def remove(self, environment_id: str) -> QueuedCreate | None:
        """Takes a create out of the queue (admitted or deleted)."""
        return self._entries.pop(environment_id, None)

    def __iter__(self) -> Iterator[QueuedCreate]:
        return iter(list(self._entries.values()))

    def __len__(self) -> int:
        return len(self._entries)
