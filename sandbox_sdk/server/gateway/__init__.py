"""The Gateway: the public GatewayService in front of one or more orchestrators.

It authenticates API keys, enforces per-tenant quotas and rate limits, and
forwards each call to the orchestrator that owns the resource, passing the
caller's tenant in ``x-sandbox-tenant``.
"""
