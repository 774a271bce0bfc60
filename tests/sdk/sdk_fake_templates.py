"""The fake gateway with templates, snapshots and the complete file calls (#14).

Templates build at once into scripted events (two log lines, then READY, or
FAILED when the spec's first command is ``["false"]``). Workspaces are the
fake's dict of files plus a set of directories. ``hostile_download`` makes
DownloadDirectory send a tar crafted to escape the client's directory.
"""

from __future__ import annotations

import io
import tarfile
import threading
from typing import Any

import grpc
from google.protobuf import timestamp_pb2
from sdk_fake_gateway import FakeGateway, ServiceError

from sandbox_sdk.api.v1 import environment_pb2, requests_pb2, template_pb2
from sandbox_sdk.errors import ErrorReason

READY = template_pb2.TEMPLATE_STATE_READY
FAILED = template_pb2.TEMPLATE_STATE_FAILED
DOWNLOAD_CHUNK = 700  # small, so a download spans several messages


def _now() -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.GetCurrentTime()
    return stamp


def hostile_tar() -> bytes:
    """A tar whose members try to leave the directory they are extracted into."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name in ("fine.txt", "../escaped.txt"):
            member = tarfile.TarInfo(name)
            member.size = 2
            archive.addfile(member, io.BytesIO(b"hi"))
    return buffer.getvalue()


class FakeTemplateGateway(FakeGateway):
    """FakeGateway plus the template, snapshot and file RPCs."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.templates: dict[str, template_pb2.Template] = {}
        self.template_events: dict[str, list[template_pb2.TemplateBuildEvent]] = {}
        self.directories: dict[str, set[str]] = {}
        self.uploaded: list[bytes] = []
        self.hostile_download = False
        self.break_template_stream_after: int | None = None
        self._template_lock = threading.Lock()

    # -- templates -------------------------------------------------------------------------

    def _template(self, template_id: str, context: grpc.ServicerContext) -> Any:
        template = self.templates.get(template_id)
        if template is None:
            self._abort(
                context,
                ServiceError(
                    grpc.StatusCode.NOT_FOUND,
                    ErrorReason.TEMPLATE_NOT_FOUND,
                    f"template {template_id} not found; `sandbox-sdk template ls` lists yours",
                ),
            )
        return template

    def _new_template(self, **fields: Any) -> template_pb2.Template:
        template = template_pb2.Template(
            id=self._next_id("tpl"),
            state=template_pb2.TEMPLATE_STATE_BUILDING,
            orchestrator_id="o1",
            create_time=_now(),
            **fields,
        )
        self.templates[template.id] = template
        self.template_events[template.id] = []
        return template

    def _emit(self, template: template_pb2.Template, **payload: Any) -> None:
        events = self.template_events[template.id]
        events.append(
            template_pb2.TemplateBuildEvent(
                sequence=len(events) + 1, time=_now(), template_id=template.id, **payload
            )
        )

    def _finish_build(self, template: template_pb2.Template, failure: str = "") -> None:
        self._emit(template, log="step 1/2: base")
        self._emit(template, log="step 2/2: commands")
        template.state = FAILED if failure else READY
        template.failure_message = failure
        self._emit(
            template,
            state_change=template_pb2.TemplateStateChange(
                state=template.state, failure_message=failure
            ),
        )

    def CreateTemplate(self, request, context):
        self._enter("CreateTemplate", request, context)
        if request.request_id in self.by_request_id:
            return self.by_request_id[request.request_id]
        spec = template_pb2.TemplateSpec()
        spec.CopyFrom(request.spec)
        if spec.WhichOneof("base") == "oci_archive":
            spec.oci_archive.archive = b""  # not echoed, as the real service does
        template = self._new_template(
            display_name=request.display_name,
            spec=spec,
            source=template_pb2.TEMPLATE_SOURCE_SPEC,
            digest="d" * 64,
        )
        failing = spec.commands and list(spec.commands[0].argv) == ["false"]
        self._finish_build(template, "command ['false'] exited 1" if failing else "")
        response = requests_pb2.CreateTemplateResponse(template=template)
        response.template.state = template_pb2.TEMPLATE_STATE_BUILDING  # as first reported
        self.by_request_id[request.request_id] = response
        return response

    def GetTemplate(self, request, context):
        self._enter("GetTemplate", request, context)
        return requests_pb2.GetTemplateResponse(
            template=self._template(request.template_id, context)
        )

    def ListTemplates(self, request, context):
        self._enter("ListTemplates", request, context)
        items = [t for t in self.templates.values() if not (request.hide_public and t.public)]
        start = int(request.page_token or 0)
        size = request.page_size or 50
        token = str(start + size) if start + size < len(items) else ""
        return requests_pb2.ListTemplatesResponse(
            templates=items[start : start + size], next_page_token=token
        )

    def DeleteTemplate(self, request, context):
        self._enter("DeleteTemplate", request, context)
        users = [
            env.id
            for env in self.environments.values()
            if env.spec.template == request.template_id
            and env.state != environment_pb2.ENVIRONMENT_STATE_TERMINATED
        ]
        if users:
            self._abort(
                context,
                ServiceError(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    ErrorReason.TEMPLATE_IN_USE,
                    f"template {request.template_id} is used by {', '.join(users)}; delete "
                    "those environments first",
                ),
            )
        self.templates.pop(request.template_id, None)
        return requests_pb2.DeleteTemplateResponse()

    def StreamTemplateBuildEvents(self, request, context):
        self._enter("StreamTemplateBuildEvents", request, context)
        self._template(request.template_id, context)
        pending = self.template_events[request.template_id][request.after_sequence :]
        for sent, event in enumerate(pending):
            limit = self.break_template_stream_after
            if limit is not None and sent >= limit:
                self.break_template_stream_after = None
                context.abort(grpc.StatusCode.UNAVAILABLE, "connection reset (injected)")
            yield requests_pb2.StreamTemplateBuildEventsResponse(event=event)

    def SnapshotEnvironment(self, request, context):
        self._enter("SnapshotEnvironment", request, context)
        if request.request_id in self.by_request_id:
            return self.by_request_id[request.request_id]
        environment = self._environment(request.environment_id, context)
        template = self._new_template(
            display_name=request.display_name,
            source=template_pb2.TEMPLATE_SOURCE_SNAPSHOT,
            source_environment_id=environment.id,
            parent_template_id=environment.spec.template,
        )
        self._finish_build(template)
        response = requests_pb2.SnapshotEnvironmentResponse(template=template)
        self.by_request_id[request.request_id] = response
        return response

    # -- files -----------------------------------------------------------------------------

    def _dirs(self, environment_id: str) -> set[str]:
        return self.directories.setdefault(environment_id, set())

    def _is_dir(self, environment_id: str, path: str) -> bool:
        files = self.files[environment_id]
        return path in self._dirs(environment_id) or any(
            name.startswith(path + "/") for name in files
        )

    def _info(self, environment_id: str, path: str) -> environment_pb2.FileInfo:
        if self._is_dir(environment_id, path):
            return environment_pb2.FileInfo(path=path, is_dir=True, mode=0o755)
        content = self.files[environment_id][path]
        return environment_pb2.FileInfo(path=path, size_bytes=len(content), mode=0o644)

    def StatFile(self, request, context):
        self._enter("StatFile", request, context)
        self._environment(request.environment_id, context)
        env, path = request.environment_id, request.path
        if path not in self.files[env] and not self._is_dir(env, path):
            return requests_pb2.StatFileResponse(exists=False)
        return requests_pb2.StatFileResponse(exists=True, file=self._info(env, path))

    def MakeDirectory(self, request, context):
        self._enter("MakeDirectory", request, context)
        self._environment(request.environment_id, context)
        self._dirs(request.environment_id).add(request.path)
        return requests_pb2.MakeDirectoryResponse(
            file=self._info(request.environment_id, request.path)
        )

    def RemoveFile(self, request, context):
        self._enter("RemoveFile", request, context)
        self._environment(request.environment_id, context)
        env, path = request.environment_id, request.path
        files = self.files[env]
        if self._is_dir(env, path):
            inside = [name for name in files if name.startswith(path + "/")]
            if inside and not request.recursive:
                self._abort(
                    context,
                    ServiceError(
                        grpc.StatusCode.FAILED_PRECONDITION,
                        ErrorReason.DIRECTORY_NOT_EMPTY,
                        f"{path} is not empty; remove it with recursive",
                    ),
                )
            for name in inside:
                del files[name]
            self._dirs(env).discard(path)
            return requests_pb2.RemoveFileResponse(removed=True)
        return requests_pb2.RemoveFileResponse(removed=files.pop(path, None) is not None)

    def RenameFile(self, request, context):
        self._enter("RenameFile", request, context)
        self._environment(request.environment_id, context)
        files = self.files[request.environment_id]
        source, destination = request.source_path, request.destination_path
        if destination in files and not request.overwrite:
            self._abort(
                context,
                ServiceError(
                    grpc.StatusCode.ALREADY_EXISTS,
                    ErrorReason.FILE_EXISTS,
                    f"{destination} exists; pass overwrite to replace it",
                ),
            )
        if source not in files:
            self._abort(
                context,
                ServiceError(grpc.StatusCode.NOT_FOUND, ErrorReason.FILE_NOT_FOUND, "no such file"),
            )
        files[destination] = files.pop(source)
        return requests_pb2.RenameFileResponse(file=self._info(request.environment_id, destination))

    def UploadDirectory(self, request_iterator, context):
        first = next(request_iterator)
        self._enter("UploadDirectory", first, context)
        self._environment(first.environment_id, context)
        data = first.chunk + b"".join(message.chunk for message in request_iterator)
        self.uploaded.append(data)
        written = 0
        size = 0
        prefix = f"{first.path}/" if first.path else ""
        with tarfile.open(fileobj=io.BytesIO(data)) as archive:
            for member in archive.getmembers():
                name = prefix + member.name
                if member.isdir():
                    self._dirs(first.environment_id).add(name)
                elif member.isfile():
                    extracted = archive.extractfile(member)
                    assert extracted is not None
                    self.files[first.environment_id][name] = extracted.read()
                    written += 1
                    size += member.size
        return requests_pb2.UploadDirectoryResponse(files_written=written, bytes_written=size)

    def DownloadDirectory(self, request, context):
        self._enter("DownloadDirectory", request, context)
        self._environment(request.environment_id, context)
        data = hostile_tar() if self.hostile_download else self._tar_of(request)
        for start in range(0, len(data), DOWNLOAD_CHUNK):
            yield requests_pb2.DownloadDirectoryResponse(chunk=data[start : start + DOWNLOAD_CHUNK])

    def _tar_of(self, request: Any) -> bytes:
        prefix = f"{request.path}/" if request.path else ""
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
            for name, content in sorted(self.files[request.environment_id].items()):
                if name.startswith(prefix):
                    member = tarfile.TarInfo(name.removeprefix(prefix))
                    member.size = len(content)
                    archive.addfile(member, io.BytesIO(content))
        return buffer.getvalue()
