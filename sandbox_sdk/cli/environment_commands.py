"""``sandbox-sdk env ...``: create, list, inspect, delete environments, run commands in them
and copy files in and out."""

from __future__ import annotations

import enum
import sys
from typing import Annotated, Any

import typer
from rich.table import Column, Table
from typer._click.core import Context
from typer._click.exceptions import UsageError  # typer vendors click; its errors are these

from sandbox_sdk.cli.command_classes import CliCommand, CliGroup
from sandbox_sdk.cli.copy_operands import parse_copy
from sandbox_sdk.cli.exit_codes import COMMAND_FAILED, COMMAND_NOT_RUN, LOCAL_FILE_ERROR
from sandbox_sdk.cli.json_output import jsonable, print_json
from sandbox_sdk.cli.session import (
    AsJson,
    Labels,
    client_of,
    err,
    joined_labels,
    out,
    pairs,
    print_error,
    print_fields,
    reported_errors,
)
from sandbox_sdk.client import Sandbox
from sandbox_sdk.errors import SandboxError
from sandbox_sdk.models.environment import EnvironmentInfo, IsolationRuntime
from sandbox_sdk.models.execution import ExecResult, ExitReason
from sandbox_sdk.models.processes import ProcessInfo
from sandbox_sdk.models.usage import UsageReport
from sandbox_sdk.utils.units import format_size

env_app = typer.Typer(
    cls=CliGroup,
    help="Create, list, inspect and delete environments, run commands and copy files.",
    no_args_is_help=True,
)


def _size(num_bytes: int) -> str:
    return format_size(num_bytes) if num_bytes else "-"


class RuntimeChoice(enum.StrEnum):
    """The isolation runtimes ``env create --runtime`` takes."""

    bubblewrap = "bubblewrap"
    gvisor = "gvisor"


def _runtime_shown(info: EnvironmentInfo) -> str:
    return info.runtime.value.lower() if info.runtime is not IsolationRuntime.UNSPECIFIED else "-"


@env_app.command("create", cls=CliCommand)
def env_create(
    ctx: typer.Context,
    *,
    cpu: Annotated[float | None, typer.Option(metavar="CORES", help="CPU cores, e.g. 0.5.")] = None,
    memory: Annotated[str | None, typer.Option(metavar="SIZE", help="Memory, e.g. 512Mi.")] = None,
    disk: Annotated[str | None, typer.Option(metavar="SIZE", help="Disk quota, e.g. 1Gi.")] = None,
    pids: Annotated[int | None, typer.Option(metavar="N", help="Max processes.")] = None,
    ttl: Annotated[str | None, typer.Option(metavar="DURATION", help="Lifetime, e.g. 30m.")] = None,
    idle_timeout: Annotated[
        str | None, typer.Option(metavar="DURATION", help="Idle limit, e.g. 10m.")
    ] = None,
    network: Annotated[
        str | None,
        typer.Option(metavar="POLICY", help="none, egress, or host (operator's permission)."),
    ] = None,
    egress_allow: Annotated[
        list[str] | None,
        typer.Option(metavar="CIDR", help="With egress: only these CIDR blocks; repeatable."),
    ] = None,
    egress_deny: Annotated[
        list[str] | None,
        typer.Option(metavar="CIDR", help="With egress: never these CIDR blocks; repeatable."),
    ] = None,
    label: Labels = None,
    env: Annotated[
        list[str] | None,
        typer.Option("--env", "-e", metavar="VAR=VALUE", help="An environment variable."),
    ] = None,
    queue: Annotated[
        bool, typer.Option(help="When the orchestrator is full, wait in its queue.")
    ] = False,
    template: Annotated[
        str | None,
        typer.Option(metavar="ID|NAME", help="Start from this template (see `template ls`)."),
    ] = None,
    runtime: Annotated[
        RuntimeChoice | None,
        typer.Option(
            case_sensitive=False,
            help="What isolates it: bubblewrap, or gvisor for hostile code. "
            "Default: the operator's.",
        ),
    ] = None,
    as_json: AsJson = False,
) -> None:
    """Create an environment and print its id."""
    with reported_errors():
        sandbox = client_of(ctx).create_environment(
            cpu=cpu,
            memory=memory,
            disk=disk,
            pids=pids,
            ttl=ttl,
            idle_timeout=idle_timeout,
            network=network,
            egress_allow=egress_allow,
            egress_deny=egress_deny,
            queue=queue,
            template=template,
            runtime=runtime.value if runtime else None,
            labels=pairs(label, "--label"),
            env=pairs(env, "--env"),
        )
        if as_json:
            print_json(sandbox.info)
        else:
            out.print(sandbox.id, highlight=False)


def _usage_or_none(sandbox: Sandbox) -> UsageReport | None:
    try:
        return sandbox.usage()
    except SandboxError:  # ended, or not started yet: it has no usage to show
        return None


@env_app.command("ls", cls=CliCommand)
def env_ls(
    ctx: typer.Context,
    label: Labels = None,
    all_: Annotated[bool, typer.Option("--all", "-a", help="Include terminated.")] = False,
    as_json: Annotated[
        bool,
        typer.Option("--json", help="One JSON object a line, with limits and usage."),
    ] = False,
) -> None:
    """List environments."""
    with reported_errors():
        sandboxes = client_of(ctx).list_environments(
            labels=pairs(label, "--label"), show_terminated=all_
        )
        table = Table("state", "runtime", "cpu", "memory", "disk", "labels", "created")
        table.columns.insert(0, Column("id", no_wrap=True))
        for sandbox in sandboxes:
            info = sandbox.info
            if as_json:
                usage = _usage_or_none(sandbox) if info.state.value == "RUNNING" else None
                row = {**jsonable(info), "usage": jsonable(usage.usage) if usage else None}
                print_json(row, one_line=True)
                continue
            table.add_row(
                info.id,
                info.state.value,
                _runtime_shown(info),
                f"{info.limits.cpu_cores:g}",
                _size(info.limits.memory_bytes),
                _size(info.limits.disk_bytes),
                joined_labels(info.labels),
                info.create_time.isoformat(timespec="seconds") if info.create_time else "",
            )
        if not as_json:
            out.print(table)


@env_app.command("get", cls=CliCommand)
def env_get(
    ctx: typer.Context,
    environment_id: Annotated[str, typer.Argument(metavar="ID", help="Environment id.")],
    as_json: AsJson = False,
) -> None:
    """Show an environment: state, limits, labels, times."""
    with reported_errors():
        info = client_of(ctx).get_environment(environment_id).info
        if as_json:
            print_json(info)
            return
        limits = info.limits
        rows: list[tuple[str, Any]] = [
            ("id", info.id),
            ("state", info.state.value),
            ("cpu", f"{limits.cpu_cores:g}"),
            ("memory", _size(limits.memory_bytes)),
            ("disk", _size(limits.disk_bytes)),
            ("pids", limits.max_pids or "-"),
            ("network", info.network.value),
            ("runtime", _runtime_shown(info)),
            ("isolation", info.isolation or "-"),
            ("template", info.template_id or "-"),
            ("labels", joined_labels(info.labels)),
            ("created", info.create_time),
            ("expires", info.expire_time),
        ]
        if info.termination_reason.value != "UNSPECIFIED":
            rows.append(("ended", f"{info.termination_reason.value} {info.termination_message}"))
        print_fields(rows)


@env_app.command("usage", cls=CliCommand)
def env_usage(
    ctx: typer.Context,
    environment_id: Annotated[str, typer.Argument(metavar="ID", help="Environment id.")],
    as_json: AsJson = False,
) -> None:
    """Show an environment's latest resource usage next to its limits."""
    with reported_errors():
        report = client_of(ctx).get_environment(environment_id).usage()
        if as_json:
            print_json(report)
            return
        usage, limits = report.usage, report.limits
        table = Table("resource", "used", "peak", "limit")
        table.add_row("cpu", f"{usage.cpu_percent:.1f}%", "", f"{limits.cpu_cores:g} cores")
        table.add_row("cpu time", f"{usage.cpu_seconds:.2f}s", "", "")
        table.add_row(
            "memory",
            _size(usage.memory_bytes),
            _size(usage.memory_peak_bytes),
            _size(limits.memory_bytes),
        )
        table.add_row("disk", _size(usage.disk_bytes), "", _size(limits.disk_bytes))
        table.add_row("processes", str(usage.pids), "", str(limits.max_pids or "-"))
        out.print(table)


@env_app.command("rm", cls=CliCommand)
def env_rm(
    ctx: typer.Context,
    environment_ids: Annotated[list[str], typer.Argument(metavar="ID", help="Environment ids.")],
) -> None:
    """Delete environments."""
    with reported_errors():
        client = client_of(ctx)
        for environment_id in environment_ids:
            client.get_environment(environment_id).delete()
            out.print(f"deleted {environment_id}", highlight=False)


@env_app.command("snapshot", cls=CliCommand)
def env_snapshot(
    ctx: typer.Context,
    environment_id: Annotated[str, typer.Argument(metavar="ID", help="Environment id.")],
    *,
    name: Annotated[str, typer.Option(metavar="NAME", help="The new template's name.")] = "",
    include_workspace: Annotated[
        bool, typer.Option(help="Carry the workspace's files into the template too.")
    ] = False,
    as_json: AsJson = False,
) -> None:
    """Save what an environment changed in its root file system as a new template, and print
    the template's id once it is READY; its processes keep running."""
    with reported_errors():
        sandbox = client_of(ctx).get_environment(environment_id)
        template = sandbox.snapshot(name=name, include_workspace=include_workspace)
        info = template.wait()
        if as_json:
            print_json(info)
        else:
            out.print(template.id, highlight=False)


@env_app.command("cp", cls=CliCommand)
def env_cp(
    ctx: typer.Context,
    source: Annotated[
        str, typer.Argument(metavar="SOURCE", help="A local path, or ENV:path in a workspace.")
    ],
    destination: Annotated[
        str, typer.Argument(metavar="DESTINATION", help="ENV:path, or a local path.")
    ],
) -> None:
    """Copy a file into a workspace or out of it (as docker cp does).

    env cp ./data.jsonl ENV:data.jsonl uploads; env cp ENV:out/result.txt . downloads.
    """
    copy = parse_copy(source, destination)
    with reported_errors():
        sandbox = client_of(ctx).get_environment(copy.remote.environment_id)
        where = f"{copy.remote.environment_id}:{copy.remote.path}"
        if copy.upload:
            try:
                content = copy.local.read_bytes()
            except OSError as error:
                print_error(f"cannot read {copy.local}: {error.strerror}")
                raise typer.Exit(LOCAL_FILE_ERROR) from None
            written = sandbox.write_file(copy.remote.path, content)
            err.print(f"copied {copy.local} to {where} ({format_size(written.size_bytes)})")
        else:
            content = sandbox.read_file(copy.remote.path)
            try:
                copy.local.write_bytes(content)
            except OSError as error:
                print_error(f"cannot write {copy.local}: {error.strerror}")
                raise typer.Exit(LOCAL_FILE_ERROR) from None
            err.print(f"copied {where} to {copy.local} ({format_size(len(content))})")


class _ExecUsageError(UsageError):
    exit_code = COMMAND_NOT_RUN


class ExecCommand(CliCommand):
    """``env exec``: a bad command line exits 125 too, never a code the command could return."""

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: Context | None = None,
        **extra: Any,
    ) -> Context:
        try:
            return super().make_context(info_name, args, parent, **extra)
        except UsageError as error:
            raise _ExecUsageError(error.format_message(), error.ctx) from None


def termination(result: ExecResult | ProcessInfo) -> str | None:
    """How a command that did not exit by itself ended, for a line on stderr."""
    if result.reason is ExitReason.EXITED:
        return None
    if result.reason is ExitReason.SIGNALED:
        return f"command killed by signal {result.signal}"
    killed = f" (killed by signal {result.signal})" if result.signal else ""
    return f"command ended by {result.reason.value}{killed}"


def exit_status(result: ExecResult | ProcessInfo) -> int:
    """The shell's convention: the exit code, 128 + N when killed by signal N, 124 on TIMEOUT."""
    if result.reason is ExitReason.EXITED and result.exit_code >= 0:
        return result.exit_code
    if result.signal:
        return 128 + result.signal
    return 124 if result.reason is ExitReason.TIMEOUT else 137


@env_app.command(
    "exec",
    cls=ExecCommand,
    context_settings={"allow_interspersed_args": False},
)
def env_exec(
    ctx: typer.Context,
    environment_id: Annotated[str, typer.Argument(metavar="ID", help="Environment id.")],
    *,
    command: Annotated[
        list[str],
        typer.Argument(metavar="COMMAND", help="The command and its arguments, after --."),
    ],
    timeout: Annotated[
        str | None, typer.Option(metavar="DURATION", help="Wall-clock limit, e.g. 30s.")
    ] = None,
    check: Annotated[
        bool, typer.Option(help="Exit 16 instead of the command's status when it fails.")
    ] = False,
    no_stdin: Annotated[
        bool, typer.Option("--no-stdin", help="Do not pass this shell's stdin to the command.")
    ] = False,
) -> None:
    """Run a command: env exec [OPTIONS] ID -- CMD [ARGS]...

    Options go before the id; everything after the id is the command's. Its stdin is
    this shell's when that is not a terminal (a pipe or a file); its output streams
    back as it is written.

    Exit status: the command's own (0-255; 128+N when killed by signal N, 124 on
    TIMEOUT). When sandbox-sdk itself fails (bad command line, no such environment,
    no connection...) it exits 125 and prints the error on stderr, so the two cannot
    be confused. With --check a failed command exits 16.
    """
    stdin = None
    if not no_stdin and not sys.stdin.isatty():
        stdin = typer.get_binary_stream("stdin").read() or None
    with reported_errors(exit_code=COMMAND_NOT_RUN):
        argv = command[1:] if command[:1] == ["--"] else command
        sandbox = client_of(ctx).get_environment(environment_id)
        stream = sandbox.exec_stream(argv, timeout=timeout, stdin=stdin)
        with stream:
            for chunk in stream:
                target = sys.stdout if chunk.stream == "stdout" else sys.stderr
                target.write(chunk.text)
                target.flush()
            result = stream.result()
    ended = termination(result)
    if ended:
        err.print(f"sandbox-sdk: {ended}", highlight=False)
    if check and not result.ok:
        raise typer.Exit(COMMAND_FAILED)
    raise typer.Exit(exit_status(result))
