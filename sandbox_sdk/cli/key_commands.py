"""``sandbox-sdk keys ...``: create, list and revoke API keys."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Column, Table

from sandbox_sdk.cli.command_classes import CliCommand, CliGroup
from sandbox_sdk.cli.json_output import print_json
from sandbox_sdk.cli.session import AsJson, client_of, err, out, reported_errors

keys_app = typer.Typer(
    cls=CliGroup,
    help="Manage API keys: admin keys for their own tenant, operator keys for any tenant.",
    no_args_is_help=True,
)


@keys_app.command("create", cls=CliCommand)
def keys_create(
    ctx: typer.Context,
    *,
    tenant: Annotated[
        str, typer.Option(metavar="NAME", help="Tenant of the key; default: your key's tenant.")
    ] = "",
    scope: Annotated[
        list[str] | None,
        typer.Option(metavar="SCOPE", help="read, write, admin or operator; repeatable."),
    ] = None,
    name: Annotated[str, typer.Option(metavar="TEXT", help="Display name.")] = "",
    ttl: Annotated[str | None, typer.Option(metavar="DURATION", help="Lifetime, e.g. 30d.")] = None,
    as_json: AsJson = False,
) -> None:
    """Create an API key and print its secret (shown only once)."""
    with reported_errors():
        created = client_of(ctx).create_api_key(
            tenant=tenant, scopes=scope or ["read", "write"], display_name=name, ttl=ttl
        )
        if as_json:
            print_json({"key": created.key, "secret": created.secret})
            return
        err.print(f"key {created.key.id} for tenant {created.key.tenant}; store the secret now:")
        out.print(created.secret, highlight=False)


@keys_app.command("ls", cls=CliCommand)
def keys_ls(
    ctx: typer.Context,
    tenant: Annotated[
        str, typer.Option(metavar="NAME", help="Only this tenant (an admin key sees only its own).")
    ] = "",
    all_: Annotated[bool, typer.Option("--all", "-a", help="Include revoked.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object a line.")] = False,
) -> None:
    """List API keys (no secrets)."""
    with reported_errors():
        table = Table("tenant", "scopes", "name", "created", "status")
        table.columns.insert(0, Column("id", no_wrap=True))
        for key in client_of(ctx).list_api_keys(tenant=tenant, show_revoked=all_):
            if as_json:
                print_json(key, one_line=True)
                continue
            table.add_row(
                key.id,
                key.tenant,
                ",".join(scope.value.lower() for scope in key.scopes),
                key.display_name,
                key.create_time.isoformat(timespec="seconds") if key.create_time else "",
                "active" if key.active else "revoked/expired",
            )
        if not as_json:
            out.print(table)


@keys_app.command("revoke", cls=CliCommand)
def keys_revoke(
    ctx: typer.Context,
    api_key_id: Annotated[str, typer.Argument(metavar="KEY_ID", help="Key id.")],
    as_json: AsJson = False,
) -> None:
    """Revoke an API key at once."""
    with reported_errors():
        key = client_of(ctx).revoke_api_key(api_key_id)
        if as_json:
            print_json(key)
        else:
            out.print(f"revoked {key.id}", highlight=False)
