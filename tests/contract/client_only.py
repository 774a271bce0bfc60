"""What a client-only install (`pip install sandbox-sdk`, no extras) must not contain."""

from __future__ import annotations

# Distributions only the `server`, `cli` and `analysis` extras (or the model) bring.
NOT_CLIENT_DISTRIBUTIONS = frozenset(
    {
        "psutil",
        "prometheus-client",
        "openai",
        "httpx",
        "google-re2",
        "grpcio-status",
        "grpcio-health-checking",
        "grpcio-reflection",
        "grpcio-tools",
        "typer",
        "rich",
        "llama-cpp-python",
        "scipy",
        "numpy",
        "matplotlib",
    }
)

# Third-party modules only the servers, the command line or the statistics use, as the
# top-level modules their distributions install (click comes with typer, numpy with scipy).
NOT_CLIENT_MODULES = frozenset(
    {
        "psutil",
        "prometheus_client",
        "openai",
        "httpx",
        "re2",
        "grpc_status",
        "grpc_health",
        "grpc_reflection",
        "grpc_tools",
        "typer",
        "rich",
        "click",
        "llama_cpp",
        "scipy",
        "numpy",
        "matplotlib",
    }
)
