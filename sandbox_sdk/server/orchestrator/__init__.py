"""The Orchestrator: sandboxes, resource limits and monitoring, experiments."""
