"""`make demo`: start the embedded server, run the product example, then a streamed experiment.

Everything runs for real: the gateway and orchestrator in one `sandbox-sdk serve`
process, sandboxes under bubblewrap and cgroups, and the SmolLM2 model on the CPU.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import IO

from rich.console import Console

console = Console()
READY_LINE = "sandbox-sdk serving on"
BIN = Path(sys.executable).parent
WORD_COUNT = "import sys; print(len(sys.stdin.read().split()))"


def free_port(preferred: int = 50051) -> int:
    """The preferred port when it is free, else any free one."""
    for candidate in (preferred, 0):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", candidate))
            except OSError:
                continue
            port: int = sock.getsockname()[1]
            return port
    raise RuntimeError("no free TCP port on 127.0.0.1")


def start_server(data_dir: Path, port: int) -> subprocess.Popen[str]:
    """Starts `sandbox-sdk serve` and waits until it says it is serving.

    A thread keeps echoing the server's output so its pipe never fills up.
    """
    server = subprocess.Popen(
        [str(BIN / "sandbox-sdk"), "serve", "--port", str(port), "--data-dir", str(data_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    ready = threading.Event()

    def echo(stream: IO[str]) -> None:
        # Start-up lines, then only warnings and errors: access logs would drown the demo.
        for line in stream:
            if not ready.is_set() or "level=WARNING" in line or "level=ERROR" in line:
                console.print(f"[dim]server: {line.rstrip()}[/]", highlight=False)
            if READY_LINE in line:
                ready.set()

    threading.Thread(target=echo, args=(server.stdout,), daemon=True).start()
    deadline = time.monotonic() + 120
    while not ready.wait(0.2):
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            raise RuntimeError("the embedded server did not start; its output is above")
    return server


def product_example() -> None:
    """The example from the product description, verbatim."""
    from sandbox_sdk import SandboxClient

    # Initialize the client
    client = SandboxClient(config_path="config.yaml")

    # Create a sandbox environment
    sandbox = client.create_environment()

    # Run an experiment
    experiment = sandbox.run_experiment(
        model="gpt-3", prompt="Hello, world!", parameters={"temperature": 0.7}
    )

    # Get results
    results = experiment.get_results()

    console.print(results.to_table())
    console.print(f"output: {results.samples[0].output!r}")
    sandbox.delete()
    client.close()


def describe(payload: object) -> str:
    """One line for an experiment event."""
    from sandbox_sdk.models.experiment import LogLine, MetricSample, OutputDelta, StateChange

    match payload:
        case LogLine(level=level, message=message):
            return f"log    {level.name.lower():7} {message}"
        case MetricSample(name=name, value=value, unit=unit, input_index=index):
            return f"metric {name} = {value:.4g} {unit} (input {index})"
        case OutputDelta(input_index=index, text=text):
            return f"output [{index}] {text!r}"
        case StateChange(state=state):
            return f"state  -> {state.name}"
    return repr(payload)


def streamed_experiment() -> None:
    """A scored experiment on the local model, following its logs and metrics live."""
    from sandbox_sdk import SandboxClient

    with (
        SandboxClient(config_path="config.yaml") as client,
        client.create_environment(labels={"demo": "streamed"}) as sandbox,
    ):
        check = sandbox.exec(["python3", "-c", "import platform; print(platform.node())"])
        console.print(f"sandbox hostname: {check.stdout.strip()} ({sandbox.info.isolation})")
        experiment = sandbox.run_experiment(
            model="smollm2",
            inputs=[
                {"prompt": "What is the capital of France?", "expected": "Paris"},
                {"prompt": "What is the capital of Italy?", "expected": "Rome"},
                {"prompt": "What is 2 + 2? Answer with a number.", "expected": "4"},
            ],
            parameters={"temperature": 0.0, "max_tokens": 48},
            scorers=[
                "contains",
                {"command": ["python3", "-c", "import sys; print(len(sys.stdin.read().split()))"]},
            ],
        )
        console.rule(f"experiment {experiment.id}: live events")
        for event in experiment.events(follow=True):
            console.print(f"  #{event.sequence:<4} {describe(event.payload)}", highlight=False)
        results = experiment.get_results()
        console.rule("results")
        console.print(results.to_table())
        console.print(results.samples_table())


def main() -> int:
    """Runs the demo in a fresh directory with its own data dir, then stops the server."""
    workdir = Path(tempfile.mkdtemp(prefix="sandbox-sdk-demo-"))
    data_dir = workdir / "data"
    port = free_port()
    # No target and no key: the SDK talks to the server's Unix socket in data_dir,
    # the one place it sends the local admin key by itself.
    (workdir / "config.yaml").write_text(f"data_dir: {data_dir}\ntimeout: 60\n")
    server = start_server(data_dir, port)
    os.chdir(workdir)
    try:
        console.rule("the product example")
        product_example()
        console.rule("a streamed, scored experiment")
        streamed_experiment()
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        shutil.rmtree(workdir, ignore_errors=True)
    console.print("[green]demo finished[/]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
