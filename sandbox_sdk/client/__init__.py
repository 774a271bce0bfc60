"""The clients and the handles they return (sync and asyncio)."""

from sandbox_sdk.client.aio_client import AsyncSandboxClient
from sandbox_sdk.client.aio_experiment import AsyncExperiment
from sandbox_sdk.client.aio_sandbox import AsyncSandbox
from sandbox_sdk.client.aio_streams import AsyncExecStream, AsyncServerStream
from sandbox_sdk.client.experiment import Experiment
from sandbox_sdk.client.retry import RetryPolicy
from sandbox_sdk.client.sandbox import Sandbox
from sandbox_sdk.client.streams import ExecStream, ServerStream
from sandbox_sdk.client.sync_client import SandboxClient

__all__ = [
    "AsyncExecStream",
    "AsyncExperiment",
    "AsyncSandbox",
    "AsyncSandboxClient",
    "AsyncServerStream",
    "ExecStream",
    "Experiment",
    "RetryPolicy",
    "Sandbox",
    "SandboxClient",
    "ServerStream",
]
