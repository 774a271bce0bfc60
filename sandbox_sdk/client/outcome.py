"""Errors for experiments and template builds that did not succeed or are still running, and for
queued creates."""

from __future__ import annotations

from sandbox_sdk.errors import ExperimentFailedError, SandboxTimeoutError, TemplateBuildFailedError
from sandbox_sdk.models.environment import EnvironmentInfo
from sandbox_sdk.models.experiment import ExperimentInfo, ExperimentState
from sandbox_sdk.models.templates import TemplateInfo, TemplateState


def ensure_succeeded(info: ExperimentInfo) -> None:
    """Raises :class:`ExperimentFailedError` unless the experiment SUCCEEDED."""
    if info.state is ExperimentState.SUCCEEDED:
        return
    reason = info.failure.reason if info.failure else info.state.value
    detail = info.failure.message if info.failure else ""
    advice = {
        ExperimentState.TIMED_OUT: "raise run_experiment(timeout=...) or use fewer inputs",
        ExperimentState.CANCELLED: "it was cancelled; run it again if that was not intended",
    }.get(info.state, f"read its logs with `sandbox-sdk logs {info.id}`, fix the cause and rerun")
    if reason == "SCORER_FAILED":
        advice = (
            "fix the scorer (each sample's score_errors says why it failed), or run without "
            "fail_on_scorer_error to record scorer failures and go on"
        )
    raise ExperimentFailedError(
        f"experiment {info.id} ended {info.state.value} ({reason}"
        + (f": {detail}" if detail else "")
        + f"); {advice}. get_results(raise_on_failure=False) returns the partial results",
        reason=reason,
        metadata={"experiment_id": info.id, "state": info.state.value},
    )


def still_running_error(info: ExperimentInfo, waited: float) -> SandboxTimeoutError:
    """The error for a wait that ran out before the experiment finished."""
    return SandboxTimeoutError(
        f"experiment {info.id} is still {info.state.value} after {waited:.0f}s "
        f"({info.completed_samples}/{info.total_samples} samples); wait again with a larger "
        "timeout (or set SANDBOX_WAIT_TIMEOUT), or cancel() it",
        metadata={"experiment_id": info.id, "state": info.state.value},
    )


QUEUE_POLL_SECONDS = (0.2, 2.0)
"""The first and the longest pause between looks at a queued environment."""


def still_queued(info: EnvironmentInfo) -> SandboxTimeoutError:
    """The error of a create whose wait in the queue ran out of time."""
    return SandboxTimeoutError(
        f"environment {info.id} is still {info.state.value.lower()} "
        f"(position {info.queue_position} in the queue) when the timeout ran out; it keeps "
        "its place: wait for it with get_environment, or delete it if you no longer need it"
    )


def ensure_template_ready(info: TemplateInfo) -> None:
    """Raises :class:`TemplateBuildFailedError` when the template's build FAILED."""
    if info.state is not TemplateState.FAILED:
        return
    raise TemplateBuildFailedError(
        f"template {info.id} failed to build: {info.failure_message or 'no reason given'}; "
        f"its log says more (template.logs(), `sandbox-sdk template logs {info.id}`). Fix the "
        "spec, delete the template and build it again",
        reason="TEMPLATE_BUILD_FAILED",
        metadata={"template_id": info.id, "state": info.state.value},
    )


def still_building(info: TemplateInfo, waited: float) -> SandboxTimeoutError:
    """The error for a wait that ran out before the template's build ended."""
    return SandboxTimeoutError(
        f"template {info.id} is still {info.state.value} after {waited:.0f}s; the build goes "
        "on: wait again with a larger timeout (or set SANDBOX_WAIT_TIMEOUT), or delete() it "
        "to stop it",
        metadata={"template_id": info.id, "state": info.state.value},
    )
