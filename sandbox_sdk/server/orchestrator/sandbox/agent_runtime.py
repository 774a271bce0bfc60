"""The host's Python, bound read-only into template roots, to run the environment's agent.

A template's root may hold no Python at all (a busybox image) or another
one. The agent is the orchestrator's code, so it runs on the host's own
interpreter: the directories holding it and its libraries are bound
read-only at ``/.sandbox-agent``, and it is started through the host's
dynamic loader with ``--library-path``, which applies to that one process
only. Commands the agent spawns run the template's own binaries with the
template's own libraries, and inherit nothing of this.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import PurePosixPath

AGENT_RUNTIME_MOUNT = PurePosixPath("/.sandbox-agent")
_PT_INTERP = 3
_ELF_MAGIC = b"\x7fELF"


@dataclass(frozen=True)
class AgentRuntime:
    """Where the host's interpreter appears inside a template root, and how to start it.

    ``host_dirs`` are the host's top-level directories bound (read-only) under
    ``/.sandbox-agent``; ``prefix`` is the loader invocation that runs
    ``python`` (a path inside the sandbox) with the host's libraries.
    """

    host_dirs: tuple[str, ...]
    prefix: tuple[str, ...]
    python: str

    @classmethod
    def for_host(cls, python: str) -> AgentRuntime:
        """The runtime of the host interpreter ``python``; raises OSError if it is unusable."""
        real_python = os.path.realpath(python)
        loader = os.path.realpath(elf_interpreter(real_python))
        loader_dir = os.path.dirname(loader)
        library_dirs = [loader_dir]
        multiarch = os.path.join("/usr/lib", os.path.basename(loader_dir))
        if multiarch != loader_dir and os.path.isdir(multiarch):
            library_dirs.append(multiarch)
        host_dirs = tuple(dict.fromkeys(_top_level(p) for p in (real_python, loader, multiarch)))
        return cls(
            host_dirs=host_dirs,
            prefix=(
                inside(loader),
                "--library-path",
                ":".join(inside(directory) for directory in library_dirs),
            ),
            python=inside(real_python),
        )

    def bwrap_binds(self) -> list[str]:
        """bubblewrap arguments binding the host directories read-only under the mount."""
        args: list[str] = []
        for directory in self.host_dirs:
            args += ["--ro-bind", directory, inside(directory)]
        return args

    def mount_points(self) -> list[PurePosixPath]:
        """The directories the root must have for :meth:`bwrap_binds`, relative to it."""
        return [PurePosixPath(inside(d)).relative_to("/") for d in self.host_dirs]

    def command(self, *args: str) -> list[str]:
        """argv running the host interpreter with ``args`` inside a template root."""
        return [*self.prefix, self.python, *args]


def inside(host_path: str) -> str:
    """Where the host's ``host_path`` appears inside a template root."""
    return str(AGENT_RUNTIME_MOUNT / host_path.lstrip("/"))


def _top_level(path: str) -> str:
    return "/" + PurePosixPath(path).parts[1]


def elf_interpreter(path: str) -> str:
    """The program interpreter (PT_INTERP) of a 64-bit little-endian ELF executable."""
    with open(path, "rb") as file:
        header = file.read(64)
        if header[:4] != _ELF_MAGIC or header[4] != 2 or header[5] != 1:
            raise OSError(f"{path} is not a 64-bit little-endian ELF executable")
        (phoff,) = struct.unpack_from("<Q", header, 0x20)
        phentsize, phnum = struct.unpack_from("<HH", header, 0x36)
        for index in range(phnum):
            file.seek(phoff + index * phentsize)
            kind, _, offset, _, _, size = struct.unpack("<IIQQQQ", file.read(40))
            if kind == _PT_INTERP:
                file.seek(offset)
                return file.read(size).rstrip(b"\x00").decode()
    raise OSError(f"{path} has no program interpreter (statically linked?)")
