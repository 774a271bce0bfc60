"""Where an orchestrator puts environments on the host by default: the parent cgroup and
the mount root come from SANDBOX_SDK_CGROUP_PARENT and SANDBOX_SDK_MOUNT_ROOT when set, so
two orchestrators on one host can keep apart; a value that is no cgroup name or no
absolute path is refused, naming the variable and what to do."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from sandbox_sdk.errors import ConfigError
from sandbox_sdk.server.orchestrator.sandbox.settings import (
    CGROUP_PARENT_VARIABLE,
    MOUNT_ROOT_VARIABLE,
    SandboxSettings,
)


def test_the_variables_set_the_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CGROUP_PARENT_VARIABLE, "sandbox-sdk-b")
    monkeypatch.setenv(MOUNT_ROOT_VARIABLE, "/run/sandbox-sdk-b")
    settings = SandboxSettings()
    assert settings.cgroup_parent == "sandbox-sdk-b"
    assert settings.mount_root == Path("/run/sandbox-sdk-b")


def test_unset_or_empty_variables_leave_the_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(CGROUP_PARENT_VARIABLE, raising=False)
    monkeypatch.setenv(MOUNT_ROOT_VARIABLE, "")
    settings = SandboxSettings()
    assert settings.cgroup_parent == "sandbox-sdk"
    assert settings.mount_root == Path("/run/sandbox-sdk")


def test_the_configuration_file_wins_over_the_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CGROUP_PARENT_VARIABLE, "from-the-environment")
    monkeypatch.setenv(MOUNT_ROOT_VARIABLE, "relative/is/refused/but/unused")
    settings = SandboxSettings.model_validate({"cgroup_parent": "mine", "mount_root": "/srv/m"})
    assert settings.cgroup_parent == "mine"
    assert settings.mount_root == Path("/srv/m")


@pytest.mark.parametrize(
    "hostile", ["../../..", "..", ".", "a/b", "/sys/fs/cgroup", "x\nmemory", "a b", "é"]
)
def test_a_parent_that_is_no_cgroup_name_is_refused(
    monkeypatch: pytest.MonkeyPatch, hostile: str
) -> None:
    monkeypatch.setenv(CGROUP_PARENT_VARIABLE, hostile)
    with pytest.raises(ConfigError, match=rf"{CGROUP_PARENT_VARIABLE}=.*unset it for"):
        SandboxSettings()


@pytest.mark.parametrize("hostile", ["run/sandbox-sdk", "./x", "~/mounts"])
def test_a_mount_root_that_is_no_absolute_path_is_refused(
    monkeypatch: pytest.MonkeyPatch, hostile: str
) -> None:
    monkeypatch.setenv(MOUNT_ROOT_VARIABLE, hostile)
    with pytest.raises(ConfigError, match=rf"{MOUNT_ROOT_VARIABLE}=.*unset it for"):
        SandboxSettings()


@pytest.mark.parametrize("hostile", ["..", ".", "a/b", "../etc"])
def test_a_configured_parent_that_is_no_cgroup_name_is_refused(hostile: str) -> None:
    with pytest.raises(ValidationError, match="cgroup_parent"):
        SandboxSettings.model_validate({"cgroup_parent": hostile})
