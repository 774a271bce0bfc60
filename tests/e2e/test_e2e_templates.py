"""Templates and snapshots through the gateway's gRPC API, against the real embedded server.

The Debian template comes from the build cache shared by test runs
(``$SANDBOX_SDK_TEMPLATE_CACHE``, default ``~/.cache/sandbox-sdk/templates``): the
orchestrator's template store is that directory, so only the first run builds it.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from e2e_support import EmbeddedStack, unique_tenant
from oci_images import busybox_layers, oci_archive

from sandbox_sdk.api.v1 import (
    environment_pb2,
    gateway_service_pb2_grpc,
    requests_pb2,
    template_pb2,
)
from sandbox_sdk.errors import ErrorReason, SandboxError, from_rpc_error
from sandbox_sdk.server.orchestrator.templates.build_log import MAX_LINES

pytestmark = pytest.mark.skipif(
    not Path("/bin/busybox").exists() or shutil.which("umoci") is None or os.geteuid() != 0,
    reason="needs root (overlay mounts), a static busybox and umoci (make install brings them)",
)
BUILD_TIMEOUT = 900.0


def _cache_root() -> Path:
    configured = os.environ.get("SANDBOX_SDK_TEMPLATE_CACHE")
    return Path(configured) if configured else Path.home() / ".cache/sandbox-sdk/templates"


class Api:
    """One tenant's view of the gateway's raw gRPC API."""

    def __init__(self, stack: EmbeddedStack, tenant: str) -> None:
        self.channel = grpc.insecure_channel(stack.target)
        self.stub = gateway_service_pb2_grpc.GatewayServiceStub(self.channel)
        self.metadata = (("authorization", f"Bearer {stack.tenant_key(tenant)}"),)

    def __call__(self, name: str, request: Any, timeout: float = 120.0) -> Any:
        try:
            return getattr(self.stub, name)(request, metadata=self.metadata, timeout=timeout)
        except grpc.RpcError as error:
            raise from_rpc_error(error) from error

    def events(self, template_id: str, after: int = 0, follow: bool = True) -> list[Any]:
        request = requests_pb2.StreamTemplateBuildEventsRequest(
            template_id=template_id, after_sequence=after, follow=follow
        )
        stream = self.stub.StreamTemplateBuildEvents(
            request, metadata=self.metadata, timeout=BUILD_TIMEOUT
        )
        return [response.event for response in stream]

    def build(self, spec: template_pb2.TemplateSpec) -> template_pb2.Template:
        created = self("CreateTemplate", requests_pb2.CreateTemplateRequest(spec=spec)).template
        self.events(created.id)  # follows the build to its end
        template = self("GetTemplate", requests_pb2.GetTemplateRequest(template_id=created.id))
        assert template.template.state == template_pb2.TEMPLATE_STATE_READY, template
        return template.template

    def create(self, template: str, **spec: Any) -> str:
        request = requests_pb2.CreateEnvironmentRequest(
            spec=environment_pb2.EnvironmentSpec(template=template, **spec)
        )
        environment = self("CreateEnvironment", request).environment
        assert environment.state == environment_pb2.ENVIRONMENT_STATE_RUNNING, environment
        return str(environment.id)

    def sh(self, environment_id: str, script: str) -> tuple[int, str]:
        request = requests_pb2.ExecCommandRequest(
            environment_id=environment_id, argv=["sh", "-c", script]
        )
        out = b""
        code = -1
        for event in self.stub.ExecCommand(request, metadata=self.metadata, timeout=60):
            out += event.stdout + event.stderr
            if event.HasField("exited"):
                code = event.exited.exit_code
        return code, out.decode()

    def delete(self, environment_id: str) -> None:
        self(
            "DeleteEnvironment",
            requests_pb2.DeleteEnvironmentRequest(environment_id=environment_id),
        )


@pytest.fixture(scope="module")
def templates_stack(
    background_loop: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[EmbeddedStack]:
    config = {
        "orchestrator": {
            "templates": {"cache_dir": str(_cache_root()), "snapshot_quota_bytes": 64 << 20}
        }
    }
    root = tmp_path_factory.mktemp("templates")
    stack = EmbeddedStack.start(background_loop, root / "data", config)
    yield stack
    stack.stop()


@pytest.fixture
def api(templates_stack: EmbeddedStack) -> Iterator[Api]:
    made = Api(templates_stack, unique_tenant("tpl"))
    yield made
    made.channel.close()


# --- a tiny OCI image ------------------------------------------------------------------------


def busybox_image(marker: str = "") -> bytes:
    """An OCI layout tarball: busybox and two files, then a layer whiting one out."""
    layers = busybox_layers(extra_files={"etc/marker.txt": marker.encode()})
    return oci_archive(layers, ["PATH=/bin", "GREETING=hello"], ref_name=None)


def oci_spec(marker: str = "") -> template_pb2.TemplateSpec:
    return template_pb2.TemplateSpec(
        oci_archive=template_pb2.OciArchiveBase(archive=busybox_image(marker)),
        defaults=template_pb2.TemplateDefaults(env_vars={"FROM_TEMPLATE": "yes"}),
    )


# --- tests -----------------------------------------------------------------------------------


def test_oci_template_with_a_whiteout_and_its_defaults(api: Api) -> None:
    template = api.build(oci_spec())
    assert template.id.startswith("tpl-")
    assert template.size_bytes > 0
    environment_id = api.create(template.id, env_vars={"GREETING": "mine"})
    code, out = api.sh(
        environment_id,
        "cat /etc/keep.txt /etc/added.txt; test -e /etc/secret.txt && echo present;"
        " echo $FROM_TEMPLATE $GREETING",
    )
    assert code == 0, out
    assert out.splitlines() == ["kept", "added", "yes mine"]
    read = api("GetEnvironment", requests_pb2.GetEnvironmentRequest(environment_id=environment_id))
    assert read.environment.template_id == template.id
    assert read.environment.spec.template == template.id
    api.delete(environment_id)


def test_the_same_spec_returns_the_same_template(api: Api) -> None:
    first = api.build(oci_spec())
    again = api("CreateTemplate", requests_pb2.CreateTemplateRequest(spec=oci_spec())).template
    assert again.id == first.id


def test_two_environments_do_not_see_each_others_writes(api: Api) -> None:
    template = api.build(oci_spec())
    first, second = api.create(template.id), api.create(template.id)
    assert api.sh(first, "echo one > /tmp/x; echo one > /workspace/x")[0] == 0
    _code, out = api.sh(second, "cat /tmp/x /workspace/x 2>&1; ls /workspace")
    assert "one" not in out
    api.delete(first)
    api.delete(second)


def test_a_snapshot_carries_files_into_a_new_environment(api: Api) -> None:
    template = api.build(oci_spec())
    source = api.create(template.id)
    assert api.sh(source, "echo carried > /workspace/note.txt")[0] == 0
    snapshot = api(
        "SnapshotEnvironment",
        requests_pb2.SnapshotEnvironmentRequest(
            environment_id=source, include_workspace=True, display_name="snap"
        ),
    ).template
    assert snapshot.state == template_pb2.TEMPLATE_STATE_READY
    assert snapshot.source == template_pb2.TEMPLATE_SOURCE_SNAPSHOT
    assert snapshot.parent_template_id == template.id
    api.delete(source)
    copy = api.create(snapshot.id)
    code, out = api.sh(copy, "cat /workspace/note.txt /etc/keep.txt")
    assert (code, out.split()) == (0, ["carried", "kept"])
    api.delete(copy)
    api("DeleteTemplate", requests_pb2.DeleteTemplateRequest(template_id=snapshot.id))


def test_deleting_a_template_in_use_is_refused(api: Api) -> None:
    template = api.build(oci_spec("in-use"))
    environment_id = api.create(template.id)
    with pytest.raises(SandboxError) as refused:
        api("DeleteTemplate", requests_pb2.DeleteTemplateRequest(template_id=template.id))
    assert refused.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert refused.value.reason == ErrorReason.TEMPLATE_IN_USE
    assert environment_id in str(refused.value)
    api.delete(environment_id)
    api("DeleteTemplate", requests_pb2.DeleteTemplateRequest(template_id=template.id))
    api("DeleteTemplate", requests_pb2.DeleteTemplateRequest(template_id=template.id))  # again


def test_another_tenant_cannot_see_or_use_a_template(
    api: Api, templates_stack: EmbeddedStack
) -> None:
    template = api.build(oci_spec())
    other = Api(templates_stack, unique_tenant("other"))
    for call, request in (
        ("GetTemplate", requests_pb2.GetTemplateRequest(template_id=template.id)),
        ("DeleteTemplate", requests_pb2.DeleteTemplateRequest(template_id=template.id)),
        (
            "CreateEnvironment",
            requests_pb2.CreateEnvironmentRequest(
                spec=environment_pb2.EnvironmentSpec(template=template.id)
            ),
        ),
    ):
        with pytest.raises(SandboxError) as refused:
            other(call, request)
        assert refused.value.code == grpc.StatusCode.NOT_FOUND, call
    listed = other("ListTemplates", requests_pb2.ListTemplatesRequest()).templates
    assert template.id not in {t.id for t in listed}
    mine = api("ListTemplates", requests_pb2.ListTemplatesRequest()).templates
    assert template.id in {t.id for t in mine}
    other.channel.close()


def test_build_events_resume_from_a_sequence(api: Api) -> None:
    created = api("CreateTemplate", requests_pb2.CreateTemplateRequest(spec=oci_spec("events")))
    everything = api.events(created.template.id)
    sequences = [event.sequence for event in everything]
    assert sequences == list(range(1, len(sequences) + 1))
    assert everything[0].state_change.state == template_pb2.TEMPLATE_STATE_BUILDING
    assert everything[-1].state_change.state == template_pb2.TEMPLATE_STATE_READY
    assert any(event.log for event in everything)
    resumed = api.events(created.template.id, after=2)
    assert [event.sequence for event in resumed] == sequences[2:]


def test_inline_archives_are_not_kept_on_the_orchestrators_disk(
    api: Api, templates_stack: EmbeddedStack
) -> None:
    # A tenant must not be able to fill the host's disk with archives: neither a refused
    # spec, nor a repeat of a built one, nor a finished build leaves its archive behind.
    archives = next(templates_stack.data_dir.rglob("template-archives"))
    refused = oci_spec("refused")
    refused.apt_packages.append("-oAPT::Evil=1")
    with pytest.raises(SandboxError):
        api("CreateTemplate", requests_pb2.CreateTemplateRequest(spec=refused))
    built = api.build(oci_spec("kept-nowhere"))
    again = api("CreateTemplate", requests_pb2.CreateTemplateRequest(spec=oci_spec("kept-nowhere")))
    assert again.template.id == built.id
    assert list(archives.iterdir()) == []


def test_a_build_that_prints_without_end_keeps_a_bounded_log(api: Api) -> None:
    # A marker of its own: the template cache outlives test runs, and a cached build logs
    # nothing but that it is already built.
    spec = oci_spec(f"chatty-{uuid.uuid4().hex}")
    flood = "i=0; while [ $i -lt 25000 ]; do echo line $i; i=$((i+1)); done"
    spec.commands.append(template_pb2.TemplateCommand(argv=["/bin/sh", "-c", flood]))
    template = api.build(spec)
    logs = [event.log for event in api.events(template.id) if event.HasField("log")]
    assert len(logs) <= MAX_LINES + 1
    assert "more lines were not kept" in logs[-1]


def test_bad_specs_are_invalid_arguments_naming_the_fields(api: Api) -> None:
    spec = template_pb2.TemplateSpec(
        debian=template_pb2.DebianBase(suite="Bookworm!", variant="huge"),
        apt_packages=["-oAPT::Evil=1"],
        files=[template_pb2.TemplateFile(path="../etc/passwd", content=b"x")],
    )
    with pytest.raises(SandboxError) as refused:
        api("CreateTemplate", requests_pb2.CreateTemplateRequest(spec=spec))
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
    fields = {violation.field for violation in refused.value.field_violations}
    assert {
        "spec.base.suite",
        "spec.base.variant",
        "spec.apt_packages[0]",
        "spec.files[0].path",
    } <= fields
    with pytest.raises(SandboxError) as no_base:
        api("CreateTemplate", requests_pb2.CreateTemplateRequest(spec=template_pb2.TemplateSpec()))
    assert {v.field for v in no_base.value.field_violations} == {"spec.base"}


@pytest.mark.skipif(shutil.which("mmdebstrap") is None, reason="needs mmdebstrap")
def test_debian_template_runs_a_command_only_it_has(api: Api) -> None:
    spec = template_pb2.TemplateSpec(
        debian=template_pb2.DebianBase(suite="bookworm", variant="minbase"), apt_packages=["jq"]
    )
    started = time.monotonic()
    template = api.build(spec)
    print(f"debian template ready in {time.monotonic() - started:.1f} s")
    environment_id = api.create(template.id)
    code, out = api.sh(environment_id, "echo '{\"a\": [1, 2]}' | jq -c .a")
    assert (code, out.strip()) == (0, "[1,2]")
    api.delete(environment_id)


def test_snapshots_count_against_the_tenant_quota(api: Api) -> None:
    template = api.build(oci_spec())
    source = api.create(template.id, limits={"disk_bytes": 200 << 20})
    assert api.sh(source, "head -c 70000000 /dev/zero > /workspace/big")[0] == 0
    with pytest.raises(SandboxError) as refused:
        api(
            "SnapshotEnvironment",
            requests_pb2.SnapshotEnvironmentRequest(environment_id=source, include_workspace=True),
        )
    assert refused.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert refused.value.quota_violations
    api.delete(source)
