"""Directories as tar archives: packing a local one to upload, extracting a downloaded one.

Both are blocking file work, so the asyncio client runs them on a thread
(``glue.off_loop``). What the server sends back is untrusted like any input:
extraction uses tarfile's ``data`` filter, which refuses absolute paths, ``..``,
links leaving the directory, devices and set-id bits.
"""

from __future__ import annotations

import os
import tarfile
import tempfile
from pathlib import Path
from typing import IO

from sandbox_sdk.errors import InvalidArgumentError, SandboxError

CHUNK_BYTES = 1 << 20
"""Bytes per message of an archive stream: well under gRPC's 4 MiB message limit."""

_IN_MEMORY_BYTES = 8 << 20
"""An archive up to this size stays in memory; a larger one spills to a temporary file."""


class ArchiveError(SandboxError):
    """A downloaded archive could not be extracted safely; nothing went outside the target."""


def spool() -> IO[bytes]:
    """An empty file-like buffer for an archive, in memory while it is small."""
    return tempfile.SpooledTemporaryFile(max_size=_IN_MEMORY_BYTES)


def _anonymous(member: tarfile.TarInfo) -> tarfile.TarInfo:
    """Drops the local owner's names and ids: they mean nothing in the sandbox."""
    member.uid = member.gid = 0
    member.uname = member.gname = ""
    return member


def pack_directory(local_dir: str | os.PathLike[str]) -> IO[bytes]:
    """A tar of ``local_dir``'s contents (not the directory itself), rewound to its start.

    Symbolic links are archived as links, never followed.
    """
    root = Path(local_dir)
    if not root.is_dir():
        raise InvalidArgumentError(
            f"{root} is not a local directory; give the directory to upload "
            "(write_file uploads a single file)"
        )
    buffer = spool()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for child in sorted(root.iterdir()):
            archive.add(child, arcname=child.name, recursive=True, filter=_anonymous)
    buffer.seek(0)
    return buffer


def read_chunk(buffer: IO[bytes]) -> bytes:
    """The next chunk of an archive; empty at its end."""
    return buffer.read(CHUNK_BYTES)


def write_chunk(buffer: IO[bytes], chunk: bytes) -> None:
    """Appends a received chunk to an archive being downloaded."""
    buffer.write(chunk)


def extract_archive(buffer: IO[bytes], local_dir: str | os.PathLike[str]) -> list[str]:
    """Extracts a downloaded tar into ``local_dir`` (created if missing) and closes the buffer.

    Returns the names extracted, relative to ``local_dir``. A member the ``data``
    filter refuses (``..``, a link out of ``local_dir``, a device) raises
    :class:`ArchiveError`; an absolute name loses its leading ``/``.
    """
    target = Path(local_dir)
    extracted: list[str] = []

    def checked(member: tarfile.TarInfo, destination: str) -> tarfile.TarInfo:
        kept = tarfile.data_filter(member, destination)
        extracted.append(kept.name)
        return kept

    try:
        target.mkdir(parents=True, exist_ok=True)
        buffer.seek(0)
        with tarfile.open(fileobj=buffer, mode="r:*") as archive:
            archive.extractall(target, filter=checked)  # noqa: S202  (the data filter, in checked)
        return extracted
    except tarfile.FilterError as error:
        raise ArchiveError(
            f"the downloaded archive holds an unsafe entry ({error}); nothing was written "
            f"outside {target}. Report it: the server should never send one"
        ) from error
    except tarfile.TarError as error:
        raise ArchiveError(
            f"the downloaded archive is not a valid tar ({error}); download it again"
        ) from error
    except OSError as error:
        raise ArchiveError(
            f"cannot write into {target}: {error.strerror or error}; choose a directory you "
            "can write to"
        ) from error
    finally:
        buffer.close()
