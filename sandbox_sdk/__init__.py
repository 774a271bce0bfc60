"""sandbox-sdk: run LLM experiments in isolated sandboxes over gRPC.

from sandbox_sdk import SandboxClient

client = SandboxClient(config_path="config.yaml")
sandbox = client.create_environment()
experiment = sandbox.run_experiment(model="gpt-3", prompt="Hello, world!")
results = experiment.get_results()
"""

from importlib import metadata as _metadata

from sandbox_sdk.analysis import PowerPlan, sample_size
from sandbox_sdk.auth import ApiKey, Token, TokenProvider
from sandbox_sdk.client import (
    ArchiveError,
    AsyncExperiment,
    AsyncPortForward,
    AsyncProcess,
    AsyncSandbox,
    AsyncSandboxClient,
    AsyncTemplate,
    Experiment,
    PortForward,
    Process,
    RetryPolicy,
    Sandbox,
    SandboxClient,
    Template,
)
from sandbox_sdk.config import ClientSettings
from sandbox_sdk.errors import (
    AlreadyExistsError,
    AuthenticationError,
    CancelledError,
    CapacityExhaustedError,
    ConfigError,
    ErrorReason,
    ExperimentFailedError,
    FailedPreconditionError,
    FieldViolation,
    InternalError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    QuotaExceededError,
    QuotaViolation,
    RateLimitedError,
    ResourceExhaustedError,
    SandboxError,
    SandboxTimeoutError,
    TemplateBuildFailedError,
    TemplateInUseError,
    UnavailableError,
)
from sandbox_sdk.models import (
    AggregateMetric,
    ApiKeyInfo,
    ApiKeyScope,
    Command,
    CommandFailedError,
    Contains,
    CreatedApiKey,
    EnvironmentInfo,
    EnvironmentState,
    ExactMatch,
    ExecResult,
    ExitReason,
    ExperimentComparison,
    ExperimentEvent,
    ExperimentFailure,
    ExperimentInfo,
    ExperimentResults,
    ExperimentState,
    FileInfo,
    IntervalMethod,
    IsolationRuntime,
    JsonValid,
    LogLevel,
    LogLine,
    MetricComparison,
    MetricSample,
    ModelInfo,
    NetworkPolicy,
    OutputChunk,
    OutputDelta,
    ProcessInfo,
    ProcessState,
    Regex,
    ResourceLimits,
    ResourceUsage,
    SampleResult,
    StateChange,
    TemplateBuildEvent,
    TemplateInfo,
    TemplateSource,
    TemplateState,
    TemplateStateChange,
    TerminationReason,
    TokenUsage,
    ToolCall,
    ToolResult,
    UploadSummary,
    UsageReport,
)


def _installed_version() -> str:
    """The installed distribution's version; pyproject.toml's for an uninstalled source tree."""
    try:
        return _metadata.version("sandbox-sdk")
    except _metadata.PackageNotFoundError:
        import tomllib
        from pathlib import Path

        pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
        try:
            version: str = tomllib.loads(pyproject.read_text())["project"]["version"]
        except (OSError, KeyError, tomllib.TOMLDecodeError):
            return "0+unknown"
        return version


__version__ = _installed_version()

__all__ = [
    "AggregateMetric",
    "AlreadyExistsError",
    "ApiKey",
    "ApiKeyInfo",
    "ApiKeyScope",
    "ArchiveError",
    "AsyncExperiment",
    "AsyncPortForward",
    "AsyncProcess",
    "AsyncSandbox",
    "AsyncSandboxClient",
    "AsyncTemplate",
    "AuthenticationError",
    "CancelledError",
    "CapacityExhaustedError",
    "ClientSettings",
    "Command",
    "CommandFailedError",
    "ConfigError",
    "Contains",
    "CreatedApiKey",
    "EnvironmentInfo",
    "EnvironmentState",
    "ErrorReason",
    "ExactMatch",
    "ExecResult",
    "ExitReason",
    "Experiment",
    "ExperimentComparison",
    "ExperimentEvent",
    "ExperimentFailedError",
    "ExperimentFailure",
    "ExperimentInfo",
    "ExperimentResults",
    "ExperimentState",
    "FailedPreconditionError",
    "FieldViolation",
    "FileInfo",
    "InternalError",
    "IntervalMethod",
    "InvalidArgumentError",
    "IsolationRuntime",
    "JsonValid",
    "LogLevel",
    "LogLine",
    "MetricComparison",
    "MetricSample",
    "ModelInfo",
    "NetworkPolicy",
    "NotFoundError",
    "OutputChunk",
    "OutputDelta",
    "PermissionDeniedError",
    "PortForward",
    "PowerPlan",
    "Process",
    "ProcessInfo",
    "ProcessState",
    "QuotaExceededError",
    "QuotaViolation",
    "RateLimitedError",
    "Regex",
    "ResourceExhaustedError",
    "ResourceLimits",
    "ResourceUsage",
    "RetryPolicy",
    "SampleResult",
    "Sandbox",
    "SandboxClient",
    "SandboxError",
    "SandboxTimeoutError",
    "StateChange",
    "Template",
    "TemplateBuildEvent",
    "TemplateBuildFailedError",
    "TemplateInUseError",
    "TemplateInfo",
    "TemplateSource",
    "TemplateState",
    "TemplateStateChange",
    "TerminationReason",
    "Token",
    "TokenProvider",
    "TokenUsage",
    "ToolCall",
    "ToolResult",
    "UnavailableError",
    "UploadSummary",
    "UsageReport",
    "__version__",
    "sample_size",
]
