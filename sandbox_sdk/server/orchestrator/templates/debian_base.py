"""A Debian root file system, built with mmdebstrap from Debian's packages.

mmdebstrap runs in ``--mode=unshare``: it sets the tree up inside a user
namespace of its own, so the maintainer scripts of the packages it installs
run as root of that namespace, never as the host's root. Package names are
checked against Debian's grammar before they get here (:mod:`.spec`), so
none can pass for an option.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from sandbox_sdk.server.orchestrator.sandbox.host_env import host_process_env
from sandbox_sdk.server.orchestrator.templates.logged_process import BuildLog, run_logged
from sandbox_sdk.server.orchestrator.templates.spec import DebianBase

DEFAULT_MIRROR = "http://deb.debian.org/debian"
_SOURCES = Path("/etc/apt")
_MIRROR = re.compile(r"^https?://[A-Za-z0-9.-]+(?::[0-9]{1,5})?(?:/[A-Za-z0-9._~/-]*)?$")


def valid_mirror(url: str) -> bool:
    """Whether ``url`` is a plain http(s) URL usable as a mirror argument."""
    return bool(_MIRROR.match(url))


def host_debian_mirror(apt_dir: Path = _SOURCES) -> str:
    """The host's own Debian mirror (its first ``.../debian`` source), or deb.debian.org."""
    for url in _source_urls(apt_dir):
        if url.rstrip("/").endswith("/debian") and valid_mirror(url):
            return url.rstrip("/")
    return DEFAULT_MIRROR


def _source_urls(apt_dir: Path) -> list[str]:
    files = [apt_dir / "sources.list", *sorted((apt_dir / "sources.list.d").glob("*"))]
    urls: list[str] = []
    for path in files:
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        if path.suffix == ".sources":
            urls += [u for line in text.splitlines() if line.startswith("URIs:")
                     for u in line.split()[1:]]  # fmt: skip
        elif path.name == "sources.list" or path.suffix == ".list":
            for line in text.splitlines():
                words = [w for w in line.split() if not w.startswith("[")]
                if len(words) >= 2 and words[0] == "deb":
                    urls.append(words[1])
    return urls


def mmdebstrap_argv(
    base: DebianBase, packages: Sequence[str], target: Path, mirror: str
) -> list[str]:
    """The mmdebstrap command line building ``base`` plus ``packages`` into ``target``."""
    argv = ["mmdebstrap", "--mode=unshare", f"--variant={base.variant}", "--format=directory"]
    if packages:
        argv.append("--include=" + ",".join(sorted(set(packages))))
    return [*argv, "--", base.suite, str(target), mirror]


async def build_debian_rootfs(
    base: DebianBase, packages: Sequence[str], target: Path, *, mirror: str, on_log: BuildLog
) -> None:
    """Builds the root file system into ``target`` (which must not exist yet)."""
    await run_logged(
        mmdebstrap_argv(base, packages, target, mirror),
        env=host_process_env(),
        on_log=on_log,
        what=f"mmdebstrap ({base.suite}, {base.variant})",
    )
