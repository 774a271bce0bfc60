"""``sandbox-sdk power``: how many inputs an experiment needs to detect a difference."""

from __future__ import annotations

import importlib
from typing import Annotated, Any

import typer

from sandbox_sdk.cli.exit_codes import USAGE_ERROR
from sandbox_sdk.cli.json_output import print_json
from sandbox_sdk.cli.session import client_of, out, print_error, reported_errors


def power(
    ctx: typer.Context,
    *,
    difference: Annotated[
        float, typer.Option(metavar="D", help="The smallest difference of means to detect.")
    ],
    baseline: Annotated[
        str | None,
        typer.Option(metavar="ID", help="An experiment whose metric gives the rate or spread."),
    ] = None,
    metric: Annotated[
        str | None, typer.Option(metavar="NAME", help="The baseline's metric (with --baseline).")
    ] = None,
    rate: Annotated[
        float | None,
        typer.Option(
            metavar="P", min=0.0, max=1.0, help="A 0/1 metric's rate, without a baseline."
        ),
    ] = None,
    stddev: Annotated[
        float | None,
        typer.Option(
            metavar="S", min=0.0, help="A continuous metric's spread, without a baseline."
        ),
    ] = None,
    alpha: Annotated[
        float, typer.Option(metavar="A", min=0.0, max=1.0, help="Significance level.")
    ] = 0.05,
    power_: Annotated[
        float,
        typer.Option("--power", metavar="P", min=0.0, max=1.0, help="Chance to detect it."),
    ] = 0.8,
    repeats: Annotated[int, typer.Option(metavar="N", min=1, help="Runs per input.")] = 1,
    as_json: Annotated[bool, typer.Option("--json", help="Print the plan as JSON.")] = False,
) -> None:
    """Plan an experiment: the inputs needed to detect a difference D at --alpha and --power.

    Give --baseline ID --metric NAME (a past experiment), or --rate P for a 0/1 metric,
    or --stddev S for a continuous one.
    """
    if (baseline is None) == (rate is None and stddev is None):
        print_error("give either --baseline ID --metric NAME, or --rate P or --stddev S")
        raise typer.Exit(USAGE_ERROR)
    if baseline is not None and metric is None:
        print_error("--baseline needs --metric NAME: which of its metrics to plan for")
        raise typer.Exit(USAGE_ERROR)
    planner: Any = importlib.import_module("sandbox_sdk.analysis.power")
    with reported_errors():
        baseline_results = client_of(ctx).get_results(baseline) if baseline else None
        try:
            plan = planner.sample_size(
                difference=difference,
                baseline=baseline_results,
                metric=metric,
                rate=rate,
                stddev=stddev,
                alpha=alpha,
                power=power_,
                repeats=repeats,
            )
        except (ValueError, KeyError) as error:
            print_error(str(error))
            raise typer.Exit(USAGE_ERROR) from None
        except ImportError as error:
            print_error(str(error))
            raise typer.Exit(1) from None
        if as_json:
            print_json(plan)
        else:
            out.print(plan.describe(), highlight=False)
