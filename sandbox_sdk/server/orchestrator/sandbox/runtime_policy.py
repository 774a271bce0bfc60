"""Which isolation runtime an environment gets: what it asked for, under the operator's policy.

Runtimes are ordered by strength, ``BUBBLEWRAP`` < ``GVISOR`` (gVisor's user-space kernel
stands between a command and the host kernel). A create that names no runtime gets the
stronger of the operator's ``default_runtime`` and the tenant's entry in
``minimum_runtime_by_tenant``. A create that names one weaker than its tenant's minimum
is refused (PERMISSION_DENIED), never quietly upgraded: the caller asked for something
specific and must learn it is not allowed. A resolved runtime this orchestrator does not
have installed is FAILED_PRECONDITION, never a silent fallback to a weaker one.
"""

from __future__ import annotations

from collections.abc import Set

import grpc

from sandbox_sdk.errors import ErrorReason
from sandbox_sdk.models.environment import IsolationRuntime
from sandbox_sdk.server.orchestrator.sandbox.settings import SandboxSettings
from sandbox_sdk.server.status import ServiceError

__all__ = ["STRENGTH", "check_build_steps_allowed", "resolve_runtime"]

STRENGTH: dict[IsolationRuntime, int] = {
    IsolationRuntime.BUBBLEWRAP: 1,
    IsolationRuntime.GVISOR: 2,
}
"""How strongly each runtime isolates; a larger number is stronger."""

# What an operator installs to get each runtime (Debian packages).
_INSTALL_HINTS: dict[IsolationRuntime, str] = {
    IsolationRuntime.BUBBLEWRAP: "apt-get install bubblewrap",
    IsolationRuntime.GVISOR: "apt-get install runsc",
}


def resolve_runtime(
    requested: IsolationRuntime,
    tenant: str,
    settings: SandboxSettings,
    installed: Set[IsolationRuntime],
) -> IsolationRuntime:
    """The runtime an environment of ``tenant`` asking for ``requested`` runs under.

    Raises:
        ServiceError: PERMISSION_DENIED (RUNTIME_NOT_ALLOWED) when ``requested`` is weaker
            than the tenant's minimum; FAILED_PRECONDITION (RUNTIME_NOT_INSTALLED) when
            the resolved runtime is not in ``installed``.
    """
    minimum = settings.minimum_runtime_by_tenant.get(tenant)
    if requested is IsolationRuntime.UNSPECIFIED:
        runtime = _stronger(settings.default_runtime, minimum)
    else:
        if minimum is not None and STRENGTH[requested] < STRENGTH[minimum]:
            raise _weaker_than_minimum(requested, minimum)
        runtime = requested
    if runtime not in installed:
        raise _not_installed(runtime, installed, minimum, explicit=requested is runtime)
    return runtime


def _stronger(default: IsolationRuntime, minimum: IsolationRuntime | None) -> IsolationRuntime:
    if minimum is None or STRENGTH[default] >= STRENGTH[minimum]:
        return default
    return minimum


def _name(runtime: IsolationRuntime) -> str:
    return runtime.value.lower()


def _weaker_than_minimum(requested: IsolationRuntime, minimum: IsolationRuntime) -> ServiceError:
    return ServiceError(
        grpc.StatusCode.PERMISSION_DENIED,
        ErrorReason.RUNTIME_NOT_ALLOWED,
        f"the operator's policy (sandbox.minimum_runtime_by_tenant) runs this tenant's "
        f"environments under {_name(minimum)} at least, and {_name(requested)} is weaker: "
        f"leave the runtime out (the policy then picks it) or ask for "
        f"runtime='{_name(minimum)}'",
    )


def _not_installed(
    runtime: IsolationRuntime,
    installed: Set[IsolationRuntime],
    minimum: IsolationRuntime | None,
    *,
    explicit: bool,
) -> ServiceError:
    floor = STRENGTH[minimum] if minimum is not None else 0
    allowed = sorted(
        _name(other) for other in installed if other is not runtime and STRENGTH[other] >= floor
    )
    chosen = "was asked for" if explicit else "is the operator's default for this tenant"
    alternative = (
        "or ask for " + " or ".join(f"runtime='{name}'" for name in allowed) + ", installed here"
        if allowed
        else "or create the environment where it is installed"
    )
    return ServiceError(
        grpc.StatusCode.FAILED_PRECONDITION,
        ErrorReason.RUNTIME_NOT_INSTALLED,
        f"the {_name(runtime)} runtime {chosen} but is not installed on this orchestrator: "
        f"ask its operator to install it ({_INSTALL_HINTS[runtime]}), {alternative}",
    )


def check_build_steps_allowed(tenant: str, settings: SandboxSettings) -> None:
    """Refuses template build steps (pip, files, commands) to a tenant held to a runtime
    stronger than bubblewrap: the steps run the tenant's code in a bubblewrap build
    sandbox, which would be a way around the hold.

    Raises:
        ServiceError: PERMISSION_DENIED (RUNTIME_NOT_ALLOWED) for such a tenant.
    """
    minimum = settings.minimum_runtime_by_tenant.get(tenant)
    if minimum is None or STRENGTH[minimum] <= STRENGTH[IsolationRuntime.BUBBLEWRAP]:
        return
    raise ServiceError(
        grpc.StatusCode.PERMISSION_DENIED,
        ErrorReason.RUNTIME_NOT_ALLOWED,
        f"the operator's policy (sandbox.minimum_runtime_by_tenant) runs this tenant's code "
        f"under {_name(minimum)} at least, and template build steps (pip_packages, files, "
        "commands) run under bubblewrap: build the template from its base alone and set it "
        "up in the environment, or ask the operator to build it for you",
    )
