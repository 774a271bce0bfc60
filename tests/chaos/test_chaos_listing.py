"""ListFiles as a cursor: sorted pages, keyset resumption, snapshots of large directories
built off the request path, and tokens that cannot be forged."""

from __future__ import annotations

import os
import time
from pathlib import Path

import grpc
import pytest

from sandbox_sdk.server.orchestrator.sandbox import listing
from sandbox_sdk.server.orchestrator.sandbox.environment_record import FileEntry
from sandbox_sdk.server.orchestrator.sandbox.file_pages import LISTING_IN_PROGRESS, files_page
from sandbox_sdk.server.orchestrator.sandbox.workspace import Workspace, WorkspaceLayout
from sandbox_sdk.server.status import ServiceError

LARGE = listing.INLINE_SCAN_ENTRIES * 2 + 17


def _workspace(tmp_path: Path) -> Workspace:
    layout = WorkspaceLayout(tmp_path, tmp_path / "unused.img", tmp_path)
    layout.files_dir.mkdir()
    return Workspace(layout, quota_bytes=1 << 30, quota_enforced_by_kernel=False, owner=None)


def _touch(directory: Path, names: list[str]) -> None:
    for name in names:
        os.close(os.open(directory / name, os.O_CREAT | os.O_WRONLY, 0o644))


def _page(
    workspace: Workspace, path: str, size: int, token: str, wait: float = 30.0
) -> tuple[list[FileEntry], str]:
    """A page, retrying while a large directory's snapshot is being built (as clients do)."""
    give_up = time.monotonic() + wait
    while True:
        try:
            return files_page(workspace, path, size, token)
        except ServiceError as error:
            transient = error.reason == LISTING_IN_PROGRESS and error.retry_after is not None
            if not transient or time.monotonic() > give_up:
                raise
            time.sleep(error.retry_after or 0.0)


def _all(workspace: Workspace, path: str, size: int) -> list[str]:
    paths: list[str] = []
    token = ""
    while True:
        page, token = _page(workspace, path, size, token)
        paths += [entry.path for entry in page]
        if not token:
            return paths


def test_a_small_directory_is_listed_sorted_at_once(tmp_path: Path) -> None:
    workspace = _workspace(tmp_path)
    _touch(workspace.layout.files_dir, ["b", "a", "c"])
    (workspace.layout.files_dir / "d").mkdir()

    page, token = files_page(workspace, "", 3, "")
    rest, last = files_page(workspace, "", 3, token)

    assert [e.path for e in page] == ["a", "b", "c"]
    assert [(e.path, e.is_dir) for e in rest] == [("d", True)]
    assert last == ""


def test_a_large_directory_is_read_off_the_request_path_and_listed_whole(tmp_path: Path) -> None:
    workspace = _workspace(tmp_path)
    directory = workspace.layout.files_dir / "big"
    directory.mkdir()
    names = [f"f{i:06d}" for i in range(LARGE)]
    _touch(directory, names[::-1])

    with pytest.raises(ServiceError) as first:
        files_page(workspace, "big", 500, "")
    listed = _all(workspace, "big", 500)

    assert first.value.reason == LISTING_IN_PROGRESS
    assert first.value.code == grpc.StatusCode.UNAVAILABLE
    assert listed == [f"big/{name}" for name in names]


def test_a_listing_resumes_after_the_last_name_while_the_directory_changes(
    tmp_path: Path,
) -> None:
    workspace = _workspace(tmp_path)
    directory = workspace.layout.files_dir / "big"
    directory.mkdir()
    names = [f"f{i:06d}" for i in range(LARGE)]
    _touch(directory, names)
    first, token = _page(workspace, "big", 1000, "")
    # Deleted entries after the cursor vanish; entries kept throughout appear once, in order.
    for name in names[1000:1100]:
        (directory / name).unlink()
    _touch(directory, ["a-before-the-cursor"])

    rest: list[str] = []
    while token:
        page, token = _page(workspace, "big", 1000, token)
        rest += [entry.path.removeprefix("big/") for entry in page]

    listed = [entry.path.removeprefix("big/") for entry in first] + rest
    assert listed == names[:1000] + names[1100:]


@pytest.mark.parametrize("edit", ["flip", "other-path"])
def test_a_forged_or_foreign_token_is_invalid_argument(tmp_path: Path, edit: str) -> None:
    workspace = _workspace(tmp_path)
    _touch(workspace.layout.files_dir, ["a", "b", "c"])
    (workspace.layout.files_dir / "sub").mkdir()
    _touch(workspace.layout.files_dir / "sub", ["x", "y", "z"])
    _, token = files_page(workspace, "", 1, "")
    if edit == "flip":
        body, mac = token.split(".")
        token = f"{body[:-1]}{'A' if body[-1] != 'A' else 'B'}.{mac}"
        path = ""
    else:
        path = "sub"

    with pytest.raises(ServiceError) as error:
        files_page(workspace, path, 1, token)

    assert error.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.value.field_violations[0][0] == "page_token"
