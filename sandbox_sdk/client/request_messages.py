"""Turning the SDK's keyword arguments into request messages. Values of the wrong type or shape fail
here, before any call, with the same :class:`InvalidArgumentError` and field
paths the server would use.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import timedelta
from pathlib import PurePosixPath
from typing import Any, NoReturn

from google.protobuf import field_mask_pb2, struct_pb2

from sandbox_sdk.api.v1 import (
    common_pb2,
    environment_pb2,
    experiment_pb2,
    gateway_service_pb2,
    requests_pb2,
)
from sandbox_sdk.errors import FieldViolation, InvalidArgumentError
from sandbox_sdk.models.api_keys import SCOPE_NUMBERS, ApiKeyScope
from sandbox_sdk.models.environment import NETWORK_POLICY_NUMBERS, NetworkPolicy
from sandbox_sdk.models.experiment import STATE_NUMBERS, ExperimentState
from sandbox_sdk.models.scorers import Command, Contains, ExactMatch, JsonValid, Regex, Scorer
from sandbox_sdk.utils.units import DurationLike, Size, parse_duration, parse_size, to_duration_pb

FileSource = bytes | str
ScorerLike = Scorer | str | Mapping[str, Any]
InputLike = Mapping[str, str] | str
SandboxToolLike = bool | Mapping[str, Any]
_SANDBOX_TOOL_KEYS = ("max_turns", "command_timeout", "max_output_bytes")
_TYPED_PARAMETERS = ("temperature", "top_p", "max_tokens", "seed", "stop")
_SIMPLE_SCORERS: dict[str, Scorer] = {
    "exact_match": ExactMatch(),
    "contains": Contains(),
    "json_valid": JsonValid(),
}


def _invalid(field: str, description: str) -> NoReturn:
    raise InvalidArgumentError(
        f"invalid argument {field}", field_violations=[FieldViolation(field, description)]
    )


def new_request_id() -> str:
    """A fresh id that makes a retried create return the first result."""
    return str(uuid.uuid4())


def _duration(field: str, value: DurationLike) -> float:
    try:
        return parse_duration(value)
    except (ValueError, TypeError) as error:
        _invalid(field, str(error))


def _size(field: str, value: Size) -> int:
    try:
        return parse_size(value)
    except (ValueError, TypeError) as error:
        _invalid(field, str(error))


def _string_map(field: str, value: Mapping[str, Any] | None) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        _invalid(field, f"expected a mapping of strings, got {type(value).__name__}")
    return {str(key): str(item) for key, item in value.items()}


def network_policy(value: NetworkPolicy | str | bool | None) -> int:
    """The wire enum for ``network=``: ``"none"``/``False``, ``"egress"``/``True``, ``"host"``."""
    if value is None:
        return 0
    if isinstance(value, bool):
        return NETWORK_POLICY_NUMBERS[NetworkPolicy.EGRESS if value else NetworkPolicy.NONE]
    try:
        return NETWORK_POLICY_NUMBERS[NetworkPolicy(str(value).upper())]
    except ValueError:
        _invalid("spec.network_policy", f"use 'none', 'egress' or 'host', not {value!r}")


def file_contents(files: Mapping[str, FileSource] | None) -> list[environment_pb2.FileContent]:
    """``{"path": bytes or text}`` as ``FileContent`` messages."""
    if not files:
        return []
    result = []
    for index, (path, content) in enumerate(files.items()):
        data = content.encode() if isinstance(content, str) else content
        if not isinstance(data, bytes):
            _invalid(f"files[{index}].content", "give bytes or text")
        result.append(environment_pb2.FileContent(path=_workspace_path(path, index), content=data))
    return result


def _workspace_path(path: str, index: int) -> str:
    if not path or PurePosixPath(path).is_absolute() or ".." in PurePosixPath(path).parts:
        _invalid(f"files[{index}].path", f"use a path relative to the workspace, not {path!r}")
    return path


def resource_limits(
    field: str,
    *,
    cpu: float | None = None,
    memory: Size | None = None,
    disk: Size | None = None,
    pids: int | None = None,
    exec_timeout: DurationLike | None = None,
) -> common_pb2.ResourceLimits:
    """Limits from the SDK's units; those left out are zero (the server's defaults)."""
    limits = common_pb2.ResourceLimits(
        cpu_cores=float(cpu) if cpu is not None else 0.0,
        memory_bytes=_size(f"{field}.memory_bytes", memory) if memory is not None else 0,
        disk_bytes=_size(f"{field}.disk_bytes", disk) if disk is not None else 0,
        max_pids=int(pids) if pids is not None else 0,
    )
    if exec_timeout is not None:
        seconds = _duration(f"{field}.exec_timeout", exec_timeout)
        limits.exec_timeout.CopyFrom(to_duration_pb(seconds))
    return limits


def create_environment_request(
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
    files: Mapping[str, FileSource] | None = None,
    network: NetworkPolicy | str | bool | None = None,
    egress_allow: Sequence[str] | None = None,
    egress_deny: Sequence[str] | None = None,
    queue: bool = False,
    template: str = "",
) -> requests_pb2.CreateEnvironmentRequest:
    """The ``CreateEnvironment`` request, with a new ``request_id``."""
    limits = resource_limits(
        "spec.limits", cpu=cpu, memory=memory, disk=disk, pids=pids, exec_timeout=exec_timeout
    )
    spec = environment_pb2.EnvironmentSpec(
        template=template,
        limits=limits,
        env_vars=_string_map("spec.env_vars", env),
        labels=_string_map("spec.labels", labels),
        network_policy=network_policy(network),  # type: ignore[arg-type]
        egress_allow_cidrs=[str(block) for block in egress_allow or ()],
        egress_deny_cidrs=[str(block) for block in egress_deny or ()],
    )
    if ttl is not None:
        spec.ttl.CopyFrom(to_duration_pb(_duration("spec.ttl", ttl)))
    if idle_timeout is not None:
        spec.idle_timeout.CopyFrom(to_duration_pb(_duration("spec.idle_timeout", idle_timeout)))
    return requests_pb2.CreateEnvironmentRequest(
        spec=spec,
        files=file_contents(files),
        request_id=new_request_id(),
        queue_when_full=queue,
    )


def update_environment_request(
    environment_id: str,
    *,
    labels: Mapping[str, str] | None = None,
    ttl: DurationLike | None = None,
    idle_timeout: DurationLike | None = None,
) -> requests_pb2.UpdateEnvironmentRequest:
    """The ``UpdateEnvironment`` request changing only the fields given."""
    spec = environment_pb2.EnvironmentSpec()
    paths = []
    if labels is not None:
        spec.labels.update(_string_map("spec.labels", labels))
        paths.append("labels")
    if ttl is not None:
        spec.ttl.CopyFrom(to_duration_pb(_duration("spec.ttl", ttl)))
        paths.append("ttl")
    if idle_timeout is not None:
        spec.idle_timeout.CopyFrom(to_duration_pb(_duration("spec.idle_timeout", idle_timeout)))
        paths.append("idle_timeout")
    if not paths:
        _invalid("update_mask", "give at least one of labels=, ttl= or idle_timeout=")
    return requests_pb2.UpdateEnvironmentRequest(
        environment_id=environment_id,
        spec=spec,
        update_mask=field_mask_pb2.FieldMask(paths=paths),
    )


def command_argv(cmd: str | Sequence[str]) -> list[str]:
    """A list as is; a string runs through ``/bin/sh -c``."""
    if isinstance(cmd, str):
        if not cmd.strip():
            _invalid("argv", "the command is empty; give a list like ['echo', 'hi'] or a string")
        return ["/bin/sh", "-c", cmd]
    argv = [str(part) for part in cmd]
    if not argv:
        _invalid("argv", "the command is empty; give a list like ['echo', 'hi'] or a string")
    return argv


def exec_request(
    environment_id: str,
    cmd: str | Sequence[str],
    *,
    cwd: str | None = None,
    env: Mapping[str, str] | None = None,
    stdin: bytes | str | None = None,
    timeout: DurationLike | None = None,
) -> requests_pb2.ExecCommandRequest:
    """The ``ExecCommand`` request."""
    request = requests_pb2.ExecCommandRequest(
        environment_id=environment_id,
        argv=command_argv(cmd),
        cwd=cwd or "",
        env_vars=_string_map("env_vars", env),
        stdin=stdin.encode() if isinstance(stdin, str) else (stdin or b""),
    )
    if timeout is not None:
        request.timeout.CopyFrom(to_duration_pb(_duration("timeout", timeout)))
    return request


def generation_parameters(
    parameters: Mapping[str, Any] | None,
) -> experiment_pb2.GenerationParameters:
    """``temperature``, ``top_p``, ``max_tokens``, ``seed`` and ``stop`` as typed fields;
    any other key goes to ``extra`` for the provider to accept or reject."""
    message = experiment_pb2.GenerationParameters()
    if not parameters:
        return message
    for key, value in parameters.items():
        field = f"spec.parameters.{key}"
        if value is None:
            continue
        if key in ("temperature", "top_p"):
            setattr(message, key, _number(field, value))
        elif key in ("max_tokens", "seed"):
            setattr(message, key, _integer(field, value))
        elif key == "stop":
            message.stop.extend([value] if isinstance(value, str) else [str(v) for v in value])
        else:
            message.extra[key].CopyFrom(_struct_value(field, value))
    return message


def _number(field: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        _invalid(field, f"expected a number, got {value!r}")
    return float(value)


def _integer(field: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        _invalid(field, f"expected an integer, got {value!r}")
    return value


def _struct_value(field: str, value: Any) -> struct_pb2.Value:
    holder = struct_pb2.Struct()
    try:
        holder.update({"value": value})
    except (ValueError, TypeError):
        _invalid(
            field, f"expected a JSON-like value (number, string, bool, list, dict), got {value!r}"
        )
    return holder.fields["value"]


def scorer_message(value: ScorerLike, index: int) -> experiment_pb2.Scorer:
    """A scorer from a dataclass, a name, ``{"regex": ...}`` or ``{"command": [...]}``."""
    field = f"spec.scorers[{index}]"
    if isinstance(value, ExactMatch | Contains | Regex | JsonValid | Command):
        return value.to_proto()
    if isinstance(value, str):
        simple = _SIMPLE_SCORERS.get(value)
        if simple is None:
            _invalid(
                field,
                f"unknown scorer {value!r}; use one of {sorted(_SIMPLE_SCORERS)}, "
                "{'regex': ...} or {'command': [...]}",
            )
        return simple.to_proto()
    if isinstance(value, Mapping):
        return _scorer_from_mapping(value, field).to_proto()
    _invalid(field, f"expected a scorer name, a mapping or a scorer dataclass, got {value!r}")


def _scorer_from_mapping(value: Mapping[str, Any], field: str) -> Scorer:
    name = str(value.get("name", ""))
    kinds = [key for key in value if key not in ("name", "timeout")]
    if len(kinds) != 1:
        _invalid(
            field,
            "give exactly one scorer kind, e.g. {'regex': '^yes'} or "
            "{'command': ['python3', 'score.py']}",
        )
    kind, options = kinds[0], value[kinds[0]]
    if kind == "regex" and isinstance(options, str):
        return Regex(options, name=name)
    if kind == "command" and isinstance(options, Sequence) and not isinstance(options, str):
        return Command(tuple(str(arg) for arg in options), float(value.get("timeout", 0)), name)
    if kind == "command" and isinstance(options, Mapping):
        argv = tuple(str(arg) for arg in options.get("argv", ()))
        return Command(argv, _duration(f"{field}.command.timeout", options.get("timeout", 0)), name)
    if kind in ("exact_match", "contains") and isinstance(options, Mapping | bool):
        ignore_case = bool(options.get("ignore_case")) if isinstance(options, Mapping) else False
        return (
            ExactMatch(ignore_case, name) if kind == "exact_match" else Contains(ignore_case, name)
        )
    if kind == "json_valid":
        return JsonValid(name)
    _invalid(field, f"cannot read scorer {dict(value)!r}; see sandbox_sdk.models.scorers")


def experiment_inputs(
    *,
    prompt: str | None,
    prompts: Iterable[str] | None,
    inputs: Iterable[InputLike] | None,
    dataset_path: str | None,
) -> tuple[list[experiment_pb2.ExperimentInput], str]:
    """The inputs from exactly one of ``prompt``, ``prompts``, ``inputs``, ``dataset_path``."""
    given = [
        name
        for name, value in (
            ("prompt", prompt),
            ("prompts", prompts),
            ("inputs", inputs),
            ("dataset_path", dataset_path),
        )
        if value is not None
    ]
    if len(given) != 1:
        _invalid(
            "spec.inputs",
            "give exactly one of prompt=, prompts=, inputs= or dataset_path="
            + (f" (got {', '.join(given)})" if given else ""),
        )
    if prompt is not None:
        return [experiment_pb2.ExperimentInput(prompt=prompt)], ""
    if prompts is not None:
        return [experiment_pb2.ExperimentInput(prompt=str(p)) for p in prompts], ""
    if inputs is not None:
        return [_input(item, index) for index, item in enumerate(inputs)], ""
    return [], str(dataset_path)


def _input(item: InputLike, index: int) -> experiment_pb2.ExperimentInput:
    if isinstance(item, str):
        return experiment_pb2.ExperimentInput(prompt=item)
    if isinstance(item, Mapping) and "prompt" in item:
        unknown = set(item) - {"prompt", "expected"}
        if unknown:
            _invalid(
                f"spec.inputs[{index}]", f"unknown keys {sorted(unknown)}; use prompt, expected"
            )
        return experiment_pb2.ExperimentInput(
            prompt=str(item["prompt"]), expected=str(item.get("expected", ""))
        )
    _invalid(f"spec.inputs[{index}]", "give {'prompt': ..., 'expected': ...} or a string")


def sandbox_tool_message(value: SandboxToolLike) -> experiment_pb2.SandboxTool:
    """The SandboxTool of ``sandbox_tool=``: ``True`` for the server's defaults, or a mapping
    of ``max_turns``, ``command_timeout`` (seconds or "10s") and ``max_output_bytes``."""
    if isinstance(value, bool):
        return experiment_pb2.SandboxTool(enabled=value)
    if not isinstance(value, Mapping):
        _invalid("spec.sandbox_tool", f"expected True or a mapping, got {value!r}")
    unknown = sorted(set(value) - set(_SANDBOX_TOOL_KEYS))
    if unknown:
        _invalid(f"spec.sandbox_tool.{unknown[0]}", f"unknown; use {', '.join(_SANDBOX_TOOL_KEYS)}")
    message = experiment_pb2.SandboxTool(enabled=True)
    if "max_turns" in value:
        message.max_turns = _integer("spec.sandbox_tool.max_turns", value["max_turns"])
    if "max_output_bytes" in value:
        field = "spec.sandbox_tool.max_output_bytes"
        message.max_output_bytes = _integer(field, value["max_output_bytes"])
    if "command_timeout" in value:
        seconds = _duration("spec.sandbox_tool.command_timeout", value["command_timeout"])
        message.command_timeout.CopyFrom(to_duration_pb(seconds))
    return message


def create_experiment_request(
    environment_id: str,
    *,
    model: str,
    prompt: str | None = None,
    prompts: Iterable[str] | None = None,
    inputs: Iterable[InputLike] | None = None,
    dataset_path: str | None = None,
    parameters: Mapping[str, Any] | None = None,
    scorers: Iterable[ScorerLike] | None = None,
    repeats: int | None = None,
    system_prompt: str | None = None,
    timeout: DurationLike | None = None,
    priority: int | None = None,
    labels: Mapping[str, str] | None = None,
    fail_on_scorer_error: bool = False,
    sandbox_tool: SandboxToolLike | None = None,
) -> requests_pb2.CreateExperimentRequest:
    """The ``CreateExperiment`` request, with a new ``request_id``."""
    if not model:
        _invalid("spec.model", "name a model; `sandbox-sdk models` lists them")
    experiment_inputs_, dataset = experiment_inputs(
        prompt=prompt, prompts=prompts, inputs=inputs, dataset_path=dataset_path
    )
    spec = experiment_pb2.ExperimentSpec(
        model=model,
        inputs=experiment_inputs_,
        dataset_path=dataset,
        system_prompt=system_prompt or "",
        parameters=generation_parameters(parameters),
        scorers=[scorer_message(s, i) for i, s in enumerate(scorers or ())],
        repeats=repeats or 0,
        priority=priority or 0,
        labels=_string_map("spec.labels", labels),
        fail_on_scorer_error=fail_on_scorer_error,
    )
    if timeout is not None:
        spec.timeout.CopyFrom(to_duration_pb(_duration("spec.timeout", timeout)))
    if sandbox_tool is not None and sandbox_tool is not False:
        spec.sandbox_tool.CopyFrom(sandbox_tool_message(sandbox_tool))
    return requests_pb2.CreateExperimentRequest(
        environment_id=environment_id, spec=spec, request_id=new_request_id()
    )


def list_experiments_request(
    *,
    labels: Mapping[str, str] | None,
    environment_id: str,
    states: Iterable[ExperimentState | str],
    page_size: int,
) -> requests_pb2.ListExperimentsRequest:
    """The first page's request of an experiment listing."""
    return requests_pb2.ListExperimentsRequest(
        page_size=page_size,
        label_selector=_string_map("label_selector", labels),
        environment_id=environment_id,
        states=[STATE_NUMBERS[ExperimentState(str(state).upper())] for state in states],  # type: ignore[misc]
    )


def create_api_key_request(
    *,
    tenant: str,
    scopes: Iterable[ApiKeyScope | str],
    display_name: str = "",
    ttl: DurationLike | None = None,
) -> gateway_service_pb2.CreateApiKeyRequest:
    """The ``CreateApiKey`` request, with a new ``request_id``."""
    numbers = []
    for index, scope in enumerate(scopes):
        try:
            numbers.append(SCOPE_NUMBERS[ApiKeyScope(str(scope).upper())])
        except ValueError:
            _invalid(
                f"scopes[{index}]",
                f"unknown scope {scope!r}; use read, write, admin or operator",
            )
    request = gateway_service_pb2.CreateApiKeyRequest(
        tenant=tenant,
        scopes=numbers,  # type: ignore[arg-type]
        display_name=display_name,
        request_id=new_request_id(),
    )
    if ttl is not None:
        request.ttl.CopyFrom(to_duration_pb(_duration("ttl", ttl)))
    return request


def seconds(value: DurationLike | None) -> float | None:
    """Seconds for a user-given timeout, or ``None``."""
    if value is None:
        return None
    if isinstance(value, timedelta):
        return value.total_seconds()
    return _duration("timeout", value)
