"""The fair queue deciding which queued experiment runs next.

Dispatch order: round-robin between tenants (the tenant after the one
served last), then the tenant's highest priority, then first come first
served. The queue lives in memory as a mirror of the QUEUED rows, which are
the persistent queue; it is rebuilt from them on start.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True, order=True)
class QueueEntry:
    """A queued experiment; entries sort by priority (highest first), then arrival."""

    sort_key: tuple[int, int] = field(init=False, repr=False)
    experiment_id: str = field(compare=False)
    tenant: str = field(compare=False)
    priority: int = field(compare=False)
    order: int = field(compare=False)
    environment_id: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sort_key", (-self.priority, self.order))


class FairQueue:
    """Queued experiments per tenant, dispatched round-robin between tenants."""

    def __init__(self) -> None:
        self._by_tenant: dict[str, list[QueueEntry]] = {}  # each sorted by sort_key
        self._tenants: list[str] = []  # sorted tenants with queued entries
        self._entries: dict[str, QueueEntry] = {}
        self._last_tenant = ""

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, experiment_id: object) -> bool:
        return experiment_id in self._entries

    def add(self, entry: QueueEntry) -> None:
        """Queues an experiment."""
        queue = self._by_tenant.get(entry.tenant)
        if queue is None:
            queue = self._by_tenant[entry.tenant] = []
            bisect.insort(self._tenants, entry.tenant)
        bisect.insort(queue, entry)
        self._entries[entry.experiment_id] = entry

    def remove(self, experiment_id: str) -> bool:
        """Takes an experiment out of the queue; False when it was not queued."""
        entry = self._entries.pop(experiment_id, None)
        if entry is None:
            return False
        queue = self._by_tenant[entry.tenant]
        del queue[bisect.bisect_left(queue, entry)]
        self._forget_if_empty(entry.tenant)
        return True

    def remove_where(self, condition: Callable[[QueueEntry], bool]) -> list[QueueEntry]:
        """Takes every entry for which ``condition`` holds out of the queue; returns them."""
        chosen = [entry for entry in self._entries.values() if condition(entry)]
        for entry in chosen:
            self.remove(entry.experiment_id)
        return chosen

    def pop_next(self, may_start: Callable[[str], bool]) -> QueueEntry | None:
        """The next experiment to run among tenants for which ``may_start(tenant)`` holds."""
        for tenant in self._round_robin_order():
            if may_start(tenant):
                entry = self._by_tenant[tenant].pop(0)
                del self._entries[entry.experiment_id]
                self._forget_if_empty(tenant)
                self._last_tenant = tenant
                return entry
        return None

    def position(self, experiment_id: str) -> int:
        """The 1-based place the experiment would start in, with no new arrivals; 0 if not queued.

        An entry of rank r in its tenant's queue starts in round r: after up
        to r entries of every tenant, and after the tenants ahead of its own
        in this round. Per-tenant limits, which only delay, are ignored.
        """
        entry = self._entries.get(experiment_id)
        if entry is None:
            return 0
        rank = bisect.bisect_left(self._by_tenant[entry.tenant], entry)
        position = 1
        ahead_in_round = True
        for tenant in self._round_robin_order():
            if tenant == entry.tenant:
                ahead_in_round = False
            queued = len(self._by_tenant[tenant])
            position += min(queued, rank) + int(ahead_in_round and queued > rank)
        return position

    def _round_robin_order(self) -> list[str]:
        start = bisect.bisect_right(self._tenants, self._last_tenant)
        return self._tenants[start:] + self._tenants[:start]

    def _forget_if_empty(self, tenant: str) -> None:
        if not self._by_tenant[tenant]:
            del self._by_tenant[tenant]
            self._tenants.remove(tenant)
