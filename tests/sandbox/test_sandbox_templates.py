"""Templates, for real: a Debian root built with mmdebstrap, an OCI archive with a whiteout
imported with skopeo and umoci, copy-on-write environments over them, and hostile builds.

The Debian template is cached across runs in ``$SANDBOX_SDK_TEMPLATE_CACHE``
(default ``~/.cache/sandbox-sdk/templates``), keyed by its digest, so only the
first run downloads and builds it.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest
from oci_images import busybox_layers, write_oci_archive
from sandbox_support import (
    ORCHESTRATOR_ID,
    TENANT,
    fast_settings,
    make_spec,
    needs_isolation,
    run,
)

from sandbox_sdk.server.database import Database
from sandbox_sdk.server.orchestrator.sandbox import SandboxManager
from sandbox_sdk.server.orchestrator.sandbox.environment_record import NewEnvironment
from sandbox_sdk.server.orchestrator.templates import (
    DebianBase,
    OciArchiveBase,
    Template,
    TemplateBuilder,
    TemplateBuildError,
    TemplateCache,
    TemplateFile,
    TemplateInUse,
    TemplateSpec,
    validate_template_spec,
)

TOOLS = ("mmdebstrap", "skopeo", "umoci")
pytestmark = [
    *needs_isolation,
    pytest.mark.skipif(
        any(shutil.which(tool) is None for tool in TOOLS), reason="needs mmdebstrap, skopeo, umoci"
    ),
]

JQ_SPEC = TemplateSpec(base=DebianBase("bookworm", "minbase"), apt_packages=("jq",))


def cache_root() -> Path:
    """The template cache shared by test runs."""
    configured = os.environ.get("SANDBOX_SDK_TEMPLATE_CACHE")
    return Path(configured) if configured else Path.home() / ".cache/sandbox-sdk/templates"


class Harness:
    """A started manager whose environments may come from the shared template cache."""

    def __init__(self, manager: SandboxManager, cache: TemplateCache, archives: Path) -> None:
        self.manager = manager
        self.cache = cache
        self.builder = TemplateBuilder(manager.launcher, archive_dirs=(archives,))
        self.archives = archives
        self.log: list[str] = []

    async def build(self, spec: TemplateSpec) -> Template:
        return await self.cache.build(validate_template_spec(spec), self.builder, self.log.append)

    async def create(self, template: Template) -> str:
        spec = replace(make_spec(disk_bytes=64 << 20), template=template.digest)
        environment = await self.manager.create_environment(TENANT, NewEnvironment(spec=spec))
        assert environment.state.value == "RUNNING", environment.termination_message
        return environment.id


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    cache = TemplateCache(cache_root())
    await cache.start()
    manager = SandboxManager(
        Database(tmp_path / "orchestrator.db"),
        fast_settings(),
        ORCHESTRATOR_ID,
        tmp_path / "workspaces",
        templates=cache,
    )
    await manager.start()
    archives = tmp_path / "archives"
    archives.mkdir()
    try:
        yield Harness(manager, cache, archives)
    finally:
        await manager.stop()


async def sh(manager: SandboxManager, environment_id: str, script: str) -> tuple[int, str, str]:
    """Runs ``sh -c script``; returns exit code, stdout, stderr."""
    result = await run(manager, environment_id, ["sh", "-c", script])
    return result.result.exit_code, result.out, result.err


async def test_debian_template_runs_a_command_only_it_has(harness: Harness) -> None:
    template = await harness.build(JQ_SPEC)
    assert (template.rootfs / "usr/bin/jq").exists()
    environment_id = await harness.create(template)
    code, out, err = await sh(
        harness.manager,
        environment_id,
        "echo '{\"a\": [1, 2]}' | jq -c .a; cat /etc/debian_version",
    )
    assert code == 0, err
    assert out.splitlines()[0] == "[1,2]"
    environment = harness.manager.get_environment(TENANT, environment_id)
    assert f"+root=template:{template.digest[:12]}+overlay" in environment.isolation
    # The orchestrator's files are not there: the root is the template's.
    code, _, _ = await sh(harness.manager, environment_id, f"test -e {Path.cwd()}")
    assert code != 0


async def test_two_environments_do_not_see_each_others_writes(harness: Harness) -> None:
    template = await harness.build(JQ_SPEC)
    first, second = await harness.create(template), await harness.create(template)
    code, _, err = await sh(harness.manager, first, "echo mine > /var/tmp/written")
    assert code == 0, err
    code, out, _ = await sh(harness.manager, second, "cat /var/tmp/written")
    assert code != 0
    assert out == ""
    assert not (template.rootfs / "var/tmp/written").exists()
    # The template's own files are root's: an environment cannot change them.
    code, _, _ = await sh(harness.manager, first, "echo x >> /usr/bin/jq")
    assert code != 0


async def test_deleting_a_template_in_use_is_refused(harness: Harness) -> None:
    template = await harness.build(JQ_SPEC)
    environment_id = await harness.create(template)
    with pytest.raises(TemplateInUse, match=environment_id):
        await harness.cache.delete(template.digest)
    await harness.manager.delete_environment(TENANT, environment_id)
    assert harness.cache.users(template.digest) == []


async def test_same_spec_builds_once(harness: Harness) -> None:
    first = await harness.build(JQ_SPEC)
    harness.log.clear()
    second = await harness.build(JQ_SPEC)
    assert first == second
    assert any("already built" in line for line in harness.log)


# --- OCI image archives -------------------------------------------------------------------


needs_busybox = pytest.mark.skipif(
    not Path("/bin/busybox").exists(), reason="needs a static busybox"
)


@needs_busybox
async def test_oci_archive_with_a_whiteout(harness: Harness) -> None:
    archive = harness.archives / "image.tar"
    sha256 = write_oci_archive(archive, busybox_layers(), ["PATH=/bin", "GREETING=hello"])
    template = await harness.build(TemplateSpec(base=OciArchiveBase(str(archive), sha256)))
    assert template.defaults.env["GREETING"] == "hello"
    environment_id = await harness.create(template)
    code, out, err = await sh(
        harness.manager, environment_id,
        "cat /etc/keep.txt /etc/added.txt; test -e /etc/secret.txt && echo present; ls /",
    )  # fmt: skip
    assert code == 0, err
    assert out.splitlines()[:2] == ["kept", "added"]
    assert "present" not in out
    assert "python" not in out  # the agent's interpreter is bound, not part of the image
    await harness.manager.delete_environment(TENANT, environment_id)
    await harness.cache.delete(template.digest)


@needs_busybox
async def test_archive_outside_the_import_directories_is_refused(harness: Harness) -> None:
    with pytest.raises(TemplateBuildError, match="not in a directory"):
        await harness.build(TemplateSpec(base=OciArchiveBase("/etc/shadow", "0" * 64)))


@needs_busybox
async def test_hostile_build_steps_get_what_hostile_commands_get(harness: Harness) -> None:
    archive = harness.archives / "image.tar"
    sha256 = write_oci_archive(archive, busybox_layers(), ["PATH=/bin"])
    probes = (
        # The host's root file system is not there: / is the image.
        f"test -e {Path.cwd()} && echo HOST-VISIBLE; "
        # No network namespace but loopback.
        "cat /proc/net/dev | grep -c : > /tmp/ifaces; "
        # Root inside owns nothing of the host: mounting and unsharing are refused.
        "busybox mount -t tmpfs x /mnt 2>/dev/null && echo MOUNTED; "
        "busybox unshare -U true 2>/dev/null && echo UNSHARED; "
        # Writing the agent's runtime (the host's /usr, read-only) fails.
        "echo x > /.sandbox-agent/usr/pwned 2>/dev/null && echo WROTE-HOST; "
        "echo done > /etc/built.txt"
    )
    spec = TemplateSpec(
        base=OciArchiveBase(str(archive), sha256),
        files=(TemplateFile("/etc/app/config.txt", b"configured\n", 0o640),),
        commands=(("sh", "-c", probes),),
    )
    template = await harness.build(spec)
    for marker in ("HOST-VISIBLE", "MOUNTED", "UNSHARED", "WROTE-HOST"):
        assert marker not in harness.log  # each probe echoes its marker alone on a line
    assert "pwned" not in os.listdir("/usr")
    built = template.rootfs / "etc/built.txt"
    assert built.read_text() == "done\n"
    assert built.stat().st_uid == 0  # handed back to root when the steps were done
    config = template.rootfs / "etc/app/config.txt"
    assert config.read_text() == "configured\n"
    assert config.stat().st_mode & 0o777 == 0o640
    assert not (template.rootfs / ".sandbox-agent").exists()
    await harness.cache.delete(template.digest)


@needs_busybox
async def test_a_failed_build_leaves_nothing(harness: Harness) -> None:
    archive = harness.archives / "image.tar"
    sha256 = write_oci_archive(archive, busybox_layers(), ["PATH=/bin"])
    spec = TemplateSpec(
        base=OciArchiveBase(str(archive), sha256), commands=(("sh", "-c", "exit 3"),)
    )
    with pytest.raises(TemplateBuildError, match="exit status 3"):
        await harness.build(spec)
    assert not (harness.cache.root / spec.digest).exists()
    assert not [p for p in harness.cache.root.iterdir() if p.name.startswith(".build-")]
