"""Keyword arguments of the process and port-forwarding calls → request messages,
refused with INVALID_ARGUMENT before any call."""

from __future__ import annotations

import signal as signals
from collections.abc import Mapping, Sequence
from typing import NoReturn

from sandbox_sdk.api.v1 import process_pb2, requests_pb2
from sandbox_sdk.client.request_messages import command_argv, new_request_id
from sandbox_sdk.errors import FieldViolation, InvalidArgumentError

MAX_TERMINAL_CELLS = 1000
"""Rows and columns of a pty are each 1 to this (the contract's bound)."""

MAX_INPUT_CHUNK = 1 << 20
"""WriteProcessInput takes at most this many bytes per call; larger writes are split."""


def _invalid(field: str, description: str) -> NoReturn:
    raise InvalidArgumentError(
        f"invalid argument {field}: {description}",
        field_violations=[FieldViolation(field, description)],
    )


def pty_size(rows: int, cols: int) -> process_pb2.PtySize:
    """A terminal size, each side 1 to 1000 character cells."""
    for name, value in (("rows", rows), ("cols", cols)):
        if isinstance(value, bool) or not isinstance(value, int):
            _invalid(f"pty.{name}", f"must be an integer, got {value!r}")
        if not 1 <= value <= MAX_TERMINAL_CELLS:
            _invalid(f"pty.{name}", f"must be 1 to {MAX_TERMINAL_CELLS}, got {value}")
    return process_pb2.PtySize(rows=rows, cols=cols)


def start_process_request(
    environment_id: str,
    cmd: str | Sequence[str],
    *,
    cwd: str | None = None,
    env: Mapping[str, str] | None = None,
    stdin: bool = False,
    pty: tuple[int, int] | None = None,
) -> requests_pb2.StartProcessRequest:
    """The ``StartProcess`` request, with a fresh ``request_id`` so a retry starts it once."""
    request = requests_pb2.StartProcessRequest(
        environment_id=environment_id,
        argv=command_argv(cmd),
        cwd=cwd or "",
        env={str(key): str(value) for key, value in (env or {}).items()},
        stdin=bool(stdin),
        request_id=new_request_id(),
    )
    if pty is not None:
        if not isinstance(pty, tuple | list) or len(pty) != 2:
            _invalid("pty", f"give (rows, cols), e.g. (24, 80); got {pty!r}")
        request.pty.CopyFrom(pty_size(*pty))
    return request


def signal_number(sig: int | str | signals.Signals) -> int:
    """A signal as its number: ``9``, ``signal.SIGKILL``, ``"KILL"`` or ``"SIGKILL"``."""
    if isinstance(sig, str):
        name = sig.strip().upper()
        if name.isdigit():
            return int(name)
        try:
            return int(signals.Signals[name if name.startswith("SIG") else f"SIG{name}"])
        except KeyError:
            _invalid("signal", f"no signal named {sig!r}; use a name like TERM or a number")
    if isinstance(sig, bool) or not isinstance(sig, int):
        _invalid("signal", f"give a signal number or name, got {sig!r}")
    return int(sig)


def port_number(field: str, port: int, *, allow_zero: bool = False) -> int:
    """A TCP port, 1 to 65535 (0 too with ``allow_zero``: any free port)."""
    low = 0 if allow_zero else 1
    if isinstance(port, bool) or not isinstance(port, int) or not low <= port <= 65535:
        _invalid(field, f"must be a port number {low} to 65535, got {port!r}")
    return port


def forward_header(environment_id: str, port: int) -> requests_pb2.ForwardPortRequest:
    """The first message of a ``ForwardPort`` call: where to connect."""
    return requests_pb2.ForwardPortRequest(
        header=requests_pb2.ForwardPortHeader(environment_id=environment_id, port=port)
    )
