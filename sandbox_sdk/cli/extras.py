"""Whether an optional part of the package is installed: the CLI and the servers are extras.

``pip install sandbox-sdk`` installs the client only; ``[cli]`` adds the ``sandbox-sdk``
command line and ``[server]`` the Gateway and the Orchestrator. The commands check their
extra before importing the code that needs it, so a missing one is a one-line message
naming the ``pip install`` that fixes it, not a traceback.
"""

from __future__ import annotations

import re
from importlib import metadata

from sandbox_sdk.errors import ConfigError

DISTRIBUTION = "sandbox-sdk"

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def _extra_marker(extra: str) -> re.Pattern[str]:
    return re.compile(rf"""\bextra\s*==\s*["']{re.escape(extra)}["']""")


def _is_installed(distribution: str) -> bool:
    try:
        metadata.distribution(distribution)
    except metadata.PackageNotFoundError:
        return False
    return True


def missing_requirements(extra: str) -> list[str]:
    """The distributions ``extra`` lists that are not installed.

    Read from the installed package's metadata, the one list pyproject.toml writes; none
    when that metadata is absent (code run from a source tree without installing it).
    """
    try:
        requirements = metadata.requires(DISTRIBUTION) or []
    except metadata.PackageNotFoundError:
        return []
    marker = _extra_marker(extra)
    missing: list[str] = []
    for requirement in requirements:
        spec, _, markers = requirement.partition(";")
        name = _NAME.match(spec.strip())
        if name and marker.search(markers) and not _is_installed(name.group(0)):
            missing.append(name.group(0))
    return missing


def missing_extra_error(extra: str, command: str, missing: list[str]) -> ConfigError:
    """The error for ``command`` run without ``extra``: what is missing, what to install."""
    return ConfigError(
        f"{command} needs the {extra!r} extra, not installed here (missing {', '.join(missing)}): "
        f"pip install '{DISTRIBUTION}[{extra}]'"
    )


def require_extra(extra: str, command: str) -> None:
    """Raises :class:`ConfigError` naming the ``pip install`` to run when ``extra`` is missing."""
    missing = missing_requirements(extra)
    if missing:
        raise missing_extra_error(extra, command, missing)
