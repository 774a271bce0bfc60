"""The ``sandbox-sdk`` command line, and the ``sandbox-gateway`` / ``sandbox-orchestrator``
entry points. Exit codes: see :mod:`sandbox_sdk.cli.exit_codes`."""

from __future__ import annotations

import errno
import importlib
import socket
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

import sandbox_sdk
from sandbox_sdk.cli import experiment_commands, process_commands, workspace_commands
from sandbox_sdk.cli.command_classes import CliCommand, CliGroup
from sandbox_sdk.cli.environment_commands import env_app
from sandbox_sdk.cli.exit_codes import GENERIC_ERROR, INTERRUPTED
from sandbox_sdk.cli.experiment_commands import experiments_app
from sandbox_sdk.cli.extras import require_extra
from sandbox_sdk.cli.interrupts import interrupts_outside_grpc
from sandbox_sdk.cli.json_output import print_json
from sandbox_sdk.cli.key_commands import keys_app
from sandbox_sdk.cli.power_command import power
from sandbox_sdk.cli.session import AsJson, client_of, err, out, print_error, reported_errors
from sandbox_sdk.cli.template_commands import template_app

del workspace_commands, process_commands  # imported for the env commands they add to env_app

app = typer.Typer(
    cls=CliGroup, help="Run LLM experiments in isolated sandboxes.", no_args_is_help=True
)
app.add_typer(env_app, name="env")
app.add_typer(experiments_app, name="experiments")
app.add_typer(keys_app, name="keys")
app.add_typer(template_app, name="template")
for command in (
    experiment_commands.run,
    experiment_commands.logs,
    experiment_commands.results,
    experiment_commands.compare,
    experiment_commands.metrics,
    power,
):
    app.command(cls=CliCommand)(command)


def _print_version(value: bool) -> None:
    if value:
        out.print(f"sandbox-sdk {sandbox_sdk.__version__}", highlight=False)
        raise typer.Exit()


@app.callback()
def _global_options(
    ctx: typer.Context,
    *,
    target: Annotated[
        str | None,
        typer.Option(
            metavar="HOST:PORT",
            help="Gateway host:port or unix:PATH [SANDBOX_TARGET; default: the local"
            " server's socket <data_dir>/gateway.sock when it exists].",
        ),
    ] = None,
    api_key: Annotated[
        str | None, typer.Option(metavar="KEY", help="API key [SANDBOX_API_KEY].")
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option("--config", "-c", metavar="FILE", help="Client YAML file [SANDBOX_CONFIG]."),
    ] = None,
    timeout: Annotated[
        float | None, typer.Option(metavar="SECONDS", help="Per-call timeout.")
    ] = None,
    version: Annotated[
        bool,
        typer.Option(
            "--version", is_eager=True, callback=_print_version, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Global options apply to every command; give them before the command."""
    ctx.obj = {"target": target, "api_key": api_key, "config": config, "timeout": timeout}


# -- servers -------------------------------------------------------------------------------


def _embedded(command: str) -> Any:
    # The servers are imported only here, so the client CLI works without their deps.
    require_extra("server", command)
    return importlib.import_module("sandbox_sdk.server.embedded")


def _port_in_use(host: str, port: int) -> bool:
    """Whether something listens on ``host:port`` already.

    gRPC binds with SO_REUSEPORT, so a second server could share the port silently;
    a bind without it tells, before anything (the data dir included) is set up.
    SO_REUSEADDR lets the probe past the TIME_WAIT connections of a server that
    just stopped on this port, while a listener still refuses it.
    """
    if port == 0:
        return False
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            return error.errno == errno.EADDRINUSE
    return False


@app.command(cls=CliCommand)
def serve(
    host: Annotated[str, typer.Option(metavar="ADDRESS", help="Address to listen on.")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option(metavar="PORT", help="Port to listen on.")] = 50051,
    data_dir: Annotated[
        Path | None,
        typer.Option(metavar="DIR", help="State directory [SANDBOX_DATA_DIR, ~/.sandbox-sdk]."),
    ] = None,
    config: Annotated[Path | None, typer.Option(metavar="FILE", help="Server YAML config.")] = None,
) -> None:
    """Start a local gateway and orchestrator in one process.

    It also serves on <data_dir>/gateway.sock, and writes the local operator key to
    <data_dir>/admin.key; the SDK sends that key by itself only over that socket.
    """
    if _port_in_use(host, port):
        print_error(f"port {port} on {host} is in use already; choose another with --port")
        raise typer.Exit(GENERIC_ERROR)
    with reported_errors():
        _embedded("sandbox-sdk serve").serve_embedded(
            host=host, port=port, data_dir=data_dir, config_path=config
        )


def _server_main(function: str, command: str) -> None:
    def run(
        config: Annotated[
            Path | None, typer.Option(metavar="FILE", help="YAML config file.")
        ] = None,
    ) -> None:
        with reported_errors():
            getattr(_embedded(command), function)(config)

    typer.run(run)


def gateway_main() -> None:
    """Entry point of ``sandbox-gateway``; ``sandbox-gateway migrate`` only migrates its store."""
    if sys.argv[1:2] == ["migrate"]:
        del sys.argv[1]
        _server_main("migrate_gateway", "sandbox-gateway migrate")
        return
    _server_main("serve_gateway", "sandbox-gateway")


def orchestrator_main() -> None:
    """Entry point of ``sandbox-orchestrator``; ``sandbox-orchestrator drain`` drains it."""
    if sys.argv[1:2] == ["drain"]:
        del sys.argv[1]
        _server_main("drain_orchestrator", "sandbox-orchestrator drain")
        return
    _server_main("serve_orchestrator", "sandbox-orchestrator")


# -- models --------------------------------------------------------------------------------


@app.command(cls=CliCommand)
def models(ctx: typer.Context, as_json: AsJson = False) -> None:
    """List the models experiments can use."""
    with reported_errors():
        found = client_of(ctx).list_models()
        if as_json:
            print_json(found)
            return
        table = Table("name", "aliases", "provider", "context", "description")
        for model in found:
            table.add_row(
                model.name,
                ", ".join(model.aliases),
                model.provider,
                str(model.context_length),
                model.description,
            )
        out.print(table)


def main() -> None:
    """Entry point of ``sandbox-sdk``."""
    try:
        with interrupts_outside_grpc():
            app()
    except KeyboardInterrupt:
        err.print("interrupted")
        raise SystemExit(INTERRUPTED) from None
