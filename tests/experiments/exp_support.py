"""Shared helpers of the experiment engine tests."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from sandbox_sdk.api.v1 import experiment_pb2, requests_pb2
from sandbox_sdk.errors import ErrorReason
from sandbox_sdk.models.execution import ExitReason
from sandbox_sdk.server import ids
from sandbox_sdk.server.orchestrator.experiments import ExperimentEngine, ExperimentHandlers
from sandbox_sdk.server.orchestrator.experiments.records import ExperimentRecord
from sandbox_sdk.server.orchestrator.experiments.settings import ModelConfig
from sandbox_sdk.server.orchestrator.ports import CommandResult, UsageSample
from sandbox_sdk.server.orchestrator.servicer import add_orchestrator_service, handler_table
from sandbox_sdk.server.status import ErrorInterceptor, ServiceError, not_found


@dataclass
class _Environment:
    tenant: str
    workspace: Path
    running: bool = True
    touches: int = 0


@dataclass
class SubprocessSandbox:
    """A test double of SandboxPort built on plain subprocesses, with no isolation at all.

    It runs commands as ordinary child processes in a per-environment
    directory (killing the process group on timeout or cancellation) so the
    engine can be unit-tested without bubblewrap or cgroups. The containment
    test uses the real SandboxManager instead.
    """

    root: Path
    orchestrator_id: str = "t1"
    environments: dict[str, _Environment] = field(default_factory=dict)
    callbacks: list[Callable[[str], None]] = field(default_factory=list)
    commands_started: int = 0

    def create(self, tenant: str = "default") -> str:
        """A new RUNNING environment of ``tenant``."""
        environment_id = ids.new_id(ids.ENVIRONMENT, self.orchestrator_id)
        workspace = self.root / environment_id
        workspace.mkdir(parents=True)
        self.environments[environment_id] = _Environment(tenant, workspace)
        return environment_id

    def adopt(self, environment_id: str, tenant: str) -> None:
        """Registers an environment another process created under ``root``."""
        self.environments[environment_id] = _Environment(tenant, self.root / environment_id)

    def terminate(self, environment_id: str) -> None:
        """Ends an environment and tells the subscribers, as a deletion would."""
        self.environments[environment_id].running = False
        for callback in self.callbacks:
            callback(environment_id)

    def require_running(self, tenant: str, environment_id: str) -> None:
        environment = self.environments.get(environment_id)
        if environment is None or environment.tenant != tenant:
            raise not_found(ErrorReason.ENVIRONMENT_NOT_FOUND, f"no environment {environment_id}")
        if not environment.running:
            raise ServiceError(
                grpc.StatusCode.FAILED_PRECONDITION,
                ErrorReason.ENVIRONMENT_NOT_RUNNING,
                f"environment {environment_id} is not running",
            )

    async def run_command(
        self,
        environment_id: str,
        argv: Sequence[str],
        *,
        stdin: bytes = b"",
        timeout: float = 10.0,
        env_vars: Mapping[str, str] | None = None,
        output_limit_bytes: int = 1 << 20,
    ) -> CommandResult:
        self.commands_started += 1
        started = time.monotonic()
        process = await asyncio.create_subprocess_exec(
            *argv,
            cwd=self.environments[environment_id].workspace,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={"PATH": os.environ["PATH"], **(env_vars or {})},
            start_new_session=True,
        )
        reason = ExitReason.EXITED
        try:
            async with asyncio.timeout(timeout):
                stdout, stderr = await process.communicate(stdin)
        except TimeoutError:
            reason = ExitReason.TIMEOUT
            _kill_group(process.pid)
            stdout, stderr = await process.communicate()
        except asyncio.CancelledError:
            _kill_group(process.pid)
            await process.wait()
            raise
        exit_code = process.returncode if process.returncode is not None else -1
        if reason is ExitReason.EXITED and exit_code < 0:
            reason = ExitReason.SIGNALED
        return CommandResult(
            exit_code=exit_code,
            reason=reason,
            stdout=stdout[:output_limit_bytes],
            stderr=stderr[:output_limit_bytes],
            stdout_truncated=len(stdout) > output_limit_bytes,
            stderr_truncated=len(stderr) > output_limit_bytes,
            cpu_seconds=0.0,
            memory_peak_bytes=0,
            duration_seconds=time.monotonic() - started,
        )

    def read_file(self, environment_id: str, path: str) -> bytes:
        target = self.environments[environment_id].workspace / path
        if not target.is_file():
            raise not_found(ErrorReason.FILE_NOT_FOUND, f"no file {path}")
        return target.read_bytes()

    def usage(self, environment_id: str) -> UsageSample:
        return UsageSample(
            cpu_seconds=1.0,
            cpu_percent=12.5,
            memory_bytes=4096,
            memory_peak_bytes=8192,
            pids=1,
            disk_bytes=0,
        )

    def touch(self, environment_id: str) -> None:
        self.environments[environment_id].touches += 1

    def on_terminated(self, callback: Callable[[str], None]) -> None:
        self.callbacks.append(callback)


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


def make_spec(
    prompts: Sequence[str] = ("hello world",),
    *,
    model: str = "echo",
    expected: Sequence[str] | None = None,
    repeats: int = 0,
    **parameters: object,
) -> experiment_pb2.ExperimentSpec:
    """An ExperimentSpec over ``prompts`` with the given generation parameters."""
    answers = list(expected) if expected is not None else [""] * len(prompts)
    spec = experiment_pb2.ExperimentSpec(
        model=model,
        inputs=[
            experiment_pb2.ExperimentInput(prompt=p, expected=e)
            for p, e in zip(prompts, answers, strict=True)
        ],
        repeats=repeats,
    )
    for name, value in parameters.items():
        if name == "stop":
            spec.parameters.stop.extend(value)  # type: ignore[call-overload]
        else:
            setattr(spec.parameters, name, value)
    return spec


def create_request(
    environment_id: str, spec: experiment_pb2.ExperimentSpec, request_id: str = ""
) -> requests_pb2.CreateExperimentRequest:
    """A CreateExperimentRequest."""
    return requests_pb2.CreateExperimentRequest(
        environment_id=environment_id, spec=spec, request_id=request_id
    )


async def wait_final(
    engine: ExperimentEngine, experiment_id: str, tenant: str = "default"
) -> ExperimentRecord:
    """Follows the experiment's events until it ends; returns its final record."""
    async for _ in engine.stream(tenant, experiment_id, 0, follow=True):
        pass
    return await engine.get(tenant, experiment_id)


def scripted_model(name: str = "scripted", **options: object) -> ModelConfig:
    """A scripted model config with fast retries."""
    return ModelConfig.model_validate(
        {
            "name": name,
            "provider": "scripted",
            "options": options,
            "retry": {
                "max_attempts": 4,
                "initial_backoff_seconds": 0.01,
                "max_backoff_seconds": 0.05,
            },
        }
    )


async def eventually(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Waits until ``condition()`` holds; fails the test after ``timeout`` seconds."""
    async with asyncio.timeout(timeout):
        for _ in iter(int, 1):
            if condition():
                return
            await asyncio.sleep(0.01)


def process_exists(pid: int) -> bool:
    """Whether a process with ``pid`` is alive (zombies count as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ")[-1][:1] != "Z"
    except FileNotFoundError:
        return False


async def serve_experiments(handlers: ExperimentHandlers) -> tuple[grpc.aio.Server, str]:
    """A grpc.aio OrchestratorService on 127.0.0.1:0 whose experiment RPCs are ``handlers``'s.

    The other RPCs answer UNIMPLEMENTED. Returns the
    started server and its address.
    """
    server = grpc.aio.server(interceptors=[ErrorInterceptor()])
    add_orchestrator_service(server, handler_table(object(), handlers, None))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"
