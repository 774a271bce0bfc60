"""gVisor: an environment's agent under ``runsc``, a kernel of its own in user space.

With bubblewrap, commands talk to the host kernel through namespaces and a
seccomp filter, so a kernel bug is an escape. Under gVisor they talk to its
Sentry, which implements Linux in a Go process that itself may make only a
few dozen host system calls; its file proxy (the Gofer) serves the mounts.

How an environment runs here:

* ``runsc`` starts as root, the way gVisor is deployed (the Sentry then runs in
  namespaces of its own, as nobody, under its own seccomp filter). Rootless
  runsc was tried first and rejected: it maps a single uid, so commands would
  share the agent's uid, and gVisor's kernel lets a process of the same uid
  SIGKILL its pid 1 and list a non-dumpable process's fds. Here the agent is
  gVisor's uid 0 (on the host an otherwise unused uid, owning nothing) with
  three capabilities (switch users, signal), and every command switches to
  the sandbox uid, with none; on the host their files belong to the sandbox
  uid, as with bubblewrap (see :class:`GvisorUsers`).
* Its host processes run inside the environment's cgroups: the start gate is
  moved there before it executes runsc, and everything runsc starts inherits
  them, so memory, CPU and pids limits cover the whole sandbox, gVisor's own
  overhead included (``--ignore-cgroups``: runsc is not to move them).
* The rlimits apply inside gVisor's kernel (the spec's ``process.rlimits``);
  on the host the gate leaves runsc's own limits alone, since its kernel
  needs far more address space and fds than a command.
* The bundle (the OCI spec, an empty root, the agent's source) and runsc's
  state live in the environment's runtime directory, which only root may
  write: runsc, as root, reads it at every start, so no sandbox uid (which
  owns the workspace's file system) may have a hand in it. It goes with the
  workspace.
* The agent's socket is the sandbox's stdin (runsc passes only stdio in), and
  it never sends fds back: gVisor cannot pass its fds to the host (see
  :mod:`.agent`'s one-way mode).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from sandbox_sdk.server.orchestrator.sandbox.agent_code import (
    CODE_FILE_NAME,
    NO_CODE,
    SOURCE_FILE_NAME,
)
from sandbox_sdk.server.orchestrator.sandbox.agent_runtime import AgentRuntime, inside
from sandbox_sdk.server.orchestrator.sandbox.bubblewrap import HOSTNAME, TMP_MOUNT, WORKSPACE_MOUNT
from sandbox_sdk.server.orchestrator.sandbox.host_env import host_process_env
from sandbox_sdk.server.orchestrator.sandbox.rlimits import ProcessLimits
from sandbox_sdk.server.orchestrator.sandbox.workspace import WorkspaceLayout

log = logging.getLogger(__name__)

PLATFORM = "ptrace"  # the only platform that works here: KVM guests hang on this hardware
BUNDLE_DIR_NAME = "gvisor"
# The agent runs from files: runsc hands the spec to its kernel through a pipe that
# does not take the source as an argument (as ``python -c`` gets it elsewhere).
AGENT_SOURCE_MOUNT = PurePosixPath("/.sandbox-agent-code")
AGENT_FILE_NAME = SOURCE_FILE_NAME
_PROBE_TIMEOUT_SECONDS = 10.0
_OCI_VERSION = "1.0.2"
_NAMESPACES = ("pid", "network", "ipc", "uts", "mount", "user")
# What the agent may do in gVisor's kernel: switch its commands to their user and
# signal them. Commands, of another uid, hold no capability at all.
_AGENT_CAPABILITIES = ("CAP_SETUID", "CAP_SETGID", "CAP_KILL")
_VERSION = re.compile(r"runsc version (\S+)")


@dataclass(frozen=True)
class Gvisor:
    """gVisor as installed on this host: where ``runsc`` is and what it runs on."""

    runsc_path: str
    version: str
    platform: str = PLATFORM

    @property
    def layer(self) -> str:
        """This runtime in an isolation level: ``gvisor(ptrace)``."""
        return f"gvisor({self.platform})"

    def command(self, bundle: GvisorBundle, container_id: str) -> list[str]:
        """runsc's argv (run as root, see the module docstring) starting the container of
        ``bundle``, with gVisor's own network stack and loopback only."""
        return [
            self.runsc_path,
            "--network=none",
            "--ignore-cgroups",
            # The orchestrator writes files into the sandbox's mounts from the host:
            # the Sentry must not cache what it read of them.
            "--file-access=shared",
            f"--platform={self.platform}",
            f"--root={bundle.state}",
            "run",
            f"--bundle={bundle.directory}",
            container_id,
        ]


def probe_gvisor(runsc_path: str | None) -> tuple[Gvisor | None, str]:
    """gVisor if ``runsc`` is installed and answers, else None and why not."""
    if runsc_path is None:
        return None, "runsc not found: install the Debian package runsc for the gVisor runtime"
    try:
        result = subprocess.run(
            [runsc_path, "--version"],
            capture_output=True,
            text=True,
            timeout=_PROBE_TIMEOUT_SECONDS,
            env=host_process_env(),
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        return None, f"runsc at {runsc_path} does not run ({error}): reinstall the runsc package"
    match = _VERSION.search(result.stdout)
    if result.returncode != 0 or match is None:
        return None, f"runsc at {runsc_path} did not report its version: reinstall runsc"
    return Gvisor(runsc_path, match.group(1)), ""


@dataclass(frozen=True)
class GvisorBundle:
    """An environment's OCI bundle and runsc state, in its runtime directory.

    ``directory`` holds ``config.json``, ``rootfs`` and the agent's source, all
    root's; ``state`` is runsc's.
    """

    directory: Path

    @classmethod
    def of(cls, layout: WorkspaceLayout) -> GvisorBundle:
        """The bundle of an environment: in its runtime directory, root's alone (runsc, as
        root, reads it), and removed with its workspace."""
        return cls(layout.runtime_dir / BUNDLE_DIR_NAME)

    @property
    def config(self) -> Path:
        return self.directory / "config.json"

    @property
    def rootfs(self) -> Path:
        """The empty read-only root the host's system directories are mounted on."""
        return self.directory / "rootfs"

    @property
    def state(self) -> Path:
        return self.directory / "state"

    def _lay_out_rootfs(self, spec: Mapping[str, Any], symlinks: Mapping[str, str]) -> None:
        """The host's symlinks and the mount points in the bundle's own empty root (runsc's
        file proxy, in its user namespace, cannot make them). A template's root gets
        nothing from here: the sandbox writes it, so a root process following paths in it
        could be led anywhere on the host; its mount points were made before it first ran
        (see :data:`.lifecycle.SANDBOX_MOUNT_POINTS`)."""
        for link, target in symlinks.items():
            path = self.rootfs / link.lstrip("/")
            if not path.is_symlink():
                path.symlink_to(target)
        for mount in spec["mounts"]:
            (self.rootfs / mount["destination"].lstrip("/")).mkdir(parents=True, exist_ok=True)

    def _root(self, spec: Mapping[str, Any]) -> Path:
        path = Path(spec["root"]["path"])
        return path if path.is_absolute() else self.directory / path

    @property
    def agent_dir(self) -> Path:
        """Holds the agent's source and its compiled code (see :mod:`.agent_code`), mounted
        read-only at :data:`AGENT_SOURCE_MOUNT`."""
        return self.directory / "agent"

    def write(
        self,
        spec: Mapping[str, Any],
        symlinks: Mapping[str, str],
        agent_source: str,
        agent_code: bytes = NO_CODE.file_bytes(),
    ) -> None:
        """Writes the bundle, ``symlinks`` made in its root (blocking: call it off the loop);
        ``agent_code`` is :meth:`.AgentCode.file_bytes` (by default none: the agent compiles
        its source)."""
        # Traversable, not listable: runsc's file proxy, in its own user namespace, reaches
        # the root and the agent's source through it.
        self.directory.mkdir(mode=0o711, parents=True, exist_ok=True)
        self.directory.parent.chmod(0o711)
        self.rootfs.mkdir(mode=0o755, exist_ok=True)
        # A new start (the agent died and is replaced) must not meet the last one's container.
        shutil.rmtree(self.state, ignore_errors=True)
        self.state.mkdir(mode=0o700)
        if self._root(spec) == self.rootfs:
            self._lay_out_rootfs(spec, symlinks)
        self.agent_dir.mkdir(mode=0o755, exist_ok=True)
        (self.agent_dir / AGENT_FILE_NAME).write_text(agent_source, encoding="utf-8")
        (self.agent_dir / CODE_FILE_NAME).write_bytes(agent_code)
        partial = self.config.with_suffix(".partial")
        partial.write_text(json.dumps(spec), encoding="utf-8")
        partial.chmod(0o644)
        partial.replace(self.config)


@dataclass(frozen=True)
class Mount:
    """One OCI bind mount: a host ``source`` at ``destination``."""

    source: Path | str
    destination: PurePosixPath | str
    writable: bool = False

    def to_oci(self) -> dict[str, Any]:
        return {
            "destination": str(self.destination),
            "type": "bind",
            "source": str(self.source),
            "options": ["rbind", "rw" if self.writable else "ro"],
        }


def oci_spec(
    *,
    argv: Sequence[str],
    env: Mapping[str, str],
    limits: ProcessLimits,
    max_processes: int,
    mounts: Sequence[Mount],
    root: Path | None,
    users: GvisorUsers,
) -> dict[str, Any]:
    """The OCI runtime spec of an environment's agent, whose sandbox may hold
    ``max_processes`` processes (the environment's pids limit) at once.

    ``root`` is a template's root (writable, its overlay); None: the bundle's
    empty read-only ``rootfs``, the host's system directories in ``mounts``.
    """
    return {
        "ociVersion": _OCI_VERSION,
        "process": {
            "terminal": False,
            "user": {"uid": 0, "gid": 0},  # the agent; its commands switch to users.command
            "args": list(argv),
            "env": [f"{name}={value}" for name, value in env.items()],
            "cwd": str(WORKSPACE_MOUNT),
            "capabilities": _agent_capabilities(),
            "noNewPrivileges": True,
            "rlimits": _rlimits(limits, max_processes),
        },
        # Not "readonly": the environment's file system is mounted nosuid and nodev, which
        # runsc's file proxy, in a user namespace, cannot remount. The empty root is the
        # host root's, and no uid of the sandbox may write it either way.
        "root": {"path": str(root) if root is not None else "rootfs", "readonly": False},
        "hostname": HOSTNAME,
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            # POSIX shared memory and semaphores (multiprocessing's locks), as bubblewrap's /dev.
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": _SHM},  # noqa: S108
            *(mount.to_oci() for mount in mounts),
        ],
        "linux": {
            "namespaces": [{"type": kind} for kind in _NAMESPACES],
            "uidMappings": users.mappings(0),
            "gidMappings": users.mappings(1),
        },
    }


_SHM = ["nosuid", "nodev", "noexec", "mode=1777"]


def _agent_capabilities() -> dict[str, list[str]]:
    held = list(_AGENT_CAPABILITIES)
    return {
        "bounding": held,
        "effective": held,
        "permitted": held,
        "inheritable": [],
        "ambient": [],
    }


@dataclass(frozen=True)
class GvisorUsers:
    """Who is who in a gVisor environment, as (uid, gid) on the host.

    gVisor's uid 0 (the agent) is ``agent`` on the host, and ``command`` (the
    sandbox uid, which owns the workspace) is the same number inside and out;
    nothing else is mapped. So commands are not the agent's user: they cannot
    signal it, trace it or open its fds, and it needs no host privilege.
    """

    agent: tuple[int, int]
    command: tuple[int, int]

    def mappings(self, index: int) -> list[dict[str, int]]:
        """The OCI id mappings of uids (``index`` 0) or gids (1)."""
        return [
            {"containerID": 0, "hostID": self.agent[index], "size": 1},
            {"containerID": self.command[index], "hostID": self.command[index], "size": 1},
        ]

    def agent_argument(self) -> str:
        """The agent's ``--command-user`` argument."""
        uid, gid = self.command
        return f"--command-user={uid}:{gid}"


def _rlimits(limits: ProcessLimits, max_processes: int) -> list[dict[str, Any]]:
    values = {
        "RLIMIT_AS": limits.address_space_bytes,
        "RLIMIT_FSIZE": limits.file_size_bytes,
        "RLIMIT_NOFILE": limits.open_files,
        "RLIMIT_CORE": 0,
    }
    # Every command runs as the one command uid, so this is the environment's pids limit
    # inside gVisor's kernel (the host's cgroup also counts gVisor's own tasks).
    values["RLIMIT_NPROC"] = max_processes - 1  # the agent is one, as in the host's cgroup
    return [{"type": kind, "soft": value, "hard": value} for kind, value in values.items()]


def system_directory_mounts(read_only_paths: Sequence[str]) -> tuple[list[Mount], dict[str, str]]:
    """The host's system directories read-only, and its symlinks among them as symlinks."""
    mounts: list[Mount] = []
    symlinks: dict[str, str] = {}
    for path in read_only_paths:
        if os.path.islink(path):
            symlinks[path] = os.readlink(path)
        elif os.path.isdir(path):
            mounts.append(Mount(path, path))
    return mounts, symlinks


def agent_runtime_mounts(runtime: AgentRuntime) -> list[Mount]:
    """The host interpreter's directories, read-only under ``/.sandbox-agent``
    (for a template root)."""
    return [Mount(directory, inside(directory)) for directory in runtime.host_dirs]


def agent_source_mount(bundle: GvisorBundle) -> Mount:
    """The agent's source directory, read-only."""
    return Mount(bundle.agent_dir, AGENT_SOURCE_MOUNT)


def workspace_mounts(files_dir: Path, tmp_dir: Path) -> list[Mount]:
    """The environment's ``/workspace`` and ``/tmp``, writable, on its own file system."""
    return [Mount(files_dir, WORKSPACE_MOUNT, writable=True), Mount(tmp_dir, TMP_MOUNT, True)]
