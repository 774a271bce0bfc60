"""Resource usage sampling of one environment.

cgroup counters when the environment has a cgroup; otherwise psutil over its
process tree, rooted at its agent (an approximation: processes that ended
between samples are only counted through their command's final usage).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable

import psutil

from sandbox_sdk.server.orchestrator.sandbox.cgroups import EnvironmentCgroup
from sandbox_sdk.server.orchestrator.sandbox.environment_record import Usage
from sandbox_sdk.server.orchestrator.sandbox.workspace import Workspace

_MIN_CPU_WINDOW_SECONDS = 0.05


def _process_tree(root_pids: Iterable[int]) -> list[psutil.Process]:
    processes: list[psutil.Process] = []
    for pid in root_pids:
        with contextlib.suppress(psutil.Error):
            root = psutil.Process(pid)
            processes += [root, *root.children(recursive=True)]
    return processes


def _tree_usage(root_pids: Iterable[int]) -> tuple[float, int, int]:
    """CPU seconds, resident bytes and count of the live processes under ``root_pids``."""
    cpu, memory, count = 0.0, 0, 0
    for process in _process_tree(root_pids):
        with contextlib.suppress(psutil.Error):
            times = process.cpu_times()
            cpu += times.user + times.system
            memory += process.memory_info().rss
            count += 1
    return cpu, memory, count


class UsageTracker:
    """Samples one environment and remembers what CPU percent and peaks need."""

    def __init__(self) -> None:
        self._last_time: float | None = None
        self._last_cpu = 0.0
        self._cpu_percent = 0.0
        self._peak_memory = 0
        self.finished_cpu_seconds = 0.0

    def record_finished_command(self, cpu_seconds: float, memory_peak_bytes: int) -> None:
        """Adds an ended command's usage (used when there is no cgroup)."""
        self.finished_cpu_seconds += cpu_seconds
        self._peak_memory = max(self._peak_memory, memory_peak_bytes)

    def sample(
        self, cgroup: EnvironmentCgroup | None, workspace: Workspace, live_pids: Iterable[int]
    ) -> Usage:
        """Takes a sample now."""
        if cgroup is not None:
            counters = cgroup.counters()
            cpu, memory, pids = counters.cpu_seconds, counters.memory_bytes, counters.pids
            peak = counters.memory_peak_bytes
        else:
            live_cpu, memory, pids = _tree_usage(live_pids)
            cpu = self.finished_cpu_seconds + live_cpu
            peak = memory
        self._peak_memory = max(self._peak_memory, peak, memory)
        now = time.monotonic()
        if self._last_time is None or now - self._last_time >= _MIN_CPU_WINDOW_SECONDS:
            if self._last_time is not None:
                self._cpu_percent = max(0.0, (cpu - self._last_cpu) / (now - self._last_time))
                self._cpu_percent *= 100.0
            self._last_time, self._last_cpu = now, cpu
        return Usage(
            cpu_seconds=cpu,
            cpu_percent=self._cpu_percent,
            memory_bytes=memory,
            memory_peak_bytes=self._peak_memory,
            pids=pids,
            disk_bytes=workspace.disk_used(),
            sample_time=time.time(),
        )
