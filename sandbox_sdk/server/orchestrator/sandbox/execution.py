"""What runs and is read inside environments: commands through the agent, workspace files.

Each environment has one long-lived agent process inside its sandbox
(:mod:`.agent`) that starts its commands. If the agent dies (the OOM killer
may pick it), the next command starts a new one: the environment and its
files live on, its processes do not. An agent that breaks its protocol (a
command tampered with it) ends its environment.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Coroutine
from typing import Any

import grpc

from sandbox_sdk.errors import ErrorReason
from sandbox_sdk.server.orchestrator.sandbox.activity import Activity
from sandbox_sdk.server.orchestrator.sandbox.agent_client import (
    AgentClient,
    AgentError,
    WaitingGate,
)
from sandbox_sdk.server.orchestrator.sandbox.agent_runtime import AgentRuntime
from sandbox_sdk.server.orchestrator.sandbox.commands import (
    RunningCommand,
    exit_event,
    spawn_request,
)
from sandbox_sdk.server.orchestrator.sandbox.environment_record import (
    Command,
    EnvironmentSpec,
    ExecEvent,
    ExecExited,
    FileEntry,
    FileWrite,
    TerminationReason,
    Usage,
)
from sandbox_sdk.server.orchestrator.sandbox.environments import LiveEnvironments
from sandbox_sdk.server.orchestrator.sandbox.file_pages import files_page
from sandbox_sdk.server.orchestrator.sandbox.launcher import SandboxLauncher, write_resolv_conf
from sandbox_sdk.server.orchestrator.sandbox.network import NetworkSetupError
from sandbox_sdk.server.orchestrator.sandbox.process import Launch, ProcessExit, run_process
from sandbox_sdk.server.orchestrator.sandbox.rlimits import ProcessLimits
from sandbox_sdk.server.orchestrator.sandbox.runtime import Runtime
from sandbox_sdk.server.orchestrator.sandbox.runtimes import LaunchPlan, installed_runtimes
from sandbox_sdk.server.orchestrator.sandbox.statuses import (
    environment_not_found,
    file_errors,
    not_running,
)
from sandbox_sdk.server.orchestrator.sandbox.termination import Termination
from sandbox_sdk.server.orchestrator.sandbox.workspace import split_path
from sandbox_sdk.server.status import ServiceError

log = logging.getLogger(__name__)


class Execution:
    """Runs commands in environments through their agents; reads and writes their files."""

    def __init__(
        self, environments: LiveEnvironments, activity: Activity, termination: Termination
    ) -> None:
        self._environments = environments
        self._settings = environments.settings
        self._activity = activity
        self._termination = termination
        self._sandbox_launcher: SandboxLauncher | None = None

    def prepare_launcher(self) -> None:
        """Readies the launcher of sandboxes, once the isolation layers are known."""
        isolation = self._environments.isolation
        shared = (
            self._settings.mount_root
            if isolation.sandbox_user
            else self._environments.workspace_root
        )
        agent_runtime = _agent_runtime(self._settings.agent_python)
        self._sandbox_launcher = SandboxLauncher(
            isolation,
            self._settings,
            installed_runtimes(isolation, self._settings, agent_runtime),
            write_resolv_conf(shared),
        )

    @property
    def launcher(self) -> SandboxLauncher:
        """The launcher of sandboxes (template builds start theirs with it too)."""
        return self._launcher()

    # --- commands ----------------------------------------------------------------------

    async def exec_command(
        self, tenant: str, environment_id: str, command: Command
    ) -> AsyncGenerator[ExecEvent, None]:
        """Runs a command; yields started, output chunks as produced, then exited."""
        environments = self._environments
        runtime = (
            environments.live(environment_id, tenant)
            or environments.running(tenant, environment_id)[1]
        )
        async with contextlib.aclosing(self.exec(environment_id, runtime, command)) as events:
            async for event in events:
                yield event

    async def exec(
        self, environment_id: str, runtime: Runtime, command: Command
    ) -> AsyncGenerator[ExecEvent, None]:
        """Runs ``command`` in the environment of ``runtime``; yields its events."""
        workspace = runtime.files()
        cwd = split_path(command.cwd, allow_root=True) if command.cwd else ()
        if cwd:
            with file_errors("cwd", command.cwd, workspace.quota_bytes):
                workspace.require_directory(cwd)
        self._activity.touch(environment_id)
        limits = self.process_limits(runtime)
        runtime.exec_count += 1
        number = runtime.exec_count
        running = RunningCommand()
        runtime.execs[number] = running
        try:
            agent = await self._agent(environment_id, runtime)
            launch = Launch(
                request=spawn_request(
                    self._environments.isolation,
                    command,
                    environment_id=environment_id,
                    spec=runtime.spec,
                    layout=workspace.layout,
                    cwd=cwd,
                    limits=limits,
                ),
                stdin=command.stdin,
                timeout_seconds=command.timeout_seconds or runtime.spec.limits.exec_timeout_seconds,
                output_cap_bytes=command.output_cap_bytes,
                chunk_bytes=self._settings.output_chunk_bytes,
            )
            oom_kills_before = runtime.oom_kills()

            def started(pid: int) -> None:
                running.pid = pid

            process = run_process(agent, launch, on_started=started, cancel=running.cancel)
            async with contextlib.aclosing(process) as events:
                async for event in events:
                    if isinstance(event, ProcessExit):
                        # Only a failed command can be an OOM kill: one file read less.
                        failed = event.returncode != 0
                        oom_kills = runtime.oom_kills() - oom_kills_before if failed else 0
                        yield self._command_exited(event, runtime, oom_kills, limits)
                    else:
                        yield event
        except AgentError as error:
            raise self._cannot_start(environment_id, runtime, error) from error
        finally:
            runtime.execs.pop(number, None)
            self._activity.touch(environment_id)

    def _command_exited(
        self, event: ProcessExit, runtime: Runtime, oom_kills: int, limits: ProcessLimits
    ) -> ExecExited:
        exited = exit_event(event, oom_kills, limits)
        if runtime.cgroup is None:
            runtime.usage.record_finished_command(exited.cpu_seconds, exited.memory_peak_bytes)
        self._environments.metrics.execs.labels(exited.reason.value.lower()).inc()
        return exited

    def _cannot_start(
        self, environment_id: str, runtime: Runtime, error: AgentError
    ) -> ServiceError:
        if runtime.releasing:
            environment = self._environments.store.get(environment_id)
            return (
                environment_not_found(environment_id)
                if environment is None
                else not_running(environment)
            )
        return ServiceError(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            ErrorReason.QUOTA_EXCEEDED,
            f"the command could not be started in environment {environment_id} ({error}); "
            "it may be at its max_pids or memory limit: end some of its processes, or "
            "create an environment with larger spec.limits",
        )

    def process_limits(self, runtime: Runtime) -> ProcessLimits:
        """The rlimits of the environment's processes."""
        isolation = self._environments.isolation
        return ProcessLimits.for_environment(
            runtime.spec.limits,
            address_space_headroom_bytes=self._settings.address_space_headroom_bytes,
            open_files=self._settings.max_open_files,
            limit_processes_per_uid=isolation.cgroups is None and bool(isolation.sandbox_user),
        )

    # --- the agent ---------------------------------------------------------------------

    async def _agent(self, environment_id: str, runtime: Runtime) -> AgentClient:
        """The environment's agent; started when there is none or the last one died."""
        async with runtime.agent_lock:
            if runtime.agent is not None and not runtime.agent.closed:
                return runtime.agent
            if runtime.releasing:
                raise AgentError("the environment is terminating")
            if runtime.agent is not None:
                log.warning(
                    "the agent of environment %s died (its processes with it); starting another",
                    environment_id,
                )
                await runtime.agent.close()
            if runtime.network is not None:
                await runtime.network.close()
            return await self.start_agent(environment_id, runtime)

    async def start_agent(
        self,
        environment_id: str,
        runtime: Runtime,
        prepare: Coroutine[Any, Any, None] | None = None,
        gate: WaitingGate | None = None,
    ) -> AgentClient:
        """Starts the environment's agent (``prepare`` is awaited meanwhile, ``gate`` is a
        gate started ahead: see :meth:`AgentClient.start`); the caller holds
        ``runtime.agent_lock``."""
        layout = self._environments.layout(environment_id)
        try:
            plan = LaunchPlan(
                environment_id=environment_id,
                spec=runtime.spec,
                layout=layout,
                limits=self.process_limits(runtime),
                root=layout.root_dir if runtime.spec.template is not None else None,
            )
            sandbox = await self._launcher().start(
                plan,
                cgroup=runtime.cgroup,
                prepare=prepare,
                on_violation=lambda detail: self._agent_broke_protocol(environment_id, detail),
                gate=gate,
            )
        except NetworkSetupError as error:
            raise AgentError(f"its network could not be set up: {error}") from error
        runtime.agent, runtime.network = sandbox.agent, sandbox.network
        return sandbox.agent

    def _launcher(self) -> SandboxLauncher:
        if self._sandbox_launcher is None:
            raise RuntimeError("SandboxManager.start() has not run yet")
        return self._sandbox_launcher

    def _agent_broke_protocol(self, environment_id: str, detail: str) -> None:
        """Ends the environment whose agent misbehaved (a command tampered with it)."""
        message = (
            "the environment's agent broke its protocol with the orchestrator, so a "
            f"process in the environment may have tampered with it ({detail}); the "
            "environment was ended to contain it: create a new one"
        )
        self._termination.terminate_later(
            environment_id, TerminationReason.SANDBOX_VIOLATION, message
        )

    # --- files -------------------------------------------------------------------------

    async def write_file(
        self, tenant: str, environment_id: str, file: FileWrite, *, field_path: str = "file.path"
    ) -> FileEntry:
        """Writes a workspace file, creating its directories; once this returns, the
        bytes are on disk (a full disk is RESOURCE_EXHAUSTED, never a lost write)."""
        _, runtime = self._environments.running(tenant, environment_id)
        workspace = runtime.files()
        self._activity.touch(environment_id)
        with file_errors(
            field_path, file.path, workspace.quota_bytes, self._environments.workspace_root
        ):
            return await asyncio.to_thread(
                workspace.write_file, split_path(file.path), file.content, file.mode
            )

    async def read_workspace_file(
        self, tenant: str, environment_id: str, path: str
    ) -> tuple[FileEntry, bytes]:
        """A workspace file's metadata and bytes (read off the event loop)."""
        _, runtime = self._environments.running(tenant, environment_id)
        return await asyncio.to_thread(self.read, environment_id, runtime, path)

    def read(self, environment_id: str, runtime: Runtime, path: str) -> tuple[FileEntry, bytes]:
        """A workspace file's metadata and bytes; INVALID_ARGUMENT or NOT_FOUND on bad paths."""
        workspace = runtime.files()
        self._activity.touch(environment_id)
        with file_errors("path", path, workspace.quota_bytes):
            return workspace.read_file(split_path(path), self._settings.max_read_file_bytes)

    def list_files(
        self, tenant: str, environment_id: str, path: str, page_size: int, page_token: str
    ) -> tuple[list[FileEntry], str]:
        """One page of a workspace directory's entries, sorted by path: a signed cursor
        that reads only the page's entries (see ``file_pages`` and ``listing``)."""
        _, runtime = self._environments.running(tenant, environment_id)
        self._activity.touch(environment_id)
        return files_page(runtime.files(), path, page_size, page_token)

    # --- usage -------------------------------------------------------------------------

    def environment_usage(self, tenant: str, environment_id: str) -> tuple[Usage, EnvironmentSpec]:
        """A fresh usage sample and the spec (for its limits)."""
        environment, runtime = self._environments.running(tenant, environment_id)
        return runtime.sample(), environment.spec

    async def stream_usage(
        self, tenant: str, environment_id: str, interval_seconds: float
    ) -> AsyncGenerator[Usage, None]:
        """A sample every ``interval_seconds`` until the environment terminates."""
        _, runtime = self._environments.running(tenant, environment_id)
        while not runtime.releasing:
            yield runtime.sample()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(runtime.terminated.wait(), interval_seconds)


def _agent_runtime(python: str) -> AgentRuntime | None:
    """The host interpreter's runtime for template roots; None (logged) if it is unusable."""
    try:
        return AgentRuntime.for_host(python)
    except OSError as error:
        log.warning("environments from templates are unavailable: %s", error)
        return None
