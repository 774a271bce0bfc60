"""The cost curve bench's own logic, without timing anything: its server config admits
the environments it holds, its memory reading sorts a real process tree by kind, and its
percentiles pick the expected sample."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandbox_sdk.server.embedded import ServerConfigFile
from sandbox_sdk.server.gateway.config import LimitsConfig
from sandbox_sdk.server.orchestrator.sandbox import SandboxSettings
from sandbox_sdk.server.orchestrator.sandbox.admission import Admission, Claim
from sandbox_sdk.server.tenancy import DEFAULT_TENANT

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import cost_curve
from bench_common import percentile

LARGEST = 200


def _claim(settings: SandboxSettings) -> Claim:
    limits = settings.default_limits
    return Claim(DEFAULT_TENANT, limits.cpu_cores, limits.memory_bytes, limits.disk_bytes)


def test_the_bench_config_admits_every_environment_it_holds_for_one_tenant() -> None:
    config = ServerConfigFile.model_validate(cost_curve.live_config(LARGEST))
    settings = SandboxSettings.model_validate(config.orchestrator["sandbox"])
    limits = LimitsConfig.model_validate(config.gateway["limits"])
    claim = _claim(settings)
    # The held ones, the exec target and the one being created.
    held = [claim] * (LARGEST + 1)

    refusals = Admission(settings, Path("/")).refusals(claim, held, check_disk=False)

    assert refusals == []
    assert limits.for_tenant(DEFAULT_TENANT).max_environments is None


def test_the_bench_config_raises_capacity_only_in_its_own_file() -> None:
    defaults = SandboxSettings()

    assert defaults.max_environments < LARGEST
    assert LimitsConfig().for_tenant(DEFAULT_TENANT).max_environments is not None


@pytest.fixture
def children() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        process.kill()
        process.wait()


def test_memory_sorts_agents_from_other_children(
    children: list[subprocess.Popen[bytes]],
) -> None:
    sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
    children.append(subprocess.Popen([*sleeper, "sandbox-agent", "3"]))
    children.append(subprocess.Popen(sleeper))

    memory = cost_curve.measure_memory(os.getpid())

    assert memory.server_rss > 0
    assert memory.agents == 1
    assert memory.agent_rss > 0
    assert memory.agent_pss > 0
    assert memory.bwraps == 0
    assert memory.other_rss > 0


def test_percentile_is_the_nearest_rank_below() -> None:
    samples = [float(value) for value in range(1, 101)]

    assert percentile(samples, 0.5) == 51.0
    assert percentile(samples, 0.95) == 96.0
    assert percentile(samples, 1.0) == 100.0
    assert percentile([3.0], 0.95) == 3.0
