"""Client-side RPC metrics and views of an experiment's metric stream."""

from sandbox_sdk.monitoring.metric_views import (
    MetricSeries,
    by_input,
    group_metrics,
    metrics_table,
    plot_metrics,
    sparkline,
)
from sandbox_sdk.monitoring.rpc_metrics import (
    OpenTelemetryObserver,
    PrometheusObserver,
    RpcObserver,
    observer_from_settings,
)

__all__ = [
    "MetricSeries",
    "OpenTelemetryObserver",
    "PrometheusObserver",
    "RpcObserver",
    "by_input",
    "group_metrics",
    "metrics_table",
    "observer_from_settings",
    "plot_metrics",
    "sparkline",
]
