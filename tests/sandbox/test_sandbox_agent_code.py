"""The agent's code compiled ahead: loaded when the interpreter is the one it was made
for, the source compiled otherwise, and never anything the sandbox could change.

The bootstraps are run with the system interpreter the sandboxes run; a stale
compiled code (an interpreter upgraded since the orchestrator compiled it) is
stood in for by a key no interpreter has, with bytes that are no code at all:
an agent that still starts shows they were never loaded.
"""

from __future__ import annotations

import asyncio
import base64
import socket
import subprocess
import zlib
from collections.abc import Sequence
from pathlib import Path

import pytest
from sandbox_support import (
    TENANT,
    agent_pids,
    create,
    fast_settings,
    needs_isolation,
    run,
    running_manager,
    under_gvisor,
)

from sandbox_sdk.server.orchestrator.sandbox import agent_code
from sandbox_sdk.server.orchestrator.sandbox.agent_client import agent_source
from sandbox_sdk.server.orchestrator.sandbox.agent_code import (
    ARGUMENTS_BOOTSTRAP,
    CODE_FILE_NAME,
    SOURCE_FILE_NAME,
    AgentCode,
)
from sandbox_sdk.server.orchestrator.sandbox.gvisor import GvisorBundle

PYTHON = "/usr/bin/python3"
STALE_KEY = "cpython-0:00000000"
NOT_CODE = b"\x00 not a code object \xff"
# Tells which way it ran, and what sys.argv the program saw.
PROGRAM = "import sys\nprint('{way}', sys.argv)\n"


def _compiled_by_interpreter(source: str) -> AgentCode:
    """``source`` compiled by the system interpreter, as the orchestrator compiles the agent."""
    program = (
        "import sys,marshal\n"
        f"k={agent_code._KEY_EXPRESSION}\n"
        "c=compile(sys.stdin.read(),'p','exec')\n"
        "sys.stdout.buffer.write(k.encode()+b'\\n'+marshal.dumps(c))\n"
    )
    output = subprocess.run(
        [PYTHON, "-I", "-S", "-c", program], input=source.encode(), capture_output=True, check=True
    ).stdout
    key, _, code = output.partition(b"\n")
    return AgentCode(key.decode(), code)


def _run_arguments_bootstrap(key: str, code: bytes, source: str) -> str:
    encoded = base64.b64encode(zlib.compress(code)).decode()
    argv = [PYTHON, "-I", "-S", "-c", ARGUMENTS_BOOTSTRAP, key, encoded, source, "name", "7"]
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout.strip()


def _run_directory_bootstrap(directory: Path, code_file: bytes, source: str) -> str:
    (directory / CODE_FILE_NAME).write_bytes(code_file)
    (directory / SOURCE_FILE_NAME).write_text(source)
    argv = [PYTHON, *agent_code.directory_interpreter_arguments(str(directory)), "name", "7"]
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout.strip()


def test_the_code_is_loaded_when_the_interpreter_is_the_one_it_was_compiled_by() -> None:
    compiled = _compiled_by_interpreter(PROGRAM.format(way="compiled ahead"))
    output = _run_arguments_bootstrap(compiled.key, compiled.code, "raise SystemExit(3)")
    # The program sees the arguments that follow the bootstrap's own, as under -c.
    assert output == "compiled ahead ['-c', 'name', '7']"


@pytest.mark.parametrize("key", [STALE_KEY, ""])
def test_another_interpreter_compiles_the_source_instead(key: str) -> None:
    output = _run_arguments_bootstrap(key, NOT_CODE, PROGRAM.format(way="from source"))
    assert output == "from source ['-c', 'name', '7']"


def test_the_directory_bootstrap_loads_the_code_file_or_compiles_the_source(
    tmp_path: Path,
) -> None:
    compiled = _compiled_by_interpreter(PROGRAM.format(way="compiled ahead"))
    source = PROGRAM.format(way="from source")
    file_bytes = compiled.file_bytes()
    assert _run_directory_bootstrap(tmp_path, file_bytes, "raise SystemExit(3)") == (
        "compiled ahead ['-c', 'name', '7']"
    )
    stale = AgentCode(STALE_KEY, NOT_CODE).file_bytes()
    assert _run_directory_bootstrap(tmp_path, stale, source) == "from source ['-c', 'name', '7']"
    nothing = agent_code.NO_CODE.file_bytes()
    assert _run_directory_bootstrap(tmp_path, nothing, source) == "from source ['-c', 'name', '7']"


async def test_the_agent_is_compiled_once_by_the_interpreter_that_runs_it() -> None:
    compiled = await agent_code.prepare(PYTHON)
    assert compiled.key == _compiled_by_interpreter("pass").key
    assert await agent_code.prepare(PYTHON) is compiled
    # It fits one argument (MAX_ARG_STRLEN is 128 KiB), with room to grow.
    assert all(len(argument) < 120 * 1024 for argument in compiled.arguments())


async def test_an_interpreter_that_cannot_compile_leaves_the_agent_compiling_its_source() -> None:
    assert await agent_code.prepare("/nonexistent/python3") is agent_code.NO_CODE


def _ready_from(arguments: Sequence[str]) -> bytes:
    """What the real agent, started with these interpreter arguments, first says."""
    ours, theirs = socket.socketpair()
    with ours, theirs:
        argv = [PYTHON, *arguments, "sandbox-agent", str(theirs.fileno())]
        process = subprocess.Popen(argv, pass_fds=[theirs.fileno()])
        theirs.close()
        ours.settimeout(10)
        said = ours.recv(4096)
    process.wait(10)
    return said


async def test_the_agent_starts_from_its_code_and_from_its_source() -> None:
    compiled = await agent_code.prepare(PYTHON)
    for code in (compiled, AgentCode(STALE_KEY, NOT_CODE), agent_code.NO_CODE):
        assert b'"op":"ready"' in await asyncio.to_thread(_ready_from, code.interpreter_arguments())


class TestInEnvironments:
    pytestmark = needs_isolation

    async def test_an_environment_runs_the_code_compiled_ahead(self, tmp_path: Path) -> None:
        async with running_manager(tmp_path) as manager:
            compiled = agent_code.compiled(manager.settings.agent_python)
            assert compiled.key
            environment = await create(manager)
            assert (await run(manager, environment.id, ["true"])).result.exit_code == 0
            if under_gvisor():
                layout = manager.environment_layout(TENANT, environment.id)
                agent_dir = GvisorBundle.of(layout).agent_dir
                assert (agent_dir / CODE_FILE_NAME).read_bytes() == compiled.file_bytes()
                assert (agent_dir / SOURCE_FILE_NAME).read_text() == agent_source()
            else:
                argvs = _agent_argvs(environment.id)
                assert argvs
                assert all(compiled.key in argv for argv in argvs)

    async def test_stale_code_is_not_loaded_and_the_agent_still_starts(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        settings = fast_settings()
        async with running_manager(tmp_path, settings=settings) as manager:
            # As if the interpreter had been upgraded since the orchestrator compiled it.
            stale = AgentCode(STALE_KEY, NOT_CODE)
            monkeypatch.setitem(agent_code._compiled, settings.agent_python, stale)
            environment = await create(manager)
            result = await run(manager, environment.id, ["echo", "still here"])
            assert result.out == "still here\n"

    async def test_the_sandbox_cannot_change_the_code_the_agent_runs(self, tmp_path: Path) -> None:
        async with running_manager(tmp_path) as manager:
            environment = await create(manager)
            if not under_gvisor():
                pytest.skip("bubblewrap's agent gets its code as arguments, in no file")
            for name in (CODE_FILE_NAME, SOURCE_FILE_NAME):
                path = f"/.sandbox-agent-code/{name}"
                attempt = await run(manager, environment.id, ["sh", "-c", f": > {path}"])
                assert attempt.result.exit_code != 0, f"the sandbox wrote {path}"
            layout = manager.environment_layout(TENANT, environment.id)
            agent_dir = GvisorBundle.of(layout).agent_dir
            compiled = agent_code.compiled(manager.settings.agent_python)
            assert (agent_dir / CODE_FILE_NAME).read_bytes() == compiled.file_bytes()
            assert (agent_dir / CODE_FILE_NAME).stat().st_uid == 0


def _agent_argvs(environment_id: str) -> list[list[str]]:
    """The argvs of the environment's agent and the bubblewrap processes around it."""
    return [
        Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
        for pid in agent_pids(environment_id)
    ]
