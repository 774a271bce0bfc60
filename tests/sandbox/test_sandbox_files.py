"""Workspace files: write, read, list; traversal attempts and quotas are refused."""

from __future__ import annotations

import os
from pathlib import Path

import grpc
import pytest
from sandbox_support import TENANT, create, make_spec, needs_isolation, run, running_manager

from sandbox_sdk.server.orchestrator.sandbox.environment_record import FileWrite
from sandbox_sdk.server.orchestrator.sandbox.settings import MiB
from sandbox_sdk.server.status import ServiceError

pytestmark = needs_isolation


async def test_files_written_are_seen_by_commands_and_back(tmp_path: Path) -> None:
    async with running_manager(tmp_path) as manager:
        environment = await create(manager, files=[FileWrite("in/start.txt", b"from create")])
        entry = await manager.write_file(
            TENANT, environment.id, FileWrite("in/run.sh", b"echo ran > out.txt", 0o755)
        )
        assert (entry.path, entry.size_bytes, entry.mode, entry.is_dir) == (
            "in/run.sh",
            18,
            0o755,
            False,
        )
        result = await run(manager, environment.id, ["sh", "-c", "cat in/start.txt; ./in/run.sh"])
        assert result.out == "from create"
        info, content = await manager.read_workspace_file(TENANT, environment.id, "out.txt")
        assert (info.path, content) == ("out.txt", b"ran\n")
        assert manager.port.read_file(environment.id, "./out.txt") == b"ran\n"


async def test_listing_is_sorted_and_paginated(tmp_path: Path) -> None:
    async with running_manager(tmp_path) as manager:
        names = ["b.txt", "a.txt", "d/x.txt", "c.txt"]
        environment = await create(manager, files=[FileWrite(n, n.encode()) for n in names])
        page, token = manager.list_files(TENANT, environment.id, "", 2, "")
        assert [e.path for e in page] == ["a.txt", "b.txt"]
        rest, last = manager.list_files(TENANT, environment.id, "", 2, token)
        assert [(e.path, e.is_dir) for e in rest] == [("c.txt", False), ("d", True)]
        assert last == ""
        inner, _ = manager.list_files(TENANT, environment.id, "d", 100, "")
        assert [e.path for e in inner] == ["d/x.txt"]
        with pytest.raises(ServiceError) as error:
            manager.list_files(TENANT, environment.id, "d", 2, token)
        assert error.value.field_violations[0][0] == "page_token"


@pytest.mark.parametrize(
    ("path", "complaint"),
    [
        ("../escape.txt", "'..'"),
        ("a/../../escape.txt", "'..'"),
        ("/etc/passwd", "absolute"),
        ("nul\x00byte", "NUL"),
        ("", "empty"),
    ],
)
async def test_paths_leaving_the_workspace_are_invalid(
    tmp_path: Path, path: str, complaint: str
) -> None:
    async with running_manager(tmp_path) as manager:
        environment = await create(manager)
        for call, field in (
            (
                lambda: manager.write_file(TENANT, environment.id, FileWrite(path, b"x")),
                "file.path",
            ),
            (lambda: manager.read_workspace_file(TENANT, environment.id, path), "path"),
        ):
            with pytest.raises(ServiceError) as error:
                await call()
            assert error.value.code is grpc.StatusCode.INVALID_ARGUMENT
            ((violation_field, description),) = error.value.field_violations
            assert violation_field == field
            assert complaint in description


def _assert_unchanged_passwd() -> None:
    assert b"evil" not in Path("/etc/passwd").read_bytes()


async def test_symlinks_out_of_the_workspace_are_not_followed(tmp_path: Path) -> None:
    async with running_manager(tmp_path) as manager:
        environment = await create(manager)
        setup = "ln -s /etc/passwd passwd; ln -s /etc etc; mkdir real"
        await run(manager, environment.id, ["sh", "-c", setup])
        # Made from the host: a named pipe made under gVisor lives in gVisor's kernel alone.
        workspace = manager.settings.mount_root / environment.id / "workspace"
        os.mkfifo(workspace / "pipe")
        for path in ("passwd", "etc/passwd", "etc/shadow"):
            with pytest.raises(ServiceError) as error:
                await manager.read_workspace_file(TENANT, environment.id, path)
            assert "symlink" in error.value.field_violations[0][1]
        with pytest.raises(ServiceError) as error:
            await manager.write_file(TENANT, environment.id, FileWrite("etc/evil", b"x"))
        assert "symlink" in error.value.field_violations[0][1]
        with pytest.raises(ServiceError) as error:
            await manager.write_file(TENANT, environment.id, FileWrite("passwd", b"x"))
        assert "symlink" in error.value.field_violations[0][1]
        _assert_unchanged_passwd()
        with pytest.raises(ServiceError) as error:
            await manager.read_workspace_file(TENANT, environment.id, "pipe")
        assert "regular file" in error.value.field_violations[0][1]
        with pytest.raises(ServiceError) as error:
            manager.list_files(TENANT, environment.id, "etc", 10, "")
        assert "symlink" in error.value.field_violations[0][1]
        listed, _ = manager.list_files(TENANT, environment.id, "", 10, "")
        assert {e.path for e in listed} == {"passwd", "etc", "pipe", "real"}


async def test_missing_files_are_not_found(tmp_path: Path) -> None:
    async with running_manager(tmp_path) as manager:
        environment = await create(manager)
        with pytest.raises(ServiceError) as error:
            await manager.read_workspace_file(TENANT, environment.id, "nope/missing.txt")
        assert error.value.code is grpc.StatusCode.NOT_FOUND
        assert error.value.reason == "FILE_NOT_FOUND"


async def test_writes_past_the_disk_quota_are_refused(tmp_path: Path) -> None:
    async with running_manager(tmp_path) as manager:
        environment = await create(manager, make_spec(disk_bytes=4 * MiB))
        await manager.write_file(TENANT, environment.id, FileWrite("small", b"x" * 1000))
        with pytest.raises(ServiceError) as error:
            await manager.write_file(TENANT, environment.id, FileWrite("big", b"x" * (6 * MiB)))
        assert error.value.code is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert error.value.reason == "QUOTA_EXCEEDED"


async def test_files_larger_than_one_read_are_refused_with_advice(tmp_path: Path) -> None:
    async with running_manager(tmp_path) as manager:
        environment = await create(manager)
        await run(manager, environment.id, ["sh", "-c", "head -c 5000000 /dev/zero > big"])
        with pytest.raises(ServiceError) as error:
            await manager.read_workspace_file(TENANT, environment.id, "big")
        assert "read it in pieces" in error.value.field_violations[0][1]
