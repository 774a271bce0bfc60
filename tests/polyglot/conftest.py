"""The Node.js executable for the polyglot tests, with client.js's packages installed."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def _ensure_node_modules() -> None:
    if (HERE / "node_modules" / "@grpc" / "grpc-js").is_dir():
        return
    npm = shutil.which("npm")
    assert npm, "npm is needed to install @grpc/grpc-js and @grpc/proto-loader"
    subprocess.run(
        [npm, "install", "--no-audit", "--no-fund", "--silent"], cwd=HERE, check=True, timeout=600
    )


@pytest.fixture(scope="session")
def node() -> str:
    """The path of ``node``, once the packages are installed; skips the test without node."""
    path = shutil.which("node")
    if path is None:
        pytest.skip("node is not installed; it runs the polyglot client")
    _ensure_node_modules()
    return path
