"""ListFiles pages: signed cursors over a workspace directory, and what the errors mean.

The page token is the last name of the previous page, signed and bound to
the workspace and directory it lists (``server.page_tokens``): the client
cannot steer the cursor anywhere, and a token from one directory's listing
(or another environment's) is refused for another.
The listing itself is ``Workspace.list_page`` (see ``listing``).
"""

from __future__ import annotations

import grpc

from sandbox_sdk.errors import ErrorReason
from sandbox_sdk.server import page_tokens
from sandbox_sdk.server.orchestrator.sandbox.environment_record import FileEntry
from sandbox_sdk.server.orchestrator.sandbox.listing import (
    MAX_SNAPSHOT_ENTRIES,
    DirectoryTooLarge,
    ListingNotReady,
)
from sandbox_sdk.server.orchestrator.sandbox.statuses import file_errors
from sandbox_sdk.server.orchestrator.sandbox.workspace import Workspace, split_path
from sandbox_sdk.server.status import ServiceError

_LISTING_KIND = "files"
# The reason of the transient UNAVAILABLE a large directory's first page may get.
LISTING_IN_PROGRESS = ErrorReason.LISTING_IN_PROGRESS


def files_page(
    workspace: Workspace, path: str, page_size: int, page_token: str
) -> tuple[list[FileEntry], str]:
    """One page of the directory ``path`` after ``page_token``, and the next token."""
    scope = _scope(workspace, path)
    after = page_tokens.decode(page_token, _LISTING_KIND, scope, _name) or ""
    with file_errors("path", path, workspace.quota_bytes):
        try:
            entries, resume = workspace.list_page(
                split_path(path, allow_root=True), after, page_size
            )
        except ListingNotReady as pending:
            raise ServiceError(
                grpc.StatusCode.UNAVAILABLE,
                LISTING_IN_PROGRESS,
                "this directory is large and is being read for listing; retry in"
                f" {pending.retry_after:g}s (the SDK and the gateway retry by themselves)",
                retry_after=pending.retry_after,
            ) from None
        except DirectoryTooLarge:
            raise ServiceError(
                grpc.StatusCode.FAILED_PRECONDITION,
                ErrorReason.DIRECTORY_TOO_LARGE,
                f"the directory has more than {MAX_SNAPSHOT_ENTRIES} entries, more than a"
                " listing holds; list it with a command such as `find` through ExecCommand",
            ) from None
    if resume is None:
        return entries, ""
    return entries, page_tokens.encode(_LISTING_KIND, scope, resume)


def _scope(workspace: Workspace, path: str) -> dict[str, str]:
    """What a token of this listing is bound to: the environment's files and the directory."""
    return {"workspace": str(workspace.layout.files_dir), "path": path}


def _name(position: object) -> str:
    if not isinstance(position, str):
        raise TypeError("a files cursor is the last name listed")
    return position
