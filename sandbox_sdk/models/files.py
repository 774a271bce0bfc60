"""Workspace files."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sandbox_sdk.api.v1 import environment_pb2
from sandbox_sdk.utils.units import from_timestamp_pb


@dataclass(frozen=True, slots=True)
class FileInfo:
    """Metadata of a workspace file or directory; ``path`` is relative to the workspace.

    ``is_symlink``: the entry is a symbolic link (never followed; ``size_bytes`` is the link's).
    """

    path: str
    size_bytes: int = 0
    is_dir: bool = False
    mode: int = 0o644
    modify_time: datetime | None = None
    is_symlink: bool = False

    @classmethod
    def from_proto(cls, message: environment_pb2.FileInfo) -> FileInfo:
        """Converts the wire form."""
        return cls(
            path=message.path,
            size_bytes=message.size_bytes,
            is_dir=message.is_dir,
            mode=message.mode,
            modify_time=from_timestamp_pb(message.modify_time),
            is_symlink=message.is_symlink,
        )


@dataclass(frozen=True, slots=True)
class UploadSummary:
    """What an ``upload_dir`` wrote: files (directories and links not counted) and their bytes."""

    files_written: int
    bytes_written: int
