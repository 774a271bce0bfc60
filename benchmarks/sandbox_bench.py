"""What isolation costs: environment create and command round trip vs plain processes.

* create: ``SandboxManager.create_environment`` until RUNNING (workspace file
  system, cgroups, database row) vs making a temp directory and running
  ``true`` in it.
* create: also starts the environment's agent (gate, setpriv, bubblewrap,
  ``python3 -I -S``) and waits for its ready message.
* create vs the floor: the same setpriv + bubblewrap command line the
  orchestrator builds (namespaces, mounts, seccomp) starting
  ``python3 -I -S -c pass``, timed from spawn to exit, interleaved with the
  creates (goal: create p50 <= 1.5x the floor p50). The create's steps (its
  workspace file system, cgroup, agent start, database writes) are timed too
  and reported as their p50s, each against the create p50.
* what is made ahead: before each timed create the bench waits until the
  workspace file systems and the start gates made ahead (each already in
  cgroups of its own, see ``gate_pool.py``) are back to their depth, as a
  user's creates spaced by more than a refill find them; the rows say so. The
  same create on a second orchestrator with no gates ahead
  (``gate_pool_depth: 0``, its gate started and moved into cgroups by the
  create, as back-to-back creates that emptied the pool get it) is timed
  interleaved, against the same floor.
* create from a template: the same, from a cached Debian minbase template (a
  read-only root shared through overlayfs with a private writable layer) vs
  create today, interleaved; the first run builds the template with
  mmdebstrap (about 30 s) into ``$SANDBOX_SDK_TEMPLATE_CACHE`` or
  ``~/.cache/sandbox-sdk/templates``, later runs reuse it.
* exec: ``true`` through ``SandboxManager.run_command`` (a spawn request to
  the environment's agent with the pipes' fds, ``posix_spawn`` inside the
  sandbox, output streaming, the exit report with ``wait4`` usage) vs
  ``subprocess.run(["true"])``.

Samples alternate between the measured path and its baseline so both see the
same machine load. The isolation layers in force are named in each row.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench_common import BubblewrapFloor, percentile, plain_exec, ratio_row

from sandbox_sdk.server.database import Database
from sandbox_sdk.server.orchestrator.sandbox import SandboxManager, SandboxSettings, cgroups
from sandbox_sdk.server.orchestrator.sandbox.agent_client import AgentClient
from sandbox_sdk.server.orchestrator.sandbox.environment_record import (
    EnvironmentSpec,
    Limits,
    NetworkPolicy,
    NewEnvironment,
)
from sandbox_sdk.server.orchestrator.sandbox.gate_pool import PooledGate
from sandbox_sdk.server.orchestrator.sandbox.store import EnvironmentStore
from sandbox_sdk.server.orchestrator.sandbox.workspace import Workspace
from sandbox_sdk.server.orchestrator.templates import (
    DebianBase,
    Template,
    TemplateBuilder,
    TemplateCache,
    TemplateSpec,
    validate_template_spec,
)

CREATES = 60
EXECS = 200
WARMUP = 5
TENANT = "bench"
SPEC = EnvironmentSpec(
    limits=Limits(
        cpu_cores=1.0,
        memory_bytes=256 << 20,
        disk_bytes=256 << 20,
        max_pids=64,
        exec_timeout_seconds=30.0,
    ),
    env_vars={},
    labels={},
    ttl_seconds=600.0,
    idle_timeout_seconds=600.0,
    network=NetworkPolicy.NONE,
)


def _plain_create(scratch: Path) -> float:
    started = time.perf_counter()
    directory = Path(tempfile.mkdtemp(dir=scratch))
    subprocess.run(["true"], cwd=directory, check=True)
    elapsed = time.perf_counter() - started
    shutil.rmtree(directory)
    return elapsed


def _template_cache() -> TemplateCache:
    configured = os.environ.get("SANDBOX_SDK_TEMPLATE_CACHE")
    root = Path(configured) if configured else Path.home() / ".cache/sandbox-sdk/templates"
    return TemplateCache(root)


class _StepTimer:
    """Times the steps of a create by wrapping them (the bench's process only): each
    create's total per step, for the p50s."""

    def __init__(self) -> None:
        self.current: collections.Counter[str] = collections.Counter()
        self.samples: dict[str, list[float]] = collections.defaultdict(list)

    STEPS = ("workspace", "cgroup create", "cgroup adopt", "cgroup attach", "agent start", "db")

    def record(self) -> None:
        for step in self.STEPS:
            self.samples[step].append(self.current[step])
        self.current.clear()

    def _wrap(self, step: str, function: Any, *, is_async: bool) -> Any:
        if is_async:

            @functools.wraps(function)
            async def timed_async(*args: Any, **kwargs: Any) -> Any:
                started = time.perf_counter()
                try:
                    return await function(*args, **kwargs)
                finally:
                    self.current[step] += time.perf_counter() - started

            return timed_async

        @functools.wraps(function)
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.current[step] += time.perf_counter() - started

        return timed

    @contextlib.contextmanager
    def installed(self) -> Any:
        patches: list[tuple[Any, str, Any]] = []

        def patch(owner: Any, name: str, step: str, *, is_async: bool = False) -> None:
            original = owner.__dict__[name]
            if isinstance(original, classmethod):
                wrapped: Any = classmethod(self._wrap(step, original.__func__, is_async=is_async))
            else:
                wrapped = self._wrap(step, original, is_async=is_async)
            patches.append((owner, name, original))
            setattr(owner, name, wrapped)

        patch(Workspace, "create", "workspace", is_async=True)
        patch(AgentClient, "start", "agent start", is_async=True)
        patch(EnvironmentStore, "insert", "db")
        patch(EnvironmentStore, "update", "db")
        for kind in cgroups.EnvironmentCgroup.__subclasses__():
            patch(kind, "create", "cgroup create")
        patch(cgroups.EnvironmentCgroup, "attach", "cgroup attach")
        patch(PooledGate, "adopt", "cgroup adopt")
        try:
            yield self
        finally:
            for owner, name, original in reversed(patches):
                setattr(owner, name, original)


async def _refilled(manager: SandboxManager) -> None:
    """Waits until what the manager makes ahead is all made (file systems, gates)."""
    lifecycle = manager._lifecycle
    gates_depth = manager.settings.gate_pool_depth if manager.isolation.cgroups else 0
    for _ in range(2000):
        pool, gates = lifecycle.pool, lifecycle.gates
        workspaces_ready = (
            pool is None or pool.ready_count() >= manager.settings.workspace_pool_depth
        )
        gates_ready = gates is None or gates.driver is None or gates.ready_count() >= gates_depth
        if workspaces_ready and gates_ready:
            return
        await asyncio.sleep(0.005)
    raise RuntimeError("the pools did not refill within 10 s")


async def _timed_create(
    manager: SandboxManager,
    spec: EnvironmentSpec,
    steps: _StepTimer | None = None,
    *,
    quiet: tuple[SandboxManager, ...] = (),
) -> float:
    """One create, timed (its steps too, with ``steps``), once the pools of ``manager``
    and of the managers in ``quiet`` (whose refills would run during it) refilled."""
    for each in (manager, *quiet):
        await _refilled(each)
    with steps.installed() if steps is not None else contextlib.nullcontext():
        started = time.perf_counter()
        environment = await manager.create_environment(TENANT, NewEnvironment(spec))
        elapsed = time.perf_counter() - started
    if steps is not None:
        steps.record()
    await manager.delete_environment(TENANT, environment.id)
    return elapsed


async def _minbase(manager: SandboxManager, cache: TemplateCache) -> Template:
    spec = validate_template_spec(TemplateSpec(base=DebianBase("bookworm", "minbase")))
    return await cache.build(spec, TemplateBuilder(manager.launcher), lambda line: None)


async def _measure(root: Path) -> dict[str, Any]:
    cache = _template_cache()
    await cache.start()
    manager = SandboxManager(
        Database(root / "bench.db"),
        # The bench's disk size is the one whose file systems are made ahead.
        SandboxSettings(workspace_pool_disk_bytes=(SPEC.limits.disk_bytes,)),
        "bench",
        root / "workspaces",
        templates=cache,
    )
    # The same, with no gates started ahead: each create starts its own.
    no_gates = SandboxManager(
        Database(root / "bench-no-gates.db"),
        SandboxSettings(workspace_pool_disk_bytes=(SPEC.limits.disk_bytes,), gate_pool_depth=0),
        "benchnogates",
        root / "workspaces-no-gates",
    )
    await manager.start()
    await no_gates.start()
    try:
        template_spec = replace(SPEC, template=(await _minbase(manager, cache)).digest)
        creates, template_creates, plain_creates, floors, gateless = [], [], [], [], []
        steps = _StepTimer()
        floor = BubblewrapFloor(manager, root)
        try:
            for index in range(CREATES + WARMUP):
                both = (manager, no_gates)
                elapsed = await _timed_create(manager, SPEC, steps, quiet=both)
                for each in both:  # the floor, too, runs with nothing refilling
                    await _refilled(each)
                floor_start = await floor.start()
                from_template = await _timed_create(manager, template_spec, quiet=both)
                without_gates = await _timed_create(no_gates, SPEC, quiet=both)
                plain = _plain_create(root)
                if index >= WARMUP:
                    creates.append(elapsed)
                    floors.append(floor_start)
                    template_creates.append(from_template)
                    gateless.append(without_gates)
                    plain_creates.append(plain)
        finally:
            floor.remove()

        environment = await manager.create_environment(TENANT, NewEnvironment(SPEC))
        execs, plain_execs = [], []
        for index in range(EXECS + WARMUP):
            started = time.perf_counter()
            result = await manager.port.run_command(environment.id, ["true"])
            elapsed = time.perf_counter() - started
            if result.exit_code != 0:
                raise RuntimeError(f"`true` failed in the sandbox: {result}")
            plain = plain_exec()
            if index >= WARMUP:
                execs.append(elapsed)
                plain_execs.append(plain)
        return {
            "isolation": manager.isolation.level,
            "creates": creates,
            "template_creates": template_creates,
            "gateless_creates": gateless,
            "floors": floors,
            "steps": {step: samples[WARMUP:] for step, samples in steps.samples.items()},
            "plain_creates": plain_creates,
            "execs": execs,
            "plain_execs": plain_execs,
        }
    finally:
        await no_gates.stop()
        await manager.stop()


def _row(metric: str, value: float, baseline: float, goal: str, isolation: str) -> dict[str, Any]:
    return ratio_row(f"sandbox ({isolation})", metric, value, baseline, goal)


def run() -> list[dict[str, Any]]:
    """Measures and returns the benchmark rows."""
    with tempfile.TemporaryDirectory(prefix="sandbox-bench-") as scratch:
        measured = asyncio.run(_measure(Path(scratch)))
    isolation = measured["isolation"]
    creates, plain_creates = measured["creates"], measured["plain_creates"]
    execs, plain_execs = measured["execs"], measured["plain_execs"]
    return [
        _row(
            "environment create p50, pools refilled between creates",
            statistics.median(creates),
            statistics.median(plain_creates),
            "value < 50 ms",
            isolation,
        ),
        _row(
            "environment create p99",
            percentile(creates, 0.99),
            percentile(plain_creates, 0.99),
            "report",
            isolation,
        ),
        _row(
            "environment create p50, pools refilled between creates "
            "(baseline: bubblewrap+python3 -I -S floor p50)",
            statistics.median(creates),
            statistics.median(measured["floors"]),
            "ratio <= 1.5",
            isolation,
        ),
        _row(
            "environment create p50, no gates started ahead "
            "(baseline: bubblewrap+python3 -I -S floor p50)",
            statistics.median(measured["gateless_creates"]),
            statistics.median(measured["floors"]),
            "report",
            isolation,
        ),
        *(
            _row(
                f"create step p50: {step} (baseline: create p50)",
                statistics.median(samples),
                statistics.median(creates),
                "report",
                isolation,
            )
            for step, samples in measured["steps"].items()
        ),
        _row(
            "environment create p50 from a cached template (baseline: create today)",
            statistics.median(measured["template_creates"]),
            statistics.median(creates),
            "ratio <= 1.5",
            isolation,
        ),
        _row(
            "exec `true` round trip p50",
            statistics.median(execs),
            statistics.median(plain_execs),
            "ratio < 2",
            isolation,
        ),
        _row(
            "exec `true` round trip p99",
            percentile(execs, 0.99),
            percentile(plain_execs, 0.99),
            "report",
            isolation,
        ),
    ]


if __name__ == "__main__":
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from run_all import print_table

    print_table(run())
