"""Prometheus metrics of the experiment engine."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class EngineMetrics:
    """Counters and gauges of experiments, samples, tokens, retries and tool calls."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.created = Counter(
            "sandbox_experiments_created",
            "Experiments accepted, by model.",
            ["model"],
            registry=registry,
        )
        self.finished = Counter(
            "sandbox_experiments_finished",
            "Experiments that reached a final state, by state.",
            ["state"],
            registry=registry,
        )
        self.running = Gauge(
            "sandbox_experiments_running", "Experiments running now.", registry=registry
        )
        self.queued = Gauge(
            "sandbox_experiments_queued", "Experiments waiting for a slot.", registry=registry
        )
        self.samples = Counter(
            "sandbox_experiment_samples",
            "Samples finished, by model and outcome (ok or model_error).",
            ["model", "outcome"],
            registry=registry,
        )
        self.completion_tokens = Counter(
            "sandbox_experiment_completion_tokens",
            "Tokens generated, by model.",
            ["model"],
            registry=registry,
        )
        self.retries = Counter(
            "sandbox_experiment_model_retries",
            "Model calls retried after a transient failure, by model.",
            ["model"],
            registry=registry,
        )
        self.tool_calls = Counter(
            "sandbox_experiment_tool_calls",
            "Sandbox tool calls made by models, by model and outcome (ok or error: refused,"
            " timed out or killed).",
            ["model", "outcome"],
            registry=registry,
        )
        self.sample_latency = Histogram(
            "sandbox_experiment_sample_latency_seconds",
            "Time from model request to last token, by model.",
            ["model"],
            registry=registry,
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
        )
