"""Types the gateway tests share: who calls, and what a test stack holds."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from gateway_testkit import FakeOrchestrator

from sandbox_sdk.api.v1 import gateway_service_pb2_grpc
from sandbox_sdk.server.gateway.server import GatewayServer

StartOrchestrator = Callable[..., Awaitable[FakeOrchestrator]]
StartGateway = Callable[..., Awaitable[GatewayServer]]


@dataclass
class Caller:
    """A client of the gateway holding one API key."""

    stub: gateway_service_pb2_grpc.GatewayServiceAsyncStub
    key: str
    tenant: str

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.key}"),)


@dataclass
class Stack:
    """One fake orchestrator behind one gateway, with a read+write caller of tenant team-a."""

    orchestrator: FakeOrchestrator
    gateway: GatewayServer
    caller: Caller
