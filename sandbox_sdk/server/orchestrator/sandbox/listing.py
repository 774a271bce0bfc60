"""Directory listings as a cursor: pages of sorted names, resumed after the last name.

ListFiles promises entries sorted by path, and ``os.scandir`` returns them
in no order, so some step has to see every name once. Doing that (and a
``stat`` of every entry, and a sort) for every page is what made a page of a
300,000-entry directory cost seconds. Here:

* A page is a *keyset* cursor: "the ``limit`` smallest names greater than
  the last name of the previous page". It needs no position that shifts
  when the directory changes: entries present for the whole listing appear
  exactly once and in order, whatever is created or deleted meanwhile.
* Small directories (up to ``INLINE_SCAN_ENTRIES``) are read and sorted on
  every call: that costs well under a millisecond.
* A larger directory is read once into a *snapshot* of its sorted names, on
  a worker thread, in chunks that are sorted separately and merged, so the
  thread never holds the GIL for long. Pages are then a binary search plus a
  ``stat`` of the page's own entries. The snapshot is keyed by the
  directory's workspace, path, device and inode, and is rebuilt (again on
  the worker) when the directory's mtime shows it changed; while that runs,
  pages keep coming from the previous snapshot for up to
  ``STALE_SERVE_SECONDS`` (entries deleted since are skipped; ones created
  since may be missed, as in any listing taken while a directory changes).
* Until a large directory's first snapshot is ready, :meth:`page` raises
  :class:`ListingNotReady`; the caller asks the client to retry shortly.
* A page holds at most ``MAX_PAGE_ENTRIES`` entries (fewer than a large
  ``page_size`` asks for, with a next token), so one call's stats stay short.

No call made on the event loop reads more than ``INLINE_SCAN_ENTRIES`` names.
"""

from __future__ import annotations

import bisect
import heapq
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Hashable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

INLINE_SCAN_ENTRIES = 2048
# A page holds at most this many entries whatever page_size asks for (each is
# stat'ed on the request path); a shorter page still carries a next token.
MAX_PAGE_ENTRIES = 250
MAX_SNAPSHOT_ENTRIES = 2_000_000
MAX_SNAPSHOTS = 16
SNAPSHOT_IDLE_SECONDS = 60.0
STALE_SERVE_SECONDS = 5.0
# A snapshot counts as current only if its scan started this long after the
# directory's mtime: a change in the same timestamp tick would be invisible.
MTIME_SLACK_NS = 50_000_000
_SORT_CHUNK = 8192


class ListingNotReady(Exception):
    """A large directory's snapshot is being built; ask again in ``retry_after`` seconds."""

    retry_after = 0.25


class DirectoryTooLarge(Exception):
    """A directory with more entries than a listing may hold."""


@dataclass
class _Snapshot:
    names: list[str]
    mtime_ns: int
    scan_started_ns: int
    built: float
    used: float

    def current(self, mtime_ns: int) -> bool:
        return self.mtime_ns == mtime_ns and self.scan_started_ns > mtime_ns + MTIME_SLACK_NS


class DirectoryListings:
    """Sorted-name pages of directories, with snapshots of the large ones."""

    def __init__(self) -> None:
        self._snapshots: OrderedDict[Hashable, _Snapshot] = OrderedDict()
        self._building: set[Hashable] = set()
        self._too_large: dict[Hashable, int] = {}
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="listing")

    def page(self, dir_fd: int, scope: Hashable, after: str, limit: int) -> tuple[list[str], bool]:
        """Up to ``limit`` (at most MAX_PAGE_ENTRIES) names greater than ``after`` in
        sorted order, and whether more follow. ``scope`` names the directory (its
        workspace and path); raises ListingNotReady or DirectoryTooLarge."""
        limit = min(limit, MAX_PAGE_ENTRIES)
        info = os.fstat(dir_fd)
        key = (scope, info.st_dev, info.st_ino)
        names = None if self._known_large(key) else self._small_directory(dir_fd)
        if names is None:
            names = self._snapshot_names(dir_fd, key, info.st_mtime_ns)
        start = bisect.bisect_right(names, after)
        return names[start : start + limit], start + limit < len(names)

    def _known_large(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._snapshots or key in self._building or key in self._too_large

    def _small_directory(self, dir_fd: int) -> list[str] | None:
        """The sorted names when the directory has at most INLINE_SCAN_ENTRIES, else None."""
        names: list[str] = []
        with os.scandir(dir_fd) as entries:
            for entry in entries:
                names.append(entry.name)
                if len(names) > INLINE_SCAN_ENTRIES:
                    return None
        names.sort()
        return names

    def _snapshot_names(self, dir_fd: int, key: Hashable, mtime_ns: int) -> list[str]:
        now = time.monotonic()
        with self._lock:
            self._expire(now)
            if self._too_large.get(key) == mtime_ns:
                raise DirectoryTooLarge(MAX_SNAPSHOT_ENTRIES)
            snapshot = self._snapshots.get(key)
            if snapshot is not None and snapshot.current(mtime_ns):
                snapshot.used = now
                self._snapshots.move_to_end(key)
                return snapshot.names
            self._build_later(dir_fd, key)
            if snapshot is not None and now - snapshot.built < STALE_SERVE_SECONDS:
                snapshot.used = now
                return snapshot.names
        raise ListingNotReady

    def _build_later(self, dir_fd: int, key: Hashable) -> None:
        """Starts a snapshot build on the worker (called with the lock held)."""
        if key in self._building:
            return
        self._building.add(key)
        copy = os.dup(dir_fd)
        self._executor.submit(self._build, copy, key)

    def _build(self, dir_fd: int, key: Hashable) -> None:
        try:
            mtime_ns = os.fstat(dir_fd).st_mtime_ns
            started = time.time_ns()
            names = _sorted_names(dir_fd)
            now = time.monotonic()
            with self._lock:
                if names is None:
                    self._too_large[key] = mtime_ns
                    self._snapshots.pop(key, None)
                    return
                self._snapshots[key] = _Snapshot(names, mtime_ns, started, now, now)
                self._snapshots.move_to_end(key)
                while len(self._snapshots) > MAX_SNAPSHOTS:
                    self._snapshots.popitem(last=False)
        except OSError:
            return  # the directory went away; the next call reports that
        finally:
            os.close(dir_fd)
            with self._lock:
                self._building.discard(key)

    def _expire(self, now: float) -> None:
        for key in [k for k, s in self._snapshots.items() if now - s.used > SNAPSHOT_IDLE_SECONDS]:
            del self._snapshots[key]


def _sorted_names(dir_fd: int) -> list[str] | None:
    """Every name in the directory, sorted; None past MAX_SNAPSHOT_ENTRIES.

    Chunks are sorted separately and merged lazily, so no single step holds
    the GIL for more than a few milliseconds.
    """
    chunks: list[list[str]] = []
    count = 0
    with os.scandir(dir_fd) as entries:
        for chunk in _chunked(entry.name for entry in entries):
            count += len(chunk)
            if count > MAX_SNAPSHOT_ENTRIES:
                return None
            chunk.sort()
            chunks.append(chunk)
    return list(heapq.merge(*chunks))


def _chunked(names: Iterator[str]) -> Iterator[list[str]]:
    chunk: list[str] = []
    for name in names:
        chunk.append(name)
        if len(chunk) == _SORT_CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


LISTINGS = DirectoryListings()
"""The orchestrator's listings: one cache of snapshots per process."""
