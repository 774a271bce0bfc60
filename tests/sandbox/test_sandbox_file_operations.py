"""Remove, rename, make directory, stat, and directories as tar streams, on real
environments: each operation, then the attacks (symlinks planted by the sandbox
for every operation, '..', absolute paths, hostile tar members, a tar bomb)."""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import grpc
import pytest
from sandbox_support import TENANT, create, make_spec, needs_isolation, run, running_manager

from sandbox_sdk.server.orchestrator.sandbox import SandboxManager, directory_archives
from sandbox_sdk.server.orchestrator.sandbox.environment_record import FileWrite
from sandbox_sdk.server.orchestrator.sandbox.settings import MiB
from sandbox_sdk.server.status import ServiceError

pytestmark = needs_isolation


def _tar(*members: tuple[tarfile.TarInfo, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for info, content in members:
            info.size = len(content) if info.isreg() else 0
            archive.addfile(info, io.BytesIO(content) if info.isreg() else None)
    return buffer.getvalue()


def _member(
    name: str, kind: bytes = tarfile.REGTYPE, *, mode: int = 0o644, link: str = ""
) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.linkname = kind, mode, link
    return info


async def _chunks(data: bytes, size: int = 7000) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def _download(manager: SandboxManager, environment_id: str, path: str) -> tarfile.TarFile:
    data = b"".join([c async for c in manager.files.download(TENANT, environment_id, path)])
    return tarfile.open(fileobj=io.BytesIO(data), mode="r:")


async def _refused(call: Coroutine[Any, Any, Any]) -> ServiceError:
    with pytest.raises(ServiceError) as error:
        await call
    return error.value


async def _shell(manager: SandboxManager, environment_id: str, script: str) -> str:
    result = await run(manager, environment_id, ["sh", "-c", script])
    assert result.result.exit_code == 0, result.err
    return result.out


# --- each operation ----------------------------------------------------------------------


async def test_remove_takes_files_links_and_directories_and_missing_paths_succeed(
    tmp_path: Path,
) -> None:
    async with running_manager(tmp_path) as manager:
        environment = await create(
            manager, files=[FileWrite("a.txt", b"a"), FileWrite("d/e/f.txt", b"f")]
        )
        files = manager.files
        await _shell(manager, environment.id, "ln -s /etc etc; mkdir empty")
        assert await files.remove(TENANT, environment.id, "a.txt", recursive=False) is True
        assert await files.remove(TENANT, environment.id, "a.txt", recursive=False) is False
        assert await files.remove(TENANT, environment.id, "no/such/x", recursive=False) is False
        assert await files.remove(TENANT, environment.id, "etc", recursive=False) is True
        _assert_host_etc_untouched()
        assert await files.remove(TENANT, environment.id, "empty", recursive=False) is True
        error = await _refused(files.remove(TENANT, environment.id, "d", recursive=False))
        assert error.code is grpc.StatusCode.FAILED_PRECONDITION
        assert "recursive" in error.message
        assert await files.remove(TENANT, environment.id, "d", recursive=True) is True
        assert await _shell(manager, environment.id, "ls -A") == ""


async def test_rename_moves_inside_the_workspace_and_respects_overwrite(tmp_path: Path) -> None:
    async with running_manager(tmp_path) as manager:
        environment = await create(
            manager,
            files=[FileWrite("a.txt", b"a"), FileWrite("b.txt", b"b"), FileWrite("d/x", b"")],
        )
        files = manager.files
        moved = await files.rename(TENANT, environment.id, "a.txt", "d/a.txt", overwrite=False)
        assert (moved.path, moved.size_bytes, moved.is_dir) == ("d/a.txt", 1, False)
        error = await _refused(
            files.rename(TENANT, environment.id, "b.txt", "d/a.txt", overwrite=False)
        )
        assert error.code is grpc.StatusCode.ALREADY_EXISTS
        assert "overwrite" in error.message
        await files.rename(TENANT, environment.id, "b.txt", "d/a.txt", overwrite=True)
        assert await _shell(manager, environment.id, "cat d/a.txt") == "b"
        error = await _refused(files.rename(TENANT, environment.id, "d", "new/d", overwrite=False))
        assert error.code is grpc.StatusCode.FAILED_PRECONDITION
        error = await _refused(files.rename(TENANT, environment.id, "gone", "x", overwrite=False))
        assert (error.code, error.reason) == (grpc.StatusCode.NOT_FOUND, "FILE_NOT_FOUND")
        error = await _refused(files.rename(TENANT, environment.id, "d", "d/inner", overwrite=True))
        assert error.field_violations[0][0] == "destination_path"
        renamed = await files.rename(TENANT, environment.id, "d", "e", overwrite=False)
        assert renamed.is_dir


async def test_make_directory_with_and_without_parents(tmp_path: Path) -> None:
    async with running_manager(tmp_path) as manager:
        environment = await create(manager, files=[FileWrite("file", b"")])
        files = manager.files
        made = await files.make_directory(TENANT, environment.id, "a/b/c", parents=True, mode=0o750)
        assert (made.path, made.is_dir, made.mode) == ("a/b/c", True, 0o750)
        again = await files.make_directory(
            TENANT, environment.id, "a/b/c", parents=False, mode=0o755
        )
        assert again.mode == 0o750  # an existing directory is returned as it is
        error = await _refused(
            files.make_directory(TENANT, environment.id, "x/y", parents=False, mode=0o755)
        )
        assert error.code is grpc.StatusCode.FAILED_PRECONDITION
        error = await _refused(
            files.make_directory(TENANT, environment.id, "file", parents=False, mode=0o755)
        )
        assert error.code is grpc.StatusCode.ALREADY_EXISTS
        # The sandbox's user owns what the orchestrator made: it can write there.
        await _shell(manager, environment.id, "touch a/b/c/mine && test -O a/b/c && test -O a")


async def test_stat_describes_files_directories_and_links_themselves(tmp_path: Path) -> None:
    async with running_manager(tmp_path) as manager:
        environment = await create(manager, files=[FileWrite("d/f.txt", b"12345", 0o640)])
        await _shell(manager, environment.id, "ln -s /etc/passwd link")
        files = manager.files
        entry = await files.stat(TENANT, environment.id, "d/f.txt")
        assert entry is not None
        assert (entry.size_bytes, entry.mode, entry.is_dir, entry.is_symlink) == (
            5,
            0o640,
            False,
            False,
        )
        directory = await files.stat(TENANT, environment.id, "d")
        assert directory is not None
        assert directory.is_dir
        link = await files.stat(TENANT, environment.id, "link")
        assert link is not None
        assert link.is_symlink
        assert link.size_bytes == len("/etc/passwd")
        root = await files.stat(TENANT, environment.id, "")
        assert root is not None
        assert root.is_dir
        assert await files.stat(TENANT, environment.id, "d/missing") is None
        assert await files.stat(TENANT, environment.id, "missing/too") is None


async def test_download_archives_the_tree_with_links_as_links(tmp_path: Path) -> None:
    async with running_manager(tmp_path) as manager:
        environment = await create(
            manager, files=[FileWrite("src/a.py", b"print(1)\n"), FileWrite("src/pkg/b.txt", b"b")]
        )
        await _shell(
            manager,
            environment.id,
            "cd src && ln -s /etc/passwd passwd && mkfifo pipe && mkdir empty",
        )
        archive = await _download(manager, environment.id, "src")
        members = {m.name: m for m in archive.getmembers()}
        assert set(members) == {"a.py", "empty", "passwd", "pkg", "pkg/b.txt"}
        assert members["passwd"].issym()
        assert members["passwd"].linkname == "/etc/passwd"
        assert members["empty"].isdir()
        reader = archive.extractfile("a.py")
        assert reader is not None
        assert reader.read() == b"print(1)\n"
        whole = await _download(manager, environment.id, "")
        assert "src/pkg/b.txt" in whole.getnames()
        error = await _refused(_download(manager, environment.id, "src/a.py"))
        assert "not a directory" in error.field_violations[0][1]
        error = await _refused(_download(manager, environment.id, "missing"))
        assert error.code is grpc.StatusCode.NOT_FOUND


async def test_upload_unpacks_a_tree_owned_by_the_sandbox_user(tmp_path: Path) -> None:
    async with running_manager(tmp_path) as manager:
        environment = await create(manager, files=[FileWrite("dest/old.txt", b"old")])
        data = _tar(
            (_member("pkg", tarfile.DIRTYPE, mode=0o755), b""),
            (_member("pkg/run.sh", mode=0o755), b"echo ran\n"),
            (_member("./top.txt"), b"top"),
            (_member("pkg/link", tarfile.SYMTYPE, link="run.sh"), b""),
            (_member("deep/implied/file.txt"), b"x" * 100_000),
        )
        unpacked = await manager.files.upload(TENANT, environment.id, "dest", _chunks(data))
        assert (unpacked.files_written, unpacked.bytes_written) == (3, 9 + 3 + 100_000)
        out = await _shell(
            manager,
            environment.id,
            "cd dest && ./pkg/link && cat top.txt old.txt && test -O pkg/run.sh"
            " && test -O deep/implied && echo more >> top.txt",
        )
        assert out == "ran\ntopold"
        again = await manager.files.upload(
            TENANT, environment.id, "", _chunks(_tar((_member("dest/top.txt"), b"new")))
        )
        assert again.files_written == 1
        assert await _shell(manager, environment.id, "cat dest/top.txt") == "new"


# --- attacks -----------------------------------------------------------------------------


async def test_every_operation_refuses_to_go_through_a_planted_symlink(tmp_path: Path) -> None:
    async with running_manager(tmp_path) as manager:
        environment = await create(manager, files=[FileWrite("mine.txt", b"mine")])
        await _shell(manager, environment.id, "ln -s /etc etc; ln -s / root")
        files, eid = manager.files, environment.id
        attempts: list[tuple[str, Callable[[], Coroutine[Any, Any, Any]]]] = [
            ("path", lambda: files.remove(TENANT, eid, "etc/passwd", recursive=True)),
            ("path", lambda: files.remove(TENANT, eid, "root/etc", recursive=True)),
            ("source_path", lambda: files.rename(TENANT, eid, "etc/passwd", "p", overwrite=True)),
            (
                "destination_path",
                lambda: files.rename(TENANT, eid, "mine.txt", "etc/passwd", overwrite=True),
            ),
            (
                "path",
                lambda: files.make_directory(TENANT, eid, "etc/evil", parents=True, mode=0o755),
            ),
            (
                "path",
                lambda: files.make_directory(TENANT, eid, "root/tmp/x", parents=False, mode=0o755),
            ),
            ("path", lambda: files.stat(TENANT, eid, "etc/passwd")),
            ("path", lambda: _download(manager, eid, "etc")),
            (
                "path",
                lambda: files.upload(TENANT, eid, "etc", _chunks(_tar((_member("evil"), b"x")))),
            ),
        ]
        for field, attempt in attempts:
            error = await _refused(attempt())
            assert error.code is grpc.StatusCode.INVALID_ARGUMENT, field
            assert error.field_violations[0][0] == field
            assert "symlink" in error.field_violations[0][1]
        _assert_host_etc_untouched()


async def test_recursive_remove_does_not_follow_links_out(tmp_path: Path) -> None:
    canary = tmp_path / "canary"
    canary.mkdir()
    (canary / "keep.txt").write_text("keep")
    async with running_manager(tmp_path) as manager:
        environment = await create(manager, files=[FileWrite("d/x", b"")])
        await _shell(manager, environment.id, f"ln -s {canary} d/out; ln -s {canary}/keep.txt d/f")
        assert await manager.files.remove(TENANT, environment.id, "d", recursive=True)
    assert (canary / "keep.txt").read_text() == "keep"


@pytest.mark.parametrize(
    ("path", "complaint"),
    [
        ("../escape", "'..'"),
        ("a/../../escape", "'..'"),
        ("/etc/passwd", "absolute"),
        ("x\x00y", "NUL"),
    ],
)
async def test_paths_leaving_the_workspace_are_invalid_for_every_operation(
    tmp_path: Path, path: str, complaint: str
) -> None:
    async with running_manager(tmp_path) as manager:
        environment = await create(manager, files=[FileWrite("mine.txt", b"mine")])
        files, eid = manager.files, environment.id
        attempts: list[tuple[str, Callable[[], Coroutine[Any, Any, Any]]]] = [
            ("path", lambda: files.remove(TENANT, eid, path, recursive=True)),
            ("source_path", lambda: files.rename(TENANT, eid, path, "x", overwrite=True)),
            (
                "destination_path",
                lambda: files.rename(TENANT, eid, "mine.txt", path, overwrite=True),
            ),
            ("path", lambda: files.make_directory(TENANT, eid, path, parents=True, mode=0o755)),
            ("path", lambda: files.stat(TENANT, eid, path)),
            ("path", lambda: _download(manager, eid, path)),
            ("path", lambda: files.upload(TENANT, eid, path, _chunks(_tar((_member("f"), b"x"))))),
        ]
        for field, attempt in attempts:
            error = await _refused(attempt())
            assert error.code is grpc.StatusCode.INVALID_ARGUMENT, field
            ((violation_field, description),) = error.field_violations
            assert (violation_field, complaint in description) == (field, True)
        assert await _shell(manager, eid, "cat mine.txt") == "mine"


@pytest.mark.parametrize(
    ("bad", "complaint"),
    [
        ((_member("/abs.txt"), b"x"), "absolute"),
        ((_member("../up.txt"), b"x"), "'..'"),
        ((_member("ok/../../up.txt"), b"x"), "'..'"),
        ((_member("out", tarfile.SYMTYPE, link="../../etc"), b""), "outside"),
        ((_member("abs", tarfile.SYMTYPE, link="/etc/passwd"), b""), "relative path"),
        ((_member("hard", tarfile.LNKTYPE, link="good.txt"), b""), "hard link"),
        ((_member("tty", tarfile.CHRTYPE, mode=0o666), b""), "special file"),
        ((_member("disk", tarfile.BLKTYPE, mode=0o666), b""), "special file"),
        ((_member("fifo", tarfile.FIFOTYPE), b""), "special file"),
        ((_member("suid", mode=0o4755), b"#!/bin/sh\n"), "setuid"),
        ((_member("sgid", tarfile.DIRTYPE, mode=0o2755), b""), "setgid"),
    ],
)
async def test_hostile_archive_members_are_refused_and_nothing_is_written(
    tmp_path: Path, bad: tuple[tarfile.TarInfo, bytes], complaint: str
) -> None:
    async with running_manager(tmp_path) as manager:
        environment = await create(manager)
        data = _tar((_member("good.txt"), b"good"), bad, (_member("after.txt"), b"after"))
        error = await _refused(manager.files.upload(TENANT, environment.id, "dest", _chunks(data)))
        assert error.code is grpc.StatusCode.INVALID_ARGUMENT
        ((field, description),) = error.field_violations
        assert field == "chunk"
        assert bad[0].name.lstrip("/") in description or bad[0].name in description
        assert complaint in description
        assert await _shell(manager, environment.id, "ls -A") == ""
        _assert_no_staging_left(tmp_path)


async def test_a_member_through_a_link_the_archive_made_is_refused(tmp_path: Path) -> None:
    async with running_manager(tmp_path) as manager:
        environment = await create(manager)
        data = _tar(
            (_member("d", tarfile.DIRTYPE, mode=0o755), b""),
            (_member("l", tarfile.SYMTYPE, link="d"), b""),
            (_member("l/x.txt"), b"through the link"),
        )
        error = await _refused(manager.files.upload(TENANT, environment.id, "", _chunks(data)))
        assert "'l/x.txt'" in error.field_violations[0][1]
        assert await _shell(manager, environment.id, "ls -A") == ""


async def test_a_tar_bomb_over_the_quota_is_refused_before_it_is_written(tmp_path: Path) -> None:
    async with running_manager(tmp_path) as manager:
        environment = await create(manager, make_spec(disk_bytes=4 * MiB))
        # A member announcing 64 MiB, of which only 1 MiB is sent: refused before any is read.
        buffer = io.BytesIO()
        archive = tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT)  # noqa: SIM115
        first = _member("first.txt")
        first.size = 5
        archive.addfile(first, io.BytesIO(b"first"))
        bomb = _member("bomb.bin")
        bomb.size = 64 * MiB
        data = buffer.getvalue() + bomb.tobuf(tarfile.PAX_FORMAT) + b"\0" * MiB
        error = await _refused(manager.files.upload(TENANT, environment.id, "", _chunks(data)))
        assert (error.code, error.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "QUOTA_EXCEEDED")
        # Real bytes past the quota: refused too, by the budget or the file system.
        many = _tar(*((_member(f"f{n}"), os.urandom(MiB)) for n in range(6)))
        error = await _refused(
            manager.files.upload(TENANT, environment.id, "", _chunks(many, 1 << 20))
        )
        assert error.code is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert await _shell(manager, environment.id, "ls -A") == ""
        _assert_no_staging_left(tmp_path)


async def test_too_many_members_and_non_tar_bytes_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(directory_archives, "MAX_MEMBERS", 5)
    async with running_manager(tmp_path) as manager:
        environment = await create(manager)
        many = _tar(*((_member(f"f{n}"), b"") for n in range(6)))
        error = await _refused(manager.files.upload(TENANT, environment.id, "", _chunks(many)))
        assert "'f5'" in error.field_violations[0][1]
        assert "limit of 5" in error.field_violations[0][1]
        gzipped = io.BytesIO()
        with tarfile.open(fileobj=gzipped, mode="w:gz") as archive:
            archive.addfile(_member("f"), io.BytesIO(b""))
        for data in (gzipped.getvalue(), b"not a tar at all" * 100):
            error = await _refused(manager.files.upload(TENANT, environment.id, "", _chunks(data)))
            assert error.code is grpc.StatusCode.INVALID_ARGUMENT
            assert "tar" in error.field_violations[0][1]
        assert await _shell(manager, environment.id, "ls -A") == ""


async def test_an_upload_never_replaces_a_directory_with_a_file(tmp_path: Path) -> None:
    async with running_manager(tmp_path) as manager:
        environment = await create(manager, files=[FileWrite("dest/d/keep.txt", b"keep")])
        data = _tar((_member("new.txt"), b"new"), (_member("d"), b"a file where a directory is"))
        error = await _refused(manager.files.upload(TENANT, environment.id, "dest", _chunks(data)))
        assert "'d'" in error.field_violations[0][1]
        listing = "cd dest && printf '%s\\n' *; cat d/keep.txt"  # not ls: see docs/security.md
        assert await _shell(manager, environment.id, listing) == "d\nkeep"


def _assert_no_staging_left(tmp_path: Path) -> None:
    assert list(tmp_path.rglob(".upload-*")) == []


def _assert_host_etc_untouched() -> None:
    passwd = Path("/etc/passwd")
    assert passwd.is_file()
    assert b"mine" not in passwd.read_bytes()
    assert not Path("/etc/evil").exists()
