"""The client is written once: the sync surface mirrors the asyncio one, and nothing loops back.

`make check-generated` proves the committed sync client is what the generator
writes from the asyncio source; these tests hold what the generator cannot see.
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

import sandbox_sdk.client
from sandbox_sdk import client as public

CLIENT_DIR = Path(sandbox_sdk.client.__file__).parent
PAIRS = [
    (public.SandboxClient, public.AsyncSandboxClient),
    (public.Sandbox, public.AsyncSandbox),
    (public.Experiment, public.AsyncExperiment),
    (public.ServerStream, public.AsyncServerStream),
    (public.ExecStream, public.AsyncExecStream),
]
_ASYNC_NAMES = {"__aenter__": "__enter__", "__aexit__": "__exit__", "__aiter__": "__iter__"}
_ASYNC_NAMES |= {"__anext__": "__next__", "aclose": "close"}


_PROTOCOL = {"__enter__", "__exit__", "__iter__", "__next__", *_ASYNC_NAMES}


def _public_methods(cls: type) -> dict[str, object]:
    names = {name for name in dir(cls) if not name.startswith("_") or name in _PROTOCOL}
    return {name: inspect.getattr_static(cls, name) for name in names}


def _parameters(member: object) -> list[str]:
    function = getattr(member, "__wrapped__", member)
    if isinstance(function, property):
        return ["<property>"]
    if not callable(function):
        return ["<attribute>"]
    return list(inspect.signature(function).parameters)


@pytest.mark.parametrize(("sync", "asynchronous"), PAIRS, ids=lambda cls: cls.__name__)
def test_the_sync_class_has_the_async_class_methods_with_the_same_parameters(
    sync: type, asynchronous: type
) -> None:
    expected = {
        _ASYNC_NAMES.get(name, name): _parameters(member)
        for name, member in _public_methods(asynchronous).items()
    }
    actual = {name: _parameters(member) for name, member in _public_methods(sync).items()}
    assert actual == expected


def _imports(path: Path) -> set[str]:
    """The sandbox_sdk.client modules a file imports, TYPE_CHECKING blocks included."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name.startswith("sandbox_sdk.client.")}


def _module_name(path: Path) -> str:
    relative = path.relative_to(CLIENT_DIR.parent.parent).with_suffix("")
    parts = relative.parts[:-1] if relative.name == "__init__" else relative.parts
    return ".".join(parts)


def test_no_client_module_imports_back_into_one_that_imports_it() -> None:
    modules = {_module_name(path): path for path in CLIENT_DIR.rglob("*.py")}
    edges = {name: _imports(path) & set(modules) for name, path in modules.items()}
    edges["sandbox_sdk.client"] = set()  # the package's re-exports sit on top

    def cycle_from(start: str, node: str, seen: tuple[str, ...]) -> tuple[str, ...] | None:
        for target in edges.get(node, ()):
            if target == start:
                return (*seen, target)
            if target not in seen:
                found = cycle_from(start, target, (*seen, target))
                if found:
                    return found
        return None

    cycles = [cycle for name in edges if (cycle := cycle_from(name, name, (name,)))]
    assert cycles == []


@pytest.mark.parametrize("handle", ["sandbox.py", "experiment.py", "streams.py"])
def test_handles_hold_the_transport_not_the_client(handle: str) -> None:
    path = CLIENT_DIR / "_async" / handle
    assert "_client" not in path.read_text()
    assert "sandbox_sdk.client._async.client" not in _imports(path)
