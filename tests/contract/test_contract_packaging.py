"""The built wheel works on its own: `pip install sandbox-sdk` is the client and nothing more.

A clean venv outside the repo installs the wheel without extras; the client imports, calls
an unreachable gateway and gets the SDK's UnavailableError; no server or CLI dependency was
installed or imported; the commands that need an extra say which one instead of a traceback.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest
from client_only import NOT_CLIENT_DISTRIBUTIONS, NOT_CLIENT_MODULES

from sandbox_sdk.cli import extras
from sandbox_sdk.config import MetricsSettings
from sandbox_sdk.errors import ConfigError
from sandbox_sdk.models import ExperimentInfo, ExperimentResults, ExperimentState
from sandbox_sdk.monitoring import rpc_metrics
from sandbox_sdk.monitoring.metric_views import metrics_table

REPO = Path(__file__).resolve().parents[2]


CLIENT_PROBE = """
import asyncio, json, sys

import sandbox_sdk
from sandbox_sdk import AsyncSandboxClient, SandboxClient, UnavailableError
from sandbox_sdk.api.v1 import gateway_service_pb2_grpc, requests_pb2

assert "site-packages" in sandbox_sdk.__file__, sandbox_sdk.__file__
assert gateway_service_pb2_grpc.GatewayServiceStub
assert requests_pb2.CreateEnvironmentRequest(request_id="x").request_id == "x"

def sync_error():
    client = SandboxClient()
    try:
        client.list_models()
    except UnavailableError as error:
        return type(error).__name__
    finally:
        client.close()
    return "no error"

async def async_error():
    client = AsyncSandboxClient()
    try:
        await client.list_models()
    except UnavailableError as error:
        return type(error).__name__
    finally:
        await client.close()
    return "no error"

print(json.dumps({
    "sync": sync_error(),
    "async": asyncio.run(async_error()),
    "modules": sorted({name.partition(".")[0] for name in sys.modules}),
}))
"""


def _source_copy(destination: Path) -> Path:
    """The files a checkout holds (tracked or not ignored), without build/ or egg-info left
    behind by earlier builds: setuptools would put stale files from build/ into the wheel."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = REPO / name
        if source.is_file():
            target = destination / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return destination


def _clean_environment(**settings: str) -> dict[str, str]:
    """This process's environment without what would point the venv back at the repo."""
    environment = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("SANDBOX_") and name not in {"PYTHONPATH", "VIRTUAL_ENV"}
    }
    return environment | settings


@pytest.fixture(scope="module")
def client_only_bin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bin directory of a fresh venv with the wheel installed and no extras."""
    tmp_path = tmp_path_factory.mktemp("packaging")
    source = _source_copy(tmp_path / "source")
    wheel_dir = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheel_dir), source],
        check=True,
        env=_clean_environment(),
    )
    (wheel,) = wheel_dir.glob("sandbox_sdk-*.whl")
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    bin_dir = env_dir / "bin"
    _pip(bin_dir, "install", "-q", wheel)
    return bin_dir


def _pip(bin_dir: Path, *arguments: str | Path) -> str:
    """Runs the venv's pip (with the local pip cache: no --no-cache-dir) and returns its output."""
    return subprocess.run(
        [bin_dir / "python", "-m", "pip", "--disable-pip-version-check", *arguments],
        capture_output=True,
        text=True,
        check=True,
        env=_clean_environment(),
    ).stdout


def _installed_distributions(bin_dir: Path) -> set[str]:
    listed = _pip(bin_dir, "list", "--format=json")
    return {entry["name"].lower().replace("_", "-") for entry in json.loads(listed)}


@pytest.mark.slow
def test_the_wheel_without_extras_is_a_working_client_and_nothing_more(
    client_only_bin: Path, tmp_path: Path
) -> None:
    installed = _installed_distributions(client_only_bin)
    assert "sandbox-sdk" in installed
    assert not installed & NOT_CLIENT_DISTRIBUTIONS, sorted(installed & NOT_CLIENT_DISTRIBUTIONS)

    # Nothing listens on a socket file that does not exist: UNAVAILABLE without a server.
    environment = _clean_environment(
        SANDBOX_TARGET=f"unix:{tmp_path / 'no-gateway.sock'}",
        SANDBOX_API_KEY="sk-unused",
        SANDBOX_DATA_DIR=str(tmp_path / "data"),
        SANDBOX_RETRY_MAX_ATTEMPTS="1",
        SANDBOX_TIMEOUT="10",
    )
    probe = subprocess.run(
        [client_only_bin / "python", "-c", CLIENT_PROBE],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        check=False,
    )
    assert probe.returncode == 0, probe.stderr
    result = json.loads(probe.stdout)
    assert result["sync"] == result["async"] == "UnavailableError"
    assert not set(result["modules"]) & NOT_CLIENT_MODULES


@pytest.mark.slow
@pytest.mark.parametrize(
    ("command", "extra"),
    [
        ("sandbox-sdk", "cli"),
        ("sandbox-gateway", "server"),
        ("sandbox-orchestrator", "server"),
    ],
)
def test_a_command_without_its_extra_names_the_install_that_fixes_it(
    client_only_bin: Path, command: str, extra: str
) -> None:
    ran = subprocess.run(
        [client_only_bin / command, "--help"],
        capture_output=True,
        text=True,
        check=False,
        env=_clean_environment(),
    )
    assert ran.returncode == 3, ran.stderr
    assert "Traceback" not in ran.stderr
    assert len(ran.stderr.strip().splitlines()) == 1, ran.stderr
    assert f"pip install 'sandbox-sdk[{extra}]'" in ran.stderr


@pytest.mark.slow
def test_the_command_line_runs_without_the_servers_and_serve_names_their_extra(
    client_only_bin: Path, tmp_path: Path
) -> None:
    # The cli extra's distributions beside the venv, not in it: the venv stays client-only.
    cli_extra = tmp_path / "cli-extra"
    _pip(client_only_bin, "install", "-q", "--target", cli_extra, "typer", "rich")
    environment = _clean_environment(PYTHONPATH=str(cli_extra))
    command_line = client_only_bin / "sandbox-sdk"

    helped = subprocess.run(
        [command_line, "--help"], capture_output=True, text=True, check=False, env=environment
    )
    assert helped.returncode == 0, helped.stderr
    assert "serve" in helped.stdout

    served = subprocess.run(
        [command_line, "serve", "--data-dir", tmp_path / "data"],
        capture_output=True,
        text=True,
        check=False,
        env=environment,
    )
    assert served.returncode == 3, served.stderr
    assert "Traceback" not in served.stderr
    assert "pip install 'sandbox-sdk[server]'" in served.stderr


def test_an_extra_is_missing_when_any_distribution_it_lists_is_not_installed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    requires = [
        "grpcio>=1.85.1",
        'psutil>=5.9; extra == "server"',
        'typer>=0.12; extra == "server"',
        'typer>=0.12; extra == "cli"',
        'llama-cpp-python[server]==0.3.36; extra == "dev"',
    ]
    installed = {"grpcio", "typer"}

    def distribution(name: str) -> object:
        if name not in installed:
            raise extras.metadata.PackageNotFoundError(name)
        return object()

    monkeypatch.setattr(extras.metadata, "requires", lambda _name: requires)
    monkeypatch.setattr(extras.metadata, "distribution", distribution)

    assert extras.missing_requirements("server") == ["psutil"]
    assert extras.missing_requirements("cli") == []
    assert extras.missing_requirements("dev") == ["llama-cpp-python"]
    with pytest.raises(ConfigError, match=r"pip install 'sandbox-sdk\[server\]'"):
        extras.require_extra("server", "sandbox-gateway")


def test_prometheus_metrics_without_the_metrics_extra_name_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # import now raises ImportError
    monkeypatch.setattr(rpc_metrics.PrometheusObserver, "_metrics", None)
    with pytest.raises(ConfigError, match=r"pip install 'sandbox-sdk\[metrics\]'"):
        rpc_metrics.observer_from_settings(MetricsSettings(prometheus=True))


def test_table_views_without_the_cli_extra_name_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "rich.table", None)  # import now raises ImportError
    info = ExperimentInfo(
        "exp-o1-0000000000000001", "env-o1-0000000000000001", ExperimentState.SUCCEEDED
    )
    results = ExperimentResults(experiment=info)
    with pytest.raises(ImportError, match=r"to_table needs rich.*sandbox-sdk\[cli\].*to_csv"):
        results.to_table()
    with pytest.raises(ImportError, match=r"metrics_table needs rich.*sandbox-sdk\[cli\]"):
        metrics_table([])
