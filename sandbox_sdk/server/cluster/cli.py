"""``sandbox-cluster``: a local cluster anyone can start (``sandbox-cluster up``, or
``make cluster``)."""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer

from sandbox_sdk.cli.exit_codes import GENERIC_ERROR, INTERRUPTED
from sandbox_sdk.server.cluster.local_cluster import ClusterError, LocalCluster
from sandbox_sdk.server.cluster.postgres import PostgresNotInstalled
from sandbox_sdk.server.cluster.redis import RedisNotInstalled

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="A throwaway cluster on this machine: PostgreSQL, Redis, gateways and orchestrators.",
)


@app.callback()
def _commands() -> None:
    """A throwaway cluster on this machine: PostgreSQL, Redis, gateways and orchestrators."""


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def describe(cluster: LocalCluster) -> str:
    """What a user of the cluster needs: addresses, the SDK target, the key, the stores."""
    lines = ["sandbox-cluster is up", ""]
    lines += [f"  gateway {s.name:<4} {s.address}  (log {s.log_path})" for s in cluster.gateways]
    lines += [
        f"  orchestrator {s.name:<4} {s.address}  (log {s.log_path})" for s in cluster.orchestrators
    ]
    lines += [
        f"  PostgreSQL  {cluster.database_url}",
        f"  Redis       {cluster.redis_url}",
        f"  directory   {cluster.directory}",
        "",
        "Use it from the SDK or the CLI (the key is the bootstrap operator key, tenant"
        " 'default'; make tenants' keys with `sandbox-sdk keys create`):",
        "",
        f"  export SANDBOX_TARGET={cluster.target}",
        f"  export SANDBOX_API_KEY_FILE={cluster.admin_key_path}",
        "",
        f'  SandboxClient("{cluster.target}", api_key=open("{cluster.admin_key_path}")'
        ".read().strip())",
        "",
        "Press Ctrl-C to stop everything and remove the directory.",
    ]
    return "\n".join(lines)


@app.command()
def up(
    gateways: Annotated[int, typer.Option(min=1, help="How many gateways.")] = 2,
    orchestrators: Annotated[int, typer.Option(min=1, help="How many orchestrators.")] = 3,
    directory: Annotated[
        Path | None,
        typer.Option(
            "--dir",
            metavar="DIR",
            help="Where the cluster's temporary directory is made (default: the system's"
            " temp dir). It holds configs, logs and data, and is removed on stop.",
        ),
    ] = None,
    lease_seconds: Annotated[
        float,
        typer.Option(
            min=0.5, help="Orchestrators' registry lease: a dead one is dropped after this long."
        ),
    ] = 10.0,
) -> None:
    """Start PostgreSQL, Redis, the gateways and the orchestrators; stop them all on Ctrl-C."""
    stopping = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if stopping.is_set():
            _say("still stopping; please wait")
            return
        stopping.set()
        if signum == signal.SIGINT and not started.is_set():
            raise KeyboardInterrupt

    started = threading.Event()
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    cluster = LocalCluster(
        gateways, orchestrators, directory=directory, lease_seconds=lease_seconds
    )
    try:
        cluster.start(progress=_say)
    except KeyboardInterrupt:
        _say("interrupted; stopped what had started")
        raise typer.Exit(INTERRUPTED) from None
    except (ClusterError, PostgresNotInstalled, RedisNotInstalled, OSError) as error:
        _say(f"error: {error}")
        raise typer.Exit(GENERIC_ERROR) from None
    started.set()
    print(describe(cluster), flush=True)
    reported: set[str] = set()
    try:
        while not stopping.wait(0.5):
            for server in cluster.servers.values():
                if not server.running and server.name not in reported:
                    reported.add(server.name)
                    _say(f"{server.kind} {server.name} exited; see {server.log_path}")
    finally:
        _say("stopping the cluster")
        cluster.stop()
        _say("stopped; directory removed")


def cluster_main() -> None:
    """Entry point of ``sandbox-cluster``."""
    app(prog_name="sandbox-cluster")
