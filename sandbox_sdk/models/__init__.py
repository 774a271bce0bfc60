"""Plain dataclasses for what the service returns; protobuf stays at the wire."""

from sandbox_sdk.models.api_keys import ApiKeyInfo, ApiKeyScope, CreatedApiKey
from sandbox_sdk.models.catalog import ModelInfo
from sandbox_sdk.models.comparison import ExperimentComparison, MetricComparison
from sandbox_sdk.models.environment import (
    EnvironmentInfo,
    EnvironmentState,
    IsolationRuntime,
    NetworkPolicy,
    ResourceLimits,
    TerminationReason,
)
from sandbox_sdk.models.execution import CommandFailedError, ExecResult, ExitReason, OutputChunk
from sandbox_sdk.models.experiment import (
    ExperimentEvent,
    ExperimentFailure,
    ExperimentInfo,
    ExperimentState,
    LogLevel,
    LogLine,
    MetricSample,
    OutputDelta,
    StateChange,
    ToolCall,
    ToolResult,
)
from sandbox_sdk.models.files import FileInfo, UploadSummary
from sandbox_sdk.models.processes import ProcessInfo, ProcessState
from sandbox_sdk.models.results import (
    AggregateMetric,
    ExperimentResults,
    IntervalMethod,
    SampleResult,
    TokenUsage,
)
from sandbox_sdk.models.scorers import Command, Contains, ExactMatch, JsonValid, Regex, Scorer
from sandbox_sdk.models.templates import (
    TemplateBuildEvent,
    TemplateInfo,
    TemplateSource,
    TemplateState,
    TemplateStateChange,
)
from sandbox_sdk.models.usage import ResourceUsage, UsageReport

__all__ = [
    "AggregateMetric",
    "ApiKeyInfo",
    "ApiKeyScope",
    "Command",
    "CommandFailedError",
    "Contains",
    "CreatedApiKey",
    "EnvironmentInfo",
    "EnvironmentState",
    "ExactMatch",
    "ExecResult",
    "ExitReason",
    "ExperimentComparison",
    "ExperimentEvent",
    "ExperimentFailure",
    "ExperimentInfo",
    "ExperimentResults",
    "ExperimentState",
    "FileInfo",
    "IntervalMethod",
    "IsolationRuntime",
    "JsonValid",
    "LogLevel",
    "LogLine",
    "MetricComparison",
    "MetricSample",
    "ModelInfo",
    "NetworkPolicy",
    "OutputChunk",
    "OutputDelta",
    "ProcessInfo",
    "ProcessState",
    "Regex",
    "ResourceLimits",
    "ResourceUsage",
    "SampleResult",
    "Scorer",
    "StateChange",
    "TemplateBuildEvent",
    "TemplateInfo",
    "TemplateSource",
    "TemplateState",
    "TemplateStateChange",
    "TerminationReason",
    "TokenUsage",
    "ToolCall",
    "ToolResult",
    "UploadSummary",
    "UsageReport",
]
