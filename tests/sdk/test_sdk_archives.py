"""Directories as tar archives: what upload_dir sends and what download_dir accepts from a
server it does not trust."""

from __future__ import annotations

import io
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from sandbox_sdk.client.archives import ArchiveError, extract_archive, pack_directory, spool
from sandbox_sdk.errors import InvalidArgumentError


def _archive(*members: tuple[tarfile.TarInfo, bytes]) -> io.BytesIO:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for member, content in members:
            member.size = len(content)
            tar.addfile(member, io.BytesIO(content))
    buffer.seek(0)
    return buffer


def _file(name: str) -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), b"data"


def _link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tuple[tarfile.TarInfo, bytes]:
    member = tarfile.TarInfo(name)
    member.type, member.linkname = kind, target
    return member, b""


def _device(name: str) -> tuple[tarfile.TarInfo, bytes]:
    member = tarfile.TarInfo(name)
    member.type = tarfile.CHRTYPE
    return member, b""


def test_a_packed_directory_holds_its_contents_anonymously_with_links_as_links(
    tmp_path: Path,
) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.txt").write_text("a")
    (tmp_path / "outside-link").symlink_to("/etc/passwd")
    with tarfile.open(fileobj=pack_directory(tmp_path)) as tar:
        members = {member.name: member for member in tar.getmembers()}
    assert set(members) == {"sub", "sub/a.txt", "outside-link"}
    assert members["outside-link"].issym()
    assert members["outside-link"].linkname == "/etc/passwd"  # not followed
    assert all((m.uid, m.gid, m.uname, m.gname) == (0, 0, "", "") for m in members.values())


def test_packing_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(InvalidArgumentError, match="not a local directory"):
        pack_directory(tmp_path / "file")


def test_a_round_trip_keeps_the_tree(tmp_path: Path) -> None:
    source = tmp_path / "source"
    (source / "deep" / "er").mkdir(parents=True)
    (source / "deep" / "er" / "blob").write_bytes(bytes(range(256)) * 100)
    (source / "link").symlink_to("deep/er/blob")
    packed = pack_directory(source)
    buffer = spool()
    buffer.write(packed.read())
    names = extract_archive(buffer, tmp_path / "copy")
    assert set(names) == {"deep", "deep/er", "deep/er/blob", "link"}
    blob = (source / "deep" / "er" / "blob").read_bytes()
    assert (tmp_path / "copy" / "link").read_bytes() == blob


@pytest.mark.parametrize(
    "hostile",
    [
        lambda: _file("../escaped"),
        lambda: _link("up", "../../etc"),
        lambda: _link("abs", "/etc/passwd"),
        lambda: _link("hard", "/etc/passwd", tarfile.LNKTYPE),
        lambda: _device("tty"),
    ],
    ids=["dotdot", "symlink-out", "symlink-absolute", "hardlink-out", "device"],
)
def test_hostile_members_are_refused_and_nothing_lands_outside(
    tmp_path: Path, hostile: Callable[[], tuple[tarfile.TarInfo, bytes]]
) -> None:
    target = tmp_path / "in" / "target"
    with pytest.raises(ArchiveError, match="unsafe entry"):
        extract_archive(_archive(_file("fine"), hostile()), target)
    assert not (tmp_path / "in" / "escaped").exists()


def test_an_absolute_name_lands_inside_the_directory(tmp_path: Path) -> None:
    escape = tmp_path / "absolute-escape"
    names = extract_archive(_archive(_file(str(escape))), tmp_path / "target")
    assert names == [str(escape).lstrip("/")]
    assert not escape.exists()
    assert (tmp_path / "target" / str(escape).lstrip("/")).read_bytes() == b"data"


def test_garbage_is_not_a_tar(tmp_path: Path) -> None:
    with pytest.raises(ArchiveError, match="not a valid tar"):
        extract_archive(io.BytesIO(b"\x00garbage" * 200), tmp_path / "x")
