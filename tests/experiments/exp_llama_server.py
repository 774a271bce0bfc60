"""Runs llama-cpp-python's OpenAI-compatible server with llama.cpp's extra buffer types off.

Usage: python exp_llama_server.py --model GGUF --host 127.0.0.1 --port PORT [...]

The arguments are llama_cpp.server's. Extra buffer types stay off for the
reason LocalOptions.use_extra_buffer_types explains (ggml's AMX kernels
crash on some CPUs), so the server serves the same computation as the
local provider.
"""

from __future__ import annotations

import sys

from llama_cpp.server.__main__ import main

from sandbox_sdk.server.orchestrator.experiments.providers.local import llama_extra_buffer_types

if __name__ == "__main__":
    sys.argv[0] = "llama_cpp.server"
    with llama_extra_buffer_types(enabled=False):
        main()
