"""Every ```python example in README.md runs against the embedded server.

Each block runs on its own, in order, in a fresh namespace, from a directory
holding the README's client ``config.yaml`` (its ```yaml block of client
settings) with the test server's data dir; SANDBOX_DATA_DIR says the same. With
no target and no key set, as on the machine running `sandbox-sdk serve`, the SDK
talks to the server's Unix socket in that data dir with the local admin key.
Environments a block leaves behind are deleted afterwards.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from e2e_support import EmbeddedStack
from oci_images import write_busybox_image

from sandbox_sdk import ClientSettings, SandboxClient
from sandbox_sdk.server.embedded import ServerConfigFile
from sandbox_sdk.server.gateway.config import GatewayConfig
from sandbox_sdk.server.orchestrator.config import OrchestratorConfig

README = Path(__file__).resolve().parents[2] / "README.md"
_FENCED = re.compile(r"^```(?P<lang>[\w+-]*)[^\n]*\n(?P<body>.*?)^```[ \t]*$", re.M | re.S)


def _blocks(language: str) -> list[tuple[int, str]]:
    """(line number, code) of each fenced block of ``language`` in the README."""
    text = README.read_text(encoding="utf-8")
    return [
        (text.count("\n", 0, match.start()) + 1, match.group("body"))
        for match in _FENCED.finditer(text)
        if match.group("lang").lower() == language
    ]


_CLIENT_KEYS = frozenset(ClientSettings.model_fields)


def _client_config(stack: EmbeddedStack) -> dict[str, Any]:
    """The README's client config.yaml, if it shows one, with the test server's data dir."""
    config: dict[str, Any] = {}
    for _, body in _blocks("yaml"):
        loaded = yaml.safe_load(body)
        if isinstance(loaded, dict) and loaded and set(loaded) <= _CLIENT_KEYS:
            config = loaded
            break
    assert "target" not in config, "the README's config.yaml should use the default target"
    config["data_dir"] = str(stack.data_dir)
    config.pop("api_key", None)
    config.pop("api_key_file", None)
    return config


PYTHON_BLOCKS = _blocks("python")


@pytest.fixture
def readme_directory(stack: EmbeddedStack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory with the README's config.yaml, the image.tar its template example
    builds from, and the environment variables set."""
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(_client_config(stack)))
    write_busybox_image(tmp_path / "image.tar")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SANDBOX_DATA_DIR", str(stack.data_dir))
    return tmp_path


@pytest.mark.parametrize(
    ("line", "code"),
    PYTHON_BLOCKS or [pytest.param(0, "", marks=pytest.mark.skip("README.md has no python yet"))],
    ids=[f"README.md:{line}" for line, _ in PYTHON_BLOCKS] or ["no-python-blocks"],
)
@pytest.mark.usefixtures("readme_directory")
def test_readme_python_example_runs(line: int, code: str, client: SandboxClient) -> None:
    before = {sandbox.id for sandbox in client.list_environments()}
    namespace: dict[str, Any] = {"__name__": "__main__"}
    try:
        exec(compile(code, f"README.md:{line}", "exec"), namespace)  # noqa: S102
    finally:
        for value in namespace.values():
            if isinstance(value, SandboxClient):
                value.close()
        for sandbox in client.list_environments():
            if sandbox.id not in before:
                sandbox.delete()


def test_readme_server_config_example_is_valid() -> None:
    """The deployment YAML in README.md passes the services' own config validation."""
    server_configs = [
        loaded
        for _, body in _blocks("yaml")
        if isinstance(loaded := yaml.safe_load(body), dict) and "gateway" in loaded
    ]
    assert server_configs, "README.md shows no server config with a gateway: section"
    for loaded in server_configs:
        sections = ServerConfigFile.model_validate(loaded)
        GatewayConfig.model_validate(sections.gateway)
        OrchestratorConfig.model_validate(sections.orchestrator)
