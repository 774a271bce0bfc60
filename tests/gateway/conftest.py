"""Fixtures for the gateway tests, from gateway_fixtures.py (shared with tests/security)."""

from __future__ import annotations

from gateway_fixtures import caller_for, channels, stack, start_gateway, start_orchestrator

__all__ = ["caller_for", "channels", "stack", "start_gateway", "start_orchestrator"]
