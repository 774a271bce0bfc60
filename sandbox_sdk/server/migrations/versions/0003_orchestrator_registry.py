"""Orchestrator registry: the orchestrators that registered themselves, with leases."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"


def upgrade() -> None:
    """Creates ``gw_orchestrators``."""
    op.create_table(
        "gw_orchestrators",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("address", sa.Text, nullable=False),
        sa.Column("max_environments", sa.Integer, nullable=False),
        sa.Column("cpu_cores", sa.Float(precision=53), nullable=False),
        sa.Column("memory_bytes", sa.BigInteger, nullable=False),
        sa.Column("zone", sa.Text, nullable=False),
        sa.Column("machine_class", sa.Text, nullable=False),
        sa.Column("version", sa.Text, nullable=False),
        sa.Column("lease_expire_time", sa.Float(precision=53), nullable=False),
        sa.Column("draining", sa.Boolean, nullable=False),
    )
