"""The agent's code, compiled ahead, so that an environment's start does not compile it.

``python3 -c <source>`` compiles the whole agent before it runs a line, some
milliseconds of every create. So the orchestrator compiles it once per
process (:func:`prepare`, on a thread), with the very interpreter that runs
it in the sandbox (``agent_python``, which template roots and gVisor run too),
and the agent starts from a constant bootstrap (``-c``) that loads the code
object with ``marshal``. The compiled code is only as good as the interpreter
it was made for, which may have been upgraded since: the bootstrap compares
the running interpreter's key (cache tag and bytecode magic number) with the
code's and otherwise compiles the source as before, so the agent always
runs, at worst at today's cost. With no code compiled (:data:`NO_CODE`, say
the compile failed) every start compiles the source that way.

How the bytes get in changes nothing of who may change them: with bubblewrap
they are arguments of the agent's ``execve``, as the source was; under
gVisor they are a file of the environment's bundle beside the source, root's
and mounted read-only (:meth:`.GvisorBundle.write`).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import subprocess
import zlib
from dataclasses import dataclass
from functools import cached_property

from sandbox_sdk.server.orchestrator.sandbox.agent_client import agent_source
from sandbox_sdk.server.orchestrator.sandbox.host_env import host_process_env

log = logging.getLogger(__name__)

# What the code was compiled for, computed by the same expression where it is made and
# where it is loaded: marshal's code objects are only valid for that bytecode.
_KEY_EXPRESSION = (
    "'%s:%s'%(sys.implementation.cache_tag,"
    "getattr(sys.modules.get('_frozen_importlib_external'),'MAGIC_NUMBER',b'').hex())"
)
_FILENAME = "<sandbox-agent>"
# Reads the source on stdin, writes the key's line and the marshalled code.
_COMPILER = (
    "import sys,marshal\n"
    f"k={_KEY_EXPRESSION}\n"
    f"c=compile(sys.stdin.buffer.read(),{_FILENAME!r},'exec',dont_inherit=True)\n"
    "sys.stdout.buffer.write(k.encode()+b'\\n'+marshal.dumps(c))\n"
)
# Runs the agent from three arguments it removes from sys.argv: the key, the code
# compressed (zlib) in base64, the source (compiled when the key is not the interpreter's,
# or it has no zlib). Every byte of an argument costs the interpreter's start-up time,
# the compressed code less than half the plain one's.
ARGUMENTS_BOOTSTRAP = (
    "import sys\n"
    "_k,_c,_s=sys.argv[1:4]\n"
    "del sys.argv[1:4]\n"
    "try:\n"
    f" if not _k or _k!={_KEY_EXPRESSION}:raise ImportError\n"
    " import marshal,binascii,zlib\n"
    " _c=marshal.loads(zlib.decompress(binascii.a2b_base64(_c)))\n"
    f"except ImportError:_c=compile(_s,{_FILENAME!r},'exec',dont_inherit=True)\n"
    "del _k,_s\n"
    "exec(_c)\n"
)
CODE_FILE_NAME = "agent.code"
SOURCE_FILE_NAME = "agent.py"
# Runs the agent from the directory its one argument (removed from sys.argv) names:
# CODE_FILE_NAME (the key's line, then the marshalled code) or else the source file.
DIRECTORY_BOOTSTRAP = (
    "import sys,marshal\n"
    "_d=sys.argv.pop(1)\n"
    f"with open(_d+'/{CODE_FILE_NAME}','rb') as _f:\n"
    " _k=_f.readline().rstrip().decode()\n"
    f" if _k and _k=={_KEY_EXPRESSION}:_c=marshal.loads(_f.read())\n"
    " else:\n"
    f"  with open(_d+'/{SOURCE_FILE_NAME}','rb') as _f:\n"
    f"   _c=compile(_f.read(),{_FILENAME!r},'exec',dont_inherit=True)\n"
    "del _d,_f,_k\n"
    "exec(_c)\n"
)
# An argument may be at most MAX_ARG_STRLEN (32 pages) long; keep clear of it.
_MAX_ARGUMENT_BYTES = 120 * 1024
_COMPILE_TIMEOUT_SECONDS = 60.0


@dataclass(frozen=True)
class AgentCode:
    """The agent compiled by one interpreter: ``key`` names its bytecode (empty: none
    compiled), ``code`` is the marshalled code object."""

    key: str
    code: bytes

    def arguments(self) -> list[str]:
        """The arguments :data:`ARGUMENTS_BOOTSTRAP` takes: key, code compressed in base64,
        source."""
        return [self.key, self._compressed, agent_source()]

    @cached_property
    def _compressed(self) -> str:
        return base64.b64encode(zlib.compress(self.code, 9)).decode() if self.key else ""

    def file_bytes(self) -> bytes:
        """The content of :data:`CODE_FILE_NAME`: the key's line, then the code."""
        return self.key.encode() + b"\n" + self.code if self.key else b"\n"

    def interpreter_arguments(self) -> list[str]:
        """The interpreter's arguments that run the agent from these arguments (what
        follows are the agent's own: ``sandbox-agent`` and the rest)."""
        return ["-I", "-S", "-c", ARGUMENTS_BOOTSTRAP, *self.arguments()]


NO_CODE = AgentCode("", b"")
_compiled: dict[str, AgentCode] = {}


def compiled(python: str) -> AgentCode:
    """The agent compiled by ``python`` in this process, or :data:`NO_CODE` (each start
    then compiles the source)."""
    return _compiled.get(python, NO_CODE)


async def prepare(python: str) -> AgentCode:
    """Compiles the agent with ``python`` once per process (on a thread); a compile that
    fails is logged and leaves :data:`NO_CODE`, which starts agents as before."""
    if python not in _compiled:
        _compiled[python] = await asyncio.to_thread(_compile, python)
    return _compiled[python]


def directory_interpreter_arguments(directory: str) -> list[str]:
    """The interpreter's arguments that run the agent from ``directory`` (which holds
    :data:`CODE_FILE_NAME` and the source, ``agent.py``)."""
    return ["-I", "-S", "-c", DIRECTORY_BOOTSTRAP, directory]


def _compile(python: str) -> AgentCode:
    try:
        result = subprocess.run(
            [python, "-I", "-S", "-c", _COMPILER],
            input=agent_source().encode(),
            capture_output=True,
            env=host_process_env(),
            timeout=_COMPILE_TIMEOUT_SECONDS,
            check=True,
        )
    except (OSError, subprocess.SubprocessError) as error:
        log.warning(
            "compiling the sandbox agent with %s failed (%s): it compiles at each start",
            python,
            error,
        )
        return NO_CODE
    key, _, code = result.stdout.partition(b"\n")
    if not key or not code:
        log.warning("%s gave no compiled sandbox agent: it compiles at each start", python)
        return NO_CODE
    compiled_code = AgentCode(key.decode(), code)
    if len(compiled_code.arguments()[1]) > _MAX_ARGUMENT_BYTES:
        log.warning(
            "the compiled sandbox agent is too large for an argument: it compiles at each start"
        )
        return NO_CODE
    return compiled_code
