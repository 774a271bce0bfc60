"""The asyncio client against the real stack."""

from __future__ import annotations

import asyncio

from sandbox_sdk import (
    AsyncSandboxClient,
    EnvironmentState,
    ExperimentState,
    LogLine,
    MetricSample,
    OutputDelta,
    StateChange,
)

PROMPTS = ["alpha beta gamma", "delta epsilon"]


async def test_environment_exec_files_and_an_experiment_with_async_for(
    async_client: AsyncSandboxClient,
) -> None:
    sandbox = await async_client.create_environment(memory="256Mi", labels={"suite": "e2e-async"})
    try:
        assert sandbox.state is EnvironmentState.RUNNING
        result = await sandbox.exec(["sh", "-c", "echo out; echo err >&2; exit 5"])
        assert (result.exit_code, result.stdout, result.stderr) == (5, "out\n", "err\n")

        chunks = []
        command = sandbox.exec_stream("for i in 1 2 3; do echo line $i; done")
        async for chunk in command:
            chunks.append(chunk.text)
        assert "".join(chunks) == "line 1\nline 2\nline 3\n"
        assert (await command.result()).exit_code == 0

        await sandbox.write_file("data/in.txt", "from the host\n")
        assert await sandbox.read_text("data/in.txt") == "from the host\n"
        assert [f.path async for f in sandbox.list_files("data")] == ["data/in.txt"]
        read_back = await sandbox.exec(["cat", "data/in.txt"])
        assert read_back.stdout == "from the host\n"

        experiment = await sandbox.run_experiment(
            model="echo", prompts=PROMPTS, scorers=["json_valid"]
        )
        events = []
        async with experiment.events(follow=True) as stream:
            async for event in stream:
                events.append(event)
        assert [e.sequence for e in events] == list(range(1, len(events) + 1))
        kinds = {type(e.payload) for e in events}
        assert {StateChange, OutputDelta, MetricSample, LogLine} <= kinds
        final = events[-1].payload
        assert isinstance(final, StateChange)
        assert final.state is ExperimentState.SUCCEEDED
        streamed = {
            index: "".join(
                e.payload.text
                for e in events
                if isinstance(e.payload, OutputDelta) and e.payload.input_index == index
            )
            for index in range(len(PROMPTS))
        }
        assert streamed == dict(enumerate(PROMPTS))

        results = await experiment.get_results()
        assert [s.output for s in results.samples] == PROMPTS
        assert results.metrics["json_valid"].mean == 0.0
        listed = [e.id async for e in sandbox.list_experiments()]
        assert listed == [experiment.id]
    finally:
        deleted = await sandbox.delete()
    assert deleted.state is EnvironmentState.TERMINATED


async def test_concurrent_calls_share_one_async_client(async_client: AsyncSandboxClient) -> None:
    sandboxes = await asyncio.gather(*(async_client.create_environment() for _ in range(3)))
    try:
        results = await asyncio.gather(
            *(sandbox.exec(["echo", sandbox.id]) for sandbox in sandboxes)
        )
        assert [r.stdout.strip() for r in results] == [s.id for s in sandboxes]
    finally:
        await asyncio.gather(*(sandbox.delete() for sandbox in sandboxes))
