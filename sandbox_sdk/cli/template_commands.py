"""``sandbox-sdk template ...``: build templates from a spec file, list, show, follow and
delete them."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Column, Table

from sandbox_sdk.cli.command_classes import CliCommand, CliGroup
from sandbox_sdk.cli.json_output import print_json
from sandbox_sdk.cli.session import AsJson, client_of, err, out, print_fields, reported_errors
from sandbox_sdk.cli.template_spec_file import read_spec_file
from sandbox_sdk.client import Template
from sandbox_sdk.models.templates import TemplateInfo, TemplateStateChange
from sandbox_sdk.utils.units import format_size

template_app = typer.Typer(
    cls=CliGroup,
    help="Build, list, show and delete templates: root file systems environments start from.",
    no_args_is_help=True,
)

TemplateId = Annotated[str, typer.Argument(metavar="ID", help="Template id or public name.")]


def _print_build_log(template: Template) -> None:
    """The build's log lines and state changes on stderr, as they come, until it ends."""
    with template.events() as events:
        for event in events:
            if isinstance(event.payload, str):
                err.print(escape(event.payload), highlight=False, soft_wrap=True)
            elif isinstance(event.payload, TemplateStateChange):
                err.print(f"template {template.id} {event.payload.state.value}", highlight=False)
                if event.payload.state.is_final:
                    return


@template_app.command("build", cls=CliCommand)
def template_build(
    ctx: typer.Context,
    spec: Annotated[
        Path, typer.Argument(metavar="SPEC", help="The template's YAML spec file.", dir_okay=False)
    ],
    *,
    name: Annotated[
        str | None, typer.Option(metavar="NAME", help="Name the template (overrides the spec's).")
    ] = None,
    follow: Annotated[
        bool, typer.Option(help="Stream the build log and wait for the build to end.")
    ] = True,
    wait: Annotated[
        float | None, typer.Option(metavar="SECONDS", help="Longest wait for the build.")
    ] = None,
    as_json: AsJson = False,
) -> None:
    """Build a template from a YAML spec and print its id once it is READY.

    The build log streams to stderr. A build that FAILS exits 18 with its reason;
    one built before from the same spec is READY at once. The spec's keys: name,
    debian or oci_archive, apt, pip, files, commands, env, workdir, limits (see
    sandbox_sdk/cli/template_spec_file.py).
    """
    arguments = read_spec_file(spec)
    if name is not None:
        arguments["name"] = name
    with reported_errors():
        template = client_of(ctx).build_template(**arguments)
        err.print(f"template {template.id} {template.state.value}", highlight=False)
        if follow and not template.state.is_final:
            _print_build_log(template)
        info = template.wait(wait) if follow else template.info
        if as_json:
            print_json(info)
        else:
            out.print(template.id, highlight=False)


def _row(info: TemplateInfo) -> list[str]:
    return [
        info.id,
        info.name,
        info.state.value,
        info.source.value,
        info.base,
        format_size(info.size_bytes) if info.size_bytes else "-",
        str(info.environments_using),
        info.create_time.isoformat(timespec="seconds") if info.create_time else "",
    ]


@template_app.command("ls", cls=CliCommand)
def template_ls(
    ctx: typer.Context,
    public: Annotated[bool, typer.Option(help="Include the operator's public templates.")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object a line.")] = False,
) -> None:
    """List your templates, newest first, then the public ones."""
    with reported_errors():
        table = Table("name", "state", "source", "base", "size", "in use", "created")
        table.columns.insert(0, Column("id", no_wrap=True))
        for template in client_of(ctx).list_templates(include_public=public):
            if as_json:
                print_json(template.info, one_line=True)
            else:
                table.add_row(*_row(template.info))
        if not as_json:
            out.print(table)


@template_app.command("show", cls=CliCommand)
def template_show(ctx: typer.Context, template_id: TemplateId, as_json: AsJson = False) -> None:
    """Show a template: state, base, packages, defaults, size, where it came from."""
    with reported_errors():
        info = client_of(ctx).get_template(template_id).info
        if as_json:
            print_json(info)
            return
        rows: list[tuple[str, Any]] = [
            ("id", info.id),
            ("name", info.name),
            ("state", info.state.value),
            ("source", info.source.value),
            ("base", info.base),
            ("apt", " ".join(info.apt_packages)),
            ("pip", " ".join(info.pip_packages)),
            ("workdir", info.workdir),
            ("size", format_size(info.size_bytes) if info.size_bytes else "-"),
            ("in use by", f"{info.environments_using} environments"),
            ("digest", info.digest),
            ("created", info.create_time),
        ]
        if info.source_environment_id:
            rows.append(("snapshot of", info.source_environment_id))
        if info.failure_message:
            rows.append(("failed", info.failure_message))
        print_fields(rows)


@template_app.command("logs", cls=CliCommand)
def template_logs(
    ctx: typer.Context,
    template_id: TemplateId,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Wait for new lines until the build ends.")
    ] = False,
) -> None:
    """Print a template's build log."""
    with reported_errors():
        for line in client_of(ctx).get_template(template_id).logs(follow=follow):
            out.print(escape(line), highlight=False, soft_wrap=True)


@template_app.command("rm", cls=CliCommand)
def template_rm(
    ctx: typer.Context,
    template_ids: Annotated[list[str], typer.Argument(metavar="ID", help="Template ids.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the ids deleted as JSON.")] = False,
) -> None:
    """Delete templates; one that environments use is refused (delete them first)."""
    with reported_errors():
        client = client_of(ctx)
        for template_id in template_ids:
            client.delete_template(template_id)
            if as_json:
                print_json({"id": template_id, "deleted": True}, one_line=True)
            else:
                out.print(f"deleted {template_id}", highlight=False)
