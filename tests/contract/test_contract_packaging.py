"""The built wheel works on its own: a clean venv outside the repo imports it."""

from __future__ import annotations

import subprocess
import sys
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_wheel_installs_and_imports_in_a_clean_venv(tmp_path: Path) -> None:
    wheel_dir = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheel_dir), str(REPO)],
        check=True,
    )
    (wheel,) = wheel_dir.glob("sandbox_sdk-*.whl")
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", str(wheel)],
        check=True,
    )
    probe = (
        "import sandbox_sdk;"
        "from sandbox_sdk.api.v1 import gateway_service_pb2_grpc as g, requests_pb2 as r;"
        "import pathlib, sys;"
        "assert 'site-packages' in sandbox_sdk.__file__, sandbox_sdk.__file__;"
        "assert g.GatewayServiceStub and r.CreateEnvironmentRequest(request_id='x').request_id;"
        "stub = pathlib.Path(r.__file__).with_suffix('.pyi'); assert stub.exists(), stub;"
        "print('ok')"
    )
    result = subprocess.run(
        [str(python), "-c", probe], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
