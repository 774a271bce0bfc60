"""The console scripts. Each checks its extra before importing the code that needs it."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import NoReturn

from sandbox_sdk.cli.exit_codes import INTERRUPTED, exit_code_for
from sandbox_sdk.cli.extras import missing_extra_error, require_extra
from sandbox_sdk.errors import ConfigError

_COMMAND_LINE = "sandbox_sdk.cli.main"


def _exit_with(error: ConfigError) -> NoReturn:
    print(f"error: {error}", file=sys.stderr)
    raise SystemExit(exit_code_for(error))


def _entry_point(
    function: str, extra: str, command: str, module_name: str = _COMMAND_LINE
) -> Callable[[], None]:
    """``function`` of the command-line module, once ``extra`` is known to be installed."""
    try:
        require_extra(extra, command)
        module = importlib.import_module(module_name)
    except ConfigError as error:
        _exit_with(error)
    except ModuleNotFoundError as error:
        # Without package metadata (a source tree) the import is the only check there is.
        missing = error.name or "a dependency"
        if missing.partition(".")[0] == "sandbox_sdk":
            raise
        _exit_with(missing_extra_error(extra, command, [missing]))
    entry: Callable[[], None] = getattr(module, function)
    return entry


def _run(function: str, extra: str, command: str, module_name: str = _COMMAND_LINE) -> None:
    # Ctrl-C while the command line is still being imported: one line, no traceback.
    try:
        _entry_point(function, extra, command, module_name)()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        raise SystemExit(INTERRUPTED) from None


def main() -> None:
    """Entry point of ``sandbox-sdk``: needs the ``cli`` extra."""
    _run("main", "cli", "sandbox-sdk")


def gateway_main() -> None:
    """Entry point of ``sandbox-gateway``: needs the ``server`` extra."""
    _run("gateway_main", "server", "sandbox-gateway")


def orchestrator_main() -> None:
    """Entry point of ``sandbox-orchestrator``: needs the ``server`` extra."""
    _run("orchestrator_main", "server", "sandbox-orchestrator")


def cluster_main() -> None:
    """Entry point of ``sandbox-cluster`` (a local cluster): needs the ``server`` extra."""
    _run("cluster_main", "server", "sandbox-cluster", "sandbox_sdk.server.cluster.cli")
