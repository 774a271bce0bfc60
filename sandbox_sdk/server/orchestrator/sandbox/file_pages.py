"""ListFiles pages: signed cursors over a workspace directory, and what the errors mean.

The page token is the last name of the previous page and the directory it
belongs to, signed (``signed_tokens``): the client cannot steer the cursor
anywhere, and a token from one directory's listing is refused for another.
The listing itself is ``Workspace.list_page`` (see ``listing``).
"""

from __future__ import annotations

import grpc

from sandbox_sdk.errors import ErrorReason
from sandbox_sdk.server import signed_tokens
from sandbox_sdk.server.orchestrator.sandbox.environment_record import FileEntry
from sandbox_sdk.server.orchestrator.sandbox.listing import (
    MAX_SNAPSHOT_ENTRIES,
    DirectoryTooLarge,
    ListingNotReady,
)
from sandbox_sdk.server.orchestrator.sandbox.statuses import file_errors
from sandbox_sdk.server.orchestrator.sandbox.workspace import Workspace, split_path
from sandbox_sdk.server.status import ServiceError, invalid_argument

_LISTING_KIND = "files"
# The reason of the transient UNAVAILABLE a large directory's first page may get.
LISTING_IN_PROGRESS = ErrorReason.LISTING_IN_PROGRESS


def files_page(
    workspace: Workspace, path: str, page_size: int, page_token: str
) -> tuple[list[FileEntry], str]:
    """One page of the directory ``path`` after ``page_token``, and the next token."""
    after = _resume_after(page_token, path)
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
    return entries, signed_tokens.sign(_LISTING_KIND, {"path": path, "after": resume})


def _resume_after(page_token: str, path: str) -> str:
    if not page_token:
        return ""
    try:
        data = signed_tokens.verify(page_token, _LISTING_KIND)
    except signed_tokens.TokenError as error:
        raise invalid_argument([("page_token", str(error))]) from error
    after = data.get("after")
    if data.get("path") != path or not isinstance(after, str):
        raise invalid_argument(
            [("page_token", "belongs to a listing of another directory; start again without it")]
        )
    return after
