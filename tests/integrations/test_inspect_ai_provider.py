"""The sandbox-sdk provider's own behaviour beyond inspect's self_check, on the real server:
its config file, users, the shell connection, chunked file transfers, output limits, and
cleanup of environments a sample or a crash left behind."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest
import sandbox_runtimes
import yaml
from e2e_support import EmbeddedStack
from inspect_ai.util import SandboxUnavailableError, SandboxUserUnsupportedError
from inspect_ai.util._sandbox.limits import override_max_exec_output_size

from sandbox_sdk import ConfigError, EnvironmentState
from sandbox_sdk.integrations.inspect_ai import SandboxSdkConfig, SandboxSdkEnvironment, files
from sandbox_sdk.integrations.inspect_ai.config import load_config_file
from sandbox_sdk.integrations.inspect_ai.environment import MANAGED_LABEL

TASK = "provider-test"


@pytest.fixture
def config(integration_stack: EmbeddedStack, api_key_file: Path) -> SandboxSdkConfig:
    return SandboxSdkConfig(target=integration_stack.target, api_key_file=str(api_key_file))


@pytest.fixture
async def environment(config: SandboxSdkConfig) -> AsyncIterator[SandboxSdkEnvironment]:
    environments = await SandboxSdkEnvironment.sample_init(TASK, config, {})
    try:
        made = environments["default"].as_type(SandboxSdkEnvironment)
        assert made.sandbox.info.runtime is sandbox_runtimes.current()
        yield made
    finally:
        await SandboxSdkEnvironment.sample_cleanup(TASK, config, environments, False)


def _write_yaml(path: Path, document: object) -> Path:
    path.write_text(yaml.safe_dump(document))
    return path


def test_a_config_file_gives_the_client_and_the_environments(
    tmp_path: Path, integration_stack: EmbeddedStack, api_key_file: Path
) -> None:
    path = _write_yaml(
        tmp_path / "sandbox-sdk.yaml",
        {
            "client": {"target": integration_stack.target, "api_key_file": str(api_key_file)},
            "environments": {"default": {"memory": "256Mi"}, "helper": {"pids": 32}},
        },
    )

    config = load_config_file(path)

    assert list(config.environments) == ["default", "helper"]
    assert config.environments["helper"].pids == 32
    settings = config.client_settings()
    assert settings.target == integration_stack.target
    assert settings.api_key_file == api_key_file


@pytest.mark.parametrize(
    ("document", "named"),
    [
        ({"environmentz": {}}, "environmentz"),
        ({"environments": {"default": {"memroy": "1Gi"}}}, "memroy"),
        ({"environments": {}}, "at least one environment"),
        (["not", "a", "mapping"], "YAML mapping"),
    ],
)
def test_a_bad_config_file_says_what_is_wrong(tmp_path: Path, document: object, named: str) -> None:
    path = _write_yaml(tmp_path / "bad.yaml", document)

    with pytest.raises(ConfigError, match=named):
        load_config_file(path)


def test_a_missing_config_file_says_how_to_name_one(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config_file(tmp_path / "absent.yaml")


@pytest.mark.isolation
async def test_commands_run_as_the_environments_own_user_only(
    environment: SandboxSdkEnvironment,
) -> None:
    own = (await environment.exec(["id", "-un"])).stdout.strip()

    assert (await environment.exec(["id", "-un"], user=own)).stdout.strip() == own
    with pytest.raises(SandboxUserUnsupportedError, match="unprivileged user"):
        await environment.exec(["id"], user="root")


@pytest.mark.isolation
async def test_the_connection_is_the_cli_shell_of_the_environment(
    environment: SandboxSdkEnvironment, config: SandboxSdkConfig
) -> None:
    connection = await environment.connection()

    assert connection.type == "sandbox-sdk"
    assert connection.command == (
        f"sandbox-sdk --target {config.target} env shell {environment.sandbox.id}"
    )


@pytest.mark.isolation
async def test_files_larger_than_a_chunk_travel_in_chunks(
    environment: SandboxSdkEnvironment, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(files, "CHUNK_BYTES", 1024 * 1024)
    contents = bytes(range(256)) * (10 * 1024 + 7)  # 2.5 MiB and a bit: three chunks

    await environment.write_file("/tmp/chunks/big.bin", contents)

    assert await environment.read_file("/tmp/chunks/big.bin", text=False) == contents


@pytest.mark.isolation
async def test_output_past_the_limit_keeps_its_end(environment: SandboxSdkEnvironment) -> None:
    with override_max_exec_output_size(1024):
        result = await environment.exec(["sh", "-c", "seq 1 2000"])

    assert len(result.stdout) == 1024
    assert result.stdout.endswith("1999\n2000\n")


@pytest.mark.isolation
async def test_text_that_is_not_utf8_raises_unicode_decode_error(
    environment: SandboxSdkEnvironment,
) -> None:
    await environment.write_file("latin1.txt", "café".encode("latin-1"))

    with pytest.raises(UnicodeDecodeError):
        await environment.read_file("latin1.txt", text=True)


@pytest.mark.isolation
async def test_a_deleted_environment_is_unavailable_not_a_failed_command(
    environment: SandboxSdkEnvironment,
) -> None:
    await environment.sandbox.delete()

    with pytest.raises(SandboxUnavailableError):
        await environment.exec(["true"])


@pytest.mark.isolation
async def test_an_interrupted_sample_still_deletes_its_environments(
    config: SandboxSdkConfig, integration_stack: EmbeddedStack
) -> None:
    environments = await SandboxSdkEnvironment.sample_init(TASK, config, {})
    sandbox = environments["default"].as_type(SandboxSdkEnvironment).sandbox

    with anyio.CancelScope() as scope:
        scope.cancel()  # the cleanup runs while its caller is being cancelled
        await SandboxSdkEnvironment.sample_cleanup(TASK, config, environments, True)

    async with integration_stack.async_client() as client:
        assert (await client.get_environment(sandbox.id)).state is EnvironmentState.TERMINATED


@pytest.mark.isolation
async def test_task_cleanup_deletes_environments_a_sample_left_behind(
    config: SandboxSdkConfig, integration_stack: EmbeddedStack
) -> None:
    await SandboxSdkEnvironment.task_init("startup", config)
    environments = await SandboxSdkEnvironment.sample_init(TASK, config, {})
    left = environments["default"].as_type(SandboxSdkEnvironment).sandbox

    await SandboxSdkEnvironment.task_cleanup("shutdown", config, True)

    async with integration_stack.async_client() as client:
        assert (await client.get_environment(left.id)).state is EnvironmentState.TERMINATED
        managed = [s async for s in client.list_environments(labels={MANAGED_LABEL: "true"})]
    assert managed == []
