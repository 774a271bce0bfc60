"""The click classes behind every ``sandbox-sdk`` command and group.

They change two things typer does by default: help shows flags as bare flags (no
``<bool>`` type column), and a misspelt option is answered with "did you mean", or
with where to put it when it is a global option given after the command.
"""

from __future__ import annotations

from typer._click.core import (  # typer vendors click; its classes are these
    Command,
    Context,
    Parameter,
)
from typer._click.exceptions import NoSuchOption
from typer.core import TyperCommand, TyperGroup, TyperOption

GLOBAL_OPTIONS = ("--target", "--api-key", "--config", "--timeout", "--version")
"""Options of ``sandbox-sdk`` itself, given before the command."""


def _flags_without_types(params: list[Parameter]) -> list[Parameter]:
    for param in params:
        if isinstance(param, TyperOption) and param.is_flag:
            param.metavar = ""
    return params


def _explained(error: NoSuchOption) -> NoSuchOption:
    name = error.option_name
    if name in GLOBAL_OPTIONS:
        message = f"{name} is an option of sandbox-sdk itself: give it before the command"
    elif error.possibilities:
        message = f"no such option {name}; did you mean {' or '.join(error.possibilities)}?"
    else:
        return error
    return NoSuchOption(name, message=message, ctx=error.ctx)


class _ReadableOptions(Command):
    """Flags shown as flags in help, and misspelt options explained (see the module)."""

    def get_params(self, ctx: Context) -> list[Parameter]:
        return _flags_without_types(super().get_params(ctx))

    def parse_args(self, ctx: Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except NoSuchOption as error:
            raise _explained(error) from None


class CliCommand(_ReadableOptions, TyperCommand):
    """A command whose help shows flags as flags and whose misspelt options get suggestions."""


class CliGroup(_ReadableOptions, TyperGroup):
    """A group of commands with the same help and option handling as :class:`CliCommand`."""
