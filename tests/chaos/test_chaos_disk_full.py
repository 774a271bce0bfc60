"""A full disk under a real server: typed errors, nothing acknowledged lost, delete works.

The server's data dir (database, workspace images) sits on a small tmpfs of the
test's own; a filler file takes the rest of it, as another tenant or a log
might. Writes then fail with RESOURCE_EXHAUSTED (DISK_FULL), never INTERNAL;
every write that was acknowledged reads back intact; reads, commands and
DeleteEnvironment keep working; once space is freed, creates work again with
no restart.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from chaos_support import own_stack
from e2e_support import EmbeddedStack

from sandbox_sdk import ResourceExhaustedError, RetryPolicy

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")

DISK_BYTES = 160 << 20
CONFIG = {"orchestrator": {"sandbox": {"disk_reserve_bytes": 1 << 20}}}


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={DISK_BYTES},mode=0700", "tmpfs", mount_point],
        check=True,
    )
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", mount_point], check=False)


@pytest.fixture
def stack(small_disk: Path) -> Iterator[EmbeddedStack]:
    with own_stack(small_disk / "data", CONFIG) as started:
        yield started


def _fill(disk: Path, leave_bytes: int) -> Path:
    """Takes all but about ``leave_bytes`` of the disk with one file (all of it for 0)."""
    filler = disk / "filler"
    with open(filler, "wb") as file:
        for chunk in (b"\0" * (1 << 20), b"\0" * 4096):
            while _free(disk) >= leave_bytes + len(chunk):
                try:
                    file.write(chunk)
                    file.flush()
                except OSError as error:
                    if error.errno != errno.ENOSPC:
                        raise
                    break
    return filler


def _free(disk: Path) -> int:
    info = os.statvfs(disk)
    return info.f_bavail * info.f_frsize


def _write_until_full(sandbox: object, count: int) -> tuple[dict[str, bytes], list[Exception]]:
    acknowledged: dict[str, bytes] = {}
    refusals: list[Exception] = []
    for index in range(count):
        path, content = f"data/file-{index}.bin", os.urandom(256 << 10)
        try:
            sandbox.write_file(path, content)  # type: ignore[attr-defined]
        except ResourceExhaustedError as error:
            refusals.append(error)
        else:
            acknowledged[path] = content
    return acknowledged, refusals


def test_a_full_disk_loses_nothing_acknowledged(stack: EmbeddedStack, small_disk: Path) -> None:
    with stack.client(retry=RetryPolicy.disabled()) as client:
        sandbox = client.create_environment(disk="64Mi")
        bystander = client.create_environment(disk="8Mi")
        filler = _fill(small_disk, leave_bytes=3 << 20)
        acknowledged, refusals = _write_until_full(sandbox, 40)
        assert refusals, "the disk never filled up"
        for error in refusals:
            assert error.code == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert error.reason in ("DISK_FULL", "QUOTA_EXCEEDED"), error
        assert any(error.reason == "DISK_FULL" for error in refusals)
        for path, content in acknowledged.items():
            assert sandbox.read_file(path) == content, f"{path} was acknowledged, then lost"
        # Reads, commands and gets need no space.
        assert sandbox.exec(["echo", "alive"]).stdout == "alive\n"
        assert client.get_environment(bystander.id).info.is_running
        with pytest.raises(ResourceExhaustedError) as no_room:
            client.create_environment(disk="32Mi")
        assert no_room.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        # Deleting always works, and frees the space.
        sandbox.delete()
        assert client.get_environment(sandbox.id).info.state.value == "TERMINATED"
        filler.unlink()
        again = client.create_environment(disk="32Mi")
        again.write_file("ok.txt", b"space again")
        assert again.read_file("ok.txt") == b"space again"
        for leftover in (again, bystander):
            with contextlib.suppress(Exception):
                leftover.delete()


def test_a_full_database_is_resource_exhausted_not_internal(
    stack: EmbeddedStack, small_disk: Path
) -> None:
    with stack.client(retry=RetryPolicy.disabled()) as client:
        holder = client.create_environment(disk="8Mi")
        filler = _fill(small_disk, leave_bytes=0)
        refused = []
        try:
            for index in range(20):  # label updates are database writes, and nothing else
                labels = {f"k{n}": f"{index}-" + "v" * 200 for n in range(60)}
                try:
                    holder.update(labels=labels)
                except ResourceExhaustedError as error:
                    refused.append(error)
            assert refused, "the database never ran out of space"
            assert {(e.code, e.reason) for e in refused} == {
                (grpc.StatusCode.RESOURCE_EXHAUSTED, "DISK_FULL")
            }
            holder.delete()  # still works, with the database full
        finally:
            filler.unlink()
        assert client.get_environment(holder.id).info.state.value == "TERMINATED"
        again = client.create_environment(disk="1Mi")
        again.update(labels={"space": "again"})
        again.delete()
