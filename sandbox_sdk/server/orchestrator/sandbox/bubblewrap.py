"""The bubblewrap command line that puts one command into its own namespaces.

Every command gets new user, pid, network, ipc, uts, cgroup and mount
namespaces; the system directories read-only; the environment's workspace at
``/workspace`` (the working directory) and its private ``/tmp``, both on the
environment's own file system; everything else read-only. The network
namespace is the sandbox's own (empty, or connected by slirp4netns for
egress, see :mod:`.network`) unless the operator allowed the host's.
bubblewrap runs as the unprivileged sandbox uid, so the command has no
capabilities on the host and cannot create nested user namespaces.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from sandbox_sdk.server.orchestrator.sandbox.environment_record import NetworkPolicy

WORKSPACE_MOUNT = PurePosixPath("/workspace")
TMP_MOUNT = PurePosixPath("/tmp")  # noqa: S108  (the sandbox's own /tmp, not the host's)
HOSTNAME = "sandbox"


@dataclass(frozen=True)
class RootMount:
    """A root file system bound writable at ``/`` in place of the host's system directories.

    For an environment it is the overlay of its template (see :mod:`.workspace`);
    for a template build it is the root file system being built, owned by the
    build uid, which is then uid 0 inside its user namespace (``as_root``) and
    so may change it, with no capability on the host. ``binds`` are extra
    bubblewrap arguments (the agent's runtime, see :mod:`.agent_runtime`).
    """

    path: Path
    binds: tuple[str, ...] = ()
    as_root: bool = False


def system_mounts(read_only_paths: Sequence[str]) -> list[str]:
    """bwrap arguments recreating the host's system paths read-only.

    A path that is a symlink on the host (``/bin -> usr/bin`` on merged-/usr
    systems) becomes the same symlink; a missing path is skipped.
    """
    args: list[str] = []
    for path in read_only_paths:
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            args += ["--ro-bind", path, path]
    return args


def bwrap_command(
    bwrap_path: str,
    *,
    system: Sequence[str],
    workspace_dir: Path,
    tmp_dir: Path,
    cwd: str,
    network: NetworkPolicy,
    command: Sequence[str],
    seccomp_fd: int | None = None,
    info_fd: int | None = None,
    resolv_conf: Path | None = None,
    root: RootMount | None = None,
) -> list[str]:
    """The full argv: bwrap, its options, then ``command``.

    ``system`` is the output of :func:`system_mounts`; ``cwd`` is relative to
    the workspace; ``seccomp_fd`` (inherited by bwrap) holds the BPF program
    loaded just before ``command`` starts; bubblewrap writes the sandbox's
    pid to ``info_fd``; ``resolv_conf`` replaces ``/etc/resolv.conf``;
    ``root`` replaces the host's read-only system directories.
    """
    args = [bwrap_path, "--unshare-all", "--unshare-user", "--disable-userns"]
    if seccomp_fd is not None:
        args += ["--seccomp", str(seccomp_fd)]
    if info_fd is not None:
        args += ["--info-fd", str(info_fd)]
    if network is NetworkPolicy.HOST:
        args.append("--share-net")
    # The command is the namespace's pid 1: bubblewrap's own reaper process
    # leaks a pids-cgroup charge per command on some kernels, and the kernel
    # kills the whole namespace when pid 1 exits either way.
    args += ["--as-pid-1", "--die-with-parent", "--new-session", "--hostname", HOSTNAME]
    if root is None:
        args += list(system)
    else:
        if root.as_root:
            args += ["--uid", "0", "--gid", "0"]
        args += ["--bind", str(root.path), "/", *root.binds]
    if resolv_conf is not None:
        args += ["--ro-bind", str(resolv_conf), "/etc/resolv.conf"]
    args += ["--proc", "/proc", "--dev", "/dev"]
    args += ["--bind", str(workspace_dir), str(WORKSPACE_MOUNT)]
    args += ["--bind", str(tmp_dir), str(TMP_MOUNT)]
    if root is None:
        args += ["--remount-ro", "/"]
    args += ["--chdir", str(WORKSPACE_MOUNT / cwd) if cwd else str(WORKSPACE_MOUNT)]
    args += ["--", *command]
    return args
