"""Whether a create may run now: network policy, room (see :mod:`.admission`), the queue.

:class:`CapacityGate` applies the admission rules to what live environments
hold, answers a create with no room RESOURCE_EXHAUSTED (with a RetryInfo
delay) or queues it, picks the waiting creates that fit once room frees up,
and reports the orchestrator's capacity.
"""

from __future__ import annotations

import time
from pathlib import Path

import grpc

from sandbox_sdk.errors import ErrorReason
from sandbox_sdk.server.orchestrator.sandbox.admission import Admission, Claim, Violation
from sandbox_sdk.server.orchestrator.sandbox.create_queue import QueuedCreate
from sandbox_sdk.server.orchestrator.sandbox.environment_record import (
    Capacity,
    EnvironmentSpec,
    EnvironmentState,
    NetworkPolicy,
)
from sandbox_sdk.server.orchestrator.sandbox.environments import LiveEnvironments
from sandbox_sdk.server.orchestrator.sandbox.network import tools_missing
from sandbox_sdk.server.retry_delays import capacity_retry_delay
from sandbox_sdk.server.status import ServiceError


class CapacityGate:
    """Admits creates against what live environments hold; see the module docstring."""

    def __init__(self, environments: LiveEnvironments) -> None:
        self._environments = environments
        self._settings = environments.settings
        self.admission = Admission(environments.settings, environments.workspace_root)
        self._egress_missing: list[str] = []

    def find_egress_tools(self) -> None:
        """Notes which tools egress networking needs that the host lacks (once started)."""
        self._egress_missing = tools_missing()
        if not self._environments.isolation.bwrap_path:
            self._egress_missing.append("bubblewrap")

    def check_network(self, tenant: str, network: NetworkPolicy) -> None:
        """PERMISSION_DENIED or FAILED_PRECONDITION if the tenant may not have ``network``."""
        if network is NetworkPolicy.HOST and tenant not in self._settings.host_network_tenants:
            raise ServiceError(
                grpc.StatusCode.PERMISSION_DENIED,
                ErrorReason.NETWORK_NOT_ALLOWED,
                "the host's network (NETWORK_POLICY_HOST) exposes the host's own services and "
                "is only for tenants the operator lists in sandbox.host_network_tenants; "
                "use NETWORK_POLICY_EGRESS (network='egress') for outbound connections",
            )
        if network is NetworkPolicy.EGRESS and self._egress_missing:
            raise ServiceError(
                grpc.StatusCode.FAILED_PRECONDITION,
                ErrorReason.NETWORK_UNAVAILABLE,
                "egress networking needs "
                + ", ".join(self._egress_missing)
                + " on the orchestrator's host: ask its operator to install them "
                "(apt-get install slirp4netns nftables), or use NETWORK_POLICY_NONE",
            )

    def refusals(self, tenant: str, spec: EnvironmentSpec) -> list[Violation]:
        """Why an environment of ``spec`` does not fit now (empty: it does)."""
        return self.admission.refusals(
            claim_of(tenant, spec), self._claims(), check_disk=self._check_disk()
        )

    def no_room(self, refusals: list[Violation], *, queue_full: bool) -> ServiceError:
        """The RESOURCE_EXHAUSTED answer to a create that does not fit (nor, if it asked
        to wait, fits in the queue)."""
        queue = self._environments.queue
        remedy = (
            f"the queue of waiting creates is full too (at most {queue.limit} creates "
            f"and {queue.limit_bytes} bytes of their files)"
            if queue_full
            else "or pass queue_when_full (queue=True in the SDK) to wait for room"
        )
        return ServiceError(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            ErrorReason.CAPACITY_EXHAUSTED,
            "this orchestrator has no room for the environment now; retry in a moment, ask "
            f"for smaller limits, delete environments you no longer need, {remedy}",
            quota_violations=refusals,
            retry_after=retry_after(),
        )

    def admit_waiting(self) -> list[QueuedCreate]:
        """Takes the waiting creates that fit now out of the queue, oldest first, and marks
        them CREATING; the caller starts them. What is held is read from the disk once per
        pass, not once per waiting create."""
        environments = self._environments
        if not len(environments.queue):
            return []
        held = self._claims()
        admitted: list[QueuedCreate] = []
        for entry in environments.queue:
            environment = entry.environment
            claim = claim_of(environment.tenant, environment.spec)
            if self.admission.refusals(claim, held, check_disk=self._check_disk()):
                continue
            held.append(claim)
            environments.queue.remove(environment.id)
            now = time.time()
            environment = environments.store.update(
                environment,
                state=EnvironmentState.CREATING,
                expire_time=now + environment.spec.ttl_seconds,
                last_activity_time=now,
            )
            admitted.append(QueuedCreate(environment, entry.files))
        return admitted

    def capacity(self) -> Capacity:
        """What is promised to running environments, and the totals."""
        count, cpu, memory = self._environments.allocation()
        return Capacity(
            orchestrator_id=self._environments.orchestrator_id,
            environments_running=count,
            environments_max=self._settings.max_environments,
            cpu_cores_allocated=cpu,
            cpu_cores_total=self._settings.cpu_cores_total,
            memory_bytes_allocated=memory,
            memory_bytes_total=self._settings.memory_bytes_total,
            isolation=self._environments.isolation.level,
        )

    def _check_disk(self) -> bool:
        # Only loop-mounted workspaces hold their quota on the disk.
        return self._environments.isolation.loop_quota

    def _claims(self) -> list[Claim]:
        environments = self._environments
        return [
            claim_of(runtime.tenant, runtime.spec, environments.layout(environment_id).image)
            for environment_id, runtime in environments.runtimes.items()
        ]


def claim_of(tenant: str, spec: EnvironmentSpec, image: Path | None = None) -> Claim:
    """What an environment of ``spec`` holds (its workspace ``image`` once it has one)."""
    limits = spec.limits
    return Claim(tenant, limits.cpu_cores, limits.memory_bytes, limits.disk_bytes, image)


def retry_after() -> float:
    """The RetryInfo delay of CAPACITY_EXHAUSTED: about a second, spread.

    Deletes free room within a second; waiting for the next ttl expiry
    would outlast the SDK's whole retry deadline.
    """
    return capacity_retry_delay()
