"""API keys: hashes and metadata (the schema of the pre-Alembic SQLite files)."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None


def upgrade() -> None:
    """Creates ``gw_api_keys`` and its newest-first index."""
    op.create_table(
        "gw_api_keys",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("tenant", sa.Text, nullable=False),
        sa.Column("scopes", sa.Text, nullable=False),
        sa.Column("display_name", sa.Text, nullable=False),
        sa.Column("key_hash", sa.LargeBinary, nullable=False),
        sa.Column("create_time", sa.Float(precision=53), nullable=False),
        sa.Column("expire_time", sa.Float(precision=53)),
        sa.Column("revoke_time", sa.Float(precision=53)),
        sa.Column("request_id", sa.Text, unique=True),
    )
    op.create_index(
        "gw_api_keys_newest_first",
        "gw_api_keys",
        [sa.text("create_time DESC"), sa.text("id DESC")],
    )
