"""What a template is made of, checked as hostile input, and its content address.

A template is a root file system (a Debian base built from packages, or an
OCI image archive) plus apt packages, pip packages, files copied in and
commands run while building, and the defaults its environments start with.
Every field comes from a tenant: names follow Debian's and pip's grammars
(so none can pass for an option), paths are absolute and normal, sizes are
bounded. The canonical JSON form of a spec and its sha256 are the template's
content address: the same spec builds once.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sandbox_sdk.server.field_violations import FieldViolations
from sandbox_sdk.server.orchestrator.sandbox import request_fields

SPEC_VERSION = 1
DEBIAN_VARIANTS = ("essential", "apt", "minbase", "buildd", "required", "important", "standard")
MAX_APT_PACKAGES = 256
MAX_PIP_PACKAGES = 256
MAX_PACKAGE_BYTES = 200
MAX_FILES = 256
MAX_FILE_BYTES = 16 << 20
MAX_FILES_TOTAL_BYTES = 64 << 20
MAX_COMMANDS = 64
MAX_ARGV = 256
MAX_COMMAND_BYTES = 256 << 10
MAX_PATH_BYTES = 4096
MAX_NAME_BYTES = 255
# Mount points and directories the sandbox itself provides in every environment.
RESERVED_PATHS = ("/proc", "/dev", "/sys", "/tmp", "/workspace", "/.sandbox-agent")  # noqa: S108

_SUITE = re.compile(r"^[a-z][a-z0-9-]{1,31}$")
# Debian policy 5.6.1: lower case letters, digits, '+', '-', '.'; two or more; alphanumeric first.
_DEBIAN_PACKAGE = re.compile(r"^[a-z0-9][a-z0-9+.-]+$")
# PEP 508 names (with extras) and an optional PEP 440 version clause; no URLs, no options.
_PIP_PACKAGE = re.compile(
    r"^[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?"
    r"(?:\[[A-Za-z0-9._-]+(?:,[A-Za-z0-9._-]+)*\])?"
    r"(?:(?:==|>=|<=|~=|!=|<|>)[A-Za-z0-9.*+!]+(?:,(?:==|>=|<=|~=|!=|<|>)[A-Za-z0-9.*+!]+)*)?$"
)
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_USER = re.compile(r"^(?:[a-z_][a-z0-9_-]{0,31}|[0-9]{1,10}(?::[0-9]{1,10})?)$")
_LIMIT_NAMES = ("cpu_cores", "memory_bytes", "disk_bytes", "max_pids", "exec_timeout_seconds")


@dataclass(frozen=True)
class DebianBase:
    """A Debian root file system built by mmdebstrap: ``suite`` (e.g. bookworm) and ``variant``."""

    suite: str
    variant: str = "minbase"


@dataclass(frozen=True)
class OciArchiveBase:
    """An OCI image archive on the orchestrator's host (``docker save`` or an OCI layout tarball).

    ``sha256`` is the archive file's digest: it makes the content address
    the archive's, not its path's, and is checked before the import.
    """

    path: str
    sha256: str


@dataclass(frozen=True)
class TemplateFile:
    """A file copied into the root file system: absolute ``path``, ``content``, permission bits."""

    path: str
    content: bytes
    mode: int = 0o644


@dataclass(frozen=True)
class TemplateDefaults:
    """What environments of the template start with, unless they ask otherwise.

    ``limits`` holds any of cpu_cores, memory_bytes, disk_bytes, max_pids,
    exec_timeout_seconds.
    """

    env: Mapping[str, str] = field(default_factory=dict)
    workdir: str = ""
    user: str = ""
    limits: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class TemplateSpec:
    """A declarative template: a base, then apt packages, pip packages, files and commands."""

    base: DebianBase | OciArchiveBase
    apt_packages: tuple[str, ...] = ()
    pip_packages: tuple[str, ...] = ()
    files: tuple[TemplateFile, ...] = ()
    commands: tuple[tuple[str, ...], ...] = ()
    defaults: TemplateDefaults = field(default_factory=TemplateDefaults)

    @property
    def needs_sandbox(self) -> bool:
        """Whether building runs steps inside a build sandbox (pip, files, commands)."""
        return bool(self.pip_packages or self.files or self.commands)

    def canonical_json(self) -> str:
        """The spec as JSON with sorted keys and no insignificant whitespace."""
        return json.dumps(_canonical(self), sort_keys=True, separators=(",", ":"))

    @property
    def digest(self) -> str:
        """The content address: sha256 of :meth:`canonical_json`, in hex."""
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()


def _canonical(spec: TemplateSpec) -> dict[str, Any]:
    base: dict[str, Any]
    if isinstance(spec.base, DebianBase):
        base = {"debian": {"suite": spec.base.suite, "variant": spec.base.variant}}
    else:
        base = {"oci_archive": {"sha256": spec.base.sha256}}
    return {
        "version": SPEC_VERSION,
        "base": base,
        "apt_packages": sorted(set(spec.apt_packages)),
        "pip_packages": list(spec.pip_packages),
        "files": [
            {
                "path": f.path,
                "sha256": hashlib.sha256(f.content).hexdigest(),
                "mode": f.mode,
            }
            for f in spec.files
        ],
        "commands": [list(argv) for argv in spec.commands],
        "defaults": {
            "env": dict(spec.defaults.env),
            "workdir": spec.defaults.workdir,
            "user": spec.defaults.user,
            "limits": dict(spec.defaults.limits),
        },
    }


def validate_template_spec(spec: TemplateSpec, field_path: str = "spec") -> TemplateSpec:
    """Checks every field of ``spec``; raises one INVALID_ARGUMENT naming every bad field."""
    violations = FieldViolations()
    _check_base(violations, f"{field_path}.base", spec.base)
    _check_names(
        violations, f"{field_path}.apt_packages", spec.apt_packages, _DEBIAN_PACKAGE,
        MAX_APT_PACKAGES, "Debian package names: lower-case letters, digits, '+', '-', '.', "
        "starting with a letter or digit, such as 'python3-numpy'",
    )  # fmt: skip
    if spec.apt_packages and not isinstance(spec.base, DebianBase):
        violations.add(f"{field_path}.apt_packages", "apt packages need a Debian base")
    _check_names(
        violations, f"{field_path}.pip_packages", spec.pip_packages, _PIP_PACKAGE,
        MAX_PIP_PACKAGES, "a PyPI project name with optional extras and version, such as "
        "'numpy==2.1.0' or 'requests[socks]>=2'; no URLs or options",
    )  # fmt: skip
    _check_files(violations, f"{field_path}.files", spec.files)
    _check_commands(violations, f"{field_path}.commands", spec.commands)
    _check_defaults(violations, f"{field_path}.defaults", spec.defaults)
    violations.raise_if_any()
    return spec


def _check_base(violations: FieldViolations, path: str, base: object) -> None:
    if isinstance(base, DebianBase):
        if not _SUITE.match(base.suite):
            violations.add(f"{path}.suite", "a Debian suite or codename such as 'bookworm'")
        if base.variant not in DEBIAN_VARIANTS:
            violations.add(f"{path}.variant", f"one of {', '.join(DEBIAN_VARIANTS)}")
    elif isinstance(base, OciArchiveBase):
        problem = path_problem(base.path)
        if problem:
            violations.add(f"{path}.path", problem)
        if not _SHA256.match(base.sha256):
            violations.add(f"{path}.sha256", "the archive's sha256 as 64 lower-case hex digits")
    else:
        violations.add(path, "give a Debian base or an OCI image archive")


def _check_names(  # noqa: PLR0917  (one call per package list)
    violations: FieldViolations,
    path: str,
    names: Sequence[str],
    grammar: re.Pattern[str],
    maximum: int,
    expected: str,
) -> None:
    if len(names) > maximum:
        violations.add(path, f"has {len(names)} packages; at most {maximum}")
        return
    for index, name in enumerate(names):
        if not isinstance(name, str) or len(name) > MAX_PACKAGE_BYTES or not grammar.match(name):
            violations.add(f"{path}[{index}]", expected)


def path_problem(path: object) -> str:
    """Why ``path`` is not an absolute, normal path without '..'; empty if it is one."""
    if not isinstance(path, str) or not path.startswith("/"):
        return "an absolute path such as '/etc/app.conf'"
    if "\x00" in path or len(path.encode()) > MAX_PATH_BYTES:
        return f"at most {MAX_PATH_BYTES} bytes, no NUL"
    parts = path.split("/")[1:]
    if any(part in ("", ".", "..") for part in parts) or path == "/":
        return "a normal path: no '.', '..', empty components or trailing '/'"
    if any(len(part.encode()) > MAX_NAME_BYTES for part in parts):
        return f"names are at most {MAX_NAME_BYTES} bytes"
    return ""


def _check_files(violations: FieldViolations, path: str, files: Sequence[TemplateFile]) -> None:
    if len(files) > MAX_FILES:
        violations.add(path, f"has {len(files)} files; at most {MAX_FILES}")
        return
    total = 0
    for index, file in enumerate(files):
        problem = path_problem(file.path)
        if not problem and any(
            file.path == reserved or file.path.startswith(reserved + "/")
            for reserved in RESERVED_PATHS
        ):
            problem = f"not under {', '.join(RESERVED_PATHS)}: the sandbox provides those"
        if problem:
            violations.add(f"{path}[{index}].path", problem)
        if not isinstance(file.mode, int) or not 0 <= file.mode <= 0o777:
            violations.add(f"{path}[{index}].mode", "permission bits 0o000-0o777 (no setuid)")
        size = len(file.content) if isinstance(file.content, bytes) else MAX_FILE_BYTES + 1
        if size > MAX_FILE_BYTES:
            violations.add(f"{path}[{index}].content", f"at most {MAX_FILE_BYTES} bytes")
        total += size
    if total > MAX_FILES_TOTAL_BYTES:
        violations.add(path, f"{total} bytes together; at most {MAX_FILES_TOTAL_BYTES}")


def _check_commands(
    violations: FieldViolations, path: str, commands: Sequence[Sequence[str]]
) -> None:
    if len(commands) > MAX_COMMANDS:
        violations.add(path, f"has {len(commands)} commands; at most {MAX_COMMANDS}")
        return
    for index, argv in enumerate(commands):
        if not argv or len(argv) > MAX_ARGV:
            violations.add(f"{path}[{index}]", f"an argv of 1 to {MAX_ARGV} arguments")
            continue
        if any(not isinstance(arg, str) or "\x00" in arg for arg in argv):
            violations.add(f"{path}[{index}]", "arguments are strings without NUL")
        elif sum(len(arg.encode()) for arg in argv) > MAX_COMMAND_BYTES:
            violations.add(f"{path}[{index}]", f"at most {MAX_COMMAND_BYTES} bytes of arguments")


def _check_defaults(violations: FieldViolations, path: str, defaults: TemplateDefaults) -> None:
    request_fields.checked_env_vars(violations, f"{path}.env", defaults.env)
    if defaults.workdir:
        problem = path_problem(defaults.workdir)
        if problem:
            violations.add(f"{path}.workdir", problem)
    if defaults.user and not _USER.match(defaults.user):
        violations.add(f"{path}.user", "a user name, or uid[:gid]")
    for name, value in defaults.limits.items():
        if name not in _LIMIT_NAMES:
            violations.add(f"{path}.limits[{name!r}]", f"one of {', '.join(_LIMIT_NAMES)}")
        elif not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
            violations.add(f"{path}.limits[{name!r}]", "a positive finite number")
