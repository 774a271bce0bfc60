"""Which isolation layers this machine offers, decided once at start-up.

Each layer is probed for real (bubblewrap runs ``true`` in a sandbox, the
cgroup parent is created, a tiny loop file system is mounted); a missing layer
is logged once as a warning and left out of the level string that every
environment reports, so weaker isolation is never silent.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from sandbox_sdk.models.environment import IsolationRuntime
from sandbox_sdk.server.orchestrator.sandbox.bubblewrap import bwrap_command, system_mounts
from sandbox_sdk.server.orchestrator.sandbox.cgroups import (
    V1_CONTROLLERS,
    V2_CONTROLLERS,
    CgroupDriver,
    CgroupV1Driver,
    CgroupV2Driver,
    read_cgroup_mounts,
    v2_controllers_available,
)
from sandbox_sdk.server.orchestrator.sandbox.environment_record import NetworkPolicy
from sandbox_sdk.server.orchestrator.sandbox.gvisor import Gvisor, probe_gvisor
from sandbox_sdk.server.orchestrator.sandbox.host_env import HOST_PROCESS_ENV, host_process_env
from sandbox_sdk.server.orchestrator.sandbox.seccomp import (
    SeccompProgram,
    SeccompUnavailable,
    build_program,
)
from sandbox_sdk.server.orchestrator.sandbox.settings import SandboxSettings

log = logging.getLogger(__name__)

_PROBE_TIMEOUT_SECONDS = 10.0
_LOOP_PROBE_BYTES = 1 << 20
_MEMORY_DIR = "/dev/shm"  # noqa: S108  (a tmpfs: the probe needs no disk space)


@dataclass(frozen=True)
class Isolation:
    """The layers in force.

    ``bwrap_path`` None: commands run without namespaces. ``cgroups`` None: no
    per-environment memory, CPU and pids limits (rlimits only).
    ``loop_quota``: each workspace is its own size-limited file system.
    ``sandbox_user`` None: commands keep the orchestrator's uid (not root, or
    no ``setpriv``); else ``setpriv_path`` switches them to it.
    ``seccomp`` None: no system call filter (it needs bubblewrap to load it).
    ``gvisor`` None: the gvisor runtime is not installed here.
    """

    bwrap_path: str | None
    cgroups: CgroupDriver | None
    loop_quota: bool
    sandbox_user: tuple[int, int] | None
    setpriv_path: str | None = None
    warnings: tuple[str, ...] = ()
    seccomp: SeccompProgram | None = None
    gvisor: Gvisor | None = None

    def installed_runtimes(self) -> frozenset[IsolationRuntime]:
        """The isolation runtimes environments may ask for here (bubblewrap's path is
        always there, with whatever layers it has)."""
        runtimes = {IsolationRuntime.BUBBLEWRAP}
        if self.gvisor is not None:
            runtimes.add(IsolationRuntime.GVISOR)
        return frozenset(runtimes)

    def drop_privileges(self) -> list[str]:
        """The argv prefix that runs the rest as the sandbox uid, without any capability."""
        if self.sandbox_user is None or self.setpriv_path is None:
            return []
        uid, gid = self.sandbox_user
        return [
            self.setpriv_path,
            f"--reuid={uid}",
            f"--regid={gid}",
            "--clear-groups",
            "--no-new-privs",
            "--inh-caps=-all",
            "--bounding-set=-all",
            "--",
        ]

    @property
    def level(self) -> str:
        """The layers joined by ``+``, e.g. ``bubblewrap+seccomp+cgroup-v1+rlimits+disk-quota``."""
        layers = []
        if self.bwrap_path:
            layers.append("bubblewrap")
        if self.bwrap_path and self.seccomp is not None:
            layers.append("seccomp")
        if self.cgroups is not None:
            layers.append(f"cgroup-v{self.cgroups.version}")
        layers.append("rlimits")
        if self.loop_quota:
            layers.append("disk-quota")
        return "+".join(layers)


def detect_isolation(
    settings: SandboxSettings,
    *,
    mounts_file: Path = Path("/proc/self/mounts"),
    probe_dir: Path | None = None,
) -> Isolation:
    """Probes the machine and returns the strongest isolation it supports.

    ``settings.bwrap_path`` and ``mounts_file`` are the injection points: a
    missing bwrap path or an empty mounts file forces the fallbacks.
    ``probe_dir`` is where the loop probe puts its image; by default memory
    (``/dev/shm``), so that a full disk at start does not silently turn the
    kernel's disk quotas off.
    """
    is_root = os.geteuid() == 0
    setpriv_path = shutil.which("setpriv")
    warnings: list[str] = []
    if not is_root:
        warnings.append(
            "not running as root: commands run with the orchestrator's own uid, "
            "and cgroups and disk quotas are probably unavailable"
        )
    elif setpriv_path is None:
        warnings.append("setpriv (util-linux) not found: commands run as root")
    dropping = is_root and setpriv_path is not None
    user = (settings.sandbox_uid, settings.sandbox_gid) if dropping else None
    privileges = Isolation(None, None, False, user, setpriv_path)
    seccomp, problem = _build_seccomp()
    if problem:
        warnings.append(problem)
    bwrap_path, problem = _probe_bubblewrap(settings, privileges.drop_privileges(), seccomp)
    if problem:
        warnings.append(problem)
    if bwrap_path is None and seccomp is not None:
        warnings.append("no seccomp filter: it is loaded by bubblewrap, which is unavailable")
        seccomp = None
    cgroups, problem = _probe_cgroups(settings, mounts_file)
    if problem:
        warnings.append(problem)
    loop_quota, problem = _probe_loop_quota(settings, is_root, probe_dir)
    if problem:
        warnings.append(problem)
    gvisor, problem = _probe_gvisor(settings, bwrap_path, dropping)
    if problem:
        warnings.append(problem)
    isolation = Isolation(
        bwrap_path, cgroups, loop_quota, user, setpriv_path, tuple(warnings), seccomp, gvisor
    )
    for warning in warnings:
        log.warning("sandbox isolation is weaker than it could be: %s", warning)
    log.info("sandbox isolation: %s", isolation.level)
    return isolation


def _probe_gvisor(
    settings: SandboxSettings, bwrap_path: str | None, as_root: bool
) -> tuple[Gvisor | None, str]:
    """gVisor, if runsc is installed; it shares bubblewrap's file layout (the same
    system directories, workspace and ``/tmp``), so it needs bubblewrap's path too, and
    runsc must be started as root to map the agent's and the commands' two users."""
    if bwrap_path is None or not as_root:
        return None, ""
    return probe_gvisor(shutil.which(settings.runsc_path))


def _build_seccomp() -> tuple[SeccompProgram | None, str]:
    try:
        return build_program(), ""
    except SeccompUnavailable as error:
        return None, f"no seccomp filter ({error}): install libseccomp2"


def _probe_bubblewrap(
    settings: SandboxSettings, prefix: list[str], seccomp: SeccompProgram | None
) -> tuple[str | None, str]:
    path = settings.bwrap_path
    if not os.access(path, os.X_OK):
        return None, f"bubblewrap not found at {path}: commands run without namespaces"
    seccomp_fd = seccomp.to_fd() if seccomp is not None else None
    try:
        return _run_bubblewrap_probe(settings, prefix, seccomp_fd)
    finally:
        if seccomp_fd is not None:
            os.close(seccomp_fd)


def _run_bubblewrap_probe(
    settings: SandboxSettings, prefix: list[str], seccomp_fd: int | None
) -> tuple[str | None, str]:
    path = settings.bwrap_path
    with tempfile.TemporaryDirectory(prefix="sandbox-bwrap-probe-") as scratch:
        Path(scratch).chmod(0o755)
        argv = prefix + bwrap_command(
            path,
            system=system_mounts(settings.read_only_paths),
            workspace_dir=Path(scratch),
            tmp_dir=Path(scratch),
            cwd="",
            network=NetworkPolicy.NONE,
            command=["true"],
            seccomp_fd=seccomp_fd,
        )
        try:
            result = subprocess.run(
                argv,
                capture_output=True,
                timeout=_PROBE_TIMEOUT_SECONDS,
                check=False,
                cwd="/",
                env=HOST_PROCESS_ENV,
                pass_fds=[] if seccomp_fd is None else [seccomp_fd],
            )
        except (OSError, subprocess.SubprocessError) as error:
            return None, f"bubblewrap at {path} cannot start ({error}): no namespaces"
    if result.returncode != 0:
        detail = result.stderr.decode(errors="replace").strip()
        return None, f"bubblewrap at {path} cannot create namespaces ({detail}): no namespaces"
    return path, ""


def _probe_cgroups(settings: SandboxSettings, mounts_file: Path) -> tuple[CgroupDriver | None, str]:
    mounts = read_cgroup_mounts(mounts_file)
    problems = []
    if mounts.v2 is not None:
        available = v2_controllers_available(mounts.v2)
        missing = [c for c in V2_CONTROLLERS if c not in available]
        if not missing:
            driver: CgroupDriver = CgroupV2Driver(mounts.v2, settings.cgroup_parent)
            problem = _prepare(driver)
            if not problem:
                return driver, ""
            problems.append(f"cgroup v2 at {mounts.v2}: {problem}")
        else:
            problems.append(f"cgroup v2 at {mounts.v2} lacks controllers {', '.join(missing)}")
    missing = [c for c in V1_CONTROLLERS if c not in mounts.v1]
    if not missing:
        driver = CgroupV1Driver(mounts.v1, settings.cgroup_parent)
        problem = _prepare(driver)
        if not problem:
            return driver, ""
        problems.append(f"cgroup v1: {problem}")
    else:
        problems.append(f"cgroup v1 lacks controllers {', '.join(missing)}")
    return None, (
        "no usable cgroups (" + "; ".join(problems) + "): environments get no memory, CPU "
        "or pids limit beyond rlimits, and a whole-tree kill relies on process groups"
    )


def _prepare(driver: CgroupDriver) -> str:
    try:
        driver.prepare()
    except OSError as error:
        return f"cannot create the parent cgroup ({error})"
    return ""


def _probe_loop_quota(
    settings: SandboxSettings, is_root: bool, probe_dir: Path | None
) -> tuple[bool, str]:
    if not settings.loop_disk_quota:
        return False, "loop disk quotas are turned off in the settings"
    tools = [shutil.which(tool) for tool in ("mkfs.ext4", "mount", "umount")]
    if not is_root or not os.path.exists("/dev/loop-control") or None in tools:
        return False, (
            "no loop-mounted workspaces (needs root, /dev/loop-control, mkfs.ext4): "
            "the disk quota is checked by the monitor instead of the kernel"
        )
    if probe_dir is None and os.access(_MEMORY_DIR, os.W_OK):
        probe_dir = Path(_MEMORY_DIR)
    with tempfile.TemporaryDirectory(prefix="sandbox-loop-probe-", dir=probe_dir) as scratch:
        image, mount_point = Path(scratch) / "probe.img", Path(scratch) / "mnt"
        mount_point.mkdir()
        with open(image, "wb") as file:
            file.truncate(_LOOP_PROBE_BYTES)
        commands = [
            ["mkfs.ext4", "-q", "-F", "-O", "^has_journal", str(image)],
            ["mount", "-o", "loop,nosuid,nodev", str(image), str(mount_point)],
        ]
        try:
            for command in commands:
                subprocess.run(
                    command,
                    capture_output=True,
                    timeout=_PROBE_TIMEOUT_SECONDS,
                    check=True,
                    env=host_process_env(),
                )
        except (OSError, subprocess.SubprocessError) as error:
            return False, f"cannot loop-mount a workspace ({error}): disk quota by monitor"
        finally:
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                if os.path.ismount(mount_point):
                    subprocess.run(
                        ["umount", str(mount_point)],
                        timeout=10,
                        check=False,
                        env=host_process_env(),
                    )
    return True, ""
