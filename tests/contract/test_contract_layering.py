"""Client code never imports server code, so the SDK installs and runs without it."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
from client_only import NOT_CLIENT_MODULES

PACKAGE = Path(__file__).resolve().parents[2] / "sandbox_sdk"
CLIENT_PARTS = [
    "client",
    "auth",
    "config",
    "models",
    "utils",
    "monitoring",
    "analysis",
    "errors.py",
]


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _client_files() -> list[Path]:
    files: list[Path] = []
    for part in CLIENT_PARTS:
        target = PACKAGE / part
        files.extend(target.rglob("*.py") if target.is_dir() else [target])
    return [f for f in files if f.exists()]


@pytest.mark.parametrize("path", _client_files(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_client_module_does_not_import_the_servers(path: Path) -> None:
    server_imports = {m for m in _imported_modules(path) if m.startswith("sandbox_sdk.server")}
    assert not server_imports, f"{path} imports {sorted(server_imports)}"


# grpc imports grpc_tools, grpc_health and grpc_reflection itself when they are installed,
# so what the SDK imports is what comes after grpc. A fresh interpreter: this one has
# imported the servers already.
_IMPORTED_BY_THE_CLIENT = """
import json, sys
import grpc
before = set(sys.modules)
import sandbox_sdk
from sandbox_sdk import AsyncSandboxClient, SandboxClient
from sandbox_sdk.api.v1 import gateway_service_pb2_grpc
import sandbox_sdk.cli.entry_points
print(json.dumps(sorted(set(sys.modules) - before)))
"""


def test_the_client_and_the_command_entry_points_import_only_client_dependencies() -> None:
    imported = json.loads(
        subprocess.run(
            [sys.executable, "-c", _IMPORTED_BY_THE_CLIENT],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    top_level = {name.partition(".")[0] for name in imported}
    assert not top_level & NOT_CLIENT_MODULES, sorted(top_level & NOT_CLIENT_MODULES)
    server_modules = [name for name in imported if name.startswith("sandbox_sdk.server")]
    assert not server_modules, server_modules
    assert "sandbox_sdk.cli.main" not in imported
