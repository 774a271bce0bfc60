"""Templates, snapshots and the complete file calls through the SDK and the CLI, against the
real embedded server: a tiny OCI image archive (the host's static busybox, and a layer with
a whiteout) built into a template, environments from it, a snapshot, files and directories
copied both ways, and `sandbox-sdk template build|ls|rm --json`."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from e2e_support import EmbeddedStack, unique_tenant
from oci_images import write_busybox_image
from typer.testing import CliRunner, Result

from sandbox_sdk import (
    AsyncSandboxClient,
    SandboxClient,
    Template,
    TemplateBuildFailedError,
    TemplateInUseError,
    TemplateState,
)
from sandbox_sdk.cli.main import app

pytestmark = pytest.mark.skipif(
    not Path("/bin/busybox").exists() or shutil.which("umoci") is None,
    reason="needs a static busybox and umoci (make install brings both)",
)
BUILD_TIMEOUT = 120.0


@pytest.fixture
def tenant(stack: EmbeddedStack) -> Iterator[SandboxClient]:
    """A fresh tenant's client: its templates and environments are this test's only."""
    with stack.client(api_key=stack.tenant_key(unique_tenant("tpl"))) as client:
        yield client
        for sandbox in client.list_environments():
            sandbox.delete()
        for template in client.list_templates(include_public=False):
            template.delete()


@pytest.fixture
def image(tmp_path: Path) -> Path:
    return write_busybox_image(tmp_path / "busybox-oci.tar", whited_out="gone.txt")


def _built(client: SandboxClient, image: Path, **options: object) -> Template:
    template = client.build_template(oci_archive=image, **options)  # type: ignore[arg-type]
    template.wait(timeout=BUILD_TIMEOUT)
    return template


def test_an_oci_template_builds_and_environments_start_from_it(
    tenant: SandboxClient, image: Path
) -> None:
    template = _built(
        tenant, image, commands=["echo built > /etc/built"], env={"GREETING": "hi"}, name="bb"
    )
    assert template.info.state is TemplateState.READY
    assert template.info.base.startswith("oci-archive:")
    assert list(template.logs(follow=False))  # the build said what it did
    with tenant.create_environment(template=template) as sandbox:
        assert sandbox.info.is_running
        assert sandbox.info.template_id == template.id
        shown = sandbox.exec(
            ["/bin/sh", "-c", "cat /etc/built /etc/keep.txt /etc/added.txt; echo $GREETING; "
             "if test -e /etc/gone.txt; then echo GONE-IS-THERE; fi"],
        )  # fmt: skip
        assert shown.exit_code == 0, shown.stderr
        assert shown.stdout.split() == ["built", "kept", "added", "hi"]
        with pytest.raises(TemplateInUseError, match=sandbox.id):
            template.delete()
    template.delete()
    assert template.id not in [t.id for t in tenant.list_templates(include_public=False)]


def test_a_failing_build_command_fails_the_build_with_its_reason(
    tenant: SandboxClient, image: Path
) -> None:
    template = tenant.build_template(oci_archive=image, commands=[["/bin/sh", "-c", "exit 7"]])
    with pytest.raises(TemplateBuildFailedError) as raised:
        template.wait(timeout=BUILD_TIMEOUT)
    assert template.id in str(raised.value)
    assert template.refresh().state is TemplateState.FAILED


def test_a_snapshot_carries_the_workspace_into_new_environments(
    tenant: SandboxClient, image: Path
) -> None:
    template = _built(tenant, image)
    with tenant.create_environment(template=template) as sandbox:
        sandbox.write_file("notes/prepared.txt", "ready\n")
        snapshot = sandbox.snapshot(name="prepared", include_workspace=True)
        snapshot.wait(timeout=BUILD_TIMEOUT)
    with tenant.create_environment(template=snapshot) as again:
        assert again.read_text("notes/prepared.txt") == "ready\n"
        assert again.exec(["/bin/cat", "/etc/keep.txt"]).stdout == "kept\n"


def test_files_and_directories_both_ways(tenant: SandboxClient, tmp_path: Path) -> None:
    source = tmp_path / "project"
    (source / "src" / "pkg").mkdir(parents=True)
    (source / "README").write_text("hello\n")
    (source / "src" / "pkg" / "data.bin").write_bytes(bytes(range(256)) * 8192)  # 2 MiB
    (source / "link").symlink_to("README")
    with tenant.create_environment() as sandbox:
        summary = sandbox.upload_dir(source, "work")
        assert summary.files_written == 2
        assert sandbox.stat("work/src/pkg/data.bin").size_bytes == 256 * 8192
        assert sandbox.stat("work/link").is_symlink
        assert sandbox.make_dir("work/out/deep").is_dir
        moved = sandbox.rename("work/README", "work/out/README")
        assert moved.path == "work/out/README"
        assert not sandbox.exists("work/README")
        assert sandbox.remove("work/src", recursive=True)
        assert not sandbox.remove("work/src", recursive=True)
        names = sandbox.download_dir("work", tmp_path / "back")
    assert "out/README" in names
    assert (tmp_path / "back" / "out" / "README").read_text() == "hello\n"
    assert not (tmp_path / "back" / "src").exists()


@pytest.fixture
def cli(stack: EmbeddedStack, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Result]:
    monkeypatch.setenv("SANDBOX_TARGET", stack.target)
    monkeypatch.setenv("SANDBOX_API_KEY", stack.tenant_key(unique_tenant("tplcli")))
    runner = CliRunner()

    def invoke(*args: str) -> Result:
        return runner.invoke(app, list(args), catch_exceptions=False)

    return invoke


def test_cli_template_build_ls_rm(cli: Callable[..., Result], image: Path) -> None:
    spec = image.parent / "template.yaml"
    spec.write_text(
        f"name: cli-bb\noci_archive: {image.name}\ncommands:\n  - echo cli > /etc/cli.txt\n"
    )
    built = cli("template", "build", str(spec), "--json")
    assert built.exit_code == 0, built.output
    template = json.loads(built.stdout)
    assert template["state"] == "READY"

    listed = cli("template", "ls", "--json", "--no-public")
    assert template["id"] in [json.loads(line)["id"] for line in listed.stdout.splitlines()]
    environment = cli("env", "create", "--template", template["id"])
    assert environment.exit_code == 0, environment.output
    shown = cli("env", "exec", environment.stdout.strip(), "--", "/bin/cat", "/etc/cli.txt")
    assert shown.stdout == "cli\n"
    assert cli("env", "rm", environment.stdout.strip()).exit_code == 0
    removed = cli("template", "rm", template["id"], "--json")
    assert removed.exit_code == 0, removed.output
    assert cli("template", "show", template["id"]).exit_code == 6


async def test_the_asyncio_client_builds_and_copies_directories(
    async_client: AsyncSandboxClient, image: Path, tmp_path: Path
) -> None:
    (tmp_path / "src" / "sub").mkdir(parents=True)
    (tmp_path / "src" / "sub" / "a.txt").write_text("async\n")
    template = await async_client.build_template(oci_archive=image, name="async-bb")
    await template.wait(timeout=BUILD_TIMEOUT)
    try:
        async with await async_client.create_environment(template=template) as sandbox:
            summary = await sandbox.upload_dir(tmp_path / "src", "in")
            assert summary.files_written == 1
            assert (await sandbox.exec("cat in/sub/a.txt")).stdout == "async\n"
            names = await sandbox.download_dir("in", tmp_path / "out")
        assert "sub/a.txt" in names
        assert (tmp_path / "out" / "sub" / "a.txt").read_text() == "async\n"
    finally:
        await template.delete()
