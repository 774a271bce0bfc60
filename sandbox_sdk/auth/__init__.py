"""Authentication: API keys and token providers as bearer metadata, interceptors, TLS."""

from sandbox_sdk.auth.credentials import (
    AUTHORIZATION_KEY,
    ApiKey,
    BearerAuth,
    Token,
    TokenProvider,
    mask_secret,
)
from sandbox_sdk.auth.interceptors import AsyncAuthInterceptor, AuthInterceptor
from sandbox_sdk.auth.tls import channel_credentials, tls_channel_options

__all__ = [
    "AUTHORIZATION_KEY",
    "ApiKey",
    "AsyncAuthInterceptor",
    "AuthInterceptor",
    "BearerAuth",
    "Token",
    "TokenProvider",
    "channel_credentials",
    "mask_secret",
    "tls_channel_options",
]
