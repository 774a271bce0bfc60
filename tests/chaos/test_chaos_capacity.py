"""One tenant creating all it can, through the real server: other tenants still get room.

Each tenant has its own key; the greedy one creates until refused, then the
others must still be able to create (and, asked to, wait in the queue).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from chaos_support import own_stack
from e2e_support import EmbeddedStack

from sandbox_sdk import (
    CapacityExhaustedError,
    EnvironmentState,
    ResourceExhaustedError,
    Sandbox,
    SandboxClient,
    SandboxTimeoutError,
)

CONFIG = {"orchestrator": {"sandbox": {"max_environments": 8}}}


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[EmbeddedStack]:
    with own_stack(tmp_path / "data", CONFIG) as started:
        yield started


def _create_until_refused(client: SandboxClient) -> tuple[list[Sandbox], Exception]:
    taken: list[Sandbox] = []
    for _ in range(20):
        try:
            taken.append(client.create_environment(disk="4Mi", cpu=0.1))
        except ResourceExhaustedError as error:
            return taken, error
    pytest.fail("the orchestrator never refused the greedy tenant")


def test_a_greedy_tenant_leaves_room_for_the_others(stack: EmbeddedStack) -> None:
    keys = {tenant: stack.tenant_key(tenant) for tenant in ("greedy", "modest", "late", "last")}
    with stack.client(api_key=keys["greedy"]) as greedy:
        taken, refusal = _create_until_refused(greedy)
        assert len(taken) == 6  # 75% of 8: the rest is for the others
        assert isinstance(refusal, CapacityExhaustedError)
    for tenant in ("modest", "late"):
        with stack.client(api_key=keys[tenant]) as client:
            assert client.create_environment(disk="4Mi", cpu=0.1).info.is_running
    with stack.client(api_key=keys["last"]) as last:
        with pytest.raises(SandboxTimeoutError, match="position 1 in the queue"):
            last.create_environment(disk="4Mi", cpu=0.1, queue=True, timeout=0.5)
        (queued,) = last.list_environments()
        assert queued.info.state is EnvironmentState.QUEUED
        with stack.client(api_key=keys["greedy"]) as greedy:
            greedy.get_environment(taken[0].id).delete()
        deadline = time.monotonic() + 30
        while queued.refresh().state is not EnvironmentState.RUNNING:
            assert time.monotonic() < deadline, "the queued create never started"
            time.sleep(0.1)
