"""Validation of CreateExperiment requests into an internal ExperimentSpec.

Every bad field becomes a field violation naming its path (for example
``spec.parameters.temperature`` or ``spec.parameters.extra.foo``) and what
to do instead; all of them are reported together as one INVALID_ARGUMENT.
An unknown model is NOT_FOUND and lists the models served.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import struct_pb2

from sandbox_sdk.api.v1 import experiment_pb2, requests_pb2
from sandbox_sdk.errors import ErrorReason
from sandbox_sdk.server import ids
from sandbox_sdk.server.clipping import echo
from sandbox_sdk.server.field_violations import FieldViolations
from sandbox_sdk.server.orchestrator.experiments import limits
from sandbox_sdk.server.orchestrator.experiments.patterns import PatternError, compile_pattern
from sandbox_sdk.server.orchestrator.experiments.providers.base import ExtraParameter, ModelProvider
from sandbox_sdk.server.orchestrator.experiments.providers.registry import (
    ModelRegistry,
    ServedModel,
)
from sandbox_sdk.server.orchestrator.experiments.settings import SchedulerSettings
from sandbox_sdk.server.orchestrator.experiments.spec import (
    CommandCheck,
    Contains,
    ExactMatch,
    ExperimentSpec,
    ExtraValue,
    InputSpec,
    JsonValid,
    Parameters,
    RegexMatch,
    SandboxToolSpec,
    ScorerCheck,
    ScorerSpec,
)
from sandbox_sdk.server.status import ServiceError, invalid_argument

_LABEL_KEY = re.compile(r"^[a-z0-9]([a-z0-9_.-]{0,62})$")
_SCORER_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


@dataclass(frozen=True)
class ValidatedRequest:
    """A valid CreateExperiment request, in internal form."""

    environment_id: str
    spec: ExperimentSpec
    model: ServedModel
    request_id: str


def validate_create(
    request: requests_pb2.CreateExperimentRequest,
    registry: ModelRegistry,
    scheduler: SchedulerSettings,
) -> ValidatedRequest:
    """The request in internal form; ServiceError INVALID_ARGUMENT, NOT_FOUND (model) or
    FAILED_PRECONDITION (model not installed)."""
    violations = FieldViolations()
    _check_environment_id(request.environment_id, violations)
    if len(request.request_id) > limits.MAX_REQUEST_ID_CHARS:
        violations.add("request_id", f"use at most {limits.MAX_REQUEST_ID_CHARS} characters")
    if not request.HasField("spec"):
        violations.add("spec", "set the experiment spec: model, inputs and parameters")
        raise invalid_argument(violations.items)
    proto = request.spec
    if not proto.model:
        violations.add("spec.model", "name a model; ListModels lists those served")
        raise invalid_argument(violations.items)
    model = registry.resolve(proto.model)
    spec = _spec(proto, model, scheduler, violations)
    violations.raise_if_any()
    reason = model.provider.unavailable_reason()
    if reason is not None:
        raise ServiceError(grpc.StatusCode.FAILED_PRECONDITION, ErrorReason.MODEL_ERROR, reason)
    return ValidatedRequest(request.environment_id, spec, model, request.request_id)


def _check_environment_id(environment_id: str, violations: FieldViolations) -> None:
    if not environment_id:
        violations.add("environment_id", "set the id of a RUNNING environment")
    elif not ids.is_valid(environment_id, ids.ENVIRONMENT):
        violations.add(
            "environment_id", "is not an environment id; it looks like env-<orchestrator>-<16 hex>"
        )


def _spec(
    proto: experiment_pb2.ExperimentSpec,
    model: ServedModel,
    scheduler: SchedulerSettings,
    violations: FieldViolations,
) -> ExperimentSpec:
    repeats = _repeats(proto, violations)
    inputs = _inputs(proto, repeats, violations)
    if len(proto.system_prompt) > limits.MAX_PROMPT_CHARS:
        violations.add("spec.system_prompt", f"use at most {limits.MAX_PROMPT_CHARS} characters")
    parameters = _parameters(proto.parameters, model, repeats, violations)
    scorers = _scorers(proto.scorers, violations)
    timeout = _timeout(proto, scheduler, violations)
    sandbox_tool = _sandbox_tool(proto, violations)
    _check_labels(dict(proto.labels), violations)
    if violations.items:
        return ExperimentSpec(model=proto.model)
    return ExperimentSpec(
        model=proto.model,
        inputs=tuple(inputs),
        dataset_path=proto.dataset_path,
        system_prompt=proto.system_prompt,
        parameters=parameters,
        scorers=tuple(scorers),
        repeats=repeats,
        timeout_seconds=timeout,
        priority=proto.priority,
        labels=dict(proto.labels),
        fail_on_scorer_error=proto.fail_on_scorer_error,
        sandbox_tool=sandbox_tool,
    )


def _repeats(proto: experiment_pb2.ExperimentSpec, violations: FieldViolations) -> int:
    if proto.repeats < 0 or proto.repeats > limits.MAX_REPEATS:
        violations.add("spec.repeats", f"use 1 to {limits.MAX_REPEATS}, or 0 for 1")
        return 1
    return proto.repeats or 1


def _inputs(
    proto: experiment_pb2.ExperimentSpec, repeats: int, violations: FieldViolations
) -> list[InputSpec]:
    if proto.inputs and proto.dataset_path:
        violations.add("spec.dataset_path", "set either inputs or dataset_path, not both")
    elif not proto.inputs and not proto.dataset_path:
        violations.add("spec.inputs", "give at least one input, or a dataset_path")
    if proto.dataset_path:
        _check_dataset_path(proto.dataset_path, violations)
    if len(proto.inputs) > limits.MAX_INLINE_INPUTS:
        violations.add(
            "spec.inputs",
            f"has {len(proto.inputs)} inputs; a request carries at most"
            f" {limits.MAX_INLINE_INPUTS}: write the dataset as a JSONL file in the workspace"
            f" and pass its path as spec.dataset_path (up to {limits.MAX_INPUTS} inputs in a"
            " file ReadFile can return), or split it into several experiments",
        )
        return []
    if len(proto.inputs) * repeats > limits.MAX_TOTAL_SAMPLES:
        violations.add(
            "spec.repeats",
            f"inputs times repeats must be at most {limits.MAX_TOTAL_SAMPLES}",
        )
    inline_chars = len(proto.system_prompt) + sum(
        len(item.prompt) + len(item.expected) for item in proto.inputs
    )
    if inline_chars > limits.MAX_INLINE_CHARS:
        violations.add(
            "spec.inputs",
            f"hold {inline_chars} characters; a request carries at most"
            f" {limits.MAX_INLINE_CHARS}: write the dataset as a JSONL file in the workspace"
            " and pass its path as spec.dataset_path (a file ReadFile can return), or split"
            " it into several experiments",
        )
        return []
    inputs = []
    for index, item in enumerate(proto.inputs):
        if not item.prompt:
            violations.add(f"spec.inputs[{index}].prompt", "set a non-empty prompt")
        elif len(item.prompt) > limits.MAX_PROMPT_CHARS:
            violations.add(
                f"spec.inputs[{index}].prompt", f"use at most {limits.MAX_PROMPT_CHARS} characters"
            )
        inputs.append(InputSpec(prompt=item.prompt, expected=item.expected))
    return inputs


def _check_dataset_path(path: str, violations: FieldViolations) -> None:
    parts = path.split("/")
    if path.startswith("/") or ".." in parts or len(path) > limits.MAX_PATH_CHARS:
        violations.add(
            "spec.dataset_path",
            "give a path relative to the workspace root, without '..', for example data/eval.jsonl",
        )


def _parameters(
    proto: experiment_pb2.GenerationParameters,
    model: ServedModel,
    repeats: int,
    violations: FieldViolations,
) -> Parameters:
    path = "spec.parameters"
    temperature = top_p = None
    max_tokens = seed = None
    if proto.HasField("temperature"):
        temperature = proto.temperature
        if not 0.0 <= temperature <= 2.0:
            violations.add(f"{path}.temperature", "use a value from 0 to 2 (0 is greedy)")
    if proto.HasField("top_p"):
        top_p = proto.top_p
        if not 0.0 <= top_p <= 1.0:
            violations.add(f"{path}.top_p", "use a value from 0 to 1")
    if proto.HasField("max_tokens"):
        max_tokens = proto.max_tokens
        context = model.config.context_length
        if not 0 < max_tokens < context:
            violations.add(
                f"{path}.max_tokens",
                f"use a value from 1 to {context - 1} (model {model.config.name} has a "
                f"{context}-token context)",
            )
    if proto.HasField("seed"):
        seed = proto.seed
        largest = model.provider.max_seed - (repeats - 1)
        if not 0 <= seed <= largest:
            violations.add(
                f"{path}.seed",
                f"use a value from 0 to {largest} (repeats use seed, seed+1, ...)",
            )
    _check_stop(list(proto.stop), violations)
    extra = _extra(dict(proto.extra), model.provider, model.config.provider, violations)
    return Parameters(
        temperature=temperature,
        top_p=top_p,
        max_tokens=max_tokens,
        seed=seed,
        stop=tuple(proto.stop),
        extra=extra,
    )


def _check_stop(stop: list[str], violations: FieldViolations) -> None:
    if len(stop) > limits.MAX_STOP_SEQUENCES:
        violations.add(
            "spec.parameters.stop", f"use at most {limits.MAX_STOP_SEQUENCES} stop sequences"
        )
    for index, text in enumerate(stop):
        if not text or len(text) > limits.MAX_STOP_CHARS:
            violations.add(
                f"spec.parameters.stop[{index}]",
                f"use 1 to {limits.MAX_STOP_CHARS} characters",
            )


def _extra(
    values: dict[str, struct_pb2.Value],
    provider: ModelProvider,
    provider_kind: str,
    violations: FieldViolations,
) -> dict[str, ExtraValue]:
    known = provider.extra_parameters
    accepted: dict[str, ExtraValue] = {}
    for key, value in sorted(values.items()):
        path = f"spec.parameters.extra.{key}"
        parameter = known.get(key)
        if parameter is None:
            names = ", ".join(sorted(known)) or "none"
            violations.add(
                path, f"the {provider_kind} provider does not know {key!r}; it accepts: {names}"
            )
            continue
        converted = _extra_value(value, parameter)
        if converted is None:
            violations.add(path, f"use {parameter.describe()}")
        else:
            accepted[key] = converted
    return accepted


def _extra_value(value: struct_pb2.Value, parameter: ExtraParameter) -> ExtraValue | None:
    kind = value.WhichOneof("kind")
    if parameter.kind is bool:
        return value.bool_value if kind == "bool_value" else None
    if parameter.kind is str:
        return value.string_value if kind == "string_value" else None
    number = value.number_value
    acceptable = (
        kind == "number_value"
        and math.isfinite(number)
        and (parameter.kind is float or number.is_integer())
        and (parameter.minimum is None or number >= parameter.minimum)
        and (parameter.maximum is None or number <= parameter.maximum)
    )
    if not acceptable:
        return None
    return int(number) if parameter.kind is int else number


def _scorers(protos: Any, violations: FieldViolations) -> list[ScorerSpec]:
    if len(protos) > limits.MAX_SCORERS:
        violations.add("spec.scorers", f"use at most {limits.MAX_SCORERS} scorers")
    scorers: list[ScorerSpec] = []
    names: set[str] = set()
    for index, proto in enumerate(protos):
        path = f"spec.scorers[{index}]"
        check = _check(proto, path, violations)
        if check is None:
            continue
        name = proto.name or check.kind
        if not _SCORER_NAME.fullmatch(name):
            violations.add(f"{path}.name", "use 1 to 64 letters, digits, '_', '.' or '-'")
        elif name in names:
            violations.add(f"{path}.name", f"another scorer is named {name!r}; name each uniquely")
        names.add(name)
        scorers.append(ScorerSpec(name=name, check=check))
    return scorers


def _check(
    proto: experiment_pb2.Scorer, path: str, violations: FieldViolations
) -> ScorerCheck | None:
    kind = proto.WhichOneof("kind")
    if kind == "exact_match":
        return ExactMatch(ignore_case=proto.exact_match.ignore_case)
    if kind == "contains":
        return Contains(ignore_case=proto.contains.ignore_case)
    if kind == "json_valid":
        return JsonValid()
    if kind == "regex":
        return _regex(proto.regex.pattern, f"{path}.regex.pattern", violations)
    if kind == "command":
        return _command(proto.command, f"{path}.command", violations)
    violations.add(path, "set one of exact_match, contains, regex, json_valid or command")
    return None


def _regex(pattern: str, path: str, violations: FieldViolations) -> RegexMatch | None:
    if not pattern or len(pattern) > limits.MAX_REGEX_CHARS:
        violations.add(path, f"give a pattern of 1 to {limits.MAX_REGEX_CHARS} characters")
        return None
    try:
        compile_pattern(pattern)
    except PatternError as error:
        violations.add(path, str(error))
        return None
    return RegexMatch(pattern=pattern)


def _command(
    proto: experiment_pb2.CommandScorer, path: str, violations: FieldViolations
) -> CommandCheck | None:
    timeout = proto.timeout.seconds + proto.timeout.nanos / 1e9
    valid = True
    if not proto.argv or not proto.argv[0]:
        violations.add(
            f"{path}.argv",
            "give the program and its arguments, for example ['python3', 'score.py']",
        )
        valid = False
    if not 0 <= timeout <= limits.MAX_COMMAND_TIMEOUT_SECONDS:
        violations.add(
            f"{path}.timeout",
            f"use up to {limits.MAX_COMMAND_TIMEOUT_SECONDS:g}s, or 0 for "
            f"{limits.DEFAULT_COMMAND_TIMEOUT_SECONDS:g}s",
        )
        valid = False
    if not valid:
        return None
    return CommandCheck(
        argv=tuple(proto.argv), timeout_seconds=timeout or limits.DEFAULT_COMMAND_TIMEOUT_SECONDS
    )


def _timeout(
    proto: experiment_pb2.ExperimentSpec, scheduler: SchedulerSettings, violations: FieldViolations
) -> float:
    timeout = proto.timeout.seconds + proto.timeout.nanos / 1e9
    if not 0 <= timeout <= scheduler.max_timeout_seconds:
        violations.add(
            "spec.timeout",
            f"use up to {scheduler.max_timeout_seconds:g}s, or 0 for the default "
            f"({scheduler.default_timeout_seconds:g}s)",
        )
        return 0.0
    return timeout


def _sandbox_tool(
    proto: experiment_pb2.ExperimentSpec, violations: FieldViolations
) -> SandboxToolSpec | None:
    """The tool's limits with defaults filled in, but a zero command timeout, which
    :func:`bind_sandbox_tool` resolves against the environment; None without the tool."""
    path = "spec.sandbox_tool"
    tool = proto.sandbox_tool
    if not tool.enabled:
        if tool.ListFields():
            violations.add(f"{path}.enabled", "set enabled to offer the tool, or leave it unset")
        return None
    if not 0 <= tool.max_turns <= limits.MAX_TOOL_TURNS:
        violations.add(
            f"{path}.max_turns",
            f"use 1 to {limits.MAX_TOOL_TURNS}, or 0 for {limits.DEFAULT_TOOL_TURNS}",
        )
    timeout = tool.command_timeout.seconds + tool.command_timeout.nanos / 1e9
    if not 0 <= timeout <= limits.MAX_COMMAND_TIMEOUT_SECONDS:
        violations.add(
            f"{path}.command_timeout",
            f"use up to {limits.MAX_COMMAND_TIMEOUT_SECONDS:g}s (and at most the environment's"
            f" exec_timeout), or 0 for {limits.DEFAULT_TOOL_COMMAND_TIMEOUT_SECONDS:g}s",
        )
    if not 0 <= tool.max_output_bytes <= limits.MAX_TOOL_OUTPUT_BYTES:
        violations.add(
            f"{path}.max_output_bytes",
            f"use 1 to {limits.MAX_TOOL_OUTPUT_BYTES}, or 0 for {limits.DEFAULT_TOOL_OUTPUT_BYTES}",
        )
    return SandboxToolSpec(
        max_turns=tool.max_turns or limits.DEFAULT_TOOL_TURNS,
        command_timeout_seconds=max(timeout, 0.0),
        max_output_bytes=tool.max_output_bytes or limits.DEFAULT_TOOL_OUTPUT_BYTES,
    )


def bind_sandbox_tool(request: ValidatedRequest, exec_timeout_seconds: float) -> ValidatedRequest:
    """The request with the tool's command timeout checked against (or, left at zero,
    defaulted within) the environment's exec timeout; INVALID_ARGUMENT when it exceeds it."""
    tool = request.spec.sandbox_tool
    if tool is None:
        return request
    timeout = tool.command_timeout_seconds
    if timeout > exec_timeout_seconds:
        violations = FieldViolations()
        violations.add(
            "spec.sandbox_tool.command_timeout",
            f"use at most {exec_timeout_seconds:g}s, environment {request.environment_id}'s"
            " exec_timeout, or 0 for the default",
        )
        violations.raise_if_any()
    if not timeout:
        timeout = min(limits.DEFAULT_TOOL_COMMAND_TIMEOUT_SECONDS, exec_timeout_seconds)
    bound = tool.model_copy(update={"command_timeout_seconds": timeout})
    spec = request.spec.model_copy(update={"sandbox_tool": bound})
    return dataclasses.replace(request, spec=spec)


def validate_list_filters(environment_id: str, labels: dict[str, str]) -> None:
    """Checks ListExperiments filters; INVALID_ARGUMENT names each bad one.

    The label selector is capped like an experiment's labels, so a selector
    can never grow the query past what the database accepts.
    """
    found = FieldViolations()
    if environment_id and not ids.is_valid(environment_id, ids.ENVIRONMENT):
        found.add(
            "environment_id",
            "is not an environment id; it looks like env-<orchestrator>-<16 hex>, or leave it"
            " empty for every environment",
        )
    _check_labels(labels, found, "label_selector")
    found.raise_if_any()


def _check_labels(
    labels: dict[str, str], violations: FieldViolations, path: str = "spec.labels"
) -> None:
    if len(labels) > limits.MAX_LABELS:
        violations.add(
            path, f"has {len(labels)} labels; use at most {limits.MAX_LABELS} (split the query)"
        )
        return
    for key, value in sorted(labels.items()):
        if not _LABEL_KEY.fullmatch(key):
            violations.add(
                f"{path}.{echo(key, 32)}",
                "keys are 1 to 63 lowercase letters, digits, '_', '.' or '-', starting with a "
                "letter or digit",
            )
        elif len(value) > limits.MAX_LABEL_VALUE_CHARS:
            violations.add(
                f"{path}.{key}",
                f"values have at most {limits.MAX_LABEL_VALUE_CHARS} characters",
            )
