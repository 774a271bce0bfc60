#!/usr/bin/env python3
"""Renders a service's YAML config from its ConfigMap template, its Secrets and its node.

The services read one YAML file and have no environment-variable expansion,
so an init container writes the file they read: the ConfigMap's template,
plus ``--set section.key=@file`` values read from mounted Secrets (the token
never sits in a ConfigMap; ``@?file`` skips a file that is absent, for an
optional Secret), plus, for an orchestrator, an id derived from the
node it runs on (``--orchestrator-id-from-node``): resource ids embed the
orchestrator id, so it must stay the same for as long as the node does.

Standard library and PyYAML only, so it runs before anything else is set up.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path
from typing import Any

import yaml

ID_PREFIX = "n"
ID_HASH_CHARS = 11  # "n" + 11 hex = 12 characters, within [a-z0-9]{1,16}


def orchestrator_id_for_node(node_name: str) -> str:
    """The orchestrator id of ``node_name``: stable, short, and [a-z0-9] only.

    Node names are longer than 16 characters and differ only in their middle
    (``ip-10-0-1-23.ec2.internal``), so truncating them would collide; a hash
    does not, and the same node always gets the same id.
    """
    if not node_name:
        raise ValueError("the node name is empty: pass spec.nodeName through the downward API")
    digest = hashlib.sha256(node_name.encode()).hexdigest()
    return ID_PREFIX + digest[:ID_HASH_CHARS]


def set_value(config: dict[str, Any], dotted_key: str, value: Any) -> None:
    """Sets ``a.b.c`` in ``config``, creating the mappings on the way."""
    *parents, leaf = dotted_key.split(".")
    node = config
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ValueError(f"{dotted_key}: {part} is not a mapping in the template")
    node[leaf] = value


def parse_assignment(assignment: str) -> tuple[str, str | None]:
    """``key=value``, ``key=@file`` (the file's text, without its final newline), or
    ``key=@?file``: the same, but ``None`` (leave the key unset) when there is no file."""
    key, separator, value = assignment.partition("=")
    if not separator or not key:
        raise ValueError(f"--set {assignment!r}: use section.key=value or section.key=@file")
    if value.startswith("@?"):
        optional = Path(value[2:])
        if not optional.exists():
            return key, None
        return key, optional.read_text(encoding="utf-8").rstrip("\n")
    if value.startswith("@"):
        return key, Path(value[1:]).read_text(encoding="utf-8").rstrip("\n")
    return key, value


def render(
    template: str, assignments: list[str], orchestrator_node: str | None = None
) -> dict[str, Any]:
    """The config the service reads: ``template`` with the assignments applied."""
    config = yaml.safe_load(template) or {}
    if not isinstance(config, dict):
        raise ValueError("the template is not a YAML mapping")
    for assignment in assignments:
        key, value = parse_assignment(assignment)
        if value is not None:
            set_value(config, key, value)
    if orchestrator_node is not None:
        set_value(
            config, "orchestrator.orchestrator_id", orchestrator_id_for_node(orchestrator_node)
        )
    return config


def main(argv: list[str] | None = None) -> int:
    """Command line: ``render_config.py TEMPLATE OUTPUT [--set k=v ...]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("template", type=Path)
    parser.add_argument("output", type=Path)
    parser.add_argument("--set", dest="assignments", action="append", default=[])
    parser.add_argument("--orchestrator-id-from-node", metavar="NODE_NAME")
    parser.add_argument("--print-id", metavar="NODE_NAME", help="print a node's id and exit")
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["--print-id"] and len(argv) == 2:
        print(orchestrator_id_for_node(argv[1]))
        return 0
    args = parser.parse_args(argv)
    try:
        config = render(
            args.template.read_text(encoding="utf-8"),
            args.assignments,
            args.orchestrator_id_from_node,
        )
    except (OSError, ValueError) as error:
        print(f"render-config: {error}", file=sys.stderr)
        return 2
    args.output.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    args.output.chmod(0o600)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
