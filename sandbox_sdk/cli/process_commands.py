"""``sandbox-sdk env ...`` background processes and ports: start, ps, attach, kill, wait,
shell and forward."""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from rich.table import Column, Table

from sandbox_sdk.cli.command_classes import CliCommand
from sandbox_sdk.cli.environment_commands import env_app, exit_status, termination
from sandbox_sdk.cli.exit_codes import INTERRUPTED
from sandbox_sdk.cli.interactive_shell import run_shell
from sandbox_sdk.cli.json_output import print_json
from sandbox_sdk.cli.session import AsJson, client_of, err, out, pairs, reported_errors
from sandbox_sdk.cli.signal_wakeup import wait_for_interrupt
from sandbox_sdk.client import Process
from sandbox_sdk.client.process_requests import signal_number
from sandbox_sdk.models.processes import ProcessInfo, ProcessState

EnvironmentId = Annotated[str, typer.Argument(metavar="ID", help="Environment id.")]
ProcessId = Annotated[str, typer.Argument(metavar="PROCESS_ID", help="Process id (see `env ps`).")]

COMMAND_NOT_FOUND = 127
"""The shell's status for a program that could not run (FAILED_TO_START)."""


def process_status(info: ProcessInfo) -> int:
    """The shell's convention for a process's end, as for ``env exec``."""
    if info.state is ProcessState.FAILED_TO_START:
        return COMMAND_NOT_FOUND
    return exit_status(info)


def _report_end(info: ProcessInfo) -> None:
    if info.state is ProcessState.FAILED_TO_START:
        err.print(f"sandbox-sdk: {info.id} did not start: {info.start_error}", highlight=False)
        return
    ended = termination(info)
    if ended:
        err.print(f"sandbox-sdk: {ended}", highlight=False)


def _pty_size(value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    rows, sep, cols = value.lower().partition("x")
    if not sep or not rows.isdigit() or not cols.isdigit():
        raise typer.BadParameter(
            f"expected ROWSxCOLS like 24x80, got {value!r}", param_hint="--pty"
        )
    return int(rows), int(cols)


@env_app.command("start", cls=CliCommand, context_settings={"allow_interspersed_args": False})
def env_start(
    ctx: typer.Context,
    environment_id: EnvironmentId,
    *,
    command: Annotated[
        list[str],
        typer.Argument(metavar="COMMAND", help="The command and its arguments, after --."),
    ],
    cwd: Annotated[
        str | None, typer.Option(metavar="DIR", help="Working directory (default: workspace).")
    ] = None,
    env: Annotated[
        list[str] | None,
        typer.Option("--env", "-e", metavar="VAR=VALUE", help="An environment variable."),
    ] = None,
    stdin: Annotated[bool, typer.Option("--stdin", help="Keep its stdin open for writes.")] = False,
    pty: Annotated[
        str | None, typer.Option(metavar="ROWSxCOLS", help="Run it under a terminal, e.g. 24x80.")
    ] = None,
    as_json: AsJson = False,
) -> None:
    """Start a command in the background and print its process id:
    env start [OPTIONS] ID -- CMD [ARGS]...

    It runs until it exits or is killed; follow it with `env attach`, end it with
    `env kill`, collect its status with `env wait`.
    """
    size = _pty_size(pty)
    with reported_errors():
        argv = command[1:] if command[:1] == ["--"] else command
        sandbox = client_of(ctx).get_environment(environment_id)
        process = sandbox.start(argv, cwd=cwd, env=pairs(env, "--env"), stdin=stdin, pty=size)
        if as_json:
            print_json(process.info)
        else:
            out.print(process.id, highlight=False)


@env_app.command("ps", cls=CliCommand)
def env_ps(
    ctx: typer.Context,
    environment_id: EnvironmentId,
    all_: Annotated[bool, typer.Option("--all", "-a", help="Include ended processes.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object a line.")] = False,
) -> None:
    """List an environment's background processes (running ones, or --all)."""
    with reported_errors():
        sandbox = client_of(ctx).get_environment(environment_id)
        processes = sandbox.processes(include_finished=all_)
        if as_json:
            for process in processes:
                print_json(process.info, one_line=True)
            return
        table = Table(Column("id", no_wrap=True), "pid", "state", "exit", "command", "started")
        for process in processes:
            info = process.info
            table.add_row(
                info.id,
                str(info.pid),
                info.state.value,
                "" if info.running else str(process_status(info)),
                " ".join(info.argv),
                info.start_time.isoformat(timespec="seconds") if info.start_time else "",
            )
        out.print(table)


def _follow(process: Process) -> None:
    """Copies the process's output here until it ends (stderr to stderr, bytes as they are)."""
    with process.output() as stream:
        for chunk in stream:
            target = sys.stdout if chunk.stream == "stdout" else sys.stderr
            target.buffer.write(chunk.data)
            target.flush()


@env_app.command("attach", cls=CliCommand)
def env_attach(ctx: typer.Context, environment_id: EnvironmentId, process_id: ProcessId) -> None:
    """Stream a process's output from its start until it ends, then exit with its status.

    Ctrl-C detaches and leaves the process running.
    """
    with reported_errors():
        process = client_of(ctx).get_environment(environment_id).process(process_id)
        try:
            _follow(process)
        except KeyboardInterrupt:
            err.print(
                f"detached from {process_id}; it goes on running "
                f"(`sandbox-sdk env kill {environment_id} {process_id}` stops it)",
                highlight=False,
            )
            raise typer.Exit(INTERRUPTED) from None
        info = process.wait()
    _report_end(info)
    raise typer.Exit(process_status(info))


@env_app.command("kill", cls=CliCommand)
def env_kill(
    ctx: typer.Context,
    environment_id: EnvironmentId,
    process_id: ProcessId,
    signal: Annotated[
        str, typer.Option("--signal", "-s", metavar="SIGNAL", help="Name or number, e.g. TERM.")
    ] = "KILL",
    as_json: AsJson = False,
) -> None:
    """Send a signal (SIGKILL unless --signal) to a process."""
    with reported_errors():
        number = signal_number(signal)
        process = client_of(ctx).get_environment(environment_id).process(process_id)
        info = process.signal(number)
        if as_json:
            print_json(info)
        else:
            err.print(f"sent signal {number} to {process_id}", highlight=False)


@env_app.command("wait", cls=CliCommand)
def env_wait(
    ctx: typer.Context,
    environment_id: EnvironmentId,
    process_id: ProcessId,
    timeout: Annotated[
        str | None, typer.Option(metavar="DURATION", help="Give up after this long, e.g. 30s.")
    ] = None,
    as_json: AsJson = False,
) -> None:
    """Wait until a process ends, then exit with its status (128+N when killed by signal N)."""
    with reported_errors():
        process = client_of(ctx).get_environment(environment_id).process(process_id)
        info = process.wait(timeout)
    if as_json:
        print_json(info)
    _report_end(info)
    raise typer.Exit(process_status(info))


@env_app.command("shell", cls=CliCommand)
def env_shell(ctx: typer.Context, environment_id: EnvironmentId) -> None:
    """An interactive shell in the environment (bash if it has one, else sh).

    Every key goes to the shell, Ctrl-C and Ctrl-D included; `exit` ends it, and
    this command exits with the shell's status.
    """
    with reported_errors():
        sandbox = client_of(ctx).get_environment(environment_id)
        info = run_shell(sandbox, stdin_fd=sys.stdin.fileno(), stdout_fd=sys.stdout.fileno())
    _report_end(info)
    raise typer.Exit(process_status(info))


@env_app.command("forward", cls=CliCommand)
def env_forward(
    ctx: typer.Context,
    environment_id: EnvironmentId,
    port: Annotated[int, typer.Argument(metavar="PORT", help="TCP port inside the environment.")],
    local_port: Annotated[
        int, typer.Option(metavar="N", help="Local port on 127.0.0.1 (default: any free one).")
    ] = 0,
    as_json: AsJson = False,
) -> None:
    """Forward a local port to PORT on 127.0.0.1 inside the environment until Ctrl-C.

    Prints the local address (127.0.0.1:N) first.
    """
    with reported_errors():
        sandbox = client_of(ctx).get_environment(environment_id)
        with sandbox.forward(port, local_port) as local:
            address = f"127.0.0.1:{local}"
            if as_json:
                print_json({"local_address": address, "environment_id": sandbox.id, "port": port})
            else:
                out.print(address, highlight=False)
            err.print(f"forwarding {address} to {sandbox.id}:{port}; Ctrl-C stops", highlight=False)
            try:
                wait_for_interrupt()
            except KeyboardInterrupt:
                return
