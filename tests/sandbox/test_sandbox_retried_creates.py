"""A create whose caller went away mid-setup: its retry gets the environment RUNNING.

The caller's deadline or cut connection cancels its wait, not the set-up; a
retry with the same request_id then finds the same environment RUNNING (never
TERMINATED), and nothing is left behind once it is deleted.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from leak_checks import loop_devices_under, mounts_under
from sandbox_support import TENANT, create, eventually, make_spec, needs_isolation, running_manager

from sandbox_sdk.server.orchestrator.sandbox.environment_record import (
    EnvironmentState,
    ListQuery,
    TerminationReason,
)
from sandbox_sdk.server.status import ServiceError

pytestmark = needs_isolation


async def test_a_cancelled_create_finishes_for_its_retry(tmp_path: Path) -> None:
    async with running_manager(tmp_path) as manager:
        for attempt in range(5):
            request_id = f"retry-{attempt}-{os.urandom(4).hex()}"
            # Cancel at different points of the set-up.
            delay = 0.001 * (3**attempt)
            first = asyncio.ensure_future(create(manager, request_id=request_id))
            await asyncio.sleep(delay)
            first.cancel()
            retried = await create(manager, request_id=request_id)
            assert retried.state is EnvironmentState.RUNNING, (delay, retried)
            again = await create(manager, request_id=request_id)
            assert again.id == retried.id
        environments, _ = manager.list_environments(
            TENANT, ListQuery(page_size=100, page_token="", label_selector={}, show_terminated=True)
        )
        assert all(e.state is EnvironmentState.RUNNING for e in environments), environments
        assert len(environments) == 5


async def test_a_failed_setup_frees_its_request_id(tmp_path: Path) -> None:
    async with running_manager(tmp_path) as manager:
        original = manager._lifecycle._set_up
        calls = 0

        async def flaky(*args: object, **kwargs: object) -> None:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise OSError("the disk hiccuped")
            await original(*args, **kwargs)  # type: ignore[arg-type]

        manager._lifecycle._set_up = flaky  # type: ignore[method-assign]
        with pytest.raises(ServiceError, match="try again"):
            await create(manager, make_spec(), request_id="flaky-1")
        retried = await create(manager, make_spec(), request_id="flaky-1")
        assert retried.state is EnvironmentState.RUNNING
        assert retried.termination_reason is TerminationReason.UNSPECIFIED


async def test_cancelled_creates_leak_no_mount_or_loop_device(tmp_path: Path) -> None:
    async with running_manager(tmp_path) as manager:
        for attempt in range(4):
            task = asyncio.ensure_future(create(manager, request_id=f"leak-{attempt}"))
            await asyncio.sleep(0.002 * (attempt + 1))
            task.cancel()
        await asyncio.sleep(0)
        ids = [(await create(manager, request_id=f"leak-{attempt}")).id for attempt in range(4)]
        for environment_id in ids:
            await manager.delete_environment(TENANT, environment_id)
    mount_points = [manager.settings.mount_root / environment_id for environment_id in ids]
    await eventually(
        lambda: not any(map(mounts_under, mount_points)) and not loop_devices_under(tmp_path),
        what="every mount and loop device of the deleted environments released",
    )
