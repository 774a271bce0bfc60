"""A full orchestrator through the SDK: refused with a clear error, or waited for in a queue."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
from e2e_support import EmbeddedStack

from sandbox_sdk import CapacityExhaustedError, EnvironmentState, RetryPolicy

CONFIG = {"orchestrator": {"sandbox": {"max_environments": 1, "tenant_share_max": 1.0}}}


@pytest.fixture
def one_slot_stack(start_stack: Callable[[dict[str, Any]], EmbeddedStack]) -> EmbeddedStack:
    return start_stack(CONFIG)


def test_a_queued_create_waits_for_room_and_then_runs(one_slot_stack: EmbeddedStack) -> None:
    with one_slot_stack.client(retry=RetryPolicy.disabled()) as client:
        holder = client.create_environment()
        with pytest.raises(CapacityExhaustedError, match="queue_when_full"):
            client.create_environment()
        freed = threading.Timer(1.0, holder.delete)
        freed.start()
        try:
            waited = client.create_environment(queue=True, timeout=60)
        finally:
            freed.join()
        assert waited.info.state is EnvironmentState.RUNNING
        assert waited.exec(["echo", "admitted"]).stdout == "admitted\n"
        waited.delete()


def test_a_queued_create_that_runs_out_of_time_keeps_its_place(
    one_slot_stack: EmbeddedStack,
) -> None:
    with one_slot_stack.client(retry=RetryPolicy.disabled()) as client:
        holder = client.create_environment()
        with pytest.raises(Exception, match="position 1 in the queue") as waited:
            client.create_environment(queue=True, timeout=1.0)
        assert "get_environment" in str(waited.value)
        queued = [s for s in client.list_environments() if s.info.state is EnvironmentState.QUEUED]
        assert [s.info.queue_position for s in queued] == [1]
        holder.delete()
        queued[0].delete()
