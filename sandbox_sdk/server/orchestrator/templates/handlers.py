"""The template RPCs of OrchestratorService, and environments created from templates.

Builds run in background tasks; their log lines and state changes are stored
as numbered events (:mod:`.records`), which StreamTemplateBuildEvents serves
and resumes. A tenant sees its own templates and the operator's public ones; a
template of another tenant is NOT_FOUND, as if it did not exist.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format

from sandbox_sdk.api.v1 import environment_pb2, requests_pb2, template_pb2
from sandbox_sdk.errors import ErrorReason
from sandbox_sdk.server import ids, page_tokens
from sandbox_sdk.server.field_violations import FieldViolations
from sandbox_sdk.server.orchestrator.sandbox import SandboxManager, convert, validation
from sandbox_sdk.server.orchestrator.sandbox.environment_record import EnvironmentState
from sandbox_sdk.server.orchestrator.sandbox.runtime_policy import check_build_steps_allowed
from sandbox_sdk.server.orchestrator.templates.build_log import BuildLog
from sandbox_sdk.server.orchestrator.templates.build_steps import TemplateBuilder, tree_bytes
from sandbox_sdk.server.orchestrator.templates.cache import (
    TemplateCache,
    TemplateInUse,
    TemplateNotFound,
)
from sandbox_sdk.server.orchestrator.templates.logged_process import TemplateBuildError
from sandbox_sdk.server.orchestrator.templates.records import (
    PUBLIC_TENANT,
    BuildEvent,
    Source,
    State,
    TemplateRecord,
    TemplateRecords,
)
from sandbox_sdk.server.orchestrator.templates.snapshots import (
    apply_layer,
    copy_workspace,
    link_tree,
    workspace_files,
)
from sandbox_sdk.server.orchestrator.templates.spec import (
    DebianBase,
    OciArchiveBase,
    TemplateDefaults,
    TemplateFile,
    TemplateSpec,
    validate_template_spec,
)
from sandbox_sdk.server.status import ServiceError, invalid_argument, not_found
from sandbox_sdk.server.tenancy import tenant_of
from sandbox_sdk.utils.units import from_duration_pb, to_duration_pb, to_timestamp_pb

log = logging.getLogger(__name__)

Context = Any
RpcHandler = Callable[[Any, Any], Awaitable[Any]]
# A snapshot's workspace goes into each new environment of it; beyond this it is refused.
MAX_SNAPSHOT_WORKSPACE_BYTES = 256 << 20
_LIMITS = ("cpu_cores", "memory_bytes", "disk_bytes", "max_pids")
_STATES = {
    State.BUILDING: template_pb2.TEMPLATE_STATE_BUILDING,
    State.READY: template_pb2.TEMPLATE_STATE_READY,
    State.FAILED: template_pb2.TEMPLATE_STATE_FAILED,
}
_SOURCES = {
    Source.SPEC: template_pb2.TEMPLATE_SOURCE_SPEC,
    Source.SNAPSHOT: template_pb2.TEMPLATE_SOURCE_SNAPSHOT,
    Source.PUBLIC: template_pb2.TEMPLATE_SOURCE_PUBLIC,
}


class TemplateService:
    """Template records over the content-addressed :class:`TemplateCache`."""

    def __init__(  # noqa: PLR0917  (the service's collaborators)
        self,
        records: TemplateRecords,
        cache: TemplateCache,
        manager: SandboxManager,
        orchestrator_id: str,
        archives_dir: Path,
        snapshot_quota_bytes: int,
    ) -> None:
        self.records = records
        self.cache = cache
        self.manager = manager
        self.orchestrator_id = orchestrator_id
        self.archives_dir = archives_dir
        self.snapshot_quota_bytes = snapshot_quota_bytes
        self._builds: dict[str, asyncio.Task[None]] = {}
        self._changed: dict[str, asyncio.Event] = {}
        self._builder: TemplateBuilder | None = None

    # --- start and stop ----------------------------------------------------------------

    async def start(self, public: list[tuple[str, dict[str, Any]]]) -> None:
        """Opens the store, fails builds a previous run left unfinished, and starts
        building the operator's public set in the background."""
        await self.cache.start()
        await asyncio.to_thread(self.archives_dir.mkdir, 0o700, True, True)
        await asyncio.to_thread(_remove_leftover_archives, self.archives_dir)
        self._builder = TemplateBuilder(self.manager.launcher, archive_dirs=(self.archives_dir,))
        for record in await asyncio.to_thread(self.records.unfinished):
            await asyncio.to_thread(
                self.records.finish,
                record,
                state=State.FAILED,
                failure_message="the orchestrator restarted during the build; create it again",
            )
        for name, raw in public:
            try:
                spec_pb = json_format.ParseDict(raw, template_pb2.TemplateSpec())
                spec = await asyncio.to_thread(self._spec, spec_pb)
            except (json_format.ParseError, ServiceError) as error:
                log.error("public template %s is not valid: %s", name, error)
                continue
            existing = await asyncio.to_thread(self.records.get, name)
            if (
                existing is not None
                and existing.digest == spec.digest
                and not existing.deleted
                and existing.state is State.READY
            ):
                continue
            if existing is not None:
                await asyncio.to_thread(self.records.mark_deleted, name)
                await asyncio.to_thread(self._forget, name)
            self._start_build(
                self._new_record(name, PUBLIC_TENANT, name, spec, spec_pb, Source.PUBLIC, ""),
                spec,
                spec_pb.oci_archive.archive,
            )

    def _forget(self, template_id: str) -> None:
        with self.records._db.transaction() as conn:
            conn.execute("DELETE FROM templates WHERE id = ?", (template_id,))
            conn.execute("DELETE FROM template_events WHERE template_id = ?", (template_id,))

    async def stop(self) -> None:
        """Cancels running builds (the cache removes their partial trees)."""
        builds = list(self._builds.values())
        for task in builds:
            task.cancel()
        await asyncio.gather(*builds, return_exceptions=True)

    # --- specs -------------------------------------------------------------------------

    def _spec(self, message: template_pb2.TemplateSpec) -> TemplateSpec:
        """The validated spec of a request. An inline archive gets a path of its own in
        ``archives_dir``, written by its build (see :meth:`_build`), not here: nothing
        a refused or deduplicated request sends is kept on disk."""
        violations = FieldViolations()
        base: DebianBase | OciArchiveBase | None = None
        which = message.WhichOneof("base")
        if which == "debian":
            base = DebianBase(message.debian.suite, message.debian.variant or "minbase")
        elif which == "oci_archive":
            archive = message.oci_archive.archive
            digest = hashlib.sha256(archive).hexdigest()
            if not archive:
                violations.add("spec.oci_archive.archive", "the archive's bytes (a tar file)")
            elif message.oci_archive.sha256 and message.oci_archive.sha256 != digest:
                violations.add("spec.oci_archive.sha256", f"the archive's sha256 is {digest}")
            else:
                path = self.archives_dir / f"{digest}-{secrets.token_hex(8)}.tar"
                base = OciArchiveBase(str(path), digest)
        else:
            violations.add("spec.base", "give spec.debian or spec.oci_archive")
        violations.raise_if_any()
        assert base is not None  # noqa: S101  (set unless a violation was raised)
        defaults = message.defaults
        limits: dict[str, float] = {
            name: float(getattr(defaults.limits, name))
            for name in _LIMITS
            if getattr(defaults.limits, name)
        }
        if defaults.limits.HasField("exec_timeout"):
            limits["exec_timeout_seconds"] = from_duration_pb(defaults.limits.exec_timeout)
        spec = TemplateSpec(
            base=base,
            apt_packages=tuple(message.apt_packages),
            pip_packages=tuple(message.pip_packages),
            files=tuple(TemplateFile(f.path, f.content, f.mode or 0o644) for f in message.files),
            commands=tuple(tuple(c.argv) for c in message.commands),
            defaults=TemplateDefaults(
                env=dict(defaults.env_vars),
                workdir=defaults.workdir,
                user=defaults.user,
                limits=limits,
            ),
        )
        return validate_template_spec(spec)

    def _new_record(  # noqa: PLR0917  (one call per kind of template)
        self,
        template_id: str,
        tenant: str,
        display_name: str,
        spec: TemplateSpec | None,
        spec_pb: template_pb2.TemplateSpec | None,
        source: Source,
        request_id: str,
        **fields: Any,
    ) -> TemplateRecord:
        echo = template_pb2.TemplateSpec()
        if spec_pb is not None:
            echo.CopyFrom(spec_pb)
            echo.oci_archive.ClearField("archive") if echo.HasField("oci_archive") else None
            for file in echo.files:
                file.ClearField("content")
        record = TemplateRecord(
            id=template_id,
            tenant=tenant,
            display_name=display_name,
            digest=spec.digest if spec is not None else fields.pop("digest"),
            spec=echo.SerializeToString(),
            state=State.BUILDING,
            failure_message="",
            size_bytes=0,
            source=source,
            public=source is Source.PUBLIC,
            source_environment_id=fields.pop("source_environment_id", ""),
            parent_template_id=fields.pop("parent_template_id", ""),
            create_time=time.time(),
            finish_time=None,
            build_seconds=0.0,
            request_id=request_id,
        )
        self.records.insert(record)
        return record

    # --- builds ------------------------------------------------------------------------

    def _start_build(self, record: TemplateRecord, spec: TemplateSpec, archive: bytes) -> None:
        task = asyncio.get_running_loop().create_task(self._build(record, spec, archive))
        self._builds[record.id] = task
        task.add_done_callback(lambda _: self._builds.pop(record.id, None))

    async def _build(self, record: TemplateRecord, spec: TemplateSpec, archive: bytes) -> None:
        """Builds ``spec``; an inline ``archive`` is written to the spec's path for the
        build and removed after it, whatever its outcome."""
        inline = self._inline_archive_path(spec)
        try:
            if inline is not None:
                try:
                    await asyncio.to_thread(_write_new_file, inline, archive)
                except OSError as error:
                    message = f"the orchestrator could not store the archive: {error.strerror}"
                    await self._finish(record, state=State.FAILED, failure_message=message)
                    return
            await self._build_and_record(record, spec)
        finally:
            if inline is not None:
                await asyncio.shield(asyncio.to_thread(inline.unlink, True))

    def _inline_archive_path(self, spec: TemplateSpec) -> Path | None:
        base = spec.base
        if isinstance(base, OciArchiveBase) and Path(base.path).parent == self.archives_dir:
            return Path(base.path)
        return None

    async def _build_and_record(self, record: TemplateRecord, spec: TemplateSpec) -> None:
        assert self._builder is not None  # noqa: S101  (started)
        on_log = BuildLog(
            functools.partial(self.records.append_logs, record.id),
            functools.partial(self._notify, record.id),
        )
        started = time.monotonic()
        try:
            try:
                template = await self.cache.build(spec, self._builder, on_log)
            finally:
                await on_log.close()  # every line before the final state
        except TemplateBuildError as error:
            await self._finish(record, state=State.FAILED, failure_message=str(error)[:4000])
        except asyncio.CancelledError:
            await asyncio.shield(
                self._finish(record, state=State.FAILED, failure_message="the build was stopped")
            )
            raise
        except Exception as error:
            log.exception("template %s: build failed", record.id)
            await self._finish(record, state=State.FAILED, failure_message=f"internal: {error}")
        else:
            await self._finish(
                record,
                state=State.READY,
                size_bytes=template.size_bytes,
                build_seconds=time.monotonic() - started,
            )

    async def _finish(self, record: TemplateRecord, **changes: Any) -> TemplateRecord:
        updated = await asyncio.to_thread(self.records.finish, record, **changes)
        self._notify(record.id)
        return updated

    def _notify(self, template_id: str) -> None:
        event = self._changed.pop(template_id, None)
        if event is not None:
            event.set()

    # --- lookups -----------------------------------------------------------------------

    def visible(self, tenant: str, name: str, field: str = "template_id") -> TemplateRecord:
        """The tenant's template with id ``name``, or the public one named ``name``."""
        if not name:
            raise invalid_argument([(field, "a template id (tpl-...) or a public template name")])
        record = self.records.get(name) if len(name) <= 64 else None
        if (
            record is None
            or record.deleted
            or (record.tenant != tenant and not record.public)
            or (record.public and name.startswith(f"{ids.TEMPLATE}-"))
        ):
            raise not_found(ErrorReason.TEMPLATE_NOT_FOUND, f"template {name} does not exist")
        return record

    def _users(self, tenant: str, digest: str) -> list[str]:
        """The tenant's live environments that use the tree of ``digest``."""
        users = []
        for environment_id in self.cache.users(digest):
            try:
                environment = self.manager.get_environment(tenant, environment_id)
            except ServiceError:
                continue  # another tenant's: not this tenant's business
            if environment.state is not EnvironmentState.TERMINATED:
                users.append(environment_id)
        return users

    def message(self, record: TemplateRecord, tenant: str) -> template_pb2.Template:
        """The record as the API shows it to ``tenant``."""
        message = template_pb2.Template(
            id=record.id,
            display_name=record.display_name,
            spec=template_pb2.TemplateSpec.FromString(record.spec),
            digest=record.digest,
            state=_STATES[record.state],
            failure_message=record.failure_message,
            size_bytes=record.size_bytes,
            source=_SOURCES[record.source],
            public=record.public,
            source_environment_id=record.source_environment_id,
            parent_template_id=record.parent_template_id,
            orchestrator_id=self.orchestrator_id,
            create_time=to_timestamp_pb(record.create_time),
            build_duration=to_duration_pb(record.build_seconds),
            environments_using=len(self._users(tenant, record.digest)),
        )
        if record.finish_time is not None:
            message.finish_time.CopyFrom(to_timestamp_pb(record.finish_time))
        return message

    # --- RPCs --------------------------------------------------------------------------

    async def CreateTemplate(
        self, request: requests_pb2.CreateTemplateRequest, context: Context
    ) -> requests_pb2.CreateTemplateResponse:
        """Starts a build, or returns the tenant's template of the same content address."""
        tenant = tenant_of(context)
        _check_request_id(request.request_id)
        if request.request_id:
            earlier = await asyncio.to_thread(
                self.records.by_request_id, tenant, request.request_id
            )
            if earlier is not None:
                return requests_pb2.CreateTemplateResponse(template=self.message(earlier, tenant))
        if len(request.display_name) > 200:
            raise invalid_argument([("display_name", "at most 200 characters")])
        spec = await asyncio.to_thread(self._spec, request.spec)
        if spec.needs_sandbox:
            check_build_steps_allowed(tenant, self.manager.settings)
        existing = await asyncio.to_thread(self.records.by_digest, tenant, spec.digest)
        if existing is not None:
            return requests_pb2.CreateTemplateResponse(template=self.message(existing, tenant))
        record = await asyncio.to_thread(
            self._new_record,
            ids.new_id(ids.TEMPLATE, self.orchestrator_id),
            tenant,
            request.display_name,
            spec,
            request.spec,
            Source.SPEC,
            request.request_id,
        )
        self._start_build(record, spec, request.spec.oci_archive.archive)
        return requests_pb2.CreateTemplateResponse(template=self.message(record, tenant))

    async def GetTemplate(
        self, request: requests_pb2.GetTemplateRequest, context: Context
    ) -> requests_pb2.GetTemplateResponse:
        """One template, the tenant's or a public one."""
        tenant = tenant_of(context)
        record = self.visible(tenant, request.template_id)
        return requests_pb2.GetTemplateResponse(template=self.message(record, tenant))

    async def ListTemplates(
        self, request: requests_pb2.ListTemplatesRequest, context: Context
    ) -> requests_pb2.ListTemplatesResponse:
        """A page of the tenant's templates and the public ones, newest first."""
        tenant = tenant_of(context)
        if not 0 <= request.page_size <= 1000:
            raise invalid_argument([("page_size", "use 0 (for 50) to 1000")])
        size = request.page_size or 50
        scope = [tenant, request.hide_public]
        offset = page_tokens.decode(request.page_token, "ListTemplates", scope, int) or 0
        records = await asyncio.to_thread(self.records.listing, tenant, not request.hide_public)
        page = records[offset : offset + size]
        token = (
            page_tokens.encode("ListTemplates", scope, offset + size)
            if offset + size < len(records)
            else ""
        )
        return requests_pb2.ListTemplatesResponse(
            templates=[self.message(r, tenant) for r in page], next_page_token=token
        )

    async def DeleteTemplate(
        self, request: requests_pb2.DeleteTemplateRequest, context: Context
    ) -> requests_pb2.DeleteTemplateResponse:
        """Deletes the tenant's template unless its environments use it."""
        tenant = tenant_of(context)
        record = await asyncio.to_thread(self.records.get, request.template_id)
        if record is not None and record.deleted and record.tenant == tenant:
            return requests_pb2.DeleteTemplateResponse()
        record = self.visible(tenant, request.template_id)
        if record.public:
            raise ServiceError(
                grpc.StatusCode.PERMISSION_DENIED,
                ErrorReason.TEMPLATE_READ_ONLY,
                f"{record.id} is a public template: the operator provides it, read-only",
            )
        users = self._users(tenant, record.digest)
        if users:
            raise ServiceError(
                grpc.StatusCode.FAILED_PRECONDITION,
                ErrorReason.TEMPLATE_IN_USE,
                f"template {record.id} is used by environment(s) {', '.join(users)}; "
                "delete them first",
                metadata={"environments": ",".join(users)[:1000]},
            )
        build = self._builds.get(record.id)
        if build is not None:
            build.cancel()
            await asyncio.gather(build, return_exceptions=True)
        await asyncio.to_thread(self.records.mark_deleted, record.id)
        await self._drop_tree(record.digest)
        return requests_pb2.DeleteTemplateResponse()

    async def _drop_tree(self, digest: str) -> None:
        """Removes the tree of ``digest`` once no record and no environment holds it."""
        if await asyncio.to_thread(self.records.digest_in_use, digest):
            return
        # Another tenant's environment may still run on it, or it was never built.
        with contextlib.suppress(TemplateInUse, TemplateNotFound):
            await self.cache.delete(digest)

    async def StreamTemplateBuildEvents(
        self, request: requests_pb2.StreamTemplateBuildEventsRequest, context: Context
    ) -> AsyncIterator[requests_pb2.StreamTemplateBuildEventsResponse]:
        """Events after ``after_sequence``; with ``follow``, until the build ends."""
        tenant = tenant_of(context)
        record = self.visible(tenant, request.template_id)
        if request.after_sequence < 0:
            raise invalid_argument([("after_sequence", "zero or a sequence a stream returned")])
        sequence = request.after_sequence
        while True:
            changed = self._changed.setdefault(record.id, asyncio.Event())
            events = await asyncio.to_thread(self.records.events, record.id, sequence)
            for event in events:
                sequence = event.sequence
                yield requests_pb2.StreamTemplateBuildEventsResponse(event=_event(event))
            if events:
                continue
            current = await asyncio.to_thread(self.records.get, record.id)
            if not request.follow or current is None or current.finished or current.deleted:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), timeout=1.0)

    async def SnapshotEnvironment(
        self, request: requests_pb2.SnapshotEnvironmentRequest, context: Context
    ) -> requests_pb2.SnapshotEnvironmentResponse:
        """The environment's writable layer (and workspace) as a new, flattened template."""
        tenant = tenant_of(context)
        _check_request_id(request.request_id)
        environment_id = validation.environment_id(request.environment_id)
        if request.request_id:
            earlier = await asyncio.to_thread(
                self.records.by_request_id, tenant, request.request_id
            )
            if earlier is not None:
                return requests_pb2.SnapshotEnvironmentResponse(
                    template=self.message(earlier, tenant)
                )
        environment = self.manager.get_environment(tenant, environment_id)
        if not environment.running:
            raise ServiceError(
                grpc.StatusCode.FAILED_PRECONDITION,
                ErrorReason.ENVIRONMENT_NOT_RUNNING,
                f"environment {environment_id} is {environment.state.value}; only a RUNNING "
                "environment can be snapshotted",
            )
        digest = environment.spec.template
        if digest is None:
            raise ServiceError(
                grpc.StatusCode.FAILED_PRECONDITION,
                ErrorReason.INVALID_ARGUMENT,
                f"environment {environment_id} runs on the host's read-only root, which has "
                "no layer to snapshot; create it from a template",
            )
        used = await asyncio.to_thread(self.records.snapshot_bytes, tenant)
        self._check_quota(used, 0)
        parent = await self.cache.describe(digest)
        layout = self.manager.environment_layout(tenant, environment_id)
        upper = layout.overlay_dir / "upper"
        workspace = layout.files_dir if request.include_workspace else None
        size = await asyncio.to_thread(_layer_bytes, upper, workspace)
        self._check_quota(used, size)
        parent_record = await asyncio.to_thread(self.records.by_digest, tenant, digest)
        template_id = ids.new_id(ids.TEMPLATE, self.orchestrator_id)
        snapshot_digest = hashlib.sha256(f"snapshot:{digest}:{template_id}".encode()).hexdigest()
        record = await asyncio.to_thread(
            self._new_record,
            template_id,
            tenant,
            request.display_name,
            None,
            None,
            Source.SNAPSHOT,
            request.request_id,
            digest=snapshot_digest,
            source_environment_id=environment_id,
            parent_template_id=parent_record.id if parent_record else "",
        )

        def fill(work: Path) -> None:
            link_tree(parent.rootfs, work / "rootfs")
            apply_layer(upper, work / "rootfs")
            if workspace is not None:
                copy_workspace(workspace, work / "workspace")

        started = time.monotonic()
        spec_json = json.dumps({"snapshot_of": digest, "template": template_id})
        try:
            await self.cache.add_tree(snapshot_digest, fill, spec_json, parent.defaults)
        except Exception as error:
            await self._finish(record, state=State.FAILED, failure_message=str(error)[:4000])
            raise ServiceError(
                grpc.StatusCode.INTERNAL,
                ErrorReason.INTERNAL,
                f"could not take the snapshot: {error}",
            ) from error
        finished = await self._finish(
            record,
            state=State.READY,
            size_bytes=size,
            build_seconds=time.monotonic() - started,
        )
        return requests_pb2.SnapshotEnvironmentResponse(template=self.message(finished, tenant))

    def _check_quota(self, used: int, adding: int) -> None:
        if used + adding > self.snapshot_quota_bytes or (
            adding == 0 and used >= self.snapshot_quota_bytes
        ):
            raise ServiceError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                ErrorReason.QUOTA_EXCEEDED,
                f"the tenant's snapshots take {used} bytes; this one adds {adding} and the "
                f"quota is {self.snapshot_quota_bytes}; delete snapshots first",
                quota_violations=[
                    (
                        "templates/snapshot_bytes",
                        f"{used} + {adding} bytes of snapshots; at most "
                        f"{self.snapshot_quota_bytes}",
                    )
                ],
            )

    # --- environments of templates -----------------------------------------------------

    def create_environment(self, inner: RpcHandler) -> RpcHandler:
        """CreateEnvironment, resolving spec.template and applying its defaults."""

        async def create(
            request: requests_pb2.CreateEnvironmentRequest, context: Context
        ) -> requests_pb2.CreateEnvironmentResponse:
            name = request.spec.template
            if not name:
                response: requests_pb2.CreateEnvironmentResponse = await inner(request, context)
                return response
            tenant = tenant_of(context)
            record = self.visible(tenant, name, "spec.template")
            if record.state is not State.READY:
                raise ServiceError(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    ErrorReason.TEMPLATE_NOT_READY,
                    f"template {name} is {record.state.value}"
                    + (f": {record.failure_message}" if record.failure_message else ""),
                )
            template = await self.cache.describe(record.digest)
            merged = await asyncio.to_thread(_with_defaults, request, template.rootfs.parent,
                                             template.defaults)  # fmt: skip
            new = validation.new_environment(merged, self.manager.settings)
            spec = replace(new.spec, template=record.digest, template_id=record.id)
            environment = await self.manager.create_environment(tenant, replace(new, spec=spec))
            return requests_pb2.CreateEnvironmentResponse(
                environment=convert.environment(environment)
            )

        return create


def _with_defaults(
    request: requests_pb2.CreateEnvironmentRequest, directory: Path, defaults: TemplateDefaults
) -> requests_pb2.CreateEnvironmentRequest:
    """The request with the template's defaults under its own values, and a snapshot's
    workspace files before its own (blocking: reads them)."""
    merged = requests_pb2.CreateEnvironmentRequest()
    merged.CopyFrom(request)
    for key, value in defaults.env.items():
        if key not in merged.spec.env_vars:
            merged.spec.env_vars[key] = value
    limits = merged.spec.limits
    for name in _LIMITS:
        if not getattr(limits, name) and defaults.limits.get(name):
            setattr(limits, name, type(getattr(limits, name))(defaults.limits[name]))
    timeout = defaults.limits.get("exec_timeout_seconds")
    if timeout and not limits.HasField("exec_timeout"):
        limits.exec_timeout.CopyFrom(to_duration_pb(timeout))
    workspace = directory / "workspace"
    if workspace.is_dir():
        try:
            files = workspace_files(workspace, MAX_SNAPSHOT_WORKSPACE_BYTES)
        except ValueError as error:
            raise ServiceError(
                grpc.StatusCode.FAILED_PRECONDITION, ErrorReason.INVALID_ARGUMENT, str(error)
            ) from error
        own = {file.path for file in request.files}
        del merged.files[:]
        merged.files.extend(
            environment_pb2.FileContent(path=path, content=content, mode=mode)
            for path, content, mode in files
            if path not in own
        )
        merged.files.extend(request.files)
    return merged


def _layer_bytes(upper: Path, workspace: Path | None) -> int:
    size = tree_bytes(upper) if upper.is_dir() else 0
    if workspace is not None and workspace.is_dir():
        size += tree_bytes(workspace)
    return size


def _check_request_id(request_id: str) -> None:
    if len(request_id) > 128:
        raise invalid_argument([("request_id", "use a UUID (at most 128 characters)")])


def _event(event: BuildEvent) -> template_pb2.TemplateBuildEvent:
    message = template_pb2.TemplateBuildEvent(
        sequence=event.sequence, time=to_timestamp_pb(event.time), template_id=event.template_id
    )
    if event.state is not None:
        message.state_change.CopyFrom(
            template_pb2.TemplateStateChange(
                state=_STATES[event.state], failure_message=event.failure_message
            )
        )
    else:
        message.log = event.log or ""
    return message


def _write_new_file(path: Path, content: bytes) -> None:
    with path.open("xb") as file:
        file.write(content)


def _remove_leftover_archives(directory: Path) -> None:
    """Inline archives of builds a previous run did not finish (those builds are FAILED)."""
    for leftover in directory.iterdir():
        if leftover.is_file():
            leftover.unlink(missing_ok=True)
