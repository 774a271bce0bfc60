"""The embedded server (gateway + the real OrchestratorApp) and its admin key file."""

from __future__ import annotations

import stat
from pathlib import Path

import grpc
import pydantic
import pytest
from gateway_testkit import reason

from sandbox_sdk.api.v1 import gateway_service_pb2_grpc, requests_pb2
from sandbox_sdk.server.embedded import ServerConfigFile, run_embedded


async def _list_environments(port: int, key: str) -> None:
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        await gateway_service_pb2_grpc.GatewayServiceStub(channel).ListEnvironments(
            requests_pb2.ListEnvironmentsRequest(),
            metadata=(("authorization", f"Bearer {key}"),),
            timeout=30,
        )
    finally:
        await channel.close()


async def test_the_admin_key_is_created_once_and_reused(tmp_path: Path) -> None:
    server = await run_embedded("127.0.0.1", 0, tmp_path)
    try:
        assert server.admin_key_path == tmp_path / "admin.key"
        assert stat.S_IMODE(server.admin_key_path.stat().st_mode) == 0o600
        text = server.admin_key_path.read_text()
        assert text.count("\n") == 1
        key = text.strip()
        await _list_environments(server.port, key)
        assert server.orchestrator.config.data_dir == tmp_path / "orchestrator"
    finally:
        await server.stop(1)

    again = await run_embedded("127.0.0.1", 0, tmp_path)
    try:
        assert again.admin_key_path.read_text().strip() == key
        await _list_environments(again.port, key)
        key_id = "_".join(key.split("_")[:2])
        again.gateway.keys.revoke(key_id)
    finally:
        await again.stop(1)

    # A revoked key in the file is replaced by a new one on the next start.
    third = await run_embedded("127.0.0.1", 0, tmp_path)
    try:
        replaced = third.admin_key_path.read_text().strip()
        assert replaced != key
        await _list_environments(third.port, replaced)
    finally:
        await third.stop(1)


async def test_the_config_file_sections_apply(tmp_path: Path) -> None:
    config = tmp_path / "server.yaml"
    config.write_text(
        "gateway:\n"
        "  limits:\n"
        "    default:\n"
        "      max_environments: 0\n"
        "orchestrator:\n"
        f"  data_dir: {tmp_path / 'elsewhere'}\n"
    )
    server = await run_embedded("127.0.0.1", 0, tmp_path / "data", config)
    try:
        assert server.orchestrator.config.data_dir == tmp_path / "elsewhere"
        key = server.admin_key_path.read_text().strip()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
        try:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await gateway_service_pb2_grpc.GatewayServiceStub(channel).CreateEnvironment(
                    requests_pb2.CreateEnvironmentRequest(),
                    metadata=(("authorization", f"Bearer {key}"),),
                    timeout=30,
                )
        finally:
            await channel.close()
        assert reason(caught.value) == "QUOTA_EXCEEDED"
    finally:
        await server.stop(1)


def test_unknown_config_sections_are_rejected(tmp_path: Path) -> None:
    config = tmp_path / "server.yaml"
    config.write_text("gatway:\n  listen: 127.0.0.1:1\n")
    with pytest.raises(pydantic.ValidationError, match="gatway"):
        ServerConfigFile.load(config)
