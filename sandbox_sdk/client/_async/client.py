"""The client: environments, commands, experiments, models and API keys."""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence

from sandbox_sdk.api.v1 import gateway_service_pb2, requests_pb2
from sandbox_sdk.auth.credentials import TokenProvider
from sandbox_sdk.client import request_messages as messages
from sandbox_sdk.client._async import glue
from sandbox_sdk.client._async.experiment import AsyncExperiment
from sandbox_sdk.client._async.sandbox import AsyncSandbox
from sandbox_sdk.client._async.template import AsyncTemplate
from sandbox_sdk.client._async.transport import AsyncTransport
from sandbox_sdk.client.options import RetryArgument, TlsArgument, resolve_options
from sandbox_sdk.client.outcome import QUEUE_POLL_SECONDS, still_queued
from sandbox_sdk.client.retry import RetryPolicy
from sandbox_sdk.client.template_requests import (
    OciArchive,
    TemplateFileSource,
    create_template_request,
    read_oci_archive,
)
from sandbox_sdk.config.settings import ClientSettings
from sandbox_sdk.models.api_keys import ApiKeyInfo, ApiKeyScope, CreatedApiKey
from sandbox_sdk.models.catalog import ModelInfo
from sandbox_sdk.models.comparison import ExperimentComparison, compare_results
from sandbox_sdk.models.environment import (
    ISOLATION_RUNTIME_NUMBERS,
    EnvironmentState,
    IsolationRuntime,
    NetworkPolicy,
    isolation_runtime,
)
from sandbox_sdk.models.experiment import ExperimentInfo, ExperimentState
from sandbox_sdk.models.results import ExperimentResults
from sandbox_sdk.utils.units import DurationLike, Size


class AsyncSandboxClient:
    """Talks to a sandbox gateway: environments, templates, commands, experiments, models, keys.

    Arguments override environment variables, which override the YAML file at
    ``config_path`` (or ``$SANDBOX_CONFIG``), which overrides the defaults; see
    :mod:`sandbox_sdk.config`. Without a target and a key, the client talks to
    the local server's Unix socket ``<data_dir>/gateway.sock`` with its
    ``<data_dir>/admin.key``; no TCP target ever gets that key by itself.
    ``target`` may list several gateways (``["a:50051", "b:50051"]``) or be a
    ``dns:///name:port`` target: calls are spread over them round-robin, and
    when one dies, retry-safe calls and event streams carry on through another.
    Every call takes ``timeout=`` (seconds) and most take ``retry=`` (a
    :class:`RetryPolicy`) to override the defaults.
    Close the client with :meth:`close` or use it as a context manager.
    """

    def __init__(
        self,
        target: str | Sequence[str] | None = None,
        *,
        api_key: str | None = None,
        token_provider: TokenProvider | None = None,
        tls: TlsArgument = None,
        timeout: float | None = None,
        retry: RetryArgument = None,
        config_path: str | os.PathLike[str] | None = None,
        settings: ClientSettings | None = None,
    ) -> None:
        options = resolve_options(
            target=target,
            api_key=api_key,
            token_provider=token_provider,
            tls=tls,
            timeout=timeout,
            retry=retry,
            config_path=config_path,
            settings=settings,
        )
        self.settings = options.settings
        self.retry_policy = options.retry
        self._transport = AsyncTransport(
            glue.open_channel(options.settings),
            settings=options.settings,
            auth=options.auth,
            retry=options.retry,
            observer=options.observer,
        )

    # -- environments ----------------------------------------------------------------------

    async def create_environment(
        self,
        *,
        cpu: float | None = None,
        memory: Size | None = None,
        disk: Size | None = None,
        pids: int | None = None,
        exec_timeout: DurationLike | None = None,
        ttl: DurationLike | None = None,
        idle_timeout: DurationLike | None = None,
        env: Mapping[str, str] | None = None,
        labels: Mapping[str, str] | None = None,
        files: Mapping[str, bytes | str] | None = None,
        network: NetworkPolicy | str | bool | None = None,
        egress_allow: Sequence[str] | None = None,
        egress_deny: Sequence[str] | None = None,
        queue: bool = False,
        template: AsyncTemplate | str | None = None,
        runtime: IsolationRuntime | str | None = None,
        timeout: float | None = None,
        retry: RetryPolicy | None = None,
    ) -> AsyncSandbox:
        """Creates an environment and returns it RUNNING.

        Limits left out take the server's defaults: ``cpu`` in cores, ``memory``
        and ``disk`` as bytes or strings like ``"512Mi"``, ``pids`` processes,
        durations as seconds or strings like ``"10m"``. ``files`` maps workspace
        paths to contents. ``network`` is ``"none"`` (default), ``"egress"``
        (outbound connections from the environment's own network, optionally
        only to the CIDR blocks in ``egress_allow`` and never to those in
        ``egress_deny``), or ``"host"`` (only where the operator allows it).
        A retried create returns the first environment, never a second one.
        ``queue=True``: when the orchestrator has no room now, wait in its queue
        (``sandbox.info.queue_position``) instead of failing with
        :class:`CapacityExhaustedError`; ``timeout`` bounds the whole wait.
        ``template`` (a template, its id, or a public template's name) gives the
        environment that template's root file system, copy-on-write, and its
        defaults under the limits and ``env`` given here.
        ``runtime`` is what isolates it: ``"bubblewrap"`` (namespaces, seccomp and
        cgroups on the host kernel) or ``"gvisor"`` (gVisor's user-space kernel, for
        hostile code), case-insensitive; left out, the operator's default, or the
        minimum the operator sets for your tenant if stronger. ``sandbox.info.runtime``
        says which it got. A runtime weaker than your tenant's minimum raises
        :class:`PermissionDeniedError`, one the server has not installed
        :class:`FailedPreconditionError`; an unknown name raises ``ValueError``.
        """
        wire_runtime = ISOLATION_RUNTIME_NUMBERS[isolation_runtime(runtime)]
        request = messages.create_environment_request(
            cpu=cpu,
            memory=memory,
            disk=disk,
            pids=pids,
            exec_timeout=exec_timeout,
            ttl=ttl,
            idle_timeout=idle_timeout,
            env=env,
            labels=labels,
            files=files,
            network=network,
            egress_allow=egress_allow,
            egress_deny=egress_deny,
            queue=queue,
            template=template.id if isinstance(template, AsyncTemplate) else template or "",
        )
        request.spec.runtime = wire_runtime  # type: ignore[assignment]
        deadline = None if timeout is None else time.monotonic() + timeout
        response = await self._transport.call(
            "CreateEnvironment", request, timeout=timeout, retry=retry
        )
        sandbox = AsyncSandbox(self._transport, response.environment)
        if not queue:
            return sandbox
        return await self._until_admitted(sandbox, deadline)

    async def _until_admitted(self, sandbox: AsyncSandbox, deadline: float | None) -> AsyncSandbox:
        """Looks again, less and less often, until a queued environment is no longer waiting."""
        pause, longest = QUEUE_POLL_SECONDS
        while sandbox.info.state in (EnvironmentState.QUEUED, EnvironmentState.CREATING):
            if deadline is not None and time.monotonic() + pause > deadline:
                raise still_queued(sandbox.info)
            await glue.sleep(pause)
            pause = min(2 * pause, longest)
            sandbox = await self.get_environment(sandbox.id)
        return sandbox

    async def get_environment(
        self, environment_id: str, *, timeout: float | None = None, retry: RetryPolicy | None = None
    ) -> AsyncSandbox:
        """The environment with this id (:class:`NotFoundError` if it is not yours)."""
        response = await self._transport.call(
            "GetEnvironment",
            requests_pb2.GetEnvironmentRequest(environment_id=environment_id),
            timeout=timeout,
            retry=retry,
        )
        return AsyncSandbox(self._transport, response.environment)

    async def list_environments(
        self,
        *,
        labels: Mapping[str, str] | None = None,
        page_size: int = 0,
        show_terminated: bool = False,
        timeout: float | None = None,
    ) -> AsyncIterator[AsyncSandbox]:
        """Your environments, newest first, fetched page by page as you iterate."""
        request = requests_pb2.ListEnvironmentsRequest(
            page_size=page_size, label_selector=dict(labels or {}), show_terminated=show_terminated
        )
        async for page in self._transport.pages("ListEnvironments", request, timeout=timeout):
            for environment in page.environments:
                yield AsyncSandbox(self._transport, environment)

    # -- templates -------------------------------------------------------------------------

    async def build_template(
        self,
        *,
        debian: str | None = None,
        debian_variant: str = "",
        oci_archive: OciArchive | None = None,
        apt: Sequence[str] = (),
        pip: Sequence[str] = (),
        files: Mapping[str, TemplateFileSource] | None = None,
        commands: Sequence[str | Sequence[str]] = (),
        env: Mapping[str, str] | None = None,
        workdir: str = "",
        cpu: float | None = None,
        memory: Size | None = None,
        disk: Size | None = None,
        pids: int | None = None,
        exec_timeout: DurationLike | None = None,
        name: str = "",
        timeout: float | None = None,
        retry: RetryPolicy | None = None,
    ) -> AsyncTemplate:
        """Starts building a template and returns its handle at once (BUILDING, or READY
        when you built the same spec before).

        The base is exactly one of ``debian`` (a suite such as ``"bookworm"``,
        built from Debian's packages; ``debian_variant`` defaults to minbase) or
        ``oci_archive`` (the path or bytes of a ``docker save`` archive or an OCI
        layout tarball, sent with the request). Then, in order: ``apt``
        packages, ``pip`` packages, ``files`` (absolute paths to contents, or
        ``(content, mode)``), and ``commands`` (lists, or strings run by
        ``/bin/sh -c``). ``env``, ``workdir`` and the limits are what its
        environments start with. Follow the build with ``template.logs()`` and
        wait for it with ``template.wait()``.
        """
        archive = (
            None if oci_archive is None else await glue.off_loop(read_oci_archive, oci_archive)
        )
        request = create_template_request(
            debian=debian,
            debian_variant=debian_variant,
            oci_archive=archive,
            apt=apt,
            pip=pip,
            files=files,
            commands=commands,
            env=env,
            workdir=workdir,
            cpu=cpu,
            memory=memory,
            disk=disk,
            pids=pids,
            exec_timeout=exec_timeout,
            name=name,
        )
        response = await self._transport.call(
            "CreateTemplate", request, timeout=timeout, retry=retry
        )
        return AsyncTemplate(self._transport, response.template)

    async def get_template(
        self, template_id: str, *, timeout: float | None = None, retry: RetryPolicy | None = None
    ) -> AsyncTemplate:
        """The template with this id, or the public template of this name."""
        response = await self._transport.call(
            "GetTemplate",
            requests_pb2.GetTemplateRequest(template_id=template_id),
            timeout=timeout,
            retry=retry,
        )
        return AsyncTemplate(self._transport, response.template)

    async def list_templates(
        self, *, include_public: bool = True, page_size: int = 0, timeout: float | None = None
    ) -> AsyncIterator[AsyncTemplate]:
        """Your templates newest first, then the public ones; fetched page by page."""
        request = requests_pb2.ListTemplatesRequest(
            page_size=page_size, hide_public=not include_public
        )
        async for page in self._transport.pages("ListTemplates", request, timeout=timeout):
            for template in page.templates:
                yield AsyncTemplate(self._transport, template)

    async def delete_template(
        self, template_id: str, *, timeout: float | None = None, retry: RetryPolicy | None = None
    ) -> None:
        """Deletes a template of yours (idempotent); one in use is refused, naming its users."""
        request = requests_pb2.DeleteTemplateRequest(template_id=template_id)
        await self._transport.call("DeleteTemplate", request, timeout=timeout, retry=retry)

    # -- experiments -----------------------------------------------------------------------

    async def get_experiment(
        self, experiment_id: str, *, timeout: float | None = None, retry: RetryPolicy | None = None
    ) -> AsyncExperiment:
        """The experiment with this id."""
        response = await self._transport.call(
            "GetExperiment",
            requests_pb2.GetExperimentRequest(experiment_id=experiment_id),
            timeout=timeout,
            retry=retry,
        )
        return AsyncExperiment(self._transport, ExperimentInfo.from_proto(response.experiment))

    async def list_experiments(
        self,
        *,
        labels: Mapping[str, str] | None = None,
        environment_id: str = "",
        states: Iterable[ExperimentState | str] = (),
        page_size: int = 0,
        timeout: float | None = None,
    ) -> AsyncIterator[AsyncExperiment]:
        """Your experiments, newest first, fetched page by page as you iterate."""
        request = messages.list_experiments_request(
            labels=labels, environment_id=environment_id, states=states, page_size=page_size
        )
        async for page in self._transport.pages("ListExperiments", request, timeout=timeout):
            for experiment in page.experiments:
                yield AsyncExperiment(self._transport, ExperimentInfo.from_proto(experiment))

    async def get_results(
        self, experiment_id: str, timeout: DurationLike | None = None
    ) -> ExperimentResults:
        """Waits for the experiment with this id and returns its results."""
        return await (await self.get_experiment(experiment_id)).get_results(timeout)

    async def compare_experiments(
        self,
        a: AsyncExperiment | ExperimentResults | str,
        b: AsyncExperiment | ExperimentResults | str,
    ) -> ExperimentComparison:
        """Two experiments' metrics side by side, with differences and whether they are noise."""
        return compare_results(await self._results_of(a), await self._results_of(b))

    async def _results_of(
        self, item: AsyncExperiment | ExperimentResults | str
    ) -> ExperimentResults:
        if isinstance(item, ExperimentResults):
            return item
        experiment = item if isinstance(item, AsyncExperiment) else await self.get_experiment(item)
        return await experiment.get_results()

    # -- models and keys -------------------------------------------------------------------

    async def list_models(self, *, timeout: float | None = None) -> list[ModelInfo]:
        """The models experiments can use, sorted by name."""
        request = requests_pb2.ListModelsRequest()
        return [
            ModelInfo.from_proto(model)
            async for page in self._transport.pages("ListModels", request, timeout=timeout)
            for model in page.models
        ]

    async def create_api_key(
        self,
        *,
        tenant: str = "",
        scopes: Iterable[ApiKeyScope | str] = (ApiKeyScope.READ, ApiKeyScope.WRITE),
        display_name: str = "",
        ttl: DurationLike | None = None,
        timeout: float | None = None,
    ) -> CreatedApiKey:
        """Creates an API key; the secret is in the result only.

        ``tenant`` defaults to the calling key's own tenant. An admin key creates
        keys of its own tenant only (another tenant is :class:`PermissionDeniedError`);
        an operator key creates keys of any tenant, and only it creates operator keys.
        """
        request = messages.create_api_key_request(
            tenant=tenant, scopes=scopes, display_name=display_name, ttl=ttl
        )
        response = await self._transport.call("CreateApiKey", request, timeout=timeout)
        return CreatedApiKey(ApiKeyInfo.from_proto(response.api_key), response.secret)

    async def list_api_keys(
        self, *, tenant: str = "", show_revoked: bool = False, timeout: float | None = None
    ) -> AsyncIterator[ApiKeyInfo]:
        """API keys without secrets, newest first.

        An admin key sees its own tenant's keys; an operator key every tenant's,
        or only ``tenant``'s when it is given.
        """
        request = gateway_service_pb2.ListApiKeysRequest(tenant=tenant, show_revoked=show_revoked)
        async for page in self._transport.pages("ListApiKeys", request, timeout=timeout):
            for key in page.api_keys:
                yield ApiKeyInfo.from_proto(key)

    async def revoke_api_key(
        self, api_key_id: str, *, timeout: float | None = None, retry: RetryPolicy | None = None
    ) -> ApiKeyInfo:
        """Revokes a key at once; revoking a revoked key returns it unchanged.

        An admin key revokes keys of its own tenant (another tenant's key is
        :class:`NotFoundError`); only an operator key revokes operator keys.
        """
        request = gateway_service_pb2.RevokeApiKeyRequest(api_key_id=api_key_id)
        response = await self._transport.call("RevokeApiKey", request, timeout=timeout, retry=retry)
        return ApiKeyInfo.from_proto(response.api_key)

    # -- lifecycle -------------------------------------------------------------------------

    async def close(self) -> None:
        """Closes the connection; calls in flight are cancelled."""
        await self._transport.close()

    async def __aenter__(self) -> AsyncSandboxClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(target={self.settings.target!r})"
