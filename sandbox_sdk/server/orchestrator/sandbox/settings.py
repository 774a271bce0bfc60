"""Configuration of the sandbox layer: default and maximum limits, capacity, timings."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated

import psutil
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from sandbox_sdk.errors import ConfigError
from sandbox_sdk.models.environment import IsolationRuntime
from sandbox_sdk.server.orchestrator.sandbox.network import DEFAULT_DENIED_CIDRS, parse_cidrs

MiB = 1 << 20
GiB = 1 << 30


class LimitValues(BaseModel):
    """One value per resource limit of an environment."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cpu_cores: float = Field(gt=0)
    memory_bytes: int = Field(gt=0)
    disk_bytes: int = Field(gt=0)
    max_pids: int = Field(gt=0)
    exec_timeout_seconds: float = Field(gt=0)


def _cpu_count() -> int:
    return os.cpu_count() or 1


def _upper_case(value: object) -> object:
    return value.upper() if isinstance(value, str) else value


CGROUP_PARENT_VARIABLE = "SANDBOX_SDK_CGROUP_PARENT"
MOUNT_ROOT_VARIABLE = "SANDBOX_SDK_MOUNT_ROOT"
_CGROUP_NAME = r"^[A-Za-z0-9_.-]+$"


def default_cgroup_parent() -> str:
    """``$SANDBOX_SDK_CGROUP_PARENT``, else ``sandbox-sdk``: two orchestrators on one host
    need parents of their own (see docs/deployment.md)."""
    parent = os.environ.get(CGROUP_PARENT_VARIABLE) or "sandbox-sdk"
    if re.fullmatch(_CGROUP_NAME, parent) is None or parent in (".", ".."):
        raise ConfigError(
            f"{CGROUP_PARENT_VARIABLE}={parent!r} is not a cgroup name: use letters, digits, "
            "'_', '.' and '-' only, or unset it for the default 'sandbox-sdk'"
        )
    return parent


def default_mount_root() -> Path:
    """``$SANDBOX_SDK_MOUNT_ROOT``, else ``/run/sandbox-sdk``: two orchestrators on one host
    need roots of their own (see docs/deployment.md)."""
    root = os.environ.get(MOUNT_ROOT_VARIABLE) or "/run/sandbox-sdk"
    if not os.path.isabs(root):
        raise ConfigError(
            f"{MOUNT_ROOT_VARIABLE}={root!r} is not an absolute path: give one, or unset it "
            "for the default /run/sandbox-sdk"
        )
    return Path(root)


# A runtime as an operator writes it in the YAML: "gvisor" or "GVISOR".
RuntimeName = Annotated[IsolationRuntime, BeforeValidator(_upper_case)]


def _not_a_path_step(name: str) -> str:
    if name in (".", ".."):
        raise ValueError("a cgroup name, not '.' or '..' (which name another directory)")
    return name


# One directory's name in each cgroup hierarchy: the pattern alone would let "..",
# putting environments' cgroups beside the hierarchy's root instead of under a parent.
CgroupName = Annotated[str, Field(pattern=_CGROUP_NAME), AfterValidator(_not_a_path_step)]


class SandboxSettings(BaseModel):
    """How the orchestrator isolates, limits and expires environments.

    Attributes:
        default_limits: fill the zero fields of a requested spec.
        max_limits: what one environment may ask for at most.
        max_environments, cpu_cores_total, memory_bytes_total: what the
            orchestrator may promise all running environments together
            (admission control); CPU is overcommitted 4x by default.
        output_cap_bytes: per stream and command; the rest is dropped and flagged.
        max_read_file_bytes: the largest file ReadFile returns (gRPC's default
            4 MiB message limit, less headroom).
        sandbox_uid, sandbox_gid: who commands run as when the orchestrator is root.
        runsc_path: gVisor's runsc, a path or a name on PATH; not found, the
            gvisor runtime is not installed here (creates asking for it are refused).
        gvisor_agent_uid: the host uid gVisor environments' agents are (uid 0 of
            gVisor's kernel, where commands are ``sandbox_uid``); it owns nothing
            on the host and must be neither ``sandbox_uid`` nor any user's.
        cgroup_parent: the cgroup (in each hierarchy) holding environments' cgroups;
            by default ``$SANDBOX_SDK_CGROUP_PARENT``, else ``sandbox-sdk``.
        read_only_paths: host paths visible read-only inside bubblewrap.
        agent_python: the interpreter running each environment's agent; it
            must be under ``read_only_paths`` (the sandbox runs it).
        loop_disk_quota: give each workspace its own loop-mounted ext4 (root only).
        mount_root: where workspaces are mounted when privileges are dropped;
            every directory on the way must be searchable by the sandbox uid,
            because bubblewrap resolves its bind sources as that uid. By default
            ``$SANDBOX_SDK_MOUNT_ROOT``, else ``/run/sandbox-sdk``.
        address_space_headroom_bytes: RLIMIT_AS is the memory limit plus this,
            since virtual memory is not resident memory.
        tenant_share_max: the most of any total (environments, cores, memory)
            one tenant may hold, so that others always find room.
        fair_share_headroom: when less than this fraction of a total would be
            left, tenants above their fair share are refused (see admission.py).
        disk_reserve_bytes: disk space never promised to workspaces.
        max_queued_environments: creates that may wait for room (queue_when_full).
        max_queued_file_bytes: the files those creates carry, held in memory
            while they wait, together.
        host_network_tenants: the tenants whose environments may use the
            host's own network (NETWORK_POLICY_HOST), which exposes the host's
            loopback and every service on it. Empty by default: no tenant.
        egress_denied_cidrs: what NETWORK_POLICY_EGRESS environments never
            reach, whatever they ask (this host's own addresses are added);
            by default private, loopback, link-local and multicast ranges.
        egress_mtu: the MTU of an egress environment's interface.
        template_build_uid, template_build_gid: who template builds run as
            (uid 0 of their user namespace, owning the tree being built); an
            id no other user or file of the host has.
        template_build_limits: the resources of one template build step.
        template_debian_mirror: the Debian mirror templates are built from;
            empty: the host's own (from /etc/apt), else deb.debian.org.
        template_max_bytes: the largest root file system a build may leave.
        max_port_forwards_per_environment: ForwardPort connections one
            environment may carry at once (more: RESOURCE_EXHAUSTED).
        max_processes_per_environment: background processes (StartProcess)
            one environment may have running at once (more: RESOURCE_EXHAUSTED).
        process_output_buffer_bytes: output kept per background process for
            StreamProcessOutput; older events are dropped (resuming before the
            oldest kept is OUT_OF_RANGE).
        max_finished_processes_per_environment: ended processes kept per
            environment for GetProcess and ListProcesses; the oldest go first.
        workspace_pool_depth: workspace file systems made ahead per size in
            ``workspace_pool_disk_bytes`` (loop disk quota only), so that a
            create of such a size need not wait for ``mkfs.ext4``; 0: none.
        workspace_pool_disk_bytes: the disk sizes made ahead; None: the
            default size (``default_limits.disk_bytes``). Other sizes are made
            on demand.
        gate_pool_depth: agent start gates started ahead, each already in a
            cgroup of its own, for bubblewrap environments under cgroup v1
            (see gate_pool.py), so that a create does not wait for its agent's
            process to be moved into cgroups; 0: none.
        default_runtime: what isolates an environment that names no runtime
            (``BUBBLEWRAP`` or ``GVISOR``); see ``runtime_policy.py``.
        minimum_runtime_by_tenant: the weakest runtime each listed tenant's
            environments may run under, e.g. ``{"tenant-x": GVISOR}``: their
            creates without a runtime get at least it, and asking for a weaker
            one is PERMISSION_DENIED. Empty by default: no tenant is restricted.
    """

    model_config = ConfigDict(extra="forbid")

    default_limits: LimitValues = LimitValues(
        cpu_cores=1.0,
        memory_bytes=512 * MiB,
        disk_bytes=1 * GiB,
        max_pids=256,
        exec_timeout_seconds=60.0,
    )
    max_limits: LimitValues = Field(
        default_factory=lambda: LimitValues(
            cpu_cores=float(_cpu_count()),
            memory_bytes=16 * GiB,
            disk_bytes=64 * GiB,
            max_pids=16384,
            exec_timeout_seconds=24 * 3600.0,
        )
    )
    default_ttl_seconds: float = Field(default=3600.0, gt=0)
    max_ttl_seconds: float = Field(default=7 * 24 * 3600.0, gt=0)
    default_idle_timeout_seconds: float = Field(default=1800.0, gt=0)
    max_idle_timeout_seconds: float = Field(default=7 * 24 * 3600.0, gt=0)

    max_environments: int = Field(default=64, gt=0)
    cpu_cores_total: float = Field(default_factory=lambda: float(_cpu_count() * 4), gt=0)
    memory_bytes_total: int = Field(
        default_factory=lambda: int(psutil.virtual_memory().total), gt=0
    )

    output_cap_bytes: int = Field(default=64 * MiB, gt=0)
    output_chunk_bytes: int = Field(default=64 * 1024, gt=0)
    max_read_file_bytes: int = Field(default=4 * MiB - 64 * 1024, gt=0)

    reaper_interval_seconds: float = Field(default=1.0, gt=0)
    monitor_interval_seconds: float = Field(default=1.0, gt=0)

    sandbox_uid: int = Field(default=65534, ge=1)
    sandbox_gid: int = Field(default=65534, ge=1)
    bwrap_path: str = "/usr/bin/bwrap"
    runsc_path: str = "runsc"
    gvisor_agent_uid: int = Field(default=65532, ge=1)
    agent_python: str = "/usr/bin/python3"
    cgroup_parent: CgroupName = Field(default_factory=default_cgroup_parent)
    read_only_paths: tuple[str, ...] = ("/usr", "/etc", "/bin", "/sbin", "/lib", "/lib32", "/lib64")
    loop_disk_quota: bool = True
    mount_root: Path = Field(default_factory=default_mount_root)
    address_space_headroom_bytes: int = Field(default=1 * GiB, ge=0)
    max_open_files: int = Field(default=1024, gt=0)
    tenant_share_max: float = Field(default=0.75, gt=0, le=1)
    fair_share_headroom: float = Field(default=0.25, ge=0, lt=1)
    disk_reserve_bytes: int = Field(default=64 * MiB, ge=0)
    max_queued_environments: int = Field(default=256, ge=0)
    max_queued_file_bytes: int = Field(default=256 * MiB, ge=0)
    host_network_tenants: tuple[str, ...] = ()
    egress_denied_cidrs: tuple[str, ...] = DEFAULT_DENIED_CIDRS
    egress_mtu: int = Field(default=65520, ge=1280, le=65521)
    template_build_uid: int = Field(default=65533, ge=1)
    template_build_gid: int = Field(default=65533, ge=1)
    template_build_limits: LimitValues = LimitValues(
        cpu_cores=2.0,
        memory_bytes=2 * GiB,
        disk_bytes=8 * GiB,
        max_pids=1024,
        exec_timeout_seconds=1800.0,
    )
    template_debian_mirror: str = Field(default="", pattern=r"^(https?://[A-Za-z0-9.:/_~-]+)?$")
    template_max_bytes: int = Field(default=16 * GiB, gt=0)
    max_port_forwards_per_environment: int = Field(default=32, gt=0)
    max_processes_per_environment: int = Field(default=64, gt=0)
    process_output_buffer_bytes: int = Field(default=4 * 1024 * 1024, ge=64 * 1024)
    max_finished_processes_per_environment: int = Field(default=1000, gt=0)
    workspace_pool_depth: int = Field(default=2, ge=0, le=64)
    workspace_pool_disk_bytes: tuple[int, ...] | None = None
    gate_pool_depth: int = Field(default=2, ge=0, le=16)
    default_runtime: RuntimeName = IsolationRuntime.BUBBLEWRAP
    minimum_runtime_by_tenant: Mapping[str, RuntimeName] = Field(default_factory=dict)

    def pooled_disk_sizes(self) -> tuple[int, ...]:
        """The disk sizes whose workspace file systems are made ahead."""
        if self.workspace_pool_disk_bytes is None:
            return (self.default_limits.disk_bytes,)
        return self.workspace_pool_disk_bytes

    @model_validator(mode="after")
    def _defaults_within_maximums(self) -> SandboxSettings:
        for name in LimitValues.model_fields:
            if getattr(self.default_limits, name) > getattr(self.max_limits, name):
                raise ValueError(f"default_limits.{name} is above max_limits.{name}")
        if self.default_ttl_seconds > self.max_ttl_seconds:
            raise ValueError("default_ttl_seconds is above max_ttl_seconds")
        if self.default_idle_timeout_seconds > self.max_idle_timeout_seconds:
            raise ValueError("default_idle_timeout_seconds is above max_idle_timeout_seconds")
        parse_cidrs(self.egress_denied_cidrs)
        if any(size <= 0 for size in self.workspace_pool_disk_bytes or ()):
            raise ValueError("workspace_pool_disk_bytes holds a size that is not positive")
        _named_runtimes(self.default_runtime, self.minimum_runtime_by_tenant)
        return self


def _named_runtimes(default: IsolationRuntime, minimums: Mapping[str, IsolationRuntime]) -> None:
    """UNSPECIFIED means "the operator's default": the operator's own settings must name one."""
    if default is IsolationRuntime.UNSPECIFIED:
        raise ValueError("default_runtime must be BUBBLEWRAP or GVISOR")
    unnamed = sorted(
        tenant for tenant, runtime in minimums.items() if runtime is IsolationRuntime.UNSPECIFIED
    )
    if unnamed:
        raise ValueError(
            "minimum_runtime_by_tenant must name BUBBLEWRAP or GVISOR for " + ", ".join(unnamed)
        )
