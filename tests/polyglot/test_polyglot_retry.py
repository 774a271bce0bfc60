"""The Node.js client retries by the contract's method options, as the Python SDK does.

gateway.js reads ``idempotency_level`` and ``sandbox.v1.rules`` from proto/
and sends a unary call once more after UNAVAILABLE only when a repeat is safe.
"""

from __future__ import annotations

import json
import subprocess
import threading
from collections import Counter
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest

from sandbox_sdk.client import calls

HERE = Path(__file__).resolve().parent
PROBE = HERE / "retry_probe.js"


def _probe(node: str, *args: str) -> dict[str, Any]:
    completed = subprocess.run(
        [node, str(PROBE), *args], capture_output=True, text=True, timeout=60, check=False
    )
    assert completed.returncode == 0, completed.stderr
    result: dict[str, Any] = json.loads(completed.stdout)
    return result


class _Unavailable:
    """A GatewayService stand-in that counts attempts and answers each UNAVAILABLE."""

    def __init__(self) -> None:
        self.attempts: Counter[str] = Counter()
        self._lock = threading.Lock()

    def handler(self, name: str) -> grpc.RpcMethodHandler:
        def refuse(request: bytes, context: grpc.ServicerContext) -> bytes:
            with self._lock:
                self.attempts[name] += 1
            context.abort(grpc.StatusCode.UNAVAILABLE, "the gateway is restarting")

        return grpc.unary_unary_rpc_method_handler(refuse)


@pytest.fixture
def unavailable_gateway() -> Iterator[tuple[str, _Unavailable]]:
    """A server on a free port whose every unary GatewayService call fails UNAVAILABLE."""
    stand_in = _Unavailable()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    unary = [m.name for m in calls.GATEWAY_SERVICE.methods if not m.server_streaming]
    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                calls.GATEWAY_SERVICE.full_name, {name: stand_in.handler(name) for name in unary}
            )
        ]
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}", stand_in
    finally:
        server.stop(grace=None)


def test_node_reads_the_retry_rules_the_python_sdk_reads(node: str) -> None:
    rules = _probe(node, "rules")

    assert set(rules) == calls.ALL_METHODS
    idempotent = {n for n, r in rules.items() if r["idempotency_level"] != "IDEMPOTENCY_UNKNOWN"}
    assert idempotent == calls.IDEMPOTENT_METHODS
    by_request_id = {n for n, r in rules.items() if r["idempotent_by_request_id"]}
    assert by_request_id - idempotent == calls.RETRY_SAFE_CREATES


@pytest.mark.parametrize(
    ("method", "request_fields", "attempts"),
    [
        ("GetEnvironment", {"environment_id": "env-o1-0123456789abcdef"}, 2),
        ("DeleteEnvironment", {"environment_id": "env-o1-0123456789abcdef"}, 2),
        ("CreateApiKey", {"display_name": "ci", "request_id": "node-retry-1"}, 2),
        ("CreateApiKey", {"display_name": "ci"}, 1),
    ],
    ids=["read", "idempotent-write", "create-with-request-id", "create-without-request-id"],
)
def test_node_repeats_an_unavailable_call_only_when_the_contract_allows(
    node: str,
    unavailable_gateway: tuple[str, _Unavailable],
    method: str,
    request_fields: dict[str, str],
    attempts: int,
) -> None:
    target, stand_in = unavailable_gateway

    result = _probe(node, "call", target, method, json.dumps(request_fields))

    assert result["code"] == grpc.StatusCode.UNAVAILABLE.value[0]
    assert stand_in.attempts == {method: attempts}
