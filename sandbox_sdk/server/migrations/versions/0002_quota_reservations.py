"""Quota reservations: the creates in flight through every gateway sharing the store."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"


def upgrade() -> None:
    """Creates ``gw_quota_reservations``."""
    op.create_table(
        "gw_quota_reservations",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("tenant", sa.Text, nullable=False),
        sa.Column("quota", sa.Text, nullable=False),
        sa.Column("expire_time", sa.Float(precision=53), nullable=False),
    )
    op.create_index("gw_quota_reservations_by_quota", "gw_quota_reservations", ["tenant", "quota"])
