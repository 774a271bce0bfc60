"""Client configuration: one validated :class:`ClientSettings` from four sources.

Precedence, highest first: explicit argument > environment variable > YAML
file > default. The YAML file is ``config_path=`` or ``$SANDBOX_CONFIG``; its
client settings are at the top level, or under a ``client:`` key when the file
is shared with the services (other top-level sections are then ignored).
Unknown keys and bad values raise :class:`~sandbox_sdk.errors.ConfigError`
naming the key and where it came from. Relative paths in the file are relative
to the file.

=====================  =============================  =====================  ======================
Setting                Environment variable           YAML key               Default
=====================  =============================  =====================  ======================
target                 SANDBOX_TARGET                 target                 (see below)
api_key                SANDBOX_API_KEY                api_key                (see below)
api_key_file           SANDBOX_API_KEY_FILE           api_key_file           none
timeout (per call, s)  SANDBOX_TIMEOUT                timeout                30
wait_timeout (s)       SANDBOX_WAIT_TIMEOUT           wait_timeout           600
data_dir               SANDBOX_DATA_DIR               data_dir               ~/.sandbox-sdk
tls.enabled            SANDBOX_TLS                    tls.enabled            false (on with a path)
tls.root_ca            SANDBOX_TLS_ROOT_CA            tls.root_ca            system roots
tls.client_cert        SANDBOX_TLS_CLIENT_CERT        tls.client_cert        none (mTLS when set)
tls.client_key         SANDBOX_TLS_CLIENT_KEY         tls.client_key         none
tls.server_name        SANDBOX_TLS_SERVER_NAME        tls.server_name        host of target
retry.max_attempts     SANDBOX_RETRY_MAX_ATTEMPTS     retry.max_attempts     5
retry.initial_backoff  SANDBOX_RETRY_INITIAL_BACKOFF  retry.initial_backoff  0.1
retry.max_backoff      SANDBOX_RETRY_MAX_BACKOFF      retry.max_backoff      5.0
retry.multiplier       -                              retry.multiplier       2.0
retry.deadline (s)     SANDBOX_RETRY_DEADLINE         retry.deadline         60
retry.retryable_codes  -                              retry.retryable_codes  [UNAVAILABLE]
metrics.prometheus     SANDBOX_METRICS_PROMETHEUS     metrics.prometheus     false
metrics.opentelemetry  SANDBOX_METRICS_OPENTELEMETRY  metrics.opentelemetry  false
(config file path)     SANDBOX_CONFIG                 -                      none
=====================  =============================  =====================  ======================

The default target is the local server's Unix socket ``unix:<data_dir>/gateway.sock``
when it exists (``sandbox-sdk serve`` creates it), else ``127.0.0.1:50051``.

The API key is, in order: ``api_key``, the contents of ``api_key_file``, and,
only when ``target`` is the Unix socket ``<data_dir>/gateway.sock`` in a data dir
that only you can enter, ``<data_dir>/admin.key`` written by ``sandbox-sdk serve``.
A TCP target, loopback or not, never gets that key by itself: with no key set,
the client sends none and the server answers UNAUTHENTICATED saying how to get one.
"""

from sandbox_sdk.config.keyfile import ADMIN_KEY_FILENAME, admin_key_path
from sandbox_sdk.config.loader import ENV_KEYS, load_settings
from sandbox_sdk.config.local_server import SOCKET_FILENAME, default_target, socket_path
from sandbox_sdk.config.settings import (
    DEFAULT_TARGET,
    ClientSettings,
    MetricsSettings,
    RetrySettings,
    TlsSettings,
)

__all__ = [
    "ADMIN_KEY_FILENAME",
    "DEFAULT_TARGET",
    "ENV_KEYS",
    "SOCKET_FILENAME",
    "ClientSettings",
    "MetricsSettings",
    "RetrySettings",
    "TlsSettings",
    "admin_key_path",
    "default_target",
    "load_settings",
    "socket_path",
]
