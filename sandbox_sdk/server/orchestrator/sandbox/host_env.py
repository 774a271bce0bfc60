"""The fixed environment of every process the orchestrator starts on the host.

Host-side helpers (the agent's start gate, setpriv, bubblewrap, mkfs, mount,
slirp4netns) run before or outside the sandbox, some as root, and all of them
interpret their environment: a loader variable, a locale path or a shell
startup file can make them run code. So none of them inherits the
orchestrator's environment or sees anything a request carried; they get this
allowlist. An environment's own variables reach only its commands, through
the already-unprivileged agent inside the sandbox.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

HOST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

HOST_PROCESS_ENV: Mapping[str, str] = MappingProxyType({"PATH": HOST_PATH, "LANG": "C.UTF-8"})


def host_process_env(**extra: str) -> dict[str, str]:
    """The allowlist plus ``extra``, which only the orchestrator itself may choose."""
    return {**HOST_PROCESS_ENV, **extra}
