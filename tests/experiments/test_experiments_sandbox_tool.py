"""The sandbox tool: a model runs commands in its experiment's environment, in a bounded loop.

The loop runs against the real SandboxManager (bubblewrap, cgroups, rlimits as
detected on the machine). The scripted model's tool scripts make the calls
deterministic: leading ``$ COMMAND`` lines are its tool calls, one per turn,
and the rest is its final answer, ``{output}`` standing for the last result.
"""

from __future__ import annotations

import asyncio
import http.server
import json
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, ClassVar

import grpc
import pytest
import sandbox_runtimes

from sandbox_sdk.api.v1 import experiment_pb2, requests_pb2
from sandbox_sdk.server.database import Database
from sandbox_sdk.server.orchestrator.experiments import (
    ExperimentEngine,
    ExperimentHandlers,
    ExperimentSettings,
    limits,
)
from sandbox_sdk.server.orchestrator.experiments.providers.base import ToolCall
from sandbox_sdk.server.orchestrator.experiments.providers.registry import ModelRegistry
from sandbox_sdk.server.orchestrator.experiments.records import (
    ExperimentState,
    MetricEvent,
    OutputEvent,
    ToolCallEvent,
    ToolResultEvent,
)
from sandbox_sdk.server.orchestrator.experiments.sandbox_tool import (
    CommandRefusedError,
    command_of,
)
from sandbox_sdk.server.orchestrator.experiments.settings import ModelConfig, default_models
from sandbox_sdk.server.orchestrator.experiments.validation import validate_create
from sandbox_sdk.server.status import ServiceError

from .conftest import TenantContext
from .exp_support import create_request, make_spec, wait_final

try:
    from sandbox_sdk.server.orchestrator.sandbox.environment_record import (
        EnvironmentSpec,
        Limits,
        NetworkPolicy,
        NewEnvironment,
    )
    from sandbox_sdk.server.orchestrator.sandbox.manager import SandboxManager
    from sandbox_sdk.server.orchestrator.sandbox.settings import SandboxSettings
except ImportError as error:
    pytest.skip(f"the real SandboxManager is not importable: {error}", allow_module_level=True)

MiB = 1 << 20
CTX = TenantContext()
EXEC_TIMEOUT_SECONDS = 30.0
ENVIRONMENT = "env-t1-0123456789abcdef"
TOOL = "spec.sandbox_tool"
LONG_COMMAND = '{"command": "' + "x" * (limits.MAX_TOOL_COMMAND_CHARS + 1) + '"}'


class _ToolCallingServer(http.server.BaseHTTPRequestHandler):
    """A test double at the network edge: an OpenAI-compatible server whose model calls
    run_command("echo hi") (the call streamed in fragments, as OpenAI streams them), then
    answers with the result it was sent. It keeps the request bodies it received."""

    requests: ClassVar[list[dict[str, Any]]] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append(body)
        results = [m["content"] for m in body["messages"] if m["role"] == "tool"]
        if results:
            deltas = [
                ({"role": "assistant", "content": f"the tool said {results[-1].strip()}"}, "stop")
            ]
        else:
            deltas = [
                (
                    {
                        "role": "assistant",
                        "tool_calls": [_fragment(id="call_abc", name="run_command")],
                    },
                    None,
                ),
                ({"tool_calls": [_fragment(arguments='{"command": "echo ')]}, None),
                ({"tool_calls": [_fragment(arguments='hi"}')]}, "tool_calls"),
            ]
        chunks = [_chunk([{"index": 0, "delta": d, "finish_reason": f}]) for d, f in deltas]
        chunks.append(
            _chunk([], usage={"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10})
        )
        payload = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Content-Length", str(len(payload.encode())))
        self.end_headers()
        self.wfile.write(payload.encode())

    def log_message(self, format: str, *args: object) -> None:
        """Keeps the test output quiet."""


def _fragment(*, id: str = "", name: str = "", arguments: str = "") -> dict[str, Any]:
    fragment: dict[str, Any] = {"index": 0, "function": {"arguments": arguments}}
    if id:
        fragment.update(id=id, type="function")
        fragment["function"]["name"] = name
    return fragment


def _chunk(choices: list[Any], **extra: Any) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "tool-caller",
        "choices": choices,
        **extra,
    }


@pytest.fixture
def tool_calling_server() -> Iterator[str]:
    """The base URL of a _ToolCallingServer on loopback."""
    _ToolCallingServer.requests = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _ToolCallingServer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


@pytest.fixture
async def real_sandbox(
    tmp_path: Path, tool_calling_server: str
) -> AsyncIterator[tuple[Any, ExperimentEngine]]:
    db = Database(tmp_path / "orchestrator.db")
    manager = SandboxManager(
        db,
        SandboxSettings(
            reaper_interval_seconds=0.1,
            monitor_interval_seconds=0.2,
            default_runtime=sandbox_runtimes.current(),
        ),
        "t1",
        tmp_path / "workspaces",
    )
    await manager.start()
    remote = ModelConfig.model_validate(
        {
            "name": "remote",
            "provider": "openai",
            "options": {"base_url": tool_calling_server, "api_key": "sk-test"},
            "retry": {"max_attempts": 1},
        }
    )
    settings = ExperimentSettings(models=[*default_models(), remote])
    engine = ExperimentEngine(db, settings, manager.port, "t1")
    await engine.start()
    yield manager, engine
    await engine.stop()
    await manager.stop()
    db.close()


async def _environment(manager: Any) -> str:
    spec = EnvironmentSpec(
        limits=Limits(1.0, 128 * MiB, 16 * MiB, 64, EXEC_TIMEOUT_SECONDS),
        env_vars={},
        labels={},
        ttl_seconds=600.0,
        idle_timeout_seconds=600.0,
        network=NetworkPolicy.NONE,
    )
    environment = await manager.create_environment("default", NewEnvironment(spec))
    return str(environment.id)


def _tool_spec(
    prompt: str,
    *,
    model: str = "scripted",
    max_turns: int = 0,
    timeout_seconds: float = 0.0,
    max_output_bytes: int = 0,
) -> experiment_pb2.ExperimentSpec:
    spec = make_spec([prompt], model=model)
    spec.sandbox_tool.enabled = True
    spec.sandbox_tool.max_turns = max_turns
    spec.sandbox_tool.command_timeout.FromMilliseconds(int(timeout_seconds * 1000))
    spec.sandbox_tool.max_output_bytes = max_output_bytes
    return spec


async def _run(
    engine: ExperimentEngine, environment: str, spec: experiment_pb2.ExperimentSpec
) -> tuple[Any, list[Any], requests_pb2.GetExperimentResultsResponse]:
    handlers = ExperimentHandlers(engine)
    created = await handlers.CreateExperiment(create_request(environment, spec), CTX)
    record = await wait_final(engine, created.experiment.id)
    events = [e.payload async for e in engine.stream("default", record.id, 0, follow=False)]
    results = await handlers.GetExperimentResults(
        requests_pb2.GetExperimentResultsRequest(experiment_id=record.id), CTX
    )
    return record, events, results


def _transcript(events: list[Any]) -> list[Any]:
    return [e for e in events if isinstance(e, ToolCallEvent | ToolResultEvent)]


def _metrics(events: list[Any]) -> dict[str, float]:
    names = ("turns", "tool_calls", "tool_errors")
    return {e.name: e.value for e in events if isinstance(e, MetricEvent) and e.name in names}


@pytest.mark.isolation
async def test_the_model_runs_commands_and_answers_with_their_output(
    real_sandbox: tuple[Any, ExperimentEngine],
) -> None:
    manager, engine = real_sandbox
    environment = await _environment(manager)
    script = "$ echo hi\n$ python3 -c 'print(2+2)'\nThe answer is {output}"
    spec = _tool_spec(script)
    spec.inputs[0].expected = "The answer is 4"
    spec.scorers.add(name="right").exact_match.SetInParent()

    record, events, results = await _run(engine, environment, spec)

    assert record.state is ExperimentState.SUCCEEDED
    transcript = _transcript(events)
    assert [type(e) for e in transcript] == [ToolCallEvent, ToolResultEvent] * 2
    first_call, first_result, second_call, second_result = transcript
    assert (first_call.turn, first_call.command) == (1, "echo hi")
    assert first_call.argv == ("/bin/sh", "-c", "echo hi")
    assert (first_result.turn, first_result.exit_code, first_result.stdout) == (1, 0, "hi\n")
    assert (second_call.turn, second_call.command) == (2, "python3 -c 'print(2+2)'")
    assert (second_result.exit_code, second_result.stdout, second_result.truncated) == (
        0,
        "4\n",
        False,
    )
    # The answer streams after the transcript it depends on.
    answer_at = max(i for i, e in enumerate(events) if isinstance(e, OutputEvent))
    assert answer_at > events.index(second_result)
    assert _metrics(events) == {"turns": 3.0, "tool_calls": 2.0, "tool_errors": 0.0}
    sample = results.samples[0]
    assert sample.output == "The answer is 4"
    assert dict(sample.scores) == {"right": 1.0}
    assert (sample.turns, sample.tool_calls, sample.tool_errors) == (3, 2, 0)
    aggregates = {a.name: a for a in results.metrics}
    assert aggregates["turns"].mean == 3.0
    assert aggregates["tool_calls"].mean == 2.0
    assert aggregates["tool_errors"].mean == 0.0
    (family,) = engine.metrics.tool_calls.collect()
    counted = {s.labels["outcome"]: s.value for s in family.samples if s.name.endswith("_total")}
    assert counted == {"ok": 2.0, "error": 0.0}
    accepted = record.spec.sandbox_tool
    assert accepted is not None
    assert accepted.max_turns == limits.DEFAULT_TOOL_TURNS
    assert accepted.command_timeout_seconds == limits.DEFAULT_TOOL_COMMAND_TIMEOUT_SECONDS


@pytest.mark.isolation
async def test_an_openai_compatible_model_calls_the_tool_through_the_chat_api(
    real_sandbox: tuple[Any, ExperimentEngine],
) -> None:
    manager, engine = real_sandbox
    environment = await _environment(manager)

    record, events, results = await _run(engine, environment, _tool_spec("hi?", model="remote"))

    assert record.state is ExperimentState.SUCCEEDED
    call, result = _transcript(events)
    assert (call.command, result.stdout) == ("echo hi", "hi\n")
    sample = results.samples[0]
    assert sample.output == "the tool said hi"
    assert (sample.turns, sample.tool_calls, sample.tool_errors) == (2, 1, 0)
    first, second = _ToolCallingServer.requests
    assert [t["function"]["name"] for t in first["tools"]] == ["run_command"]
    assert first["tools"][0]["function"]["parameters"]["required"] == ["command"]
    asked, answered = second["messages"][-2:]
    assert asked["tool_calls"] == [
        {
            "id": "call_abc",
            "type": "function",
            "function": {"name": "run_command", "arguments": '{"command": "echo hi"}'},
        }
    ]
    assert answered == {"role": "tool", "tool_call_id": "call_abc", "content": "hi\n"}


@pytest.mark.isolation
async def test_max_turns_stops_a_model_that_never_answers(
    real_sandbox: tuple[Any, ExperimentEngine],
) -> None:
    manager, engine = real_sandbox
    environment = await _environment(manager)

    record, events, results = await _run(
        engine, environment, _tool_spec("$ echo again", max_turns=3)
    )

    assert record.state is ExperimentState.SUCCEEDED
    calls = [e for e in events if isinstance(e, ToolCallEvent)]
    # The calls of the last turn are not run: no turn is left to read their results.
    assert [c.turn for c in calls] == [1, 2]
    sample = results.samples[0]
    assert sample.finish_reason == "max_turns"
    assert (sample.turns, sample.tool_calls, sample.tool_errors) == (3, 2, 0)
    assert sample.output == ""


@pytest.mark.isolation
async def test_hostile_commands_are_contained_and_their_output_cut(
    real_sandbox: tuple[Any, ExperimentEngine], tmp_path: Path
) -> None:
    manager, engine = real_sandbox
    environment = await _environment(manager)
    host_marker = tmp_path / "written-by-the-model"
    commands = [
        "f(){ f|f& }; f; sleep 60",
        f"echo owned > /etc/owned-by-model; touch {host_marker}; cat /etc/owned-by-model",
        "head -c 1000000 /dev/zero | tr '\\0' x; echo done >&2",
        "echo still here",
    ]
    script = "".join(f"$ {c}\n" for c in commands) + "contained: {output}"
    spec = _tool_spec(script, timeout_seconds=2.0, max_output_bytes=1000)

    record, events, results = await _run(engine, environment, spec)

    assert record.state is ExperimentState.SUCCEEDED
    results_by_turn = {e.turn: e for e in events if isinstance(e, ToolResultEvent)}
    fork_bomb, escape, flood, after = (results_by_turn[turn] for turn in (1, 2, 3, 4))
    assert fork_bomb.exit_code != 0  # the pids limit or the timeout ended it
    assert escape.exit_code != 0
    assert not await asyncio.to_thread(host_marker.exists)
    assert not await asyncio.to_thread(Path("/etc/owned-by-model").exists)
    assert flood.truncated
    assert flood.stdout == "x" * 1000
    assert flood.stderr == "done\n"
    assert (after.exit_code, after.stdout) == (0, "still here\n")
    sample = results.samples[0]
    assert sample.output == "contained: still here"
    assert (sample.turns, sample.tool_calls) == (5, 4)
    # Only a command the timeout or a signal ended is a tool error; the others exited.
    assert sample.tool_errors == int(fork_bomb.exit_code == -1)


@pytest.mark.isolation
async def test_a_command_timeout_over_the_environments_exec_timeout_is_refused(
    real_sandbox: tuple[Any, ExperimentEngine],
) -> None:
    manager, engine = real_sandbox
    environment = await _environment(manager)
    spec = _tool_spec("$ true", timeout_seconds=EXEC_TIMEOUT_SECONDS + 1)

    with pytest.raises(ServiceError) as error:
        await ExperimentHandlers(engine).CreateExperiment(create_request(environment, spec), CTX)

    assert error.value.code == grpc.StatusCode.INVALID_ARGUMENT
    ((field, description),) = error.value.field_violations
    assert field == "spec.sandbox_tool.command_timeout"
    assert f"at most {EXEC_TIMEOUT_SECONDS:g}s" in description


@pytest.mark.parametrize(
    ("field", "value", "path"),
    [
        ("max_turns", limits.MAX_TOOL_TURNS + 1, "spec.sandbox_tool.max_turns"),
        ("max_turns", -1, "spec.sandbox_tool.max_turns"),
        (
            "max_output_bytes",
            limits.MAX_TOOL_OUTPUT_BYTES + 1,
            "spec.sandbox_tool.max_output_bytes",
        ),
        (
            "command_timeout",
            limits.MAX_COMMAND_TIMEOUT_SECONDS + 1,
            "spec.sandbox_tool.command_timeout",
        ),
        ("enabled", False, "spec.sandbox_tool.enabled"),
    ],
)
def test_out_of_bounds_tool_limits_are_field_violations(field: str, value: Any, path: str) -> None:
    spec = _tool_spec("$ true")
    if field == "command_timeout":
        spec.sandbox_tool.command_timeout.FromSeconds(int(value))
    elif field == "enabled":
        spec.sandbox_tool.enabled = False
        spec.sandbox_tool.max_turns = 3
    else:
        setattr(spec.sandbox_tool, field, value)
    registry = ModelRegistry(default_models())

    with pytest.raises(ServiceError) as error:
        validate_create(create_request(ENVIRONMENT, spec), registry, ExperimentSettings().scheduler)

    assert error.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in error.value.field_violations] == [path]


@pytest.mark.parametrize(
    ("name", "arguments", "says"),
    [
        ("run_command", "not json", "not JSON"),
        ("run_command", "[" * 100_000, "longer than"),
        ("run_command", "[" * 10_000 + "]" * 10_000, "not JSON"),
        ("run_command", '{"command": "ls", "cwd": "/"}', 'one key, "command"'),
        ("run_command", '{"command": ["rm", "-rf", "/"]}', "non-empty string"),
        ("run_command", '{"command": "  "}', "non-empty string"),
        ("run_command", '{"command": "echo \\u0000"}', "NUL"),
        (
            "run_command",
            '{"command": "' + "x" * (limits.MAX_TOOL_COMMAND_CHARS + 1) + '"}',
            "longer",
        ),
        ("python", '{"command": "ls"}', "no tool"),
    ],
)
def test_hostile_tool_calls_are_refused_with_a_reason(name: str, arguments: str, says: str) -> None:
    with pytest.raises(CommandRefusedError, match=says):
        command_of(ToolCall("call-1", name, arguments))


@pytest.mark.isolation
@pytest.mark.model
async def test_the_local_model_loop_runs_and_ends(
    real_sandbox: tuple[Any, ExperimentEngine], smollm2: object
) -> None:
    manager, engine = real_sandbox
    environment = await _environment(manager)
    spec = _tool_spec("What is 6 times 7? Use python3 to compute it.", model="smollm2", max_turns=3)
    spec.parameters.temperature = 0.0
    spec.parameters.max_tokens = 64

    record, events, results = await _run(engine, environment, spec)

    # The 135M model is weak at tools: only the loop's shape is checked, not its answers.
    assert record.state is ExperimentState.SUCCEEDED
    sample = results.samples[0]
    assert 1 <= sample.turns <= 3
    assert sample.tool_calls == len([e for e in events if isinstance(e, ToolCallEvent)])
    assert _metrics(events)["turns"] == sample.turns
