"""Attacks on the host through what a request carries, and by the host's other users.

A tenant's environment variables must never be interpreted by a host-side
process (the start gate, setpriv and bubblewrap run as root before privileges
drop); workspaces are reachable only by root and the sandbox's uid; secrets
appear in no process's argv.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import stat
import subprocess
from pathlib import Path

import psutil
import pytest
from sandbox_attack_support import (
    TENANT,
    create,
    make_spec,
    needs_isolation,
    run,
    running_manager,
)

from sandbox_sdk.server.orchestrator.sandbox.environment_record import FileWrite

pytestmark = needs_isolation

_EVIL_C = r"""
#include <stdio.h>
#include <unistd.h>
__attribute__((constructor)) static void pwn(void) {
    char path[512];
    snprintf(path, sizeof path, "%s/pwned-uid%d-pid%d", MARKER_DIR, getuid(), getpid());
    FILE *f = fopen(path, "w");
    if (f) { fputs("owned\n", f); fclose(f); }
}
"""


def _compile_evil_library(tmp_path: Path, marker_dir: Path) -> bytes:
    compiler = shutil.which("gcc") or shutil.which("cc")
    if compiler is None:
        pytest.fail("these attacks need a C compiler (gcc) to build their payload")
    source, library = tmp_path / "evil.c", tmp_path / "evil.so"
    source.write_text(_EVIL_C)
    subprocess.run(
        [compiler, "-shared", "-fPIC", f'-DMARKER_DIR="{marker_dir}"', "-o", library, source],
        check=True,
        capture_output=True,
    )
    return library.read_bytes()


def _fake_tools(marker_dir: Path) -> dict[str, bytes]:
    """Scripts named like the host tools, which leave a mark if any host process runs them."""
    script = f"#!/bin/sh\ntouch {marker_dir}/pwned-path-$(id -u)-$$\nexec /bin/false\n"
    tools = ["setpriv", "bwrap", "sh", "dash", "mkfs.ext4", "mount", "umount", "python3"]
    return {f"bin/{tool}": script.encode() for tool in tools}


async def test_loader_and_shell_variables_never_reach_a_host_process(tmp_path: Path) -> None:
    marker_dir = tmp_path / "markers"
    marker_dir.mkdir()
    marker_dir.chmod(0o777)  # any uid on the host could leave its mark
    library = _compile_evil_library(tmp_path, marker_dir)
    async with running_manager(tmp_path / "orchestrator") as manager:
        # The attacker first plants payloads in a workspace whose host path it learns.
        planted = await create(
            manager,
            files=[
                FileWrite("evil.so", library, 0o755),
                *(FileWrite(p, c, 0o755) for p, c in _fake_tools(marker_dir).items()),
            ],
        )
        host_dir = manager._environments.layout(planted.id).files_dir
        payload = str(host_dir / "evil.so")
        hostile_env = {
            "LD_PRELOAD": payload,
            "LD_AUDIT": payload,
            "LD_LIBRARY_PATH": str(host_dir),
            "GCONV_PATH": str(host_dir),
            "LOCPATH": str(host_dir),
            "PATH": f"{host_dir}/bin:/usr/bin:/bin",
            "ENV": f"{host_dir}/bin/sh",
            "BASH_ENV": f"{host_dir}/bin/sh",
            "PYTHONSTARTUP": f"{host_dir}/bin/python3",
            "PYTHONPATH": str(host_dir),
            "SHELLOPTS": "xtrace",
            "PS4": f"$(touch {marker_dir}/pwned-ps4)",
            "IFS": "/",
        }
        victim = await create(manager, make_spec(env_vars=hostile_env))
        gate = manager._environments.runtimes[victim.id].agent
        assert gate is not None
        for process in [psutil.Process(gate.pid), *psutil.Process(gate.pid).children(True)]:
            environ = process.environ()
            leaked = sorted(set(hostile_env) & set(environ) - {"PATH"})
            assert not leaked, (process.cmdline()[:2], leaked)
            assert environ.get("PATH") != hostile_env["PATH"]
        # The variables still reach the commands, inside the sandbox, where the paths
        # name nothing of the host's.
        result = await run(manager, victim.id, ["/usr/bin/env"])
        assert f"LD_PRELOAD={payload}" in result.out
        await manager.delete_environment(TENANT, victim.id)
    marks = sorted(path.name for path in marker_dir.iterdir())
    assert not marks, f"a host-side process ran the tenant's payload: {marks}"


async def test_workspaces_are_private_to_root_and_the_sandbox(tmp_path: Path) -> None:
    async with running_manager(tmp_path) as manager:
        environment = await create(manager, files=[FileWrite("secret.txt", b"tenant data")])
        layout = manager._environments.layout(environment.id)
        uid = manager.settings.sandbox_uid
        for directory in (layout.mount_point, layout.files_dir, layout.tmp_dir):
            info = directory.stat()
            assert stat.S_IMODE(info.st_mode) == 0o700, directory
            assert info.st_uid == uid, directory
        nobody_else = await asyncio.to_thread(
            subprocess.run,
            ["setpriv", "--reuid=65533", "--regid=65533", "--clear-groups",
             "cat", str(layout.files_dir / "secret.txt")],
            capture_output=True,
            check=False,
        )  # fmt: skip
        assert nobody_else.returncode != 0
        assert b"tenant data" not in nobody_else.stdout


async def test_no_secret_appears_in_any_process_argv(tmp_path: Path) -> None:
    secret = "sk-live-" + os.urandom(8).hex()
    async with running_manager(tmp_path) as manager:
        environment = await create(manager, make_spec(env_vars={"API_TOKEN": secret}))
        result = await run(manager, environment.id, ["sh", "-c", 'echo "$API_TOKEN" | wc -c'])
        assert result.out.strip() == str(len(secret) + 1)
        for process in psutil.process_iter(["cmdline"]):
            assert secret not in " ".join(process.info["cmdline"] or ()), process.pid


def test_database_files_are_private(tmp_path: Path) -> None:
    from sandbox_sdk.server.database import Database

    old = tmp_path / "old.db"
    old.write_bytes(b"")
    old.chmod(0o644)
    for path in (tmp_path / "data" / "fresh.db", old):
        database = Database(path)
        database.connection.execute("CREATE TABLE IF NOT EXISTS t (x)")
        database.connection.execute("INSERT INTO t VALUES ('secret prompt')")
        for suffix in ("", "-wal", "-shm"):
            file = Path(f"{path}{suffix}")
            if file.exists():
                assert stat.S_IMODE(file.stat().st_mode) == 0o600, file
        database.connection.close()
    assert stat.S_IMODE((tmp_path / "data").stat().st_mode) == 0o700
