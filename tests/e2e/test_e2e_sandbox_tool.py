"""The sandbox tool through the whole stack: the SDK's sandbox_tool= option, sync and async."""

from __future__ import annotations

import pytest

from sandbox_sdk import (
    AsyncSandboxClient,
    InvalidArgumentError,
    SandboxClient,
    ToolCall,
    ToolResult,
)

SCRIPT = "$ echo hi\n$ python3 -c 'print(2+2)'\nThe answer is {output}"


def test_the_model_runs_commands_in_the_environment_and_answers(client: SandboxClient) -> None:
    with client.create_environment() as sandbox:
        experiment = sandbox.run_experiment(
            model="scripted",
            inputs=[{"prompt": SCRIPT, "expected": "4"}],
            scorers=["contains"],
            sandbox_tool={"max_turns": 5, "command_timeout": "5s", "max_output_bytes": 1024},
        )
        results = experiment.get_results()
        events = list(experiment.events(follow=False))
        kinds = [event.kind for event in events]

    assert results.outputs == ["The answer is 4"]
    assert results.metrics["contains"].mean == 1.0
    assert results.metrics["turns"].mean == 3.0
    assert results.metrics["tool_calls"].mean == 2.0
    assert results.metrics["tool_errors"].mean == 0.0
    transcript = [kind for kind in kinds if kind.startswith("tool_")]
    assert transcript == ["tool_call", "tool_result"] * 2
    calls = [e.payload for e in events if isinstance(e.payload, ToolCall)]
    replies = [e.payload for e in events if isinstance(e.payload, ToolResult)]
    assert [(c.turn, c.command) for c in calls] == [(1, "echo hi"), (2, "python3 -c 'print(2+2)'")]
    assert [(r.turn, r.exit_code, r.stdout) for r in replies] == [(1, 0, "hi\n"), (2, 0, "4\n")]


async def test_the_async_client_passes_the_tool_and_max_turns_ends_the_loop(
    async_client: AsyncSandboxClient,
) -> None:
    async with await async_client.create_environment() as sandbox:
        experiment = await sandbox.run_experiment(
            model="scripted", prompt="$ echo again", sandbox_tool={"max_turns": 2}
        )
        results = await experiment.get_results()

    (sample,) = results.samples
    assert sample.finish_reason == "max_turns"
    assert (sample.turns, sample.tool_calls, sample.tool_errors) == (2, 1, 0)
    assert results.metrics["turns"].mean == 2.0
    assert results.metrics["tool_calls"].mean == 1.0


def test_out_of_bounds_tool_limits_name_the_field(client: SandboxClient) -> None:
    with client.create_environment() as sandbox, pytest.raises(InvalidArgumentError) as error:
        sandbox.run_experiment(model="scripted", prompt="$ true", sandbox_tool={"max_turns": 51})

    assert [v.field for v in error.value.field_violations] == ["spec.sandbox_tool.max_turns"]
