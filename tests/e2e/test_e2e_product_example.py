"""The product description's usage example, verbatim, against the embedded server."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from e2e_support import EmbeddedStack

from sandbox_sdk import EnvironmentState, ExperimentResults, ExperimentState

# Copied character for character from the product description's "Usage" section.
PRODUCT_EXAMPLE = textwrap.dedent(
    """\
    from sandbox_sdk import SandboxClient

    # Initialize the client
    client = SandboxClient(config_path="config.yaml")

    # Create a sandbox environment
    sandbox = client.create_environment()

    # Run an experiment
    experiment = sandbox.run_experiment(
        model="gpt-3",
        prompt="Hello, world!",
        parameters={"temperature": 0.7}
    )

    # Get results
    results = experiment.get_results()
    """
)


def test_the_product_example_runs_verbatim_with_a_config_file(
    stack: EmbeddedStack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No target and no key, as on the machine running `sandbox-sdk serve`: the SDK
    # uses the server's Unix socket in the data dir, and the local admin key there.
    (tmp_path / "config.yaml").write_text(f"data_dir: {stack.data_dir}\n")
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {}
    try:
        exec(compile(PRODUCT_EXAMPLE, "product-example", "exec"), namespace)  # noqa: S102
        results = namespace["results"]
        assert isinstance(results, ExperimentResults)
        assert results.experiment.state is ExperimentState.SUCCEEDED
        assert results.experiment.model == "gpt-3"
        [sample] = results.samples
        assert sample.prompt == "Hello, world!"
        assert sample.output.strip(), "the real model produced no text"
        assert not sample.error
        assert sample.usage.prompt_tokens > 0
        assert sample.usage.completion_tokens > 0
        assert results.total_usage.completion_tokens == sample.usage.completion_tokens
        assert results.metrics["completion_tokens"].count == 1
    finally:
        sandbox = namespace.get("sandbox")
        if sandbox is not None:
            assert sandbox.delete().state is EnvironmentState.TERMINATED  # type: ignore[attr-defined]
        client = namespace.get("client")
        if client is not None:
            client.close()  # type: ignore[attr-defined]
