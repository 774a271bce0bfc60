"""``sandbox-sdk env ...`` file commands besides ``cp``: rm-file, mv, mkdir, stat, and whole
directories with upload-dir and download-dir. Workspace paths are ``ENV:path``, as for cp."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from sandbox_sdk.cli.command_classes import CliCommand
from sandbox_sdk.cli.copy_operands import workspace_path
from sandbox_sdk.cli.environment_commands import env_app
from sandbox_sdk.cli.exit_codes import LOCAL_FILE_ERROR
from sandbox_sdk.cli.json_output import print_json
from sandbox_sdk.cli.session import (
    AsJson,
    client_of,
    err,
    out,
    print_error,
    print_fields,
    reported_errors,
)
from sandbox_sdk.client import Sandbox
from sandbox_sdk.models.files import FileInfo
from sandbox_sdk.utils.units import format_size

RemotePath = Annotated[
    str, typer.Argument(metavar="ENV:PATH", help="An environment id and a workspace path.")
]


def _sandbox(ctx: typer.Context, environment_id: str) -> Sandbox:
    return client_of(ctx).get_environment(environment_id)


def _print_file(info: FileInfo, as_json: bool) -> None:
    if as_json:
        print_json(info)
        return
    kind = "directory" if info.is_dir else "symlink" if info.is_symlink else "file"
    print_fields(
        [
            ("path", info.path),
            ("type", kind),
            ("size", format_size(info.size_bytes)),
            ("mode", f"{info.mode:o}"),
            ("modified", info.modify_time),
        ]
    )


@env_app.command("rm-file", cls=CliCommand)
def env_rm_file(
    ctx: typer.Context,
    target: RemotePath,
    recursive: Annotated[
        bool, typer.Option("--recursive", "-r", help="Remove a directory and what it holds.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Remove a workspace file (a directory with -r); removing nothing is not an error."""
    where = workspace_path(target, "ENV:PATH")
    with reported_errors():
        removed = _sandbox(ctx, where.environment_id).remove(where.path, recursive=recursive)
        if as_json:
            print_json({"path": where.path, "removed": removed})
        else:
            out.print(f"{'removed' if removed else 'nothing at'} {target}", highlight=False)


@env_app.command("mv", cls=CliCommand)
def env_mv(
    ctx: typer.Context,
    source: RemotePath,
    new_path: Annotated[str, typer.Argument(metavar="NEW_PATH", help="Its new workspace path.")],
    overwrite: Annotated[bool, typer.Option(help="Replace an existing NEW_PATH.")] = False,
    as_json: AsJson = False,
) -> None:
    """Move a workspace file or directory: env mv ENV:old/path new/path."""
    where = workspace_path(source, "ENV:PATH")
    with reported_errors():
        moved = _sandbox(ctx, where.environment_id).rename(
            where.path, new_path, overwrite=overwrite
        )
        _print_file(moved, as_json)


@env_app.command("mkdir", cls=CliCommand)
def env_mkdir(
    ctx: typer.Context,
    target: RemotePath,
    parents: Annotated[bool, typer.Option(help="Make missing parent directories too.")] = True,
    as_json: AsJson = False,
) -> None:
    """Make a workspace directory; one that exists is fine."""
    where = workspace_path(target, "ENV:PATH")
    with reported_errors():
        made = _sandbox(ctx, where.environment_id).make_dir(where.path, parents=parents)
        _print_file(made, as_json)


@env_app.command("stat", cls=CliCommand)
def env_stat(ctx: typer.Context, target: RemotePath, as_json: AsJson = False) -> None:
    """Show a workspace file's type, size, mode and time (exit 6 when there is none)."""
    where = workspace_path(target, "ENV:PATH")
    with reported_errors():
        _print_file(_sandbox(ctx, where.environment_id).stat(where.path), as_json)


@env_app.command("upload-dir", cls=CliCommand)
def env_upload_dir(
    ctx: typer.Context,
    local_dir: Annotated[Path, typer.Argument(metavar="LOCAL_DIR", help="A local directory.")],
    target: RemotePath,
    as_json: AsJson = False,
) -> None:
    """Copy a local directory's contents into a workspace directory (made if missing)."""
    where = workspace_path(target, "ENV:PATH")
    if not local_dir.is_dir():
        print_error(f"{local_dir} is not a directory; `env cp` copies a single file")
        raise typer.Exit(LOCAL_FILE_ERROR)
    with reported_errors():
        summary = _sandbox(ctx, where.environment_id).upload_dir(local_dir, where.path)
        if as_json:
            print_json(summary)
        else:
            err.print(
                f"copied {local_dir} to {target} ({summary.files_written} files, "
                f"{format_size(summary.bytes_written)})",
                highlight=False,
            )


@env_app.command("download-dir", cls=CliCommand)
def env_download_dir(
    ctx: typer.Context,
    source: RemotePath,
    local_dir: Annotated[
        Path, typer.Argument(metavar="LOCAL_DIR", help="Where to put it (made if missing).")
    ],
    as_json: AsJson = False,
) -> None:
    """Copy a workspace directory's contents into a local directory.

    Entries that would land outside LOCAL_DIR (absolute names, '..', links leading out,
    devices) are refused.
    """
    where = workspace_path(source, "ENV:PATH")
    with reported_errors():
        names = _sandbox(ctx, where.environment_id).download_dir(where.path, local_dir)
        if as_json:
            print_json({"local_dir": str(local_dir), "entries": names})
        else:
            err.print(f"copied {source} to {local_dir} ({len(names)} entries)", highlight=False)
