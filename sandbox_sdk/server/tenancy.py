"""Who a call is for, as the gateway tells the orchestrator."""

from __future__ import annotations

from typing import Any

import grpc

from sandbox_sdk.server.status import metadata_value

TENANT_KEY = "x-sandbox-tenant"
DEFAULT_TENANT = "default"


def tenant_of(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    """The tenant the gateway set on an internal call, ``default`` when none is set."""
    return metadata_value(context, TENANT_KEY) or DEFAULT_TENANT
