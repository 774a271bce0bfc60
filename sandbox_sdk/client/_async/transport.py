"""Sending calls: credentials, timeouts, retries, error translation, metrics.

The hot path of a successful unary call is one stub call with precomputed
metadata; retry and metrics bookkeeping happen only on failure or when enabled.
The handles (sandboxes, experiments, streams) call the gateway through this
object only.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import grpc

from sandbox_sdk.api.v1 import gateway_service_pb2_grpc
from sandbox_sdk.auth.credentials import BearerAuth, RefreshOnce
from sandbox_sdk.client._async import glue
from sandbox_sdk.client.calls import Rpc, method_table, translate
from sandbox_sdk.client.retry import Attempts, RetryPolicy
from sandbox_sdk.config.settings import ClientSettings
from sandbox_sdk.errors import SandboxError
from sandbox_sdk.monitoring.rpc_metrics import RpcObserver


class AsyncTransport:
    """Calls the gateway's methods over one channel."""

    def __init__(
        self,
        channel: glue.Channel,
        *,
        settings: ClientSettings,
        auth: BearerAuth,
        retry: RetryPolicy,
        observer: RpcObserver | None = None,
    ) -> None:
        self.channel = channel
        self.settings = settings
        self.auth = auth
        self.timeout = settings.timeout
        self.retry = retry
        self.target = settings.target
        self.observer = observer
        self.rpcs = method_table(gateway_service_pb2_grpc.GatewayServiceStub(channel))

    async def call(
        self,
        method: str,
        request: Any,
        *,
        timeout: float | None = None,
        retry: RetryPolicy | None = None,
    ) -> Any:
        """Calls the unary GatewayService method named ``method``."""
        return await self.unary(self.rpcs[method], request, timeout=timeout, retry=retry)

    async def pages(
        self, method: str, request: Any, *, timeout: float | None = None
    ) -> AsyncIterator[Any]:
        """Every page of a list method, fetched as the caller iterates."""
        while True:
            page = await self.call(method, request, timeout=timeout)
            yield page
            if not page.next_page_token:
                return
            request.page_token = page.next_page_token

    async def unary(
        self,
        rpc: Rpc,
        request: Any,
        *,
        timeout: float | None = None,
        retry: RetryPolicy | None = None,
    ) -> Any:
        """Sends a unary call, retrying it per the policy when that is safe."""
        call_timeout = self.timeout if timeout is None else timeout
        policy = self.retry if retry is None else retry
        if self.observer is not None:
            return await self._observed_unary(self.observer, rpc, request, call_timeout, policy)
        attempts = policy.start()
        metadata = await self.auth.metadata_async()
        try:
            return await rpc.call(
                request, timeout=attempts.timeout(call_timeout), metadata=metadata
            )
        except grpc.RpcError as error:
            return (await self._recover(rpc, request, call_timeout, attempts, error))[0]

    async def _recover(
        self, rpc: Rpc, request: Any, call_timeout: float, attempts: Attempts, error: grpc.RpcError
    ) -> tuple[Any, int]:
        policy = attempts.policy
        refresh = RefreshOnce(self.auth)
        while True:
            converted = translate(error, self.target, rpc.name)
            delay: float | None
            if refresh(converted):
                delay = 0.0
            else:
                delay = attempts.next_delay(converted) if rpc.retry_safe else None
            if delay is None:
                raise attempts.annotate(converted) from error
            if delay:
                await policy.async_sleep(delay)
            try:
                response = await rpc.call(
                    request,
                    timeout=attempts.timeout(call_timeout),
                    metadata=await self.auth.metadata_async(),
                )
            except grpc.RpcError as again:
                error = again
            else:
                return response, attempts.made

    async def _observed_unary(
        self,
        observer: RpcObserver,
        rpc: Rpc,
        request: Any,
        call_timeout: float,
        policy: RetryPolicy,
    ) -> Any:
        started = time.perf_counter()
        attempts = policy.start()
        try:
            try:
                response = await rpc.call(
                    request,
                    timeout=attempts.timeout(call_timeout),
                    metadata=await self.auth.metadata_async(),
                )
                retries = 0
            except grpc.RpcError as error:
                response, retries = await self._recover(rpc, request, call_timeout, attempts, error)
        except SandboxError as failure:
            code = failure.code.name if failure.code is not None else "UNKNOWN"
            observer.record(rpc.name, code, time.perf_counter() - started, attempts.made - 1)
            raise
        observer.record(rpc.name, "OK", time.perf_counter() - started, retries)
        return response

    async def send_stream(
        self, method: str, requests: AsyncIterator[Any], *, timeout: float | None = None
    ) -> Any:
        """Calls the client-streaming method ``method`` once: a sent stream cannot be replayed."""
        rpc = self.rpcs[method]
        try:
            return await rpc.call(
                requests,
                timeout=self.timeout if timeout is None else timeout,
                metadata=await self.auth.metadata_async(),
            )
        except grpc.RpcError as error:
            raise translate(error, self.target, rpc.name) from error

    async def open_bidi_stream(
        self, method: str, requests: AsyncIterator[Any], *, timeout: float | None = None
    ) -> Any:
        """Starts the bidirectional method ``method`` fed by ``requests``; read its answers
        with :func:`glue.next_message`. Never retried: a sent stream cannot be replayed."""
        return self.rpcs[method].call(
            requests, timeout=timeout, metadata=await self.auth.metadata_async()
        )

    async def open_stream(self, rpc: Rpc, request: Any, *, timeout: float | None = None) -> Any:
        """Starts a server-streaming call; read it with :func:`glue.next_message`."""
        return rpc.call(request, timeout=timeout, metadata=await self.auth.metadata_async())

    async def close(self) -> None:
        """Closes the channel, cancelling calls in flight."""
        await glue.close_channel(self.channel)
