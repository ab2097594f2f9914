"""connectors and drift: request/grant parameters, drift findings, target health, jobs

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30 06:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import jitaccess.adapters.db.tables

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

UTC = jitaccess.adapters.db.tables.UTCDateTime


def upgrade() -> None:
    with op.batch_alter_table("requests", schema=None) as batch_op:
        batch_op.add_column(sa.Column("params", sa.JSON(), nullable=True))
    with op.batch_alter_table("grants", schema=None) as batch_op:
        batch_op.add_column(sa.Column("params", sa.JSON(), nullable=True))
    op.create_table(
        "drift_findings",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("target", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("account", sa.String(length=300), nullable=False),
        sa.Column("principal", sa.String(length=64), nullable=True),
        sa.Column("grant_id", sa.String(length=40), nullable=True),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.Column("found_at", UTC(), nullable=False),
        sa.Column("last_seen_at", UTC(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("resolved_at", UTC(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("drift_findings", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_drift_findings_state"), ["state"], unique=False)
        batch_op.create_index(
            "ix_drift_target_account", ["target", "account", "kind"], unique=False
        )
    op.create_table(
        "target_health",
        sa.Column("target", sa.String(length=64), nullable=False),
        sa.Column("type", sa.String(length=64), nullable=False),
        sa.Column("checked_at", UTC(), nullable=False),
        sa.Column("ok", sa.Boolean(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("reconciled_at", UTC(), nullable=True),
        sa.PrimaryKeyConstraint("target"),
    )
    op.create_table(
        "jobs",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("next_run_at", UTC(), nullable=False),
        sa.Column("last_run_at", UTC(), nullable=True),
        sa.Column("last_result", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("name"),
    )


def downgrade() -> None:
    op.drop_table("jobs")
    op.drop_table("target_health")
    op.drop_table("drift_findings")
    with op.batch_alter_table("grants", schema=None) as batch_op:
        batch_op.drop_column("params")
    with op.batch_alter_table("requests", schema=None) as batch_op:
        batch_op.drop_column("params")
