"""Turning ``build_template`` keyword arguments into a ``CreateTemplate`` request.

Shapes and types fail here, before any call, with the field paths the server
uses; the grammar of package names, paths and sizes is the server's to check.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NoReturn

from sandbox_sdk.api.v1 import requests_pb2, template_pb2
from sandbox_sdk.client.request_messages import command_argv, new_request_id, resource_limits
from sandbox_sdk.errors import FieldViolation, InvalidArgumentError
from sandbox_sdk.utils.units import DurationLike, Size

TemplateFileSource = bytes | str | tuple[bytes | str, int]
"""A template file's content, or ``(content, mode)`` for other permission bits than 0644."""

OciArchive = str | os.PathLike[str] | bytes
"""An OCI image archive: a local path (``docker save`` output, OCI layout tarball) or its bytes."""


def _invalid(field: str, description: str) -> NoReturn:
    raise InvalidArgumentError(
        f"invalid argument {field}", field_violations=[FieldViolation(field, description)]
    )


def read_oci_archive(archive: OciArchive) -> bytes:
    """The archive's bytes; a path is read from the local disk (blocking: run it off the loop)."""
    if isinstance(archive, bytes):
        return archive
    try:
        return Path(archive).read_bytes()
    except OSError as error:
        _invalid(
            "spec.oci_archive",
            f"cannot read {os.fspath(archive)}: {error.strerror}; give the path of a "
            "`docker save` archive or an OCI layout tarball, or its bytes",
        )


def _base(
    spec: template_pb2.TemplateSpec, debian: str | None, variant: str, archive: bytes | None
) -> None:
    if (debian is None) == (archive is None):
        _invalid(
            "spec.base",
            "give exactly one base: debian='bookworm' (built from Debian's packages) "
            "or oci_archive=<path or bytes of an image archive>",
        )
    if debian is not None:
        spec.debian.CopyFrom(template_pb2.DebianBase(suite=debian, variant=variant))
    elif archive is not None:
        spec.oci_archive.CopyFrom(
            template_pb2.OciArchiveBase(archive=archive, sha256=hashlib.sha256(archive).hexdigest())
        )


def _strings(field: str, values: Sequence[str]) -> list[str]:
    if isinstance(values, str):
        _invalid(field, f"give a list of names, not the string {values!r}")
    return [str(value) for value in values]


def _template_file(path: str, source: TemplateFileSource, index: int) -> template_pb2.TemplateFile:
    content, mode = source if isinstance(source, tuple) else (source, 0o644)
    data = content.encode() if isinstance(content, str) else content
    if not isinstance(data, bytes):
        _invalid(f"spec.files[{index}].content", "give bytes, text, or (content, mode)")
    if not str(path).startswith("/"):
        _invalid(
            f"spec.files[{index}].path",
            f"use an absolute path in the template's root file system, not {path!r}",
        )
    return template_pb2.TemplateFile(path=str(path), content=data, mode=int(mode))


def _commands(commands: Sequence[str | Sequence[str]]) -> list[template_pb2.TemplateCommand]:
    if isinstance(commands, str):
        _invalid("spec.commands", "give a list of commands, e.g. ['echo hi'] or [['echo', 'hi']]")
    return [template_pb2.TemplateCommand(argv=command_argv(command)) for command in commands]


def create_template_request(
    *,
    debian: str | None = None,
    debian_variant: str = "",
    oci_archive: bytes | None = None,
    apt: Sequence[str] = (),
    pip: Sequence[str] = (),
    files: Mapping[str, TemplateFileSource] | None = None,
    commands: Sequence[str | Sequence[str]] = (),
    env: Mapping[str, str] | None = None,
    workdir: str = "",
    cpu: float | None = None,
    memory: Size | None = None,
    disk: Size | None = None,
    pids: int | None = None,
    exec_timeout: DurationLike | None = None,
    name: str = "",
) -> requests_pb2.CreateTemplateRequest:
    """The ``CreateTemplate`` request, with a new ``request_id``."""
    spec = template_pb2.TemplateSpec(
        apt_packages=_strings("spec.apt_packages", apt),
        pip_packages=_strings("spec.pip_packages", pip),
        files=[
            _template_file(path, source, index)
            for index, (path, source) in enumerate((files or {}).items())
        ],
        commands=_commands(commands),
        defaults=template_pb2.TemplateDefaults(
            env_vars={str(key): str(value) for key, value in (env or {}).items()},
            workdir=workdir,
            limits=resource_limits(
                "spec.defaults.limits",
                cpu=cpu,
                memory=memory,
                disk=disk,
                pids=pids,
                exec_timeout=exec_timeout,
            ),
        ),
    )
    _base(spec, debian, debian_variant, oci_archive)
    return requests_pb2.CreateTemplateRequest(
        spec=spec, display_name=name, request_id=new_request_id()
    )
