"""``sandbox-sdk template ...``, ``env snapshot``, ``env create --template`` and the file
commands, with typer's CliRunner against the fake gateway."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import typer
from sdk_fake_gateway import API_KEY, FakeServer
from sdk_fake_templates import FakeTemplateGateway
from typer.testing import CliRunner, Result

from sandbox_sdk.cli.main import app
from sandbox_sdk.cli.template_spec_file import read_spec_file

Cli = Callable[..., Result]
runner = CliRunner()


@pytest.fixture
def gateway() -> FakeTemplateGateway:
    return FakeTemplateGateway()


@pytest.fixture
def cli(server: FakeServer, monkeypatch: pytest.MonkeyPatch) -> Cli:
    monkeypatch.setenv("SANDBOX_TARGET", server.target)
    monkeypatch.setenv("SANDBOX_API_KEY", API_KEY)
    monkeypatch.setenv("SANDBOX_RETRY_MAX_ATTEMPTS", "1")
    monkeypatch.delenv("SANDBOX_CONFIG", raising=False)

    def invoke(*args: str) -> Result:
        return runner.invoke(app, list(args))

    return invoke


SPEC = """
name: tools
debian: {suite: bookworm, variant: minbase}
apt: [jq]
files:
  /etc/app.conf: "a = 1"
  /opt/run.sh: {from: run.sh, mode: 0755}
commands:
  - echo built > /etc/built
  - [jq, --version]
env: {MODE: test}
workdir: /workspace
limits: {memory: 128Mi, pids: 32}
"""


def test_template_build_ls_show_rm(cli: Cli, gateway: FakeTemplateGateway, tmp_path: Path) -> None:
    (tmp_path / "run.sh").write_text("#!/bin/sh\necho run\n")
    spec = tmp_path / "template.yaml"
    spec.write_text(SPEC)

    built = cli("template", "build", str(spec), "--json")
    assert built.exit_code == 0, built.output
    info = json.loads(built.stdout)
    assert info["state"] == "READY"
    assert info["name"] == "tools"
    assert "step 1/2: base" in built.stderr
    sent = gateway.calls("CreateTemplate")[0].request.spec
    assert [(f.path, f.mode) for f in sent.files][1] == ("/opt/run.sh", 0o755)
    assert sent.defaults.limits.max_pids == 32

    listed = cli("template", "ls", "--json")
    assert [json.loads(line)["id"] for line in listed.stdout.splitlines()] == [info["id"]]
    assert "tools" in cli("template", "show", info["id"]).stdout
    assert json.loads(cli("template", "show", info["id"], "--json").stdout)["apt_packages"] == [
        "jq"
    ]
    assert "step 2/2" in cli("template", "logs", info["id"]).stdout

    environment = cli("env", "create", "--template", info["id"])
    assert environment.exit_code == 0, environment.output
    in_use = cli("template", "rm", info["id"])
    assert in_use.exit_code == 8, in_use.output
    assert environment.stdout.strip() in in_use.output
    assert cli("env", "rm", environment.stdout.strip()).exit_code == 0
    removed = cli("template", "rm", info["id"], "--json")
    assert removed.exit_code == 0, removed.output
    assert json.loads(removed.stdout) == {"id": info["id"], "deleted": True}
    assert cli("template", "show", info["id"]).exit_code == 6


def test_a_failed_build_exits_18_with_its_reason(cli: Cli, tmp_path: Path) -> None:
    spec = tmp_path / "failing.yaml"
    spec.write_text('debian: bookworm\ncommands: [["false"]]\n')
    failed = cli("template", "build", str(spec))
    assert failed.exit_code == 18, failed.output
    assert "command ['false'] exited 1" in failed.stderr
    assert failed.stderr.count("error:") == 1


def test_env_snapshot_prints_the_new_template(cli: Cli, gateway: FakeTemplateGateway) -> None:
    environment_id = cli("env", "create").stdout.strip()
    snapshot = cli("env", "snapshot", environment_id, "--name", "prepared", "--include-workspace")
    assert snapshot.exit_code == 0, snapshot.output
    template = gateway.templates[snapshot.stdout.strip()]
    assert template.display_name == "prepared"
    assert gateway.calls("SnapshotEnvironment")[0].request.include_workspace
    as_json = cli("env", "snapshot", environment_id, "--json")
    assert json.loads(as_json.stdout)["source"] == "SNAPSHOT"


def test_file_commands(cli: Cli, gateway: FakeTemplateGateway, tmp_path: Path) -> None:
    environment_id = cli("env", "create").stdout.strip()
    made = cli("env", "mkdir", f"{environment_id}:data", "--json")
    assert made.exit_code == 0, made.output
    assert json.loads(made.stdout)["is_dir"] is True

    source = tmp_path / "src"
    (source / "sub").mkdir(parents=True)
    (source / "sub" / "a.txt").write_text("alpha")
    uploaded = cli("env", "upload-dir", str(source), f"{environment_id}:data", "--json")
    assert uploaded.exit_code == 0, uploaded.output
    assert json.loads(uploaded.stdout) == {"files_written": 1, "bytes_written": 5}
    assert gateway.files[environment_id]["data/sub/a.txt"] == b"alpha"

    stat = cli("env", "stat", f"{environment_id}:data/sub/a.txt", "--json")
    assert json.loads(stat.stdout)["size_bytes"] == 5
    moved = cli("env", "mv", f"{environment_id}:data/sub/a.txt", "data/b.txt")
    assert moved.exit_code == 0, moved.output
    downloaded = cli("env", "download-dir", f"{environment_id}:data", str(tmp_path / "back"))
    assert downloaded.exit_code == 0, downloaded.output
    assert (tmp_path / "back" / "b.txt").read_text() == "alpha"

    assert cli("env", "rm-file", f"{environment_id}:data", "--json").exit_code == 8
    removed = cli("env", "rm-file", "-r", f"{environment_id}:data", "--json")
    assert json.loads(removed.stdout) == {"path": "data", "removed": True}
    assert cli("env", "stat", f"{environment_id}:data").exit_code == 6
    assert cli("env", "mkdir", "no-colon").exit_code == 2
    assert cli("env", "upload-dir", str(tmp_path / "absent"), f"{environment_id}:x").exit_code == 17


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("debian: bookworm\nbogus: 1\n", "unknown keys ['bogus']"),
        ("debian: bookworm\napt: jq\n", "apt must be a list of strings"),
        ("debian: bookworm\nfiles: {/a: {from: missing.txt}}\n", "cannot read"),
        ("debian: bookworm\nlimits: {gpus: 1}\n", "unknown limits ['gpus']"),
        ("- not a mapping\n", "must be a mapping"),
        ("debian: [unclosed\n", "not valid YAML"),
    ],
)
def test_spec_file_mistakes_are_usage_errors(tmp_path: Path, text: str, complaint: str) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(text)
    with pytest.raises(typer.BadParameter, match=complaint.replace("[", r"\[")):
        read_spec_file(spec)


def test_an_oci_archive_in_a_spec_is_relative_to_the_spec(tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text("oci_archive: image.tar\ncommands: [echo hi]\n")
    assert read_spec_file(spec) == {
        "oci_archive": tmp_path / "image.tar",
        "commands": ["echo hi"],
    }
