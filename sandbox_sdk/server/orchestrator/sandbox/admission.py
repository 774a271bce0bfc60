"""Admission: whether a new environment fits now, fairly between tenants and on the real disk.

Three rules, checked for each capacity dimension (environments, promised
CPU cores, promised memory):

1. The orchestrator's totals are never exceeded.
2. No tenant holds more than ``tenant_share_max`` of a total (75% by default),
   so one tenant alone can never take the room every other tenant needs.
3. When the orchestrator is nearly full (less than ``fair_share_headroom`` of
   a total would remain), a tenant already above its fair share (the total
   divided among the tenants holding environments, the asking one included)
   is refused: the last room goes to tenants below their share.

Disk quotas are promised against the real file system: a workspace image is
sparse, so the space its quota promises but it has not yet used is counted as
taken (``reserved``), and a new quota is admitted only if it fits in the free
space left after those promises and ``disk_reserve_bytes``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from sandbox_sdk.server.orchestrator.sandbox.settings import SandboxSettings

Violation = tuple[str, str]


@dataclass(frozen=True)
class Claim:
    """What one environment holds, or asks for."""

    tenant: str
    cpu_cores: float
    memory_bytes: int
    disk_bytes: int
    image: Path | None = None


@dataclass(frozen=True)
class _Dimension:
    name: str
    total: float
    amount: Callable[[Claim], float]
    unit: str


def _one(_: Claim) -> float:
    return 1.0


def _cores(claim: Claim) -> float:
    return claim.cpu_cores


def _memory(claim: Claim) -> float:
    return float(claim.memory_bytes)


class Admission:
    """Decides whether a claim fits next to what is held; see the module docstring."""

    def __init__(self, settings: SandboxSettings, disk_root: Path) -> None:
        self._settings = settings
        self._disk_root = disk_root
        self._dimensions = (
            _Dimension("environments", settings.max_environments, _one, ""),
            _Dimension("cpu_cores", settings.cpu_cores_total, _cores, " cores"),
            _Dimension("memory_bytes", settings.memory_bytes_total, _memory, " bytes"),
        )

    def refusals(self, claim: Claim, held: Sequence[Claim], *, check_disk: bool) -> list[Violation]:
        """Why ``claim`` cannot be admitted next to ``held`` (empty: it can)."""
        violations = [
            violation
            for dimension in self._dimensions
            if (violation := self._refusal(dimension, claim, held)) is not None
        ]
        if check_disk and (violation := self._disk_refusal(claim, held)) is not None:
            violations.append(violation)
        return violations

    def _refusal(
        self, dimension: _Dimension, claim: Claim, held: Sequence[Claim]
    ) -> Violation | None:
        total, amount = dimension.total, dimension.amount
        used = sum(amount(c) for c in held)
        asked = amount(claim)
        mine = sum(amount(c) for c in held if c.tenant == claim.tenant)
        name, unit = dimension.name, dimension.unit
        if used + asked > total + 1e-9:
            return name, f"{used:g} of {total:g}{unit} are promised; the orchestrator is full"
        share_max = self._settings.tenant_share_max * total
        if mine + asked > share_max + 1e-9:
            return name, (
                f"your tenant holds {mine:g} of {total:g}{unit}; one tenant may hold at most "
                f"{share_max:g}, the rest is kept for other tenants"
            )
        tenants = {c.tenant for c in held} | {claim.tenant}
        fair_share = total / len(tenants)
        free_after = total - used - asked
        if mine + asked > fair_share + 1e-9 and free_after < self._headroom(total):
            return name, (
                f"your tenant holds {mine:g}{unit}, above its fair share of {fair_share:g} "
                f"among {len(tenants)} tenants, and the orchestrator is nearly full: the "
                "last room is kept for tenants below their share"
            )
        return None

    def _headroom(self, total: float) -> float:
        return self._settings.fair_share_headroom * total

    def _disk_refusal(self, claim: Claim, held: Sequence[Claim]) -> Violation | None:
        free = self.free_disk_bytes()
        reserved = sum(_unused_quota(c) for c in held)
        room = free - reserved - self._settings.disk_reserve_bytes
        if claim.disk_bytes > room:
            return "disk_bytes", (
                f"the orchestrator's disk has {max(room, 0)} bytes left for new workspaces "
                f"({free} free, {reserved} promised to running ones); ask for a smaller "
                "spec.limits.disk_bytes, delete environments, or retry later"
            )
        return None

    def free_disk_bytes(self) -> int:
        """Bytes free for unprivileged writers on the workspaces' file system."""
        info = os.statvfs(self._disk_root)
        return info.f_bavail * info.f_frsize


def _unused_quota(claim: Claim) -> int:
    """The part of a workspace's quota its sparse image has not taken from the disk yet."""
    if claim.image is None:
        return 0
    try:
        allocated = os.stat(claim.image).st_blocks * 512
    except OSError:
        return 0
    return max(0, claim.disk_bytes - allocated)
