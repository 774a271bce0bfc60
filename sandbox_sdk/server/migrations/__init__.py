"""Alembic migrations of the gateway's shared store (run by ``store.migrate``)."""
