"""The reference services: the public Gateway and the internal Orchestrator.

Client code (``sandbox_sdk.client`` and friends) never imports this package.
"""
