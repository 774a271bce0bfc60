"""A sample's environments under the runtime the provider config names, through the same
operator policy as any other create (the server resolves it; the provider only passes it)."""

from __future__ import annotations

from pathlib import Path

import pytest
import sandbox_runtimes
import yaml
from e2e_support import EmbeddedStack

from sandbox_sdk import ConfigError
from sandbox_sdk.integrations.inspect_ai import SandboxSdkConfig, SandboxSdkEnvironment
from sandbox_sdk.integrations.inspect_ai.config import EnvironmentOptions, load_config_file

TASK = "runtime-test"


@pytest.mark.isolation
async def test_a_sample_environment_runs_under_the_runtime_its_config_names(
    integration_stack: EmbeddedStack, api_key_file: Path
) -> None:
    # Another runtime than the server's default where one is installed, so the config decides.
    others = [r for r in sandbox_runtimes.installed() if r is not sandbox_runtimes.current()]
    named = others[0] if others else sandbox_runtimes.current()
    config = SandboxSdkConfig(
        target=integration_stack.target,
        api_key_file=str(api_key_file),
        environments={"default": EnvironmentOptions(runtime=named.value.lower())},
    )
    environments = await SandboxSdkEnvironment.sample_init(TASK, config, {})
    try:
        default = environments["default"].as_type(SandboxSdkEnvironment)
        assert default.sandbox.info.runtime is named
    finally:
        await SandboxSdkEnvironment.sample_cleanup(TASK, config, environments, False)


def test_an_unknown_runtime_in_the_config_file_names_the_choices(tmp_path: Path) -> None:
    path = tmp_path / "sandbox-sdk.yaml"
    path.write_text(yaml.safe_dump({"environments": {"default": {"runtime": "firecracker"}}}))
    with pytest.raises(ConfigError, match="'bubblewrap' or 'gvisor'"):
        load_config_file(path)
