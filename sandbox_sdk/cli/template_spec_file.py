"""``template build SPEC.yaml``: a template spec file read into ``build_template`` arguments.

```yaml
name: numpy                      # optional
debian: bookworm                 # or {suite: bookworm, variant: minbase}, or instead:
# oci_archive: ./image.tar       #   a `docker save` / OCI layout tarball, relative to this file
apt: [python3-numpy]
pip: ["requests==2.32.3"]
files:
  /etc/app.conf: "key = value\\n"             # text
  /opt/run.sh: {from: ./run.sh, mode: 0755}   # a local file, relative to this file
commands:
  - echo built > /etc/built      # a string runs with /bin/sh -c
  - [python3, -c, "import numpy"]
env: {APP_MODE: test}
workdir: /workspace
limits: {cpu: 1, memory: 512Mi, disk: 1Gi, pids: 64, exec_timeout: 30s}
```
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, NoReturn

import typer
import yaml

_KEYS = ("name", "debian", "oci_archive", "apt", "pip", "files", "commands", "env", "workdir")
_LIMITS = ("cpu", "memory", "disk", "pids", "exec_timeout")


def _bad(spec_path: Path, message: str) -> NoReturn:
    raise typer.BadParameter(f"{spec_path}: {message}", param_hint="SPEC")


def _mapping(spec_path: Path, key: str, value: Any) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        _bad(spec_path, f"{key} must be a mapping, not {type(value).__name__}")
    return value


def _string_list(spec_path: Path, key: str, value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        _bad(spec_path, f"{key} must be a list of strings")
    return value


def _local_file(spec_path: Path, name: str) -> bytes:
    local = spec_path.parent / name
    try:
        return local.read_bytes()
    except OSError as error:
        _bad(spec_path, f"cannot read {local}: {error.strerror}")


def _file(spec_path: Path, path: str, value: Any) -> bytes | str | tuple[bytes | str, int]:
    if isinstance(value, str | bytes):
        return value
    entry = _mapping(spec_path, f"files[{path!r}]", value)
    unknown = set(entry) - {"content", "from", "mode"}
    if unknown or ("content" in entry) == ("from" in entry):
        _bad(spec_path, f"files[{path!r}] takes content: TEXT or from: LOCAL_PATH, and mode:")
    content = entry["content"] if "content" in entry else _local_file(spec_path, entry["from"])
    if not isinstance(content, str | bytes):
        _bad(spec_path, f"files[{path!r}]: content is text")
    return (content, _mode(spec_path, path, entry.get("mode", 0o644)))


def _mode(spec_path: Path, path: str, value: Any) -> int:
    """Permission bits: YAML reads 0755 as octal; the string "0o755" or "755" is octal too."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    try:
        return int(str(value).removeprefix("0o"), 8)
    except ValueError:
        _bad(spec_path, f"files[{path!r}]: mode is octal permission bits such as 0755")


def _commands(spec_path: Path, value: Any) -> list[str | list[str]]:
    if not isinstance(value, list):
        _bad(spec_path, "commands must be a list of commands")
    for index, command in enumerate(value):
        if not isinstance(command, str) and not (
            isinstance(command, list) and all(isinstance(arg, str | int) for arg in command)
        ):
            _bad(spec_path, f"commands[{index}] must be a string or a list of arguments")
    return [c if isinstance(c, str) else [str(arg) for arg in c] for c in value]


def _base(spec_path: Path, spec: Mapping[str, Any]) -> dict[str, Any]:
    debian = spec.get("debian")
    if isinstance(debian, Mapping):
        return {"debian": str(debian.get("suite", "")), "debian_variant": debian.get("variant", "")}
    if debian is not None:
        return {"debian": str(debian)}
    if "oci_archive" in spec:
        return {"oci_archive": spec_path.parent / str(spec["oci_archive"])}
    return {}


def read_spec_file(spec_path: Path) -> dict[str, Any]:
    """The keyword arguments of ``build_template`` that the YAML file at ``spec_path`` asks for."""
    try:
        loaded = yaml.safe_load(spec_path.read_text(encoding="utf-8"))
    except OSError as error:
        _bad(spec_path, f"cannot read it: {error.strerror}")
    except yaml.YAMLError as error:
        _bad(spec_path, f"not valid YAML: {error}")
    spec = _mapping(spec_path, "the spec", loaded)
    unknown = sorted(set(spec) - {*_KEYS, "limits"})
    if unknown:
        _bad(spec_path, f"unknown keys {unknown}; a spec takes {', '.join((*_KEYS, 'limits'))}")
    arguments: dict[str, Any] = _base(spec_path, spec)
    if "name" in spec:
        arguments["name"] = str(spec["name"])
    for key in ("apt", "pip"):
        if key in spec:
            arguments[key] = _string_list(spec_path, key, spec[key])
    if "files" in spec:
        files = _mapping(spec_path, "files", spec["files"])
        arguments["files"] = {str(p): _file(spec_path, str(p), v) for p, v in files.items()}
    if "commands" in spec:
        arguments["commands"] = _commands(spec_path, spec["commands"])
    if "env" in spec:
        arguments["env"] = {
            str(k): str(v) for k, v in _mapping(spec_path, "env", spec["env"]).items()
        }
    if "workdir" in spec:
        arguments["workdir"] = str(spec["workdir"])
    limits = _mapping(spec_path, "limits", spec.get("limits", {}))
    unknown = sorted(set(limits) - set(_LIMITS))
    if unknown:
        _bad(spec_path, f"unknown limits {unknown}; use {', '.join(_LIMITS)}")
    arguments.update(limits)
    return arguments
