"""Integrations of the SDK with other tools; each is an extra (``sandbox-sdk[inspect]``)."""
