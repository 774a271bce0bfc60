"""Creates that asked to wait for room (``queue_when_full``), first come, first served."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass

from sandbox_sdk.server.orchestrator.sandbox.environment_record import Environment, FileWrite


@dataclass(frozen=True)
class QueuedCreate:
    """An accepted create waiting for room: its QUEUED record and the files to write."""

    environment: Environment
    files: tuple[FileWrite, ...]


class CreateQueue:
    """At most ``limit`` waiting creates, in arrival order, holding at most
    ``limit_bytes`` of their files in memory together."""

    def __init__(self, limit: int, limit_bytes: int) -> None:
        self.limit = limit
        self.limit_bytes = limit_bytes
        self._entries: OrderedDict[str, QueuedCreate] = OrderedDict()
        self._bytes = 0

    def takes(self, files: tuple[FileWrite, ...]) -> bool:
        """Whether a create with ``files`` fits within both limits."""
        return len(self._entries) < self.limit and self._bytes + _size(files) <= self.limit_bytes

    def add(self, entry: QueuedCreate) -> int:
        """Queues ``entry`` last; returns its 1-based position."""
        self._entries[entry.environment.id] = entry
        self._bytes += _size(entry.files)
        return len(self._entries)

    def position(self, environment_id: str) -> int:
        """The 1-based position of a waiting create; 0 if it is not waiting."""
        for index, queued in enumerate(self._entries, start=1):
            if queued == environment_id:
                return index
        return 0

    def remove(self, environment_id: str) -> QueuedCreate | None:
        """Takes a create out of the queue (admitted or deleted)."""
        entry = self._entries.pop(environment_id, None)
        if entry is not None:
            self._bytes -= _size(entry.files)
        return entry

    def __iter__(self) -> Iterator[QueuedCreate]:
        return iter(list(self._entries.values()))

    def __len__(self) -> int:
        return len(self._entries)


def _size(files: tuple[FileWrite, ...]) -> int:
    return sum(len(file.content) for file in files)
