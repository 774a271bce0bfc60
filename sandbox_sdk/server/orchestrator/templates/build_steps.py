"""Building a template's root file system: its base, then pip, files and commands in a sandbox.

The steps that run a tenant's code (pip installs, files copied in, build
commands) run inside a build sandbox made by the environments' own launcher:
bubblewrap with the same namespaces, seccomp filter, rlimits and cgroup as
an environment's commands, through the same agent. Only the root differs:
the tree being built, bound writable at ``/``. So that the steps may change
it without any privilege on the host, the tree is handed to an unprivileged
build uid (root's files become its files) that is uid 0 of the sandbox's
user namespace, and handed back to root when the steps are done. pip steps
get an egress network (slirp4netns behind the egress firewall, as an egress
environment); the other steps none.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import re
import secrets
import shutil
import stat
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from sandbox_sdk.server.orchestrator.sandbox.agent_client import AgentClient, SpawnRequest
from sandbox_sdk.server.orchestrator.sandbox.bubblewrap import TMP_MOUNT, WORKSPACE_MOUNT
from sandbox_sdk.server.orchestrator.sandbox.cgroups import EnvironmentCgroup
from sandbox_sdk.server.orchestrator.sandbox.environment_record import (
    EnvironmentSpec,
    ExecOutput,
    Limits,
    NetworkPolicy,
)
from sandbox_sdk.server.orchestrator.sandbox.host_env import HOST_PATH, host_process_env
from sandbox_sdk.server.orchestrator.sandbox.launcher import SandboxLauncher
from sandbox_sdk.server.orchestrator.sandbox.process import (
    Cancellation,
    Launch,
    ProcessExit,
    run_process,
)
from sandbox_sdk.server.orchestrator.sandbox.rlimits import ProcessLimits
from sandbox_sdk.server.orchestrator.sandbox.runtimes import LaunchPlan
from sandbox_sdk.server.orchestrator.sandbox.settings import SandboxSettings
from sandbox_sdk.server.orchestrator.sandbox.workspace import WorkspaceLayout
from sandbox_sdk.server.orchestrator.templates.debian_base import (
    build_debian_rootfs,
    host_debian_mirror,
)
from sandbox_sdk.server.orchestrator.templates.logged_process import (
    BuildLog,
    TemplateBuildError,
    run_logged,
)
from sandbox_sdk.server.orchestrator.templates.oci_image import (
    archive_source,
    copy_archive,
    unpack_image,
)
from sandbox_sdk.server.orchestrator.templates.spec import (
    DebianBase,
    TemplateDefaults,
    TemplateSpec,
)

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,255}$")
_STAGED_FILES = ".template-files"
# Copies staged files to their places, run by the host interpreter inside the build
# sandbox (the root may have no cp): paths resolve in the sandbox's own root.
_COPY_FILES = (
    "import os, sys\n"
    "a = sys.argv[1:]\n"
    "for src, dest, mode in zip(a[0::3], a[1::3], a[2::3]):\n"
    "    os.makedirs(os.path.dirname(dest), exist_ok=True)\n"
    "    with open(src, 'rb') as i, open(dest, 'wb') as o:\n"
    "        o.write(i.read())\n"
    "    os.chmod(dest, int(mode, 8))\n"
    "    print('copied', dest, flush=True)\n"
)


@dataclass(frozen=True)
class BuildStep:
    """One command of the build: its argv, network and what the log calls it."""

    argv: tuple[str, ...]
    network: NetworkPolicy
    name: str


@dataclass(frozen=True)
class TemplateBuilder:
    """Builds root file systems with this orchestrator's launcher, archive directories and mirror.

    ``archive_dirs``: the only host directories OCI archives are read from.
    """

    launcher: SandboxLauncher
    archive_dirs: tuple[Path, ...] = ()

    @property
    def build_user(self) -> tuple[int, int]:
        """The uid and gid of build steps."""
        settings = self.launcher.settings
        return settings.template_build_uid, settings.template_build_gid

    async def build(self, spec: TemplateSpec, work: Path, on_log: BuildLog) -> TemplateDefaults:
        """Builds ``spec`` into ``work/rootfs`` (``work`` is a fresh root-owned directory);
        returns the template's defaults. Raises :class:`TemplateBuildError`."""
        self._check_isolation(spec)
        settings = self.launcher.settings
        await asyncio.to_thread(work.chmod, 0o711)
        async with _reachable(work, settings.mount_root) as reachable:
            defaults = await self._base(spec, reachable, on_log)
            rootfs = reachable / "rootfs"
            if spec.needs_sandbox:
                await asyncio.to_thread(shift_owner, rootfs, (0, 0), self.build_user)
                await self._run_steps(spec, defaults, reachable, on_log)
            await asyncio.to_thread(shift_owner, rootfs, self.build_user, (0, 0))
            await asyncio.to_thread(_remove_scratch, reachable)
        size = await asyncio.to_thread(tree_bytes, work / "rootfs")
        if size > settings.template_max_bytes:
            raise TemplateBuildError(
                f"the root file system takes {size} bytes, more than the "
                f"{settings.template_max_bytes} this orchestrator keeps"
            )
        on_log(f"root file system complete: {size} bytes")
        return merged_defaults(defaults, spec.defaults)

    def _check_isolation(self, spec: TemplateSpec) -> None:
        isolation = self.launcher.isolation
        needs_user = spec.needs_sandbox or not isinstance(spec.base, DebianBase)
        if needs_user and (isolation.sandbox_user is None or not isolation.bwrap_path):
            raise TemplateBuildError(
                "this template needs a build sandbox (bubblewrap and privilege dropping, "
                "as root), which this orchestrator does not have"
            )
        if spec.needs_sandbox and self.launcher.agent_runtime is None:
            raise TemplateBuildError("the host interpreter cannot run in a build sandbox")

    async def _base(self, spec: TemplateSpec, work: Path, on_log: BuildLog) -> TemplateDefaults:
        rootfs = work / "rootfs"
        if isinstance(spec.base, DebianBase):
            mirror = self.launcher.settings.template_debian_mirror or host_debian_mirror()
            on_log(f"building Debian {spec.base.suite} ({spec.base.variant}) from {mirror}")
            await build_debian_rootfs(
                spec.base, spec.apt_packages, rootfs, mirror=mirror, on_log=on_log
            )
            return TemplateDefaults()
        oci = work / "oci"
        oci.mkdir(mode=0o700)
        archive = oci / "archive.tar"
        on_log(f"copying the image archive {spec.base.path}")
        await asyncio.to_thread(copy_archive, spec.base, self.archive_dirs, archive)
        source = await asyncio.to_thread(archive_source, archive, oci)
        await asyncio.to_thread(_chown_tree, oci, self.build_user)
        unpacked, defaults = await unpack_image(
            source,
            oci,
            as_build_user=self._as_build_user(),
            on_log=on_log,
        )
        unpacked.rename(rootfs)
        return defaults

    def _as_build_user(self) -> list[str]:
        return self._build_launcher().isolation.drop_privileges()

    def _build_launcher(self) -> SandboxLauncher:
        isolation = dataclasses.replace(self.launcher.isolation, sandbox_user=self.build_user)
        return dataclasses.replace(self.launcher, isolation=isolation)

    async def _run_steps(
        self, spec: TemplateSpec, defaults: TemplateDefaults, work: Path, on_log: BuildLog
    ) -> None:
        scratch = work / "scratch"
        for directory in (scratch, scratch / "workspace", scratch / "tmp"):
            directory.mkdir(mode=0o700)
            os.chown(directory, *self.build_user)
        staged = await asyncio.to_thread(_stage_files, spec, scratch / "workspace", self.build_user)
        env = _step_env(merged_defaults(defaults, spec.defaults))
        for step in self._steps(spec, staged):
            on_log(f"--- {step.name}")
            await self._run_in_sandbox(step, env, work, on_log)

    def _steps(self, spec: TemplateSpec, staged: Sequence[str]) -> list[BuildStep]:
        steps = []
        if spec.pip_packages:
            pip = ("python3", "-m", "pip", "install", "--no-cache-dir", "--no-input",
                   "--root-user-action=ignore", "--", *spec.pip_packages)  # fmt: skip
            steps.append(BuildStep(pip, NetworkPolicy.EGRESS, "pip install"))
        if spec.files:
            runtime = self.launcher.agent_runtime
            assert runtime is not None  # noqa: S101  (checked by _check_isolation)
            copy = runtime.command("-I", "-S", "-c", _COPY_FILES, *staged)
            steps.append(BuildStep(tuple(copy), NetworkPolicy.NONE, "copying files"))
        for index, argv in enumerate(spec.commands):
            steps.append(BuildStep(argv, NetworkPolicy.NONE, f"command {index}: {list(argv)}"))
        return steps

    async def _run_in_sandbox(
        self, step: BuildStep, env: dict[str, str], work: Path, on_log: BuildLog
    ) -> None:
        """Runs one step as an environment's command would run, in a sandbox of its own."""
        settings = self.launcher.settings
        values = settings.template_build_limits
        limits = Limits(**values.model_dump())
        spec = EnvironmentSpec(
            limits=limits, env_vars={}, labels={}, ttl_seconds=values.exec_timeout_seconds,
            idle_timeout_seconds=values.exec_timeout_seconds, network=step.network,
        )  # fmt: skip
        launcher = self._build_launcher()
        process_limits = ProcessLimits.for_environment(
            limits,
            address_space_headroom_bytes=settings.address_space_headroom_bytes,
            open_files=settings.max_open_files,
            limit_processes_per_uid=launcher.isolation.cgroups is None,
        )
        name = f"template-build-{secrets.token_hex(8)}"
        cgroup = self._make_cgroup(name, limits)
        layout = WorkspaceLayout(work, work / "none.img", work / "scratch")
        try:
            plan = LaunchPlan(
                environment_id=name, spec=spec, layout=layout, limits=process_limits,
                root=work / "rootfs", root_as_owner=True,
            )  # fmt: skip
            sandbox = await launcher.start(
                plan, cgroup=cgroup, prepare=None, on_violation=lambda _: None
            )
            try:
                exit_ = await _run_step(sandbox.agent, step, env, process_limits, settings, on_log)
            finally:
                await sandbox.agent.close()
                if sandbox.network is not None:
                    await sandbox.network.close()
        finally:
            if cgroup is not None:
                await cgroup.kill_all()
                cgroup.remove()
        _check_exit(step, exit_)

    def _make_cgroup(self, name: str, limits: Limits) -> EnvironmentCgroup | None:
        driver = self.launcher.isolation.cgroups
        if driver is None:
            return None
        cgroup = driver.environment(name)
        cgroup.create(limits.cpu_cores, limits.memory_bytes, limits.max_pids)
        return cgroup


async def _run_step(  # noqa: PLR0917  (the step's whole context)
    agent: AgentClient,
    step: BuildStep,
    env: dict[str, str],
    limits: ProcessLimits,
    settings: SandboxSettings,
    on_log: BuildLog,
) -> ProcessExit:
    request = SpawnRequest(argv=step.argv, cwd="/", env=env, rlimits=limits.rlimits())
    launch = Launch(
        request=request,
        stdin=b"",
        timeout_seconds=settings.template_build_limits.exec_timeout_seconds,
        output_cap_bytes=settings.output_cap_bytes,
        chunk_bytes=settings.output_chunk_bytes,
    )
    lines = _Lines(on_log)
    result: ProcessExit | None = None
    async for event in run_process(agent, launch, on_started=lambda _: None, cancel=Cancellation()):
        if isinstance(event, ProcessExit):
            result = event
        elif isinstance(event, ExecOutput):
            lines.feed(event.stream, event.data)
    lines.flush()
    if result is None:
        raise TemplateBuildError(f"{step.name} ended without an exit status")
    return result


def _check_exit(step: BuildStep, result: ProcessExit) -> None:
    if result.timed_out:
        raise TemplateBuildError(f"{step.name} took longer than the build step timeout")
    if result.lost:
        raise TemplateBuildError(f"{step.name}: the build sandbox went away")
    if result.returncode != 0:
        raise TemplateBuildError(f"{step.name} failed (exit status {result.returncode})")


class _Lines:
    """Splits each stream's chunks into lines for the build log."""

    def __init__(self, on_log: BuildLog) -> None:
        self._on_log = on_log
        self._pending: dict[str, bytes] = {}

    def feed(self, stream: str, data: bytes) -> None:
        *complete, rest = (self._pending.get(stream, b"") + data).split(b"\n")
        for line in complete:
            self._on_log(line.decode(errors="replace"))
        self._pending[stream] = rest

    def flush(self) -> None:
        for rest in self._pending.values():
            if rest:
                self._on_log(rest.decode(errors="replace"))
        self._pending.clear()


def merged_defaults(base: TemplateDefaults, spec: TemplateDefaults) -> TemplateDefaults:
    """The image's defaults, overridden field by field by the spec's; image variables with
    names no shell would take are dropped."""
    env = {k: v for k, v in base.env.items() if _ENV_NAME.match(k) and "\x00" not in v}
    return TemplateDefaults(
        env=env | dict(spec.env),
        workdir=spec.workdir or base.workdir,
        user=spec.user or base.user,
        limits=dict(base.limits) | dict(spec.limits),
    )


def _step_env(defaults: TemplateDefaults) -> dict[str, str]:
    env = {
        "PATH": HOST_PATH,
        "HOME": "/root",
        "TMPDIR": str(TMP_MOUNT),
        "LANG": "C.UTF-8",
        "DEBIAN_FRONTEND": "noninteractive",
        # Debian's Python refuses pip outside a venv (PEP 668); a template's
        # root is the image's own system, as in a Dockerfile.
        "PIP_BREAK_SYSTEM_PACKAGES": "1",
    }
    return env | dict(defaults.env)


def _stage_files(spec: TemplateSpec, workspace: Path, owner: tuple[int, int]) -> list[str]:
    """Writes the spec's files into the build's own fresh workspace; returns the copy
    script's arguments (source in the sandbox, destination, octal mode)."""
    if not spec.files:
        return []
    staged = workspace / _STAGED_FILES
    staged.mkdir(mode=0o700)
    os.chown(staged, *owner)
    args: list[str] = []
    for index, file in enumerate(spec.files):
        path = staged / str(index)
        path.write_bytes(file.content)
        os.chown(path, *owner)
        args += [str(WORKSPACE_MOUNT / _STAGED_FILES / str(index)), file.path, f"{file.mode:o}"]
    return args


def shift_owner(root: Path, source: tuple[int, int], target: tuple[int, int]) -> None:
    """Gives what ``source`` owns under ``root`` (uid and gid apart) to ``target``, without
    following symlinks, keeping setuid/setgid bits (which chown clears). Blocking."""
    _shift_one(str(root), source, target)
    for directory, dirs, files in os.walk(root):
        for name in (*dirs, *files):
            _shift_one(os.path.join(directory, name), source, target)


def _shift_one(path: str, source: tuple[int, int], target: tuple[int, int]) -> None:
    info = os.lstat(path)
    uid = target[0] if info.st_uid == source[0] else info.st_uid
    gid = target[1] if info.st_gid == source[1] else info.st_gid
    if (uid, gid) == (info.st_uid, info.st_gid):
        return
    os.lchown(path, uid, gid)
    if not stat.S_ISLNK(info.st_mode) and info.st_mode & (stat.S_ISUID | stat.S_ISGID):
        os.chmod(path, stat.S_IMODE(info.st_mode))


def _chown_tree(root: Path, owner: tuple[int, int]) -> None:
    for directory, dirs, files in os.walk(root):
        for name in (*dirs, *files):
            os.lchown(os.path.join(directory, name), *owner)
    os.lchown(root, *owner)


def tree_bytes(root: Path) -> int:
    """Disk blocks under ``root``, symlinks not followed. Blocking."""
    total = 0
    for directory, dirs, files in os.walk(root):
        for name in (*dirs, *files):
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(directory, name)).st_blocks * 512
    return total


def _remove_scratch(work: Path) -> None:
    """Removes what only the build needed, and the mount points it left in the root."""
    for directory in (work / "scratch", work / "oci"):
        shutil.rmtree(directory, ignore_errors=True)
    rootfs = work / "rootfs"
    for leftover in (".sandbox-agent/usr", ".sandbox-agent"):
        with contextlib.suppress(OSError):
            (rootfs / leftover).rmdir()


def _bind_target(mount_root: Path) -> Path:
    mount_root.mkdir(parents=True, exist_ok=True)
    mount_root.chmod(0o711)
    target = mount_root / f"template-build-{secrets.token_hex(8)}"
    target.mkdir(mode=0o711)
    return target


@contextlib.asynccontextmanager
async def _reachable(work: Path, mount_root: Path) -> AsyncIterator[Path]:
    """``work`` bound under the orchestrator's mount root, which the build uid may traverse
    (bubblewrap and the image tools resolve paths as that uid)."""
    target = await asyncio.to_thread(_bind_target, mount_root)
    try:
        await run_logged(
            ["mount", "--bind", str(work), str(target)],
            env=host_process_env(), on_log=lambda _: None, what="binding the build directory",
        )  # fmt: skip
        try:
            yield target
        finally:
            await run_logged(
                ["umount", "--lazy", str(target)],
                env=host_process_env(), on_log=lambda _: None, what="unbinding the build",
            )  # fmt: skip
    finally:
        with contextlib.suppress(OSError):
            target.rmdir()
