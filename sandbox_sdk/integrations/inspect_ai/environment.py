"""``SandboxSdkEnvironment``: inspect's ``SandboxEnvironment`` on environments of ours.

Each sample gets its own environments (one per name in the config), created in
``sample_init`` with one asyncio client per sample and deleted in ``sample_cleanup``,
also when the sample was interrupted. Every environment carries labels naming its run
(:mod:`.runs`) and task, so ``task_cleanup`` deletes any a sample left behind and
``inspect sandbox cleanup sandbox-sdk`` deletes what a crashed run left.
"""

from __future__ import annotations

import asyncio
import logging
import re
import shlex
import uuid
from collections.abc import Sequence
from typing import Any, Literal, overload

import anyio
from inspect_ai.util import (
    ExecResult,
    SandboxConnection,
    SandboxEnvironment,
    SandboxEnvironmentConfigType,
    SandboxUserUnsupportedError,
    sandboxenv,
)
from pydantic import BaseModel
from typing_extensions import override

from sandbox_sdk import AsyncSandbox, AsyncSandboxClient, SandboxError
from sandbox_sdk.integrations.inspect_ai import commands, files, runs
from sandbox_sdk.integrations.inspect_ai.config import (
    EnvironmentOptions,
    SandboxSdkConfig,
    config_from_dict,
    load_config_file,
)
from sandbox_sdk.integrations.inspect_ai.errors import inspect_errors

PROVIDER_NAME = "sandbox-sdk"
MANAGED_LABEL = "inspect-ai"
RUN_LABEL = "inspect-ai-run"
TASK_LABEL = "inspect-ai-task"
# The run label of environments made outside an eval's startup (no task_init).
PROCESS_TOKEN = uuid.uuid4().hex[:16]
CLEANUP_TIMEOUT_SECONDS = 60.0
_IDENTITY_SCRIPT = "PATH=/usr/sbin:/usr/bin:/sbin:/bin; id -un; id -u"

logger = logging.getLogger(__name__)


@sandboxenv(name=PROVIDER_NAME)
class SandboxSdkEnvironment(SandboxEnvironment):
    """One sandbox-sdk environment serving one of a sample's sandboxes.

    Commands run as the environment's one unprivileged user; ``user=`` naming anyone
    else raises ``SandboxUserUnsupportedError``.
    """

    def __init__(
        self, sandbox: AsyncSandbox, client: AsyncSandboxClient, config: SandboxSdkConfig
    ) -> None:
        super().__init__()
        self.sandbox = sandbox
        self._client = client
        self._config = config
        self._identity: tuple[str, str] | None = None

    # -- configuration ----------------------------------------------------------------------

    @override
    @classmethod
    def config_files(cls) -> list[str]:
        return ["sandbox-sdk.yaml"]

    @override
    @classmethod
    def config_deserialize(cls, config: dict[str, Any]) -> BaseModel:
        return config_from_dict(config)

    # -- lifecycle ------------------------------------------------------------------------

    @override
    @classmethod
    async def task_init(cls, task_name: str, config: SandboxEnvironmentConfigType | None) -> None:
        # Resolved now, in the task's directory, a bad file fails before any sample runs.
        runs.begin(runs.config_key(config), await _resolved_config(config))

    @override
    @classmethod
    async def sample_init(
        cls,
        task_name: str,
        config: SandboxEnvironmentConfigType | None,
        metadata: dict[str, str],
    ) -> dict[str, SandboxEnvironment]:
        run = runs.current(runs.config_key(config))
        resolved = run.config if run is not None else await _resolved_config(config)
        labels = {
            MANAGED_LABEL: "true",
            RUN_LABEL: run.token if run is not None else PROCESS_TOKEN,
            TASK_LABEL: _label_value(task_name),
        }
        client = await _open_client(resolved)
        created: dict[str, SandboxSdkEnvironment] = {}
        try:
            for name, options in resolved.environments.items():
                sandbox = await _create(client, options, labels)
                created[name] = cls(sandbox, client, resolved)
        except BaseException:
            await _delete_all(list(created.values()), client)
            raise
        return dict(created)

    @override
    @classmethod
    async def sample_cleanup(
        cls,
        task_name: str,
        config: SandboxEnvironmentConfigType | None,
        environments: dict[str, SandboxEnvironment],
        interrupted: bool,
    ) -> None:
        ours = [env for env in environments.values() if isinstance(env, SandboxSdkEnvironment)]
        if ours:
            await _delete_all(ours, ours[0]._client)

    @override
    @classmethod
    async def task_cleanup(
        cls, task_name: str, config: SandboxEnvironmentConfigType | None, cleanup: bool
    ) -> None:
        run = runs.end(runs.config_key(config))
        if cleanup and run is not None:
            await _delete_labelled(run.config, {RUN_LABEL: run.token})

    @override
    @classmethod
    async def cli_cleanup(cls, id: str | None) -> None:
        resolved = SandboxSdkConfig()
        if id is None:
            await _delete_labelled(resolved, {MANAGED_LABEL: "true"})
            return
        client = await _open_client(resolved)
        try:
            with inspect_errors():
                await (await client.get_environment(id)).delete()
        finally:
            await client.close()

    # -- commands and files ---------------------------------------------------------------

    @override
    async def exec(
        self,
        cmd: list[str],
        input: str | bytes | None = None,
        cwd: str | None = None,
        env: dict[str, str] | None = None,
        user: str | None = None,
        timeout: int | None = None,
        timeout_retry: bool = True,
        concurrency: bool = True,
    ) -> ExecResult[str]:
        if not cmd:
            raise ValueError("exec needs a command: a list of at least the program's name")
        if user is not None:
            await self._require_own_user(user)
        result = await commands.run_checked(
            self.sandbox, commands.with_cwd(cmd, cwd), stdin=input, env=env, timeout=timeout
        )
        return commands.inspect_result(result, cmd)

    @override
    async def write_file(self, file: str, contents: str | bytes) -> None:
        data = contents.encode("utf-8") if isinstance(contents, str) else contents
        await files.write_file(self.sandbox, file, data)

    @overload
    async def read_file(self, file: str, text: Literal[True] = True) -> str: ...

    @overload
    async def read_file(self, file: str, text: Literal[False]) -> bytes: ...

    @override
    async def read_file(self, file: str, text: bool = True) -> str | bytes:
        contents = await files.read_file(self.sandbox, file)
        return contents.decode("utf-8") if text else contents

    @override
    async def connection(self, *, user: str | None = None) -> SandboxConnection:
        if user is not None:
            await self._require_own_user(user)
        command = ["sandbox-sdk", *self._config.shell_arguments(), "env", "shell", self.sandbox.id]
        return SandboxConnection(type=PROVIDER_NAME, command=shlex.join(command))

    @override
    def default_polling_interval(self) -> float:
        return 0.2

    async def _require_own_user(self, user: str) -> None:
        """Passes for the environment's own user (by name or uid); refuses anyone else."""
        name, uid = await self._own_user()
        if user not in (name, uid):
            raise SandboxUserUnsupportedError(
                f"sandbox-sdk environments run every command as their one unprivileged user "
                f"{name!r} (uid {uid}); leave user= out or pass {name!r} instead of {user!r}"
            )

    async def _own_user(self) -> tuple[str, str]:
        if self._identity is None:
            result = await commands.run_checked(
                self.sandbox, [commands.SHELL, "-c", _IDENTITY_SCRIPT], timeout=30
            )
            lines = result.stdout.split()
            if not result.ok or len(lines) != 2:
                raise SandboxUserUnsupportedError(
                    f"could not tell which user environment {self.sandbox.id} runs commands "
                    f"as: {result.stderr.strip()}"
                )
            self._identity = (lines[0], lines[1])
        return self._identity


async def _resolved_config(config: SandboxEnvironmentConfigType | None) -> SandboxSdkConfig:
    """The config inspect passes: none (defaults), a YAML file's path, or our model."""
    if config is None:
        return SandboxSdkConfig()
    if isinstance(config, SandboxSdkConfig):
        return config
    if isinstance(config, str):
        return await asyncio.to_thread(load_config_file, config)
    raise TypeError(
        f"sandbox-sdk takes a YAML file's path or a SandboxSdkConfig, not a {type(config).__name__}"
    )


async def _open_client(config: SandboxSdkConfig) -> AsyncSandboxClient:
    settings = await asyncio.to_thread(config.client_settings)
    return AsyncSandboxClient(settings=settings)


async def _create(
    client: AsyncSandboxClient, options: EnvironmentOptions, labels: dict[str, str]
) -> AsyncSandbox:
    with inspect_errors():
        return await client.create_environment(
            cpu=options.cpu,
            memory=options.memory,
            disk=options.disk,
            pids=options.pids,
            exec_timeout=options.exec_timeout,
            ttl=options.ttl,
            idle_timeout=options.idle_timeout,
            env=options.env,
            labels={**options.labels, **labels},
            network=options.network,
            egress_allow=options.egress_allow,
            egress_deny=options.egress_deny,
            template=options.template,
            runtime=options.runtime,
            queue=options.queue,
            timeout=options.create_timeout,
        )


async def _delete_all(
    environments: Sequence[SandboxSdkEnvironment], client: AsyncSandboxClient
) -> None:
    """Deletes the environments and closes their client, even while being cancelled."""
    with anyio.CancelScope(shield=True), anyio.move_on_after(CLEANUP_TIMEOUT_SECONDS):
        try:
            for environment in environments:
                await _delete_quietly(environment.sandbox)
        finally:
            await client.close()


async def _delete_labelled(config: SandboxSdkConfig, labels: dict[str, str]) -> None:
    """Deletes every environment of ours with these labels."""
    client = await _open_client(config)
    try:
        with anyio.CancelScope(shield=True), anyio.move_on_after(CLEANUP_TIMEOUT_SECONDS):
            leftovers = [sandbox async for sandbox in client.list_environments(labels=labels)]
            for sandbox in leftovers:
                await _delete_quietly(sandbox)
    finally:
        await client.close()


async def _delete_quietly(sandbox: AsyncSandbox) -> None:
    try:
        await sandbox.delete()
    except SandboxError as error:
        # Cleanup goes on with the others; the label lets `inspect sandbox cleanup` retry.
        logger.warning("could not delete sandbox-sdk environment %s: %s", sandbox.id, error)


def _label_value(text: str) -> str:
    """``text`` as a label value: printable, at most 255 characters."""
    return re.sub(r"[^\x20-\x7e]", "_", text)[:255]
