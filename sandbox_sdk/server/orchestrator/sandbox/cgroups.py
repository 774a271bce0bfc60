"""Per-environment control groups: limits, accounting and whole-tree kill.

Two drivers share one interface. :class:`CgroupV1Driver` uses one hierarchy
per controller (``/sys/fs/cgroup/<controller>/<parent>/<env-id>``);
:class:`CgroupV2Driver` uses the unified hierarchy. Each environment gets one
cgroup that carries its limits and holds its agent, and so every process of
the environment. (A command's own CPU time and peak memory come from
``wait4``: moving each command into a cgroup of its own cost milliseconds.)
"""

from __future__ import annotations

import abc
import asyncio
import concurrent.futures
import contextlib
import errno
import os
import select
import signal
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

V1_CONTROLLERS = ("memory", "cpu", "cpuacct", "pids")
V2_CONTROLLERS = ("memory", "cpu", "pids")
CPU_PERIOD_US = 100_000
_MIN_CPU_QUOTA_US = 1_000
# Writes environments' cgroups while their creates go on (see EnvironmentCgroup.create_soon).
_CREATING = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="cgroup")


@dataclass(frozen=True)
class CgroupMounts:
    """Where the cgroup hierarchies are mounted: v1 per controller, and the v2 root."""

    v1: Mapping[str, Path]
    v2: Path | None


def read_cgroup_mounts(mounts_file: Path = Path("/proc/self/mounts")) -> CgroupMounts:
    """Parses a mounts table (``/proc/self/mounts`` format) for cgroup file systems."""
    v1: dict[str, Path] = {}
    v2: Path | None = None
    try:
        lines = mounts_file.read_text().splitlines()
    except OSError:
        return CgroupMounts({}, None)
    for line in lines:
        fields = line.split()
        if len(fields) < 4:
            continue
        mount_point, fs_type, options = Path(fields[1]), fields[2], fields[3].split(",")
        if fs_type == "cgroup2" and v2 is None:
            v2 = mount_point
        elif fs_type == "cgroup":
            for option in options:
                if option in V1_CONTROLLERS and option not in v1:
                    v1[option] = mount_point
    return CgroupMounts(v1, v2)


@dataclass(frozen=True)
class CgroupCounters:
    """Accounting of one cgroup (and its descendants)."""

    cpu_seconds: float
    memory_bytes: int
    memory_peak_bytes: int
    pids: int
    oom_kills: int


def _write(path: Path, value: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def _read_int(path: Path, default: int = 0) -> int:
    try:
        text = path.read_text().strip()
    except OSError:
        return default
    return int(text) if text.lstrip("-").isdigit() else default


def _read_keyed(path: str | Path) -> dict[str, int]:
    """Reads a flat keyed file such as ``memory.events`` or ``cpu.stat``.

    Plain ``os`` calls: it is read for every command, where pathlib and text I/O showed.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return {}
    try:
        data = os.read(fd, 4096)
    except OSError:
        return {}
    finally:
        os.close(fd)
    values: dict[str, int] = {}
    for line in data.decode().splitlines():
        key, _, value = line.partition(" ")
        if value.strip().isdigit():
            values[key] = int(value)
    return values


def _walk_dirs(root: Path) -> Iterator[Path]:
    """``root`` and every cgroup below it, deepest first."""
    try:
        with os.scandir(root) as entries:
            children = [Path(e.path) for e in entries if e.is_dir(follow_symlinks=False)]
    except OSError:
        return
    for child in children:
        yield from _walk_dirs(child)
    yield root


def _procs(directory: Path) -> set[int]:
    pids: set[int] = set()
    for cgroup in _walk_dirs(directory):
        with contextlib.suppress(OSError):
            pids.update(int(p) for p in (cgroup / "cgroup.procs").read_text().split())
    return pids


def _remove_tree(directory: Path) -> bool:
    """Removes a cgroup and its descendants; False if one is still busy."""
    removed = True
    for cgroup in _walk_dirs(directory):
        try:
            cgroup.rmdir()
        except FileNotFoundError:
            continue
        except OSError as error:
            if error.errno != errno.EBUSY:
                raise
            removed = False
    return removed


def _names(cgroup_line: str, marker: str) -> bool:
    """Whether a /proc/<pid>/cgroup line places the process in ``marker`` or below it."""
    return cgroup_line.endswith(marker) or f"{marker}/" in cgroup_line


def _kill_members(pids: Iterable[int], member_marker: str) -> list[int]:
    """SIGKILLs each pid whose /proc cgroup line still names ``member_marker``.

    Returns a pidfd per signalled process (the caller closes them): the pidfd
    pins the process, so a pid reused after ``cgroup.procs`` was read is never
    signalled, and it becomes readable once the process has really exited.
    """
    signalled = []
    for pid in pids:
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:
            continue
        try:
            membership = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
            if any(_names(line, member_marker) for line in membership):
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
                signalled.append(pidfd)
                continue
        except OSError:
            pass
        os.close(pidfd)
    return signalled


def _exited(pidfds: list[int]) -> list[int]:
    """The pidfds whose process has exited (a pidfd polls readable then)."""
    readable, _, _ = select.select(pidfds, [], [], 0)
    return readable


class Cgroup(abc.ABC):
    """A cgroup node of an environment or of one command."""

    def __init__(self, dirs: Iterable[Path], marker: str) -> None:
        self.dirs = tuple(dict.fromkeys(dirs))
        self._marker = marker

    def pids(self) -> set[int]:
        """Every process in this cgroup and below."""
        pids: set[int] = set()
        for directory in self.dirs:
            pids |= _procs(directory)
        return pids

    def signal_all(self) -> None:
        """Sends SIGKILL to every process in this cgroup and below, once."""
        for pidfd in self._signal():
            os.close(pidfd)

    def _signal(self) -> list[int]:
        return _kill_members(self.pids(), self._marker)

    async def kill_all(self, timeout: float = 5.0) -> bool:
        """Kills every process until none is left and each has exited; False on timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        pidfds: list[int] = []
        try:
            while self.pids() or pidfds:
                if loop.time() > deadline:
                    return False
                pidfds += self._signal()
                for pidfd in _exited(pidfds):
                    pidfds.remove(pidfd)
                    os.close(pidfd)
                await asyncio.sleep(0.002)
            return True
        finally:
            for pidfd in pidfds:
                os.close(pidfd)

    def remove(self) -> bool:
        """Deletes the cgroup directories; False if a process is still inside."""
        removed = [_remove_tree(directory) for directory in self.dirs]  # try every one
        return all(removed)

    @abc.abstractmethod
    def counters(self) -> CgroupCounters:
        """Current accounting."""

    @abc.abstractmethod
    def oom_kills(self) -> int:
        """How many processes the OOM killer has killed in it: ``counters().oom_kills``, cheaper."""


class EnvironmentCgroup(Cgroup):
    """The cgroup of one environment, which carries its limits."""

    _creation: concurrent.futures.Future[None] | None = None

    @abc.abstractmethod
    def create(self, cpu_cores: float, memory_bytes: int, max_pids: int) -> None:
        """Makes the directories and writes the limits."""

    def create_soon(self, cpu_cores: float, memory_bytes: int, max_pids: int) -> None:
        """Starts :meth:`create` on a thread, so that a create does other work meanwhile.

        :meth:`attach` and :meth:`remove` wait for it: no process joins the
        cgroup before its limits are written (a failed creation makes every
        attach raise it), and nothing is removed while it is being made.
        """
        self._creation = _CREATING.submit(self.create, cpu_cores, memory_bytes, max_pids)

    def _wait_created(self) -> None:
        if self._creation is not None:
            self._creation.result()

    def remove(self) -> bool:
        with contextlib.suppress(Exception):
            self._wait_created()
        return super().remove()

    def attach(self, pid: int) -> None:
        """Moves ``pid`` into the environment's cgroup in every hierarchy, once its
        limits are in place."""
        self._wait_created()
        for directory in self.dirs:
            _write(directory / "cgroup.procs", str(pid))


class CgroupDriver(abc.ABC):
    """Creates environment cgroups under ``<hierarchy>/<parent>/``."""

    version: int

    def __init__(self, parent: str) -> None:
        self.parent = parent

    @abc.abstractmethod
    def prepare(self) -> None:
        """Creates the parent cgroups and enables controllers; raises OSError if it cannot."""

    @abc.abstractmethod
    def environment(self, environment_id: str) -> EnvironmentCgroup:
        """A handle on an environment's cgroup, existing or not."""

    @abc.abstractmethod
    def _parent_dir(self) -> Path:
        """The parent cgroup in one hierarchy that holds every environment's cgroup."""

    def environment_ids(self) -> list[str]:
        """The names of the environment cgroups that exist under the parent."""
        try:
            with os.scandir(self._parent_dir()) as entries:
                return [e.name for e in entries if e.is_dir(follow_symlinks=False)]
        except OSError:
            return []

    def marker(self, environment_id: str) -> str:
        """The cgroup path that /proc/<pid>/cgroup of the environment's processes names."""
        return f"/{self.parent}/{environment_id}"


def _quota_us(cpu_cores: float) -> int:
    return max(_MIN_CPU_QUOTA_US, round(cpu_cores * CPU_PERIOD_US))


# --- cgroup v1 ---------------------------------------------------------------------------


class V1EnvironmentCgroup(EnvironmentCgroup):
    """An environment's cgroup v1: one directory per hierarchy."""

    def __init__(self, dirs: Mapping[str, Path], marker: str) -> None:
        super().__init__(dirs.values(), marker)
        self._by_controller = dict(dirs)
        self._oom_control = str(dirs["memory"] / "memory.oom_control")

    def create(self, cpu_cores: float, memory_bytes: int, max_pids: int) -> None:
        self.make_directories()
        self.write_limits(cpu_cores, memory_bytes, max_pids)

    def make_directories(self) -> None:
        """Makes the cgroup in every hierarchy, without limits."""
        for directory in self.dirs:
            directory.mkdir(parents=True, exist_ok=True)

    def write_limits(self, cpu_cores: float, memory_bytes: int, max_pids: int) -> None:
        """Writes the limits into the existing directories."""
        memory = self._by_controller["memory"]
        _write(memory / "memory.limit_in_bytes", str(memory_bytes))
        if (memory / "memory.memsw.limit_in_bytes").exists():
            _write(memory / "memory.memsw.limit_in_bytes", str(memory_bytes))
        cpu = self._by_controller["cpu"]
        _write(cpu / "cpu.cfs_period_us", str(CPU_PERIOD_US))
        _write(cpu / "cpu.cfs_quota_us", str(_quota_us(cpu_cores)))
        _write(self._by_controller["pids"] / "pids.max", str(max_pids))

    def counters(self) -> CgroupCounters:
        memory = self._by_controller["memory"]
        return CgroupCounters(
            cpu_seconds=_read_int(self._by_controller["cpuacct"] / "cpuacct.usage") / 1e9,
            memory_bytes=_read_int(memory / "memory.usage_in_bytes"),
            memory_peak_bytes=_read_int(memory / "memory.max_usage_in_bytes"),
            pids=_read_int(self._by_controller["pids"] / "pids.current"),
            oom_kills=self.oom_kills(),
        )

    def oom_kills(self) -> int:
        # v1 counts per cgroup, without descendants; nothing makes cgroups below an
        # environment's (the sandbox uid cannot), so its own file is all there is.
        return _read_keyed(self._oom_control).get("oom_kill", 0)


class CgroupV1Driver(CgroupDriver):
    """cgroup v1: memory, cpu, cpuacct and pids, each in its own (or a shared) hierarchy."""

    version = 1

    def __init__(self, mounts: Mapping[str, Path], parent: str) -> None:
        super().__init__(parent)
        missing = [c for c in V1_CONTROLLERS if c not in mounts]
        if missing:
            raise ValueError(f"cgroup v1 controllers not mounted: {', '.join(missing)}")
        self.mounts = dict(mounts)

    def prepare(self) -> None:
        for mount in set(self.mounts.values()):
            (mount / self.parent).mkdir(exist_ok=True)

    def _parent_dir(self) -> Path:
        return self.mounts["memory"] / self.parent

    def environment(self, environment_id: str) -> EnvironmentCgroup:
        return self.v1_cgroup(environment_id)

    def v1_cgroup(self, name: str) -> V1EnvironmentCgroup:
        """A handle on the cgroup ``name`` under the parent, v1's own operations included."""
        dirs = {c: self.mounts[c] / self.parent / name for c in V1_CONTROLLERS}
        return V1EnvironmentCgroup(dirs, self.marker(name))

    def rename(self, cgroup: V1EnvironmentCgroup, name: str) -> V1EnvironmentCgroup:
        """Renames ``cgroup`` (its processes stay in it) to ``name`` in every hierarchy
        (``rename(2)``, which cgroup v1 allows within a parent); the renamed handle.

        Raises OSError if one cannot be renamed, with those done renamed back as far
        as they can be.
        """
        renamed = self.v1_cgroup(name)
        done: list[tuple[Path, Path]] = []
        try:
            for old, new in zip(cgroup.dirs, renamed.dirs, strict=True):
                old.rename(new)
                done.append((old, new))
        except OSError:
            for old, new in reversed(done):
                with contextlib.suppress(OSError):
                    new.rename(old)
            raise
        return renamed


# --- cgroup v2 ---------------------------------------------------------------------------


def _enable_controllers(directory: Path, controllers: Iterable[str]) -> None:
    enabled = set((directory / "cgroup.subtree_control").read_text().split())
    missing = [c for c in controllers if c not in enabled]
    if missing:
        _write(directory / "cgroup.subtree_control", " ".join(f"+{c}" for c in missing))


def _v2_counters(directory: Path) -> CgroupCounters:
    current = _read_int(directory / "memory.current")
    events = _read_keyed(directory / "memory.events")
    pids = _read_int(directory / "pids.current")
    return CgroupCounters(
        cpu_seconds=_read_keyed(directory / "cpu.stat").get("usage_usec", 0) / 1e6,
        memory_bytes=current,
        memory_peak_bytes=_read_int(directory / "memory.peak", current),
        pids=pids,
        oom_kills=events.get("oom_kill", 0),
    )


class _V2EnvironmentCgroup(EnvironmentCgroup):
    def __init__(self, directory: Path, marker: str) -> None:
        super().__init__([directory], marker)
        self._directory = directory
        self._memory_events = str(directory / "memory.events")

    def create(self, cpu_cores: float, memory_bytes: int, max_pids: int) -> None:
        directory = self._directory
        directory.mkdir(exist_ok=True)
        _write(directory / "memory.max", str(memory_bytes))
        if (directory / "memory.swap.max").exists():
            _write(directory / "memory.swap.max", "0")
        _write(directory / "cpu.max", f"{_quota_us(cpu_cores)} {CPU_PERIOD_US}")
        _write(directory / "pids.max", str(max_pids))

    def _signal(self) -> list[int]:
        if (self._directory / "cgroup.kill").exists():
            with contextlib.suppress(OSError):
                _write(self._directory / "cgroup.kill", "1")
        return super()._signal()

    def counters(self) -> CgroupCounters:
        return _v2_counters(self._directory)

    def oom_kills(self) -> int:
        return _read_keyed(self._memory_events).get("oom_kill", 0)


class CgroupV2Driver(CgroupDriver):
    """cgroup v2: one unified hierarchy with memory, cpu and pids enabled for our subtree."""

    version = 2

    def __init__(self, root: Path, parent: str) -> None:
        super().__init__(parent)
        self.root = root

    def prepare(self) -> None:
        _enable_controllers(self.root, V2_CONTROLLERS)
        (self.root / self.parent).mkdir(exist_ok=True)
        _enable_controllers(self.root / self.parent, V2_CONTROLLERS)

    def _parent_dir(self) -> Path:
        return self.root / self.parent

    def environment(self, environment_id: str) -> EnvironmentCgroup:
        directory = self.root / self.parent / environment_id
        return _V2EnvironmentCgroup(directory, self.marker(environment_id))


def v2_controllers_available(root: Path) -> set[str]:
    """The controllers a cgroup2 mount offers at its root (``cgroup.controllers``)."""
    try:
        return set((root / "cgroup.controllers").read_text().split())
    except OSError:
        return set()
