"""inspect_ai's own conformance suite for sandbox providers, against ours and the real server.

Every check of ``inspect_ai.util._sandbox.self_check`` runs on a fresh environment made by
the provider's ``sample_init`` and removed by its ``sample_cleanup``. A check our
environments cannot pass is an expected failure with its reason (strict: it fails the run
once it passes), and README.md's inspect_ai section lists it. The suite runs under each
isolation runtime (an ``isolation`` test), on the server whose default runtime it is.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import sandbox_runtimes
from e2e_support import EmbeddedStack
from inspect_ai.util import SandboxEnvironment
from inspect_ai.util._sandbox.self_check import *  # noqa: F403 (the checks are the tests)

from sandbox_sdk.integrations.inspect_ai import SandboxSdkConfig, SandboxSdkEnvironment

pytestmark = pytest.mark.isolation

TASK = "self-check"
CANNOT_PASS = {
    "test_exec_as_user": (
        "commands run as the environment's one unprivileged user (nobody: in its own user "
        "namespace under bubblewrap, the sandbox uid without any capability in gVisor's "
        "kernel under gVisor): there is no root to add a user or to switch to, so "
        "user='root' raises SandboxUserUnsupportedError"
    ),
}


@pytest.fixture
async def sandbox_env(
    request: pytest.FixtureRequest, integration_stack: EmbeddedStack, api_key_file: Path
) -> AsyncIterator[SandboxEnvironment]:
    """One environment of ours through the provider's own sample lifecycle."""
    reason = CANNOT_PASS.get(request.node.originalname)
    if reason is not None:
        request.applymarker(pytest.mark.xfail(reason=reason, strict=True))
    config = SandboxSdkConfig(target=integration_stack.target, api_key_file=str(api_key_file))
    await SandboxSdkEnvironment.task_init("startup", config)
    environments = await SandboxSdkEnvironment.sample_init(TASK, config, {})
    try:
        made = environments["default"].as_type(SandboxSdkEnvironment)
        assert made.sandbox.info.runtime is sandbox_runtimes.current()
        yield made
    finally:
        await SandboxSdkEnvironment.sample_cleanup(TASK, config, environments, False)
        await SandboxSdkEnvironment.task_cleanup("shutdown", config, True)
