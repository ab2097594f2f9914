"""approval workflows: bundles, break-glass, auto-approval, escalation, MFA, reviews, inbox

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30 06:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import jitaccess.adapters.db.tables

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

UTC = jitaccess.adapters.db.tables.UTCDateTime


def upgrade() -> None:
    with op.batch_alter_table("requests", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("partial", sa.Boolean(), server_default=sa.false(), nullable=False)
        )
        batch_op.add_column(
            sa.Column("break_glass", sa.Boolean(), server_default=sa.false(), nullable=False)
        )
        batch_op.add_column(sa.Column("auto_approved", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("escalations", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("next_escalation_at", UTC(), nullable=True))

    op.create_table(
        "mfa_enrollments",
        sa.Column("principal", sa.String(length=64), nullable=False),
        sa.Column("secret", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", UTC(), nullable=False),
        sa.Column("confirmed_at", UTC(), nullable=True),
        sa.Column("last_step", sa.BigInteger(), nullable=True),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("failures_since", UTC(), nullable=True),
        sa.Column("locked_until", UTC(), nullable=True),
        sa.PrimaryKeyConstraint("principal"),
    )
    op.create_table(
        "reviews",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("request_id", sa.String(length=40), nullable=False),
        sa.Column("principal", sa.String(length=64), nullable=False),
        sa.Column("roles", sa.JSON(), nullable=False),
        sa.Column("justification", sa.Text(), nullable=False),
        sa.Column("created_at", UTC(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("signed_off_by", sa.String(length=64), nullable=True),
        sa.Column("signed_off_at", UTC(), nullable=True),
        sa.Column("comment", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("reviews", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_reviews_request_id"), ["request_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_reviews_state"), ["state"], unique=False)
    op.create_table(
        "notifications",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("recipient", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("subject", sa.String(length=300), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("created_at", UTC(), nullable=False),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("notifications", schema=None) as batch_op:
        batch_op.create_index(
            "ix_notifications_recipient_created", ["recipient", "created_at"], unique=False
        )


def downgrade() -> None:
    op.drop_table("notifications")
    op.drop_table("reviews")
    op.drop_table("mfa_enrollments")
    with op.batch_alter_table("requests", schema=None) as batch_op:
        for column in ("next_escalation_at", "escalations", "auto_approved", "break_glass"):
            batch_op.drop_column(column)
        batch_op.drop_column("partial")
