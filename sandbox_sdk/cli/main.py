"""The ``sandbox-sdk`` command line, and the ``sandbox-gateway`` / ``sandbox-orchestrator``
entry points. Exit codes: see :mod:`sandbox_sdk.cli.exit_codes`."""

from __future__ import annotations

import contextlib
import importlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Column, Table

from sandbox_sdk.cli.exit_codes import INTERRUPTED, exit_code_for
from sandbox_sdk.cli.extras import require_extra
from sandbox_sdk.client import Experiment, SandboxClient
from sandbox_sdk.errors import SandboxError
from sandbox_sdk.models.experiment import LogLine, MetricSample, OutputDelta, StateChange
from sandbox_sdk.monitoring.metric_views import metrics_table, plot_metrics

app = typer.Typer(help="Run LLM experiments in isolated sandboxes.", no_args_is_help=True)
env_app = typer.Typer(help="Create, list, delete environments and run commands in them.")
keys_app = typer.Typer(
    help="Manage API keys: admin keys for their own tenant, operator keys for any tenant."
)
app.add_typer(env_app, name="env")
app.add_typer(keys_app, name="keys")

out = Console()
err = Console(stderr=True)

Labels = Annotated[list[str] | None, typer.Option("--label", "-l", help="KEY=VALUE, repeatable.")]


@contextlib.contextmanager
def _reported_errors() -> Iterator[None]:
    """Prints SDK errors without a traceback and exits with their code."""
    try:
        yield
    except SandboxError as error:
        err.print("[red]error:[/red]", escape(str(error)), highlight=False, soft_wrap=True)
        for note in getattr(error, "__notes__", ()):
            err.print(f"  {escape(note)}", highlight=False, soft_wrap=True)
        raise typer.Exit(exit_code_for(error)) from None
    except KeyboardInterrupt:
        err.print("interrupted")
        raise typer.Exit(INTERRUPTED) from None


def _pairs(items: list[str] | None, option: str) -> dict[str, str]:
    result = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint=option)
        result[key] = value
    return result


def _client(ctx: typer.Context) -> SandboxClient:
    options: dict[str, Any] = ctx.obj or {}
    client = options.get("client")
    if client is None:
        client = SandboxClient(
            options.get("target"),
            api_key=options.get("api_key"),
            timeout=options.get("timeout"),
            config_path=options.get("config"),
        )
        options["client"] = client
        ctx.call_on_close(client.close)
    return client


@app.callback()
def _global_options(
    ctx: typer.Context,
    target: Annotated[
        str | None,
        typer.Option(
            help="Gateway host:port or unix:PATH [SANDBOX_TARGET; default: the local"
            " server's socket <data_dir>/gateway.sock when it exists]."
        ),
    ] = None,
    api_key: Annotated[str | None, typer.Option(help="API key [SANDBOX_API_KEY].")] = None,
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="Client YAML file [SANDBOX_CONFIG].")
    ] = None,
    timeout: Annotated[float | None, typer.Option(help="Per-call timeout, seconds.")] = None,
) -> None:
    """Global options apply to every command."""
    ctx.obj = {"target": target, "api_key": api_key, "config": config, "timeout": timeout}


# -- servers -------------------------------------------------------------------------------


def _embedded(command: str) -> Any:
    # The servers are imported only here, so the client CLI works without their deps.
    require_extra("server", command)
    return importlib.import_module("sandbox_sdk.server.embedded")


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 50051,
    data_dir: Annotated[
        Path | None, typer.Option(help="State directory [SANDBOX_DATA_DIR, ~/.sandbox-sdk].")
    ] = None,
    config: Annotated[Path | None, typer.Option(help="Server YAML config.")] = None,
) -> None:
    """Start a local gateway and orchestrator in one process.

    It also serves on <data_dir>/gateway.sock, and writes the local operator key to
    <data_dir>/admin.key; the SDK sends that key by itself only over that socket.
    """
    with _reported_errors():
        _embedded("sandbox-sdk serve").serve_embedded(
            host=host, port=port, data_dir=data_dir, config_path=config
        )


def _server_main(function: str, command: str) -> None:
    def run(config: Annotated[Path | None, typer.Option(help="YAML config file.")] = None) -> None:
        with _reported_errors():
            getattr(_embedded(command), function)(config)

    typer.run(run)


def gateway_main() -> None:
    """Entry point of ``sandbox-gateway``."""
    _server_main("serve_gateway", "sandbox-gateway")


def orchestrator_main() -> None:
    """Entry point of ``sandbox-orchestrator``."""
    _server_main("serve_orchestrator", "sandbox-orchestrator")


# -- environments --------------------------------------------------------------------------


@env_app.command("create")
def env_create(
    ctx: typer.Context,
    *,
    cpu: Annotated[float | None, typer.Option(help="CPU cores, e.g. 0.5.")] = None,
    memory: Annotated[str | None, typer.Option(help="Memory, e.g. 512Mi.")] = None,
    disk: Annotated[str | None, typer.Option(help="Disk quota, e.g. 1Gi.")] = None,
    pids: Annotated[int | None, typer.Option(help="Max processes.")] = None,
    ttl: Annotated[str | None, typer.Option(help="Lifetime, e.g. 30m.")] = None,
    idle_timeout: Annotated[str | None, typer.Option(help="Idle limit, e.g. 10m.")] = None,
    network: Annotated[
        str | None, typer.Option(help="none, egress, or host (operator's permission).")
    ] = None,
    egress_allow: Annotated[
        list[str] | None, typer.Option(help="With egress: only these CIDR blocks.")
    ] = None,
    egress_deny: Annotated[
        list[str] | None, typer.Option(help="With egress: never these CIDR blocks.")
    ] = None,
    label: Labels = None,
    env: Annotated[list[str] | None, typer.Option("--env", "-e", help="VAR=VALUE.")] = None,
    queue: Annotated[
        bool, typer.Option(help="When the orchestrator is full, wait in its queue.")
    ] = False,
) -> None:
    """Create an environment and print its id."""
    with _reported_errors():
        sandbox = _client(ctx).create_environment(
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
            labels=_pairs(label, "--label"),
            env=_pairs(env, "--env"),
        )
        out.print(sandbox.id, highlight=False)


@env_app.command("ls")
def env_ls(
    ctx: typer.Context,
    label: Labels = None,
    all_: Annotated[bool, typer.Option("--all", "-a", help="Include terminated.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object a line.")] = False,
) -> None:
    """List environments."""
    with _reported_errors():
        sandboxes = _client(ctx).list_environments(
            labels=_pairs(label, "--label"), show_terminated=all_
        )
        table = Table("state", "cpu", "memory", "labels", "created")
        table.columns.insert(0, Column("id", no_wrap=True))
        for sandbox in sandboxes:
            info = sandbox.info
            if as_json:
                row = {"id": info.id, "state": info.state.value, "labels": info.labels}
                sys.stdout.write(json.dumps(row) + "\n")
                continue
            table.add_row(
                info.id,
                info.state.value,
                f"{info.limits.cpu_cores:g}",
                str(info.limits.memory_bytes),
                ",".join(f"{k}={v}" for k, v in info.labels.items()),
                info.create_time.isoformat(timespec="seconds") if info.create_time else "",
            )
        if not as_json:
            out.print(table)


@env_app.command("rm")
def env_rm(
    ctx: typer.Context,
    environment_ids: Annotated[list[str], typer.Argument(help="Environment ids.")],
) -> None:
    """Delete environments."""
    with _reported_errors():
        client = _client(ctx)
        for environment_id in environment_ids:
            client.get_environment(environment_id).delete()
            out.print(f"deleted {environment_id}", highlight=False)


@env_app.command("exec", context_settings={"allow_interspersed_args": False})
def env_exec(
    ctx: typer.Context,
    environment_id: Annotated[str, typer.Argument(help="Environment id.")],
    command: Annotated[list[str], typer.Argument(help="Command and arguments (after --).")],
    timeout: Annotated[str | None, typer.Option(help="Wall-clock limit, e.g. 30s.")] = None,
    check: Annotated[bool, typer.Option(help="Exit 16 instead of the command's status.")] = False,
) -> None:
    """Run a command (options before the id: env exec [--check] ID -- CMD...)."""
    with _reported_errors():
        argv = command[1:] if command[:1] == ["--"] else command
        sandbox = _client(ctx).get_environment(environment_id)
        stream = sandbox.exec_stream(argv, timeout=timeout)
        with stream:
            for chunk in stream:
                target = sys.stdout if chunk.stream == "stdout" else sys.stderr
                target.write(chunk.text)
                target.flush()
            result = stream.result()
        if check:
            result.check()
        raise typer.Exit(result.exit_code if result.exit_code >= 0 else 128 + result.signal)


# -- experiments ---------------------------------------------------------------------------


def _read_inputs(path: Path) -> list[dict[str, str]]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


@app.command()
def run(
    ctx: typer.Context,
    *,
    model: Annotated[str, typer.Option(help="Model name or alias (see `models`).")],
    prompt: Annotated[list[str] | None, typer.Option("--prompt", "-p", help="Repeatable.")] = None,
    inputs: Annotated[
        Path | None, typer.Option(help="Local JSONL of {prompt, expected} objects.")
    ] = None,
    dataset: Annotated[str | None, typer.Option(help="JSONL path inside the workspace.")] = None,
    env_id: Annotated[str | None, typer.Option("--env", help="Run in this environment.")] = None,
    param: Annotated[
        list[str] | None, typer.Option(help="NAME=JSON, e.g. temperature=0.7.")
    ] = None,
    scorer: Annotated[list[str] | None, typer.Option(help="exact_match, contains...")] = None,
    repeats: Annotated[int | None, typer.Option(help="Runs per input.")] = None,
    system: Annotated[str | None, typer.Option(help="System prompt.")] = None,
    label: Labels = None,
    follow: Annotated[bool, typer.Option(help="Follow events live until it ends.")] = True,
    keep_env: Annotated[bool, typer.Option(help="Keep a created environment.")] = False,
) -> None:
    """Run an experiment and follow it live; prints its results when it ends."""
    parameters = {key: _json_value(value) for key, value in _pairs(param, "--param").items()}
    with _reported_errors():
        client = _client(ctx)
        owned = env_id is None
        sandbox = client.create_environment() if owned else client.get_environment(str(env_id))
        try:
            experiment = sandbox.run_experiment(
                model=model,
                prompts=prompt or None,
                inputs=_read_inputs(inputs) if inputs else None,
                dataset_path=dataset,
                parameters=parameters,
                scorers=scorer or None,
                repeats=repeats,
                system_prompt=system,
                labels=_pairs(label, "--label"),
            )
            err.print(f"experiment {experiment.id} in {sandbox.id}", highlight=False)
            if not follow:
                out.print(experiment.id, highlight=False)
                return
            _follow_live(experiment)
            results = experiment.get_results()
            out.print(results.samples_table())
            out.print(results.to_table())
        finally:
            if owned and not keep_env:
                sandbox.delete()


def _json_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _follow_live(experiment: Experiment) -> None:
    total = experiment.info.total_samples or None
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=err) as progress:
        task = progress.add_task(experiment.info.state.value, total=total)
        outputs: set[tuple[int, int]] = set()
        with experiment.events() as events:
            for event in events:
                payload = event.payload
                if isinstance(payload, StateChange):
                    progress.update(task, description=payload.state.value)
                    if payload.state.is_final:
                        break
                elif isinstance(payload, OutputDelta):
                    outputs.add((payload.input_index, payload.repeat))
                elif isinstance(payload, MetricSample) and payload.name == "latency_seconds":
                    progress.update(task, completed=len(outputs))
                elif isinstance(payload, LogLine):
                    progress.console.print(f"[dim]{payload.level.value}[/dim] {payload.message}")
        progress.update(task, completed=total or len(outputs))


@app.command()
def logs(
    ctx: typer.Context,
    experiment_id: Annotated[str, typer.Argument(help="Experiment id.")],
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Wait for new lines.")] = False,
) -> None:
    """Print an experiment's log lines and state changes."""
    with _reported_errors():
        experiment = _client(ctx).get_experiment(experiment_id)
        with experiment.events(follow=follow) as events:
            for event in events:
                stamp = event.time.isoformat(timespec="seconds") if event.time else ""
                if isinstance(event.payload, LogLine):
                    out.print(
                        f"{stamp} {event.payload.level.value:<7} {event.payload.message}",
                        highlight=False,
                    )
                elif isinstance(event.payload, StateChange):
                    out.print(f"{stamp} STATE   {event.payload.state.value}", highlight=False)


@app.command()
def results(
    ctx: typer.Context,
    experiment_id: Annotated[str, typer.Argument(help="Experiment id.")],
    *,
    as_json: Annotated[bool, typer.Option("--json", help="JSONL, one sample a line.")] = False,
    as_csv: Annotated[bool, typer.Option("--csv", help="CSV, one sample a row.")] = False,
    samples: Annotated[bool, typer.Option(help="Also show each sample.")] = False,
    wait: Annotated[float | None, typer.Option(help="Seconds to wait for it to end.")] = None,
) -> None:
    """Print an experiment's results (waits for it to finish)."""
    with _reported_errors():
        found = _client(ctx).get_experiment(experiment_id).get_results(wait)
        if as_json:
            for sample in found.samples:
                sys.stdout.write(
                    json.dumps({"experiment_id": experiment_id, **sample.to_dict()}) + "\n"
                )
        elif as_csv:
            found.write_csv(sys.stdout)
        else:
            if samples:
                out.print(found.samples_table())
            out.print(found.to_table())


@app.command()
def compare(
    ctx: typer.Context,
    experiment_a: Annotated[str, typer.Argument(help="Baseline experiment id.")],
    experiment_b: Annotated[str, typer.Argument(help="Experiment id to compare.")],
) -> None:
    """Compare two experiments' metrics and say which differences are beyond noise."""
    with _reported_errors():
        out.print(_client(ctx).compare_experiments(experiment_a, experiment_b).to_table())


@app.command()
def metrics(
    ctx: typer.Context,
    experiment_id: Annotated[str, typer.Argument(help="Experiment id.")],
    plot: Annotated[Path | None, typer.Option(help="Save a chart here (needs matplotlib).")] = None,
) -> None:
    """Summarise an experiment's metric stream (table with sparklines, or a plot)."""
    with _reported_errors():
        samples = list(_client(ctx).get_experiment(experiment_id).stream_metrics(follow=False))
        out.print(metrics_table(samples, title=f"{experiment_id} metrics"))
        if plot is not None:
            try:
                out.print(f"saved {plot_metrics(samples, plot)}", highlight=False)
            except ImportError as error:
                err.print(f"[yellow]{error}[/yellow]")
                raise typer.Exit(1) from None


@app.command()
def models(ctx: typer.Context) -> None:
    """List the models experiments can use."""
    with _reported_errors():
        table = Table("name", "aliases", "provider", "context", "description")
        for model in _client(ctx).list_models():
            table.add_row(
                model.name,
                ", ".join(model.aliases),
                model.provider,
                str(model.context_length),
                model.description,
            )
        out.print(table)


# -- API keys ------------------------------------------------------------------------------


@keys_app.command("create")
def keys_create(
    ctx: typer.Context,
    tenant: Annotated[
        str, typer.Option(help="Tenant of the key; default: your key's tenant.")
    ] = "",
    scope: Annotated[
        list[str] | None, typer.Option(help="read, write, admin or operator; repeatable.")
    ] = None,
    name: Annotated[str, typer.Option(help="Display name.")] = "",
    ttl: Annotated[str | None, typer.Option(help="Lifetime, e.g. 30d.")] = None,
) -> None:
    """Create an API key and print its secret (shown only once)."""
    with _reported_errors():
        created = _client(ctx).create_api_key(
            tenant=tenant, scopes=scope or ["read", "write"], display_name=name, ttl=ttl
        )
        err.print(f"key {created.key.id} for tenant {created.key.tenant}; store the secret now:")
        out.print(created.secret, highlight=False)


@keys_app.command("ls")
def keys_ls(
    ctx: typer.Context,
    tenant: Annotated[
        str, typer.Option(help="Only this tenant (an admin key sees only its own).")
    ] = "",
    all_: Annotated[bool, typer.Option("--all", "-a", help="Include revoked.")] = False,
) -> None:
    """List API keys (no secrets)."""
    with _reported_errors():
        table = Table("tenant", "scopes", "name", "created", "status")
        table.columns.insert(0, Column("id", no_wrap=True))
        for key in _client(ctx).list_api_keys(tenant=tenant, show_revoked=all_):
            table.add_row(
                key.id,
                key.tenant,
                ",".join(scope.value.lower() for scope in key.scopes),
                key.display_name,
                key.create_time.isoformat(timespec="seconds") if key.create_time else "",
                "active" if key.active else "revoked/expired",
            )
        out.print(table)


@keys_app.command("revoke")
def keys_revoke(
    ctx: typer.Context, api_key_id: Annotated[str, typer.Argument(help="Key id.")]
) -> None:
    """Revoke an API key at once."""
    with _reported_errors():
        key = _client(ctx).revoke_api_key(api_key_id)
        out.print(f"revoked {key.id}", highlight=False)


def main() -> None:
    """Entry point of ``sandbox-sdk``."""
    app()
