"""Ctrl-C and gRPC: an interrupt raised inside grpc's set-up of a call used to leave
the channel unable to close, and the command line hung after Ctrl-C (grpc/grpc#19973).

The end-to-end cases run ``interrupted_call_set_up.py`` in a subprocess, which
raises SIGINT from inside that set-up every time; the command line's own Ctrl-C test
(``test_e2e_cli_complete``) hit it about once in twenty runs.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

import grpc
import grpc._common
import pytest

from sandbox_sdk.cli import interrupts
from sandbox_sdk.cli.interrupts import DeferredInterrupt, may_interrupt

SCRIPT = Path(__file__).with_name("interrupted_call_set_up.py")
GRPC_COMMON = grpc._common.__file__


def _interrupted_call_set_up(*options: str) -> tuple[dict[str, Any], str]:
    ran = subprocess.run(
        [sys.executable, str(SCRIPT), *options],
        capture_output=True,
        check=False,
        text=True,
        timeout=60,
    )
    assert ran.returncode == 0, ran.stderr
    return json.loads(ran.stdout), ran.stderr


def test_ctrl_c_during_call_set_up_is_raised_once_grpc_waits_and_the_channel_closes() -> None:
    report, _ = _interrupted_call_set_up("--guard")
    assert report["surfaced"] == {"file": GRPC_COMMON, "function": "_wait_once"}
    assert report["channel_closed"]


def test_the_sdk_closes_a_channel_whose_call_set_up_was_interrupted() -> None:
    report, stderr = _interrupted_call_set_up("--sdk-close")
    assert report["surfaced"]["function"] == "grpc._cython.cygrpc._call"
    # grpc's own close is still waiting for the broken call (it would wait forever).
    assert not report["channel_closed"]
    assert "did not finish in 0.5 s" in stderr
    assert "grpc/grpc#19973" in stderr


def _frame_inside(call_back_from_grpc: Callable[[Callable[..., Any]], Any]) -> FrameType:
    captured: list[FrameType] = []

    def capture(*_: Any, **__: Any) -> bool:
        captured.append(sys._getframe())
        return True

    call_back_from_grpc(capture)
    return captured[0]


def _waiting_frame() -> FrameType:
    def wait_once(capture: Callable[..., Any]) -> None:
        done = iter([False, True])
        grpc._common.wait(capture, lambda: next(done))

    return _frame_inside(wait_once)


def _serializing_frame() -> FrameType:
    return _frame_inside(lambda capture: grpc._common.serialize(b"", capture))


def test_ctrl_c_may_interrupt_code_outside_grpc_and_grpc_s_own_wait_only() -> None:
    assert may_interrupt(sys._getframe())
    assert may_interrupt(None)
    assert may_interrupt(_waiting_frame())
    assert not may_interrupt(_serializing_frame())


@pytest.fixture
def timer(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The interval timer's settings, instead of setting it (pytest-timeout owns SIGALRM)."""
    settings: list[float] = []
    monkeypatch.setattr(signal, "setitimer", lambda _which, seconds: settings.append(seconds))
    return settings


def test_a_deferred_ctrl_c_is_raised_at_the_first_recheck_outside_grpc(
    timer: list[float],
) -> None:
    handler = DeferredInterrupt()
    handler.on_interrupt(signal.SIGINT, _serializing_frame())
    assert handler.pending
    handler.on_recheck(signal.SIGALRM, _serializing_frame())
    assert timer == [interrupts.RECHECK_SECONDS] * 2
    with pytest.raises(KeyboardInterrupt):
        handler.on_recheck(signal.SIGALRM, sys._getframe())
    assert not handler.pending
    assert timer[-1] == 0


def test_a_second_ctrl_c_while_the_first_waits_is_raised_at_once(timer: list[float]) -> None:
    handler = DeferredInterrupt()
    handler.on_interrupt(signal.SIGINT, _serializing_frame())
    with pytest.raises(KeyboardInterrupt):
        handler.on_interrupt(signal.SIGINT, _serializing_frame())
    assert timer[-1] == 0
    handler.on_recheck(signal.SIGALRM, sys._getframe())  # a late alarm: nothing pending


def test_the_guard_leaves_an_ignored_sigint_alone() -> None:
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with interrupts.interrupts_outside_grpc():
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


def _ctrl_c_in_nested_holds(press_ctrl_c: Callable[..., None], steps: list[str]) -> None:
    with interrupts.interrupts_held():
        with interrupts.interrupts_held():
            press_ctrl_c(signal.SIGINT, sys._getframe())
            steps.append("pressed")
        steps.append("inner hold ended")
    steps.append("outer hold ended")


def test_a_ctrl_c_while_held_is_raised_when_the_hold_ends(timer: list[float]) -> None:
    steps: list[str] = []
    with interrupts.interrupts_outside_grpc():
        press_ctrl_c = signal.getsignal(signal.SIGINT)
        assert callable(press_ctrl_c)
        with pytest.raises(KeyboardInterrupt):
            _ctrl_c_in_nested_holds(press_ctrl_c, steps)
    assert steps == ["pressed", "inner hold ended"]
    assert timer == [0, 0]  # no recheck while held; cleared when raised, and on leaving
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_second_ctrl_c_while_held_is_raised_at_once(timer: list[float]) -> None:
    with interrupts.interrupts_outside_grpc():
        press_ctrl_c = signal.getsignal(signal.SIGINT)
        assert callable(press_ctrl_c)
        with interrupts.interrupts_held():
            press_ctrl_c(signal.SIGINT, sys._getframe())
            with pytest.raises(KeyboardInterrupt):
                press_ctrl_c(signal.SIGINT, sys._getframe())


def test_without_the_guard_a_hold_changes_nothing() -> None:
    with interrupts.interrupts_held():
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
