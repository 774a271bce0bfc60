"""Prometheus metrics of the sandbox layer, registered on the registry given."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class SandboxMetrics:
    """Gauges of what is running and allocated; counters of how things ended."""

    def __init__(self, registry: CollectorRegistry | None) -> None:
        registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self.environments_running = Gauge(
            "sandbox_environments_running",
            "Environments RUNNING (or being created) on this orchestrator.",
            registry=registry,
        )
        self.cpu_cores_allocated = Gauge(
            "sandbox_cpu_cores_allocated",
            "CPU cores promised to running environments.",
            registry=registry,
        )
        self.memory_bytes_allocated = Gauge(
            "sandbox_memory_bytes_allocated",
            "Memory promised to running environments, in bytes.",
            registry=registry,
        )
        self.execs = Counter(
            "sandbox_execs",
            "Commands run in environments, by how they ended.",
            ["reason"],
            registry=registry,
        )
        self.environments_terminated = Counter(
            "sandbox_environments_terminated",
            "Environments terminated, by termination reason.",
            ["reason"],
            registry=registry,
        )
        self.forwarded_bytes = Counter(
            "sandbox_forwarded_bytes",
            "Bytes carried by ForwardPort: 'in' toward servers in environments, 'out' back.",
            ["direction"],
            registry=registry,
        )
        self.port_forwards = Gauge(
            "sandbox_port_forwards",
            "ForwardPort connections open now.",
            registry=registry,
        )
        self.create_seconds = Histogram(
            "sandbox_environment_create_seconds",
            "Time to set up an environment (workspace, cgroups, files).",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
            registry=registry,
        )

    def set_allocation(self, environments: int, cpu_cores: float, memory_bytes: int) -> None:
        """Publishes what running environments hold."""
        self.environments_running.set(environments)
        self.cpu_cores_allocated.set(cpu_cores)
        self.memory_bytes_allocated.set(memory_bytes)
