"""Templates, snapshots and the complete file calls, through the sync and asyncio clients,
against the fake gateway."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from sdk_fake_templates import FakeTemplateGateway

from sandbox_sdk import (
    ArchiveError,
    AsyncSandboxClient,
    InvalidArgumentError,
    NotFoundError,
    SandboxClient,
    TemplateBuildFailedError,
    TemplateInUseError,
    TemplateSource,
    TemplateState,
)
from sandbox_sdk.api.v1 import template_pb2


@pytest.fixture
def gateway() -> FakeTemplateGateway:
    return FakeTemplateGateway()


def _tree(root: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(root)): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def test_build_template_sends_the_spec_and_waits_until_ready(
    client: SandboxClient, gateway: FakeTemplateGateway
) -> None:
    template = client.build_template(
        debian="bookworm",
        apt=["python3-numpy"],
        pip=["requests==2.32.3"],
        files={"/etc/app.conf": "a = 1\n", "/opt/run.sh": (b"#!/bin/sh\n", 0o755)},
        commands=["echo built > /etc/built", ["python3", "-c", "print(1)"]],
        env={"MODE": "test"},
        workdir="/workspace",
        memory="256Mi",
        name="numpy",
    )
    assert template.state is TemplateState.BUILDING
    request = gateway.calls("CreateTemplate")[0].request
    spec = request.spec
    assert spec.debian.suite == "bookworm"
    assert list(spec.apt_packages) == ["python3-numpy"]
    assert [(f.path, f.mode) for f in spec.files] == [
        ("/etc/app.conf", 0o644),
        ("/opt/run.sh", 0o755),
    ]
    assert list(spec.commands[0].argv) == ["/bin/sh", "-c", "echo built > /etc/built"]
    assert spec.defaults.env_vars["MODE"] == "test"
    assert spec.defaults.limits.memory_bytes == 256 << 20
    assert request.display_name == "numpy"
    assert request.request_id

    info = template.wait(timeout=10)
    assert info.is_ready
    assert info.name == "numpy"
    assert info.base == "debian:bookworm/minbase"
    assert list(template.logs(follow=False)) == ["step 1/2: base", "step 2/2: commands"]


def test_a_failed_build_raises_with_its_reason(client: SandboxClient) -> None:
    template = client.build_template(debian="bookworm", commands=[["false"]])
    with pytest.raises(TemplateBuildFailedError) as raised:
        template.wait(timeout=10)
    assert "command ['false'] exited 1" in str(raised.value)
    assert raised.value.metadata["template_id"] == template.id
    assert template.refresh().state is TemplateState.FAILED


def test_an_oci_archive_path_is_read_and_sent_with_its_digest(
    client: SandboxClient, gateway: FakeTemplateGateway, tmp_path: Path
) -> None:
    archive = tmp_path / "image.tar"
    archive.write_bytes(b"not really a tar, the fake does not care")
    client.build_template(oci_archive=archive)
    base = gateway.calls("CreateTemplate")[0].request.spec.oci_archive
    assert base.archive == archive.read_bytes()
    assert base.sha256 == hashlib.sha256(archive.read_bytes()).hexdigest()


@pytest.mark.parametrize(
    "arguments",
    [
        {},
        {"debian": "bookworm", "oci_archive": b"x"},
        {"oci_archive": "/nonexistent/image.tar"},
        {"debian": "bookworm", "apt": "python3-numpy"},
        {"debian": "bookworm", "files": {"relative/path": "x"}},
    ],
    ids=["no-base", "two-bases", "missing-archive", "apt-as-string", "relative-file"],
)
def test_bad_template_arguments_fail_before_any_call(
    client: SandboxClient, gateway: FakeTemplateGateway, arguments: dict[str, object]
) -> None:
    with pytest.raises(InvalidArgumentError) as raised:
        client.build_template(**arguments)  # type: ignore[arg-type]
    assert raised.value.field_violations
    assert not gateway.calls("CreateTemplate")


def test_build_events_resume_after_a_broken_stream(
    client: SandboxClient, gateway: FakeTemplateGateway
) -> None:
    template = client.build_template(debian="bookworm")
    gateway.break_template_stream_after = 1
    with template.events() as stream:
        sequences = [event.sequence for event in stream]
    assert sequences == [1, 2, 3]
    assert len(gateway.calls("StreamTemplateBuildEvents")) == 2


def test_templates_are_listed_across_pages_and_deleted_unless_in_use(
    client: SandboxClient, gateway: FakeTemplateGateway
) -> None:
    built = [client.build_template(debian="bookworm", name=f"t{i}") for i in range(3)]
    assert [t.id for t in client.list_templates(page_size=2)] == [t.id for t in built]
    assert len(gateway.calls("ListTemplates")) == 2
    assert client.get_template(built[0].id).info.name == "t0"

    sandbox = client.create_environment(template=built[0])
    assert gateway.environments[sandbox.id].spec.template == built[0].id
    with pytest.raises(TemplateInUseError, match=sandbox.id):
        client.delete_template(built[0].id)
    sandbox.delete()
    built[0].delete()
    client.delete_template(built[1].id)
    with pytest.raises(NotFoundError):
        client.get_template(built[0].id)


def test_a_snapshot_is_a_template_of_the_environment(
    client: SandboxClient, gateway: FakeTemplateGateway
) -> None:
    with client.create_environment(template="python-public") as sandbox:
        snapshot = sandbox.snapshot(name="prepared", include_workspace=True)
        request = gateway.calls("SnapshotEnvironment")[0].request
        assert request.include_workspace
        assert request.request_id
        info = snapshot.wait(timeout=10)
        assert info.source is TemplateSource.SNAPSHOT
        assert info.source_environment_id == sandbox.id
        assert info.parent_template_id == "python-public"
        assert client.create_environment(template=snapshot).info.is_running


def test_file_operations(client: SandboxClient) -> None:
    with client.create_environment() as sandbox:
        assert sandbox.make_dir("data/raw").is_dir
        sandbox.write_file("data/raw/a.txt", "alpha")
        assert sandbox.exists("data/raw/a.txt")
        assert not sandbox.exists("data/raw/missing.txt")
        assert sandbox.stat("data/raw/a.txt").size_bytes == 5
        with pytest.raises(NotFoundError, match="does not exist"):
            sandbox.stat("nope")
        moved = sandbox.rename("data/raw/a.txt", "data/b.txt")
        assert moved.path == "data/b.txt"
        assert sandbox.read_text("data/b.txt") == "alpha"
        assert sandbox.remove("data/b.txt")
        assert not sandbox.remove("data/b.txt")


def test_a_directory_round_trips_through_upload_and_download(
    client: SandboxClient, gateway: FakeTemplateGateway, tmp_path: Path
) -> None:
    source = tmp_path / "source"
    (source / "nested" / "deeper").mkdir(parents=True)
    (source / "top.txt").write_text("top")
    (source / "nested" / "deeper" / "blob.bin").write_bytes(bytes(range(256)) * 20)
    with client.create_environment() as sandbox:
        summary = sandbox.upload_dir(source, "project")
        assert (summary.files_written, summary.bytes_written) == (2, 3 + 256 * 20)
        assert len(gateway.uploaded[0]) > 5120  # it really went as a tar stream
        names = sandbox.download_dir("project", tmp_path / "back")
    assert "nested/deeper/blob.bin" in names
    assert _tree(tmp_path / "back") == _tree(source)


def test_a_download_never_writes_outside_its_directory(
    client: SandboxClient, gateway: FakeTemplateGateway, tmp_path: Path
) -> None:
    gateway.hostile_download = True
    target = tmp_path / "inside" / "target"
    with client.create_environment() as sandbox, pytest.raises(ArchiveError, match="unsafe"):
        sandbox.download_dir("", target)
    assert not (tmp_path / "inside" / "escaped.txt").exists()


def test_upload_dir_refuses_a_file(client: SandboxClient, tmp_path: Path) -> None:
    (tmp_path / "file.txt").write_text("x")
    with client.create_environment() as sandbox, pytest.raises(InvalidArgumentError):
        sandbox.upload_dir(tmp_path / "file.txt", "x")


async def test_the_asyncio_client_builds_snapshots_and_copies_directories(
    aclient: AsyncSandboxClient, gateway: FakeTemplateGateway, tmp_path: Path
) -> None:
    template = await aclient.build_template(debian="bookworm", name="async")
    assert (await template.wait(timeout=10)).is_ready
    lines = [line async for line in template.logs(follow=False)]
    assert lines == ["step 1/2: base", "step 2/2: commands"]
    assert [t.id async for t in aclient.list_templates()] == [template.id]
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.txt").write_text("async")
    async with await aclient.create_environment(template=template) as sandbox:
        await sandbox.upload_dir(tmp_path / "src", "in")
        assert await sandbox.exists("in/a.txt")
        await sandbox.download_dir("in", tmp_path / "out")
        snapshot = await sandbox.snapshot(name="s")
        assert snapshot.info.state is TemplateState.READY
    assert (tmp_path / "out" / "a.txt").read_text() == "async"
    assert gateway.templates[snapshot.id].source == template_pb2.TEMPLATE_SOURCE_SNAPSHOT
