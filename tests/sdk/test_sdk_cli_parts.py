"""The CLI's pure parts: SDK hints in CLI words, `env cp` operands, JSON of SDK values,
and how `env exec` turns a command's end into an exit status and a line."""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
import typer

from sandbox_sdk.cli.copy_operands import WorkspacePath, parse_copy
from sandbox_sdk.cli.environment_commands import exit_status, termination
from sandbox_sdk.cli.hints import for_the_command_line
from sandbox_sdk.cli.json_output import jsonable
from sandbox_sdk.client.outcome import still_queued, still_running_error
from sandbox_sdk.models.environment import EnvironmentInfo, EnvironmentState
from sandbox_sdk.models.execution import ExecResult, ExitReason
from sandbox_sdk.models.experiment import ExperimentInfo, ExperimentState


def test_sdk_hints_name_cli_flags_and_commands() -> None:
    running = ExperimentInfo("exp-1", "env-1", ExperimentState.RUNNING)
    said = for_the_command_line(str(still_running_error(running, 5)))
    assert "larger --wait" in said
    assert "`sandbox-sdk experiments cancel ID`" in said
    assert "cancel()" not in said
    queued = EnvironmentInfo("env-1", EnvironmentState.QUEUED)
    assert "`sandbox-sdk env get ID`" in for_the_command_line(str(still_queued(queued)))
    assert (
        for_the_command_line("pass a larger timeout= or set SANDBOX_TIMEOUT")
        == "pass a larger --timeout or set SANDBOX_TIMEOUT"
    )
    assert for_the_command_line("nothing to change") == "nothing to change"


def test_copy_operands_upload_and_download(tmp_path: Path) -> None:
    upload = parse_copy("./a/data.jsonl", "env-o1-1:inbox/")
    assert upload.upload
    assert upload.remote == WorkspacePath("env-o1-1", "inbox/data.jsonl")
    assert parse_copy("data.jsonl", "env-o1-1:").remote.path == "data.jsonl"
    download = parse_copy("env-o1-1:out/report.txt", str(tmp_path))
    assert not download.upload
    assert download.local == tmp_path / "report.txt"
    assert parse_copy("env-o1-1:r.txt", str(tmp_path / "new.txt")).local == tmp_path / "new.txt"
    # A colon after a slash is part of a local path, as with docker cp.
    assert parse_copy("./odd:name", "env-o1-1:x").local == Path("./odd:name")
    with pytest.raises(typer.BadParameter):
        parse_copy("./a", "./b")
    with pytest.raises(typer.BadParameter):
        parse_copy("env-o1-1:a", "env-o1-2:b")
    with pytest.raises(typer.BadParameter):
        parse_copy("env-o1-1:dir/", str(tmp_path))


class _Colour(enum.StrEnum):
    RED = "red"


@dataclass
class _Row:
    colour: _Colour
    when: datetime
    spread: float | None
    ratio: float
    tags: tuple[str, ...]


def test_json_of_sdk_values() -> None:
    row = _Row(_Colour.RED, datetime(2026, 1, 2, tzinfo=UTC), None, math.nan, ("a",))
    assert jsonable({"row": row, "path": Path("/x")}) == {
        "row": {
            "colour": "red",
            "when": "2026-01-02T00:00:00+00:00",
            "spread": None,
            "ratio": None,
            "tags": ["a"],
        },
        "path": "/x",
    }


def _ended(reason: ExitReason, exit_code: int = -1, signal: int = 0) -> ExecResult:
    return ExecResult(("cmd",), exit_code, reason, signal=signal)


def test_exec_exit_status_and_termination_line() -> None:
    assert exit_status(_ended(ExitReason.EXITED, 3)) == 3
    assert termination(_ended(ExitReason.EXITED, 3)) is None
    assert exit_status(_ended(ExitReason.SIGNALED, signal=15)) == 143
    assert termination(_ended(ExitReason.SIGNALED, signal=15)) == "command killed by signal 15"
    assert exit_status(_ended(ExitReason.TIMEOUT)) == 124
    assert termination(_ended(ExitReason.TIMEOUT, signal=9)) == (
        "command ended by TIMEOUT (killed by signal 9)"
    )
    assert exit_status(_ended(ExitReason.OUT_OF_MEMORY, signal=9)) == 137
    assert termination(_ended(ExitReason.OUT_OF_MEMORY)) == "command ended by OUT_OF_MEMORY"


def test_an_error_is_printed_once_but_keeps_every_line_of_its_message() -> None:
    from sandbox_sdk.cli.session import _once
    from sandbox_sdk.errors import ConfigError, FieldViolation, InvalidArgumentError

    config = ConfigError("invalid server configuration:\n  orchestrator.internal_token: set it")
    assert _once(config) == str(config)
    violation = FieldViolation("repeats", "must be at least 1")
    repeated = InvalidArgumentError("repeats: must be at least 1", field_violations=[violation])
    assert _once(repeated) == "repeats: must be at least 1"
    distinct = InvalidArgumentError("invalid argument repeats", field_violations=[violation])
    assert _once(distinct) == "invalid argument repeats\n  repeats: must be at least 1"
