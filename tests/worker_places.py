"""Where this test session's orchestrators put environments on the host, its own under
pytest-xdist.

Environments' cgroups go under a parent cgroup and their workspaces are mounted under a
mount root, both shared by every orchestrator on the host that keeps the defaults. Two
xdist workers run orchestrators of the same ids ("t1", "o1") at once, and the session's
leak check (tests/conftest.py) would take the other worker's environments for leaks;
so each worker gets parents of its own, through the variables that the settings'
defaults read (``SANDBOX_SDK_CGROUP_PARENT``, ``SANDBOX_SDK_MOUNT_ROOT``, see
docs/deployment.md). Set before anything makes settings, they reach the servers a test
starts as child processes too, as long as those keep them (:data:`VARIABLES`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sandbox_sdk.server.orchestrator.sandbox.launcher import RESOLV_CONF_NAME
from sandbox_sdk.server.orchestrator.sandbox.settings import (
    CGROUP_PARENT_VARIABLE,
    MOUNT_ROOT_VARIABLE,
    default_cgroup_parent,
    default_mount_root,
)

# What a test or helper that clears the SANDBOX_* client settings from an environment
# must keep: they are the servers' host places, not client settings.
VARIABLES = (CGROUP_PARENT_VARIABLE, MOUNT_ROOT_VARIABLE)


def use_the_workers_own() -> None:
    """Under xdist, suffixes the default parents with the worker's name (``gw0``) and its
    run's (other runs on the machine, from other checkouts, have workers ``gw0`` too); run
    alone, the session keeps the defaults."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if not worker:
        return
    suffix = f"{worker}-{os.environ.get('PYTEST_XDIST_TESTRUNUID', '')[:8]}".rstrip("-")
    cgroup_parent, mount_root = default_cgroup_parent(), default_mount_root()
    os.environ[CGROUP_PARENT_VARIABLE] = f"{cgroup_parent}-{suffix}"
    os.environ[MOUNT_ROOT_VARIABLE] = f"{mount_root}-{suffix}"


def client_settings(environ: Mapping[str, str]) -> list[str]:
    """The names of the SDK's SANDBOX_* settings in ``environ`` (not the servers' places)."""
    return [name for name in environ if name.startswith("SANDBOX_") and name not in VARIABLES]


def without_client_settings(environ: Mapping[str, str]) -> dict[str, str]:
    """``environ`` without the SDK's SANDBOX_* settings, the servers' host places kept."""
    dropped = set(client_settings(environ))
    return {name: value for name, value in environ.items() if name not in dropped}


def sandbox_section() -> dict[str, Any]:
    """The ``sandbox`` settings naming this session's places, for a server whose
    environment is cleared of them (``sandbox-cluster``'s processes)."""
    return {"cgroup_parent": default_cgroup_parent(), "mount_root": str(default_mount_root())}


def remove_the_workers_own() -> None:
    """Removes the worker's parents once empty, at the session's end (never the shared
    defaults, which another orchestrator on the host may be using)."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return
    cgroup_parent = default_cgroup_parent()
    mount_root = default_mount_root()
    (mount_root / RESOLV_CONF_NAME).unlink(missing_ok=True)  # every orchestrator writes it
    parents = [*Path("/sys/fs/cgroup").glob(f"*/{cgroup_parent}"), mount_root]
    for parent in [*parents, Path("/sys/fs/cgroup") / cgroup_parent]:
        with contextlib.suppress(OSError):  # not empty: the leak check said what is left
            parent.rmdir()


def sandbox_uid_of_its_own() -> int:
    """A uid for sandboxes that no other process of this test run has: 65400 plus the
    worker's number (above any login account's, below the settings' own uids 65532-65534).

    Without cgroups an environment's pids limit is RLIMIT_NPROC, which counts every
    process of its uid on the host: another worker's sandboxes (uid 65534, the default)
    and PostgreSQL (``nobody``, the same uid) would count against it.
    """
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    return 65400 + int(worker.removeprefix("gw") or 0)
