"""Reading and writing files in an environment as its own user, with inspect's errors.

The SDK's file calls reach only the workspace and act as the orchestrator, so a file
the sandbox user may not read would still be read. Inspect expects what the sandbox
user sees, anywhere in its file system (``/tmp``, ``/etc``), so both directions run a
small POSIX shell script in the environment: launched by absolute path with ``PATH``
pinned to the system directories, the file name passed as an argument (never
interpolated), the contents on stdin or stdout. Contents move in chunks that stay well
under the gRPC message limit.
"""

from __future__ import annotations

import errno
import os

from inspect_ai.util import OutputLimitExceededError, SandboxEnvironmentLimits

from sandbox_sdk import AsyncSandbox, ExecResult
from sandbox_sdk.integrations.inspect_ai.commands import SHELL, run_checked

CHUNK_BYTES = 32 * 1024 * 1024
_BLOCK_BYTES = 1024 * 1024
FILE_TIMEOUT_SECONDS = 600

# Exit statuses the scripts choose for the cases inspect names; anything else is
# classified from the message the failing tool wrote.
_MISSING, _DENIED, _DIRECTORY, _NOT_REGULAR, _NO_PARENT = 90, 91, 92, 93, 94

_PINNED_PATH = "PATH=/usr/sbin:/usr/bin:/sbin:/bin"

_READ_SCRIPT = f"""{_PINNED_PATH}
f=$1
if [ -d "$f" ]; then echo "Is a directory" >&2; exit {_DIRECTORY}; fi
if [ ! -e "$f" ]; then echo "No such file or directory" >&2; exit {_MISSING}; fi
if [ ! -f "$f" ]; then echo "Not a regular file" >&2; exit {_NOT_REGULAR}; fi
if [ ! -r "$f" ]; then echo "Permission denied" >&2; exit {_DENIED}; fi
size=$(wc -c < "$f") || exit {_DENIED}
echo $size >&2
if [ "$size" -le "$2" ]; then exec cat < "$f"; fi
"""

_READ_BLOCKS_SCRIPT = f"""{_PINNED_PATH}
exec dd if="$1" bs={_BLOCK_BYTES} skip="$2" count="$3" 2>/dev/null
"""

_WRITE_SCRIPT = f"""{_PINNED_PATH}
f=$1
if [ -d "$f" ]; then echo "Is a directory" >&2; exit {_DIRECTORY}; fi
if [ "$2" = append ]; then exec cat >> "$f"; fi
d=$(dirname -- "$f")
if [ ! -d "$d" ]; then mkdir -p -- "$d" || exit {_NO_PARENT}; fi
if [ -e "$f" ] && [ ! -w "$f" ]; then echo "Permission denied" >&2; exit {_DENIED}; fi
exec cat > "$f"
"""


async def read_file(sandbox: AsyncSandbox, file: str) -> bytes:
    """The bytes of ``file`` (relative to the workspace), at most inspect's read limit.

    Raises FileNotFoundError, PermissionError, IsADirectoryError, OSError (not a
    regular file) and OutputLimitExceededError as inspect's ``read_file`` documents.
    """
    limit = SandboxEnvironmentLimits.MAX_READ_FILE_SIZE
    path = _shell_path(file)
    first = await _run(sandbox, _READ_SCRIPT, path, str(min(limit, CHUNK_BYTES)))
    _raise_for_failure(first, file)
    size = _reported_size(first, file)
    if size > limit:
        raise _too_large()
    if size <= CHUNK_BYTES:
        contents = first.stdout_bytes
    else:
        contents = await _read_blocks(sandbox, path, limit)
    if len(contents) > limit:  # the file grew while it was read
        raise _too_large()
    return contents


async def _read_blocks(sandbox: AsyncSandbox, path: str, limit: int) -> bytes:
    """The file read a chunk at a time, stopping once it is past ``limit``."""
    blocks_per_chunk = CHUNK_BYTES // _BLOCK_BYTES
    contents = bytearray()
    skip = 0
    while len(contents) <= limit:
        result = await _run(sandbox, _READ_BLOCKS_SCRIPT, path, str(skip), str(blocks_per_chunk))
        _raise_for_failure(result, path.removeprefix("./"))
        contents += result.stdout_bytes
        if len(result.stdout_bytes) < CHUNK_BYTES:
            break
        skip += blocks_per_chunk
    return bytes(contents)


async def write_file(sandbox: AsyncSandbox, file: str, contents: bytes) -> None:
    """Writes ``contents`` to ``file``, making its missing parent directories.

    Raises PermissionError and IsADirectoryError as inspect's ``write_file`` documents.
    """
    path = _shell_path(file)
    for offset in range(0, max(len(contents), 1), CHUNK_BYTES):
        how = "append" if offset else "create"
        chunk = contents[offset : offset + CHUNK_BYTES]
        result = await _run(sandbox, _WRITE_SCRIPT, path, how, stdin=chunk)
        _raise_for_failure(result, file)


async def _run(
    sandbox: AsyncSandbox, script: str, *arguments: str, stdin: bytes | None = None
) -> ExecResult:
    return await run_checked(
        sandbox,
        [SHELL, "-c", script, "sh", *arguments],
        stdin=stdin,
        timeout=FILE_TIMEOUT_SECONDS,
    )


def _shell_path(file: str) -> str:
    """``file`` as the scripts take it: relative names stay relative to the workspace (the
    commands' working directory), and a leading ``./`` keeps names like ``-n`` from being
    read as options."""
    if "\x00" in file:
        raise ValueError(f"file name {file!r} contains a NUL byte; remove it")
    return file if file.startswith("/") else f"./{file}"


def _reported_size(result: ExecResult, file: str) -> int:
    last_line = result.stderr.strip().rsplit("\n", 1)[-1].strip()
    if not last_line.isdigit():
        raise OSError(errno.EIO, f"could not read the size of the file: {result.stderr!r}", file)
    return int(last_line)


def _raise_for_failure(result: ExecResult, file: str) -> None:
    if result.ok:
        return
    error_class, code = _error_for(result.exit_code, result.stderr)
    message = os.strerror(code)
    if code == errno.EIO:
        message += f" (the sandbox said: {result.stderr.strip()[-500:] or 'nothing'})"
    raise error_class(code, message, file)


def _error_for(exit_code: int, stderr: str) -> tuple[type[OSError], int]:
    """The exception class and errno of a failed script, by its status or its message."""
    by_status: dict[int, tuple[type[OSError], int]] = {
        _MISSING: (FileNotFoundError, errno.ENOENT),
        _DENIED: (PermissionError, errno.EACCES),
        _DIRECTORY: (IsADirectoryError, errno.EISDIR),
        _NOT_REGULAR: (OSError, errno.EINVAL),
    }
    if exit_code in by_status:
        return by_status[exit_code]
    message = stderr.casefold()
    by_message: list[tuple[str, tuple[type[OSError], int]]] = [
        ("permission denied", (PermissionError, errno.EACCES)),
        ("read-only file system", (PermissionError, errno.EROFS)),
        ("is a directory", (IsADirectoryError, errno.EISDIR)),
        ("not a directory", (NotADirectoryError, errno.ENOTDIR)),
        ("file exists", (NotADirectoryError, errno.ENOTDIR)),
        ("no such file", (FileNotFoundError, errno.ENOENT)),
        ("no space left", (OSError, errno.ENOSPC)),
        ("quota exceeded", (OSError, errno.EDQUOT)),
    ]
    for needle, error in by_message:
        if needle in message:
            return error
    return OSError, errno.EIO


def _too_large() -> OutputLimitExceededError:
    return OutputLimitExceededError(
        limit_str=SandboxEnvironmentLimits.MAX_READ_FILE_SIZE_STR, truncated_output=None
    )
