"""A scorer failing in a real sandbox: recorded and logged once, or failing the experiment."""

from __future__ import annotations

import pytest

from sandbox_sdk import ExperimentFailedError, ExperimentState, LogLevel, SandboxClient

# Scores 1, except for the output "bad", on which it crashes.
PICKY = {
    "name": "picky",
    "command": ["sh", "-c", 'test "$(cat)" = bad && { echo boom >&2; exit 3; }; echo 1'],
}


def test_fail_on_scorer_error_fails_the_experiment_at_the_first_failure(
    client: SandboxClient,
) -> None:
    with client.create_environment() as sandbox:
        experiment = sandbox.run_experiment(
            model="echo",
            prompts=["good", "bad", "good"],
            scorers=[PICKY],
            fail_on_scorer_error=True,
        )
        with pytest.raises(ExperimentFailedError) as caught:
            experiment.get_results()
        assert caught.value.reason == "SCORER_FAILED"
        assert "scorer picky failed on input 1 repeat 0" in str(caught.value)
        assert "exited with code 3: boom" in str(caught.value)
        assert "fix the scorer" in str(caught.value)  # advice that fits the reason
        info = experiment.refresh()
        assert info.state is ExperimentState.FAILED
        assert info.failure is not None
        assert info.failure.reason == "SCORER_FAILED"
        partial = experiment.get_results(raise_on_failure=False)
        assert [s.input_index for s in partial.samples] == [0, 1]
        assert partial.samples[0].scores == {"picky": 1.0}
        assert list(partial.samples[1].score_errors) == ["picky"]


def test_without_the_option_a_failing_scorer_is_recorded_and_warned_about_once(
    client: SandboxClient,
) -> None:
    with client.create_environment() as sandbox:
        experiment = sandbox.run_experiment(
            model="echo", prompts=["bad", "good", "bad"], scorers=[PICKY]
        )
        results = experiment.get_results()
        warnings = [
            line.message
            for line in experiment.stream_logs(follow=False)
            if line.level is LogLevel.WARNING
        ]
    assert results.experiment.state is ExperimentState.SUCCEEDED
    assert [list(s.score_errors) for s in results.samples] == [["picky"], [], ["picky"]]
    assert len(warnings) == 2
    assert warnings[0].startswith("input 0 repeat 0: scorer picky failed:")
    assert warnings[1].startswith("scorer picky failed on 2 of 3 scored samples")
