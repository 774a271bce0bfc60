"""``env cp`` (and other file commands') operands: ``ENV:path`` names a workspace file,
anything else a local one."""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass
from pathlib import Path

import typer

# As docker cp: a colon after a name without a slash, so ./a:b and /x:y stay local paths.
_REMOTE = re.compile(r"(?P<environment>[A-Za-z0-9][A-Za-z0-9_.-]*):(?P<path>.*)", re.DOTALL)


@dataclass(frozen=True, slots=True)
class WorkspacePath:
    """A path in an environment's workspace."""

    environment_id: str
    path: str


@dataclass(frozen=True, slots=True)
class Copy:
    """One file to copy: an upload (local → workspace) or a download (workspace → local)."""

    local: Path
    remote: WorkspacePath
    upload: bool


def _remote(operand: str) -> WorkspacePath | None:
    match = _REMOTE.fullmatch(operand)
    if match is None:
        return None
    return WorkspacePath(match["environment"], match["path"])


def workspace_path(operand: str, param_hint: str) -> WorkspacePath:
    """The ``ENV:path`` operand of a file command; a usage error otherwise."""
    remote = _remote(operand)
    if remote is None:
        raise typer.BadParameter(
            f"expected ENV:path (an environment id, a colon, a workspace path), got {operand!r}",
            param_hint=param_hint,
        )
    return remote


def parse_copy(source: str, destination: str) -> Copy:
    """The copy ``env cp SOURCE DESTINATION`` asks for; exactly one side is ``ENV:path``.

    A workspace destination that is empty or ends with ``/`` gets the local file's name;
    a local destination that is a directory gets the workspace file's name.
    """
    remote_source, remote_destination = _remote(source), _remote(destination)
    if remote_source is None and remote_destination is not None:
        return _upload(Path(source), remote_destination)
    if remote_source is not None and remote_destination is None:
        return _download(remote_source, Path(destination), source)
    raise typer.BadParameter(
        "give one local path and one ENV:path, e.g. `env cp ./data.jsonl ENV:data.jsonl`"
        " to upload or `env cp ENV:out.txt .` to download",
        param_hint="SOURCE DESTINATION",
    )


def _upload(local: Path, destination: WorkspacePath) -> Copy:
    path = destination.path
    if not path or path.endswith("/"):
        path = posixpath.join(path, local.name)
    return Copy(local, WorkspacePath(destination.environment_id, path), upload=True)


def _download(source: WorkspacePath, local: Path, operand: str) -> Copy:
    if not source.path or source.path.endswith("/"):
        raise typer.BadParameter(
            f"{operand!r} names a directory; env cp copies one file", param_hint="SOURCE"
        )
    if local.is_dir():
        local = local / posixpath.basename(source.path)
    return Copy(local, source, upload=False)
