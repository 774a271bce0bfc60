"""What every command shares: the consoles, the client, SDK errors reported once without a
traceback, and ``KEY=VALUE`` options."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from sandbox_sdk.cli.exit_codes import INTERRUPTED, exit_code_for
from sandbox_sdk.cli.hints import for_the_command_line
from sandbox_sdk.client import SandboxClient
from sandbox_sdk.errors import SandboxError

out = Console()
err = Console(stderr=True)

Labels = Annotated[
    list[str] | None,
    typer.Option("--label", "-l", metavar="KEY=VALUE", help="A label; repeatable."),
]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def print_error(message: str) -> None:
    """One ``error:`` line on stderr, in the CLI's words."""
    err.print(
        "[red]error:[/red]",
        escape(for_the_command_line(message)),
        highlight=False,
        soft_wrap=True,
    )


def print_fields(rows: Iterable[tuple[str, object]]) -> None:
    """One resource as ``name  value`` lines; ``None`` prints as nothing."""
    table = Table.grid(padding=(0, 2))
    for name, value in rows:
        table.add_row(name, "" if value is None else str(value))
    out.print(table, highlight=False)


def joined_labels(labels: Mapping[str, str]) -> str:
    """Labels as the ``k=v,k=v`` the --label options take."""
    return ",".join(f"{key}={value}" for key, value in labels.items())


def warn(message: str) -> None:
    """One ``warning:`` line on stderr."""
    err.print("[yellow]warning:[/yellow]", escape(message), highlight=False, soft_wrap=True)


def _once(error: SandboxError) -> str:
    """The error's text without detail lines that repeat its first line (a field violation
    often is the message); the lines of a multi-line message stay."""
    first, *details = str(error).splitlines()
    return "\n".join([first, *(line for line in details if line.strip() not in first)])


@contextlib.contextmanager
def reported_errors(*, exit_code: int | None = None) -> Iterator[None]:
    """Prints an SDK error once, without a traceback, and exits with its code (or
    ``exit_code`` when given); Ctrl-C exits 130 with one line."""
    try:
        yield
    except SandboxError as error:
        print_error(_once(error))
        for note in getattr(error, "__notes__", ()):
            err.print(f"  {escape(note)}", highlight=False, soft_wrap=True)
        raise typer.Exit(exit_code_for(error) if exit_code is None else exit_code) from None
    except KeyboardInterrupt:
        err.print("interrupted")
        raise typer.Exit(INTERRUPTED) from None


def pairs(items: list[str] | None, option: str) -> dict[str, str]:
    """``KEY=VALUE`` options as a dict; a usage error names ``option`` otherwise."""
    result = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint=option)
        result[key] = value
    return result


def client_of(ctx: typer.Context) -> SandboxClient:
    """The client the global options describe, made once per invocation."""
    options: dict[str, Any] = ctx.find_root().obj or {}
    client = options.get("client")
    if client is None:
        client = SandboxClient(
            options.get("target"),
            api_key=options.get("api_key"),
            timeout=options.get("timeout"),
            config_path=options.get("config"),
        )
        options["client"] = client
        ctx.find_root().call_on_close(client.close)
    return client
