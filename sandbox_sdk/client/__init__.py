"""The clients and the handles they return.

The asyncio client (``_async/``) is written by hand; the sync client
(``_sync/``) is generated from it by ``make generate``. Only ``glue`` (how a
channel is opened, a stream read, a pause made) and ``port_forward`` (relaying
sockets) are written twice.
"""

from sandbox_sdk.client._async.client import AsyncSandboxClient
from sandbox_sdk.client._async.experiment import AsyncExperiment
from sandbox_sdk.client._async.port_forward import AsyncPortForward
from sandbox_sdk.client._async.process import AsyncProcess
from sandbox_sdk.client._async.sandbox import AsyncSandbox
from sandbox_sdk.client._async.streams import AsyncExecStream, AsyncServerStream
from sandbox_sdk.client._async.template import AsyncTemplate
from sandbox_sdk.client._sync.client import SandboxClient
from sandbox_sdk.client._sync.experiment import Experiment
from sandbox_sdk.client._sync.port_forward import PortForward
from sandbox_sdk.client._sync.process import Process
from sandbox_sdk.client._sync.sandbox import Sandbox
from sandbox_sdk.client._sync.streams import ExecStream, ServerStream
from sandbox_sdk.client._sync.template import Template
from sandbox_sdk.client.archives import ArchiveError
from sandbox_sdk.client.retry import RetryPolicy

__all__ = [
    "ArchiveError",
    "AsyncExecStream",
    "AsyncExperiment",
    "AsyncPortForward",
    "AsyncProcess",
    "AsyncSandbox",
    "AsyncSandboxClient",
    "AsyncServerStream",
    "AsyncTemplate",
    "ExecStream",
    "Experiment",
    "PortForward",
    "Process",
    "RetryPolicy",
    "Sandbox",
    "SandboxClient",
    "ServerStream",
    "Template",
]
