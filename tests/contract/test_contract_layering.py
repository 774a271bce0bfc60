"""Client code never imports server code, so the SDK installs and runs without it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "sandbox_sdk"
CLIENT_PARTS = ["client", "auth", "config", "models", "utils", "monitoring", "errors.py"]


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
