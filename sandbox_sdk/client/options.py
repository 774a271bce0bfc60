"""What a client derives from its constructor arguments: settings, auth, retry, metrics."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sandbox_sdk.auth.credentials import ApiKey, BearerAuth, TokenProvider
from sandbox_sdk.client.retry import RetryPolicy
from sandbox_sdk.config.keyfile import resolve_api_key
from sandbox_sdk.config.loader import load_settings
from sandbox_sdk.config.settings import ClientSettings, RetrySettings, TlsSettings
from sandbox_sdk.monitoring.rpc_metrics import RpcObserver, observer_from_settings

RetryArgument = RetryPolicy | RetrySettings | Mapping[str, Any] | None
TlsArgument = bool | TlsSettings | Mapping[str, Any] | None


@dataclass(frozen=True)
class ClientOptions:
    """Everything a client needs besides its channel."""

    settings: ClientSettings
    auth: BearerAuth
    retry: RetryPolicy
    observer: RpcObserver | None


def resolve_options(
    *,
    target: str | Sequence[str] | None,
    api_key: str | None,
    token_provider: TokenProvider | None,
    tls: TlsArgument,
    timeout: float | None,
    retry: RetryArgument,
    config_path: str | os.PathLike[str] | None,
    settings: ClientSettings | None,
) -> ClientOptions:
    """Resolves settings (argument > environment > file > default), the key and the policy.

    With no key anywhere the client sends none (the server then says how to get
    one); the local admin key goes only to the local server's Unix socket.
    """
    if settings is None:
        settings = load_settings(
            config_path=config_path,
            overrides={
                "target": target,
                "api_key": api_key,
                "tls": tls,
                "timeout": timeout,
                "retry": None if isinstance(retry, RetryPolicy) else retry,
            },
        )
    policy = retry if isinstance(retry, RetryPolicy) else RetryPolicy.from_settings(settings.retry)
    provider: TokenProvider | None = token_provider
    if provider is None:
        resolved = resolve_api_key(
            api_key=settings.api_key.get_secret_value() if settings.api_key else None,
            api_key_file=settings.api_key_file,
            target=settings.target,
            data_dir=settings.data_dir,
        )
        provider = ApiKey(resolved.secret) if resolved.secret is not None else None
        if resolved.target != settings.target:
            settings = settings.model_copy(update={"target": resolved.target})
    return ClientOptions(
        settings=settings,
        auth=BearerAuth(provider),
        retry=policy,
        observer=observer_from_settings(settings.metrics),
    )
