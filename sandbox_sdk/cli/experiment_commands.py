"""Experiment commands: ``run``, ``logs``, ``results``, ``compare``, ``metrics`` and
``experiments ls|get|cancel``."""

from __future__ import annotations

import difflib
import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Column, Table

from sandbox_sdk.cli.command_classes import CliCommand, CliGroup
from sandbox_sdk.cli.exit_codes import GENERIC_ERROR, INTERRUPTED
from sandbox_sdk.cli.interrupts import interrupts_held
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
    warn,
)
from sandbox_sdk.client import Experiment, Sandbox, SandboxClient
from sandbox_sdk.models.experiment import (
    ExperimentInfo,
    LogLine,
    MetricSample,
    OutputDelta,
    StateChange,
)
from sandbox_sdk.models.results import ExperimentResults
from sandbox_sdk.monitoring.metric_views import metrics_table, plot_metrics

experiments_app = typer.Typer(
    cls=CliGroup, help="List, show and cancel experiments.", no_args_is_help=True
)

TYPED_PARAMETERS = ("temperature", "top_p", "max_tokens", "seed", "stop")
"""``--param`` names the SDK types; any other goes to the provider as given."""


def _read_inputs(path: Path) -> list[dict[str, str]]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def _json_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _parameters(param: list[str] | None) -> dict[str, Any]:
    parameters = {key: _json_value(value) for key, value in pairs(param, "--param").items()}
    for name in parameters:
        close = difflib.get_close_matches(name, TYPED_PARAMETERS, n=1)
        if name not in TYPED_PARAMETERS and close:
            warn(
                f"--param {name} is not a parameter sandbox-sdk knows (did you mean"
                f" {close[0]}?); it goes to the model's provider as given"
            )
    return parameters


def _scorer(value: str) -> str | dict[str, Any]:
    if not value.lstrip().startswith("{"):
        return value
    try:
        parsed: dict[str, Any] = json.loads(value)
    except json.JSONDecodeError as error:
        raise typer.BadParameter(f"not valid JSON: {error}", param_hint="--scorer") from None
    return parsed


def _warn_scorer_failures(results: ExperimentResults) -> None:
    failures = {name: count for name, count in results.score_failures().items() if count}
    if failures:
        listed = ", ".join(f"{name} on {count}" for name, count in sorted(failures.items()))
        warn(
            f"experiment {results.experiment.id}: scorers failed ({listed} samples); those"
            f" samples have no score: see `sandbox-sdk results {results.experiment.id}"
            " --samples`"
        )


def _save_plot(results_or_comparison: Any, path: Path) -> None:
    try:
        saved = results_or_comparison.plot(path)
    except ImportError as error:
        print_error(str(error))
        raise typer.Exit(GENERIC_ERROR) from None
    err.print(f"saved {saved}", highlight=False)


def _cancel_after_interrupt(experiment: Experiment) -> None:
    """Ctrl-C while following: cancel what this command started, say so, exit 130."""
    err.print(f"interrupted: cancelling experiment {experiment.id}", highlight=False)
    info = experiment.cancel()
    err.print(f"experiment {experiment.id} {info.state.value}", highlight=False)
    raise typer.Exit(INTERRUPTED)


def run(
    ctx: typer.Context,
    *,
    model: Annotated[str, typer.Option(metavar="NAME", help="Model name or alias (see `models`).")],
    prompt: Annotated[
        list[str] | None,
        typer.Option("--prompt", "-p", metavar="TEXT", help="A prompt; repeatable."),
    ] = None,
    inputs: Annotated[
        Path | None,
        typer.Option(metavar="FILE", help="Local JSONL of {prompt, expected} objects."),
    ] = None,
    dataset: Annotated[
        str | None, typer.Option(metavar="PATH", help="JSONL path inside the workspace.")
    ] = None,
    env_id: Annotated[
        str | None, typer.Option("--env", metavar="ID", help="Run in this environment.")
    ] = None,
    param: Annotated[
        list[str] | None,
        typer.Option(metavar="NAME=JSON", help="A model parameter, e.g. temperature=0.7."),
    ] = None,
    scorer: Annotated[
        list[str] | None,
        typer.Option(
            metavar="SCORER",
            help='A name (exact_match, contains...) or JSON: {"regex": "..."} or'
            ' {"command": ["argv", ...]}; repeatable.',
        ),
    ] = None,
    repeats: Annotated[
        int | None, typer.Option(metavar="N", min=1, help="Runs per input (1 or more).")
    ] = None,
    system: Annotated[str | None, typer.Option(metavar="TEXT", help="System prompt.")] = None,
    experiment_timeout: Annotated[
        str | None,
        typer.Option(metavar="DURATION", help="Limit on the whole experiment, e.g. 10m."),
    ] = None,
    label: Labels = None,
    fail_on_scorer_error: Annotated[
        bool, typer.Option(help="End the experiment FAILED when a scorer fails on any sample.")
    ] = False,
    follow: Annotated[bool, typer.Option(help="Follow events live until it ends.")] = True,
    keep_env: Annotated[bool, typer.Option(help="Keep a created environment.")] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the results as JSON when it ends.")
    ] = False,
) -> None:
    """Run an experiment and follow it live; prints its results when it ends.

    Ctrl-C while it runs cancels the experiment and exits 130.
    """
    parameters = _parameters(param)
    with reported_errors():
        client = client_of(ctx)
        owned = env_id is None
        sandbox: Sandbox | None = None
        try:
            with interrupts_held():
                sandbox = (
                    client.create_environment() if owned else client.get_environment(str(env_id))
                )
            start = functools.partial(
                sandbox.run_experiment,
                model=model,
                prompts=prompt or None,
                inputs=_read_inputs(inputs) if inputs else None,
                dataset_path=dataset,
                parameters=parameters,
                scorers=[_scorer(value) for value in scorer] if scorer else None,
                repeats=repeats,
                system_prompt=system,
                timeout=experiment_timeout,
                labels=pairs(label, "--label"),
                fail_on_scorer_error=fail_on_scorer_error,
            )
            _start_and_follow(start, sandbox.id, follow=follow, as_json=as_json)
        finally:
            if owned and not keep_env and sandbox is not None:
                sandbox.delete()


def _start_and_follow(
    start: Callable[[], Experiment], sandbox_id: str, *, follow: bool, as_json: bool
) -> None:
    """Starts the experiment and, with ``follow``, follows it and prints its results.

    A Ctrl-C from the moment the experiment is asked for cancels it (once the
    service has answered with it) and exits 130.
    """
    experiment: Experiment | None = None
    try:
        with interrupts_held():
            experiment = start()
        err.print(f"experiment {experiment.id} in {sandbox_id}", highlight=False)
        if not follow:
            out.print(experiment.id, highlight=False)
            return
        _follow_live(experiment)
        found = experiment.get_results()
    except KeyboardInterrupt:
        if experiment is None:
            raise
        _cancel_after_interrupt(experiment)
    _print_results(found, as_json=as_json, samples=True)


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


def logs(
    ctx: typer.Context,
    experiment_id: Annotated[str, typer.Argument(metavar="ID", help="Experiment id.")],
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Wait for new lines.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON event a line.")] = False,
) -> None:
    """Print an experiment's log lines and state changes."""
    with reported_errors():
        experiment = client_of(ctx).get_experiment(experiment_id)
        with experiment.events(follow=follow) as events:
            for event in events:
                payload = event.payload
                if not isinstance(payload, LogLine | StateChange):
                    continue
                if as_json:
                    record = {"time": event.time, "kind": event.kind, **jsonable(payload)}
                    print_json(record, one_line=True)
                    continue
                stamp = event.time.isoformat(timespec="seconds") if event.time else ""
                if isinstance(payload, LogLine):
                    line = f"{stamp} {payload.level.value:<7} {payload.message}"
                else:
                    line = f"{stamp} STATE   {payload.state.value}"
                out.print(line, highlight=False)


def results_document(found: ExperimentResults) -> dict[str, Any]:
    """``results --json``: the experiment, its aggregates with their intervals, score
    failures by metric, total usage and every sample."""
    return {
        "experiment": jsonable(found.experiment),
        "metrics": {name: jsonable(metric) for name, metric in found.metrics.items()},
        "score_failures": found.score_failures(),
        "total_usage": jsonable(found.total_usage),
        "samples": [jsonable(sample) for sample in found.samples],
    }


def _print_results(found: ExperimentResults, *, as_json: bool, samples: bool) -> None:
    _warn_scorer_failures(found)
    if as_json:
        print_json(results_document(found))
        return
    if samples:
        out.print(found.samples_table())
    out.print(found.to_table())


def results(
    ctx: typer.Context,
    experiment_id: Annotated[str, typer.Argument(metavar="ID", help="Experiment id.")],
    *,
    as_json: Annotated[
        bool,
        typer.Option("--json", help="One JSON document: metrics with intervals, samples."),
    ] = False,
    as_jsonl: Annotated[
        bool, typer.Option("--jsonl", help="JSON Lines, one sample a line.")
    ] = False,
    as_csv: Annotated[bool, typer.Option("--csv", help="CSV, one sample a row.")] = False,
    samples: Annotated[bool, typer.Option(help="Also show each sample.")] = False,
    wait: Annotated[
        float | None, typer.Option(metavar="SECONDS", help="How long to wait for it to end.")
    ] = None,
    partial: Annotated[
        bool, typer.Option(help="Show the results of a FAILED, TIMED_OUT or CANCELLED one too.")
    ] = False,
    plot: Annotated[
        Path | None,
        typer.Option(metavar="FILE", help="Save a chart of the metrics with error bars (png)."),
    ] = None,
) -> None:
    """Print an experiment's results (waits for it to finish).

    Metrics show their mean and interval (n/a with fewer than two inputs); a warning
    on stderr counts the samples on which a scorer failed.
    """
    with reported_errors():
        experiment = client_of(ctx).get_experiment(experiment_id)
        found = experiment.get_results(wait, raise_on_failure=not partial)
        if as_jsonl:
            _warn_scorer_failures(found)
            for sample in found.samples:
                record = {"experiment_id": experiment_id, **jsonable(sample)}
                print_json(record, one_line=True)
        elif as_csv:
            _warn_scorer_failures(found)
            found.write_csv(out.file)
        else:
            _print_results(found, as_json=as_json, samples=samples)
        if plot is not None:
            _save_plot(found, plot)


def compare(
    ctx: typer.Context,
    experiment_a: Annotated[str, typer.Argument(metavar="A", help="Baseline experiment id.")],
    experiment_b: Annotated[
        str, typer.Argument(metavar="B", help="Experiment id to compare with A.")
    ],
    as_json: AsJson = False,
    plot: Annotated[
        Path | None,
        typer.Option(metavar="FILE", help="Save a chart of the differences (png)."),
    ] = None,
) -> None:
    """Compare two experiments' metrics and say which differences are beyond noise."""
    with reported_errors():
        client = client_of(ctx)
        a, b = client.get_results(experiment_a), client.get_results(experiment_b)
        _warn_scorer_failures(a)
        _warn_scorer_failures(b)
        comparison = client.compare_experiments(a, b)
        if as_json:
            print_json(comparison)
        else:
            out.print(comparison.to_table())
        if plot is not None:
            _save_plot(comparison, plot)


def metrics(
    ctx: typer.Context,
    experiment_id: Annotated[str, typer.Argument(metavar="ID", help="Experiment id.")],
    plot: Annotated[
        Path | None, typer.Option(metavar="FILE", help="Save a chart here (needs matplotlib).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON sample a line.")] = False,
) -> None:
    """Summarise an experiment's metric stream (table with sparklines, or a plot)."""
    with reported_errors():
        samples = list(client_of(ctx).get_experiment(experiment_id).stream_metrics(follow=False))
        if as_json:
            for sample in samples:
                print_json(sample, one_line=True)
        else:
            out.print(metrics_table(samples, title=f"{experiment_id} metrics"))
        if plot is not None:
            try:
                err.print(f"saved {plot_metrics(samples, plot)}", highlight=False)
            except ImportError as error:
                print_error(str(error))
                raise typer.Exit(GENERIC_ERROR) from None


def _experiment_row(info: ExperimentInfo) -> list[str]:
    return [
        info.id,
        info.state.value,
        info.environment_id,
        info.model,
        f"{info.completed_samples}/{info.total_samples}",
        info.create_time.isoformat(timespec="seconds") if info.create_time else "",
        info.failure.reason if info.failure else "",
    ]


@experiments_app.command("ls", cls=CliCommand)
def experiments_ls(
    ctx: typer.Context,
    *,
    env_id: Annotated[
        str | None, typer.Option("--env", metavar="ID", help="Only this environment's.")
    ] = None,
    state: Annotated[
        list[str] | None,
        typer.Option(metavar="STATE", help="Only these states, e.g. RUNNING; repeatable."),
    ] = None,
    label: Labels = None,
    limit: Annotated[int, typer.Option(metavar="N", min=1, help="At most this many.")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object a line.")] = False,
) -> None:
    """List your experiments, newest first."""
    with reported_errors():
        listed = client_of(ctx).list_experiments(
            labels=pairs(label, "--label"),
            environment_id=env_id or "",
            states=[name.upper() for name in state or []],
        )
        table = Table("state", "environment", "model", "samples", "created", "failure")
        table.columns.insert(0, Column("id", no_wrap=True))
        for count, experiment in enumerate(listed):
            if count >= limit:
                break
            if as_json:
                print_json(experiment.info, one_line=True)
            else:
                table.add_row(*_experiment_row(experiment.info))
        if not as_json:
            out.print(table)


def _print_experiment(info: ExperimentInfo, as_json: bool) -> None:
    if as_json:
        print_json(info)
        return
    headers = ("id", "state", "environment", "model", "samples", "created", "failure")
    rows = list(zip(headers, _experiment_row(info), strict=True))
    if info.failure and info.failure.message:
        rows.append(("message", info.failure.message))
    if info.labels:
        rows.append(("labels", joined_labels(info.labels)))
    print_fields(rows)


@experiments_app.command("get", cls=CliCommand)
def experiments_get(
    ctx: typer.Context,
    experiment_id: Annotated[str, typer.Argument(metavar="ID", help="Experiment id.")],
    as_json: AsJson = False,
) -> None:
    """Show an experiment: state, progress, failure."""
    with reported_errors():
        _print_experiment(client_of(ctx).get_experiment(experiment_id).info, as_json)


@experiments_app.command("cancel", cls=CliCommand)
def experiments_cancel(
    ctx: typer.Context,
    experiment_ids: Annotated[list[str], typer.Argument(metavar="ID", help="Experiment ids.")],
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object a line.")] = False,
) -> None:
    """Cancel experiments that have not finished (finished ones are left as they are)."""
    with reported_errors():
        client: SandboxClient = client_of(ctx)
        for experiment_id in experiment_ids:
            info = client.get_experiment(experiment_id).cancel()
            if as_json:
                print_json(info, one_line=True)
            else:
                out.print(f"{experiment_id} {info.state.value}", highlight=False)
