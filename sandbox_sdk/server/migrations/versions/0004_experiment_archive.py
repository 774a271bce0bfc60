"""Experiment archive: finished experiments, their samples and events, outliving their node.

An orchestrator ships each finished experiment here once (see
``orchestrator/experiments/archive_shipper.py``); the gateways serve it from
here when the orchestrator that ran it is gone. The primary keys make a
repeated shipment change nothing. Messages are stored serialized, exactly as
the orchestrator's RPCs return them.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"


def upgrade() -> None:
    """Creates ``gw_archived_experiments``, ``gw_archived_samples`` and ``gw_archived_events``."""
    op.create_table(
        "gw_archived_experiments",
        sa.Column("experiment_id", sa.Text, primary_key=True),
        sa.Column("tenant", sa.Text, nullable=False),
        # A serialized sandbox.v1.Experiment.
        sa.Column("experiment", sa.LargeBinary, nullable=False),
        # A serialized GetExperimentResultsResponse holding only metrics and total_usage.
        sa.Column("summary", sa.LargeBinary, nullable=False),
        sa.Column("archive_time", sa.Float(precision=53), nullable=False),
    )
    op.create_table(
        "gw_archived_samples",
        sa.Column("experiment_id", sa.Text, primary_key=True),
        sa.Column("input_index", sa.Integer, primary_key=True),
        sa.Column("repeat", sa.Integer, primary_key=True),
        # A serialized sandbox.v1.SampleResult.
        sa.Column("sample", sa.LargeBinary, nullable=False),
    )
    op.create_table(
        "gw_archived_events",
        sa.Column("experiment_id", sa.Text, primary_key=True),
        sa.Column("sequence", sa.BigInteger, primary_key=True),
        # A serialized sandbox.v1.ExperimentEvent.
        sa.Column("event", sa.LargeBinary, nullable=False),
    )


def downgrade() -> None:
    """Drops the archive's tables."""
    op.drop_table("gw_archived_events")
    op.drop_table("gw_archived_samples")
    op.drop_table("gw_archived_experiments")
