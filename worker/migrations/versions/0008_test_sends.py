"""operator commands: test sends recorded apart, who added a suppression, removals kept

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04 12:00:00.000000

``test_send`` is its own table, never ``send``: a test message counts for no order, cap,
plan or metric. The suppression table gains ``created_by``, added in place (no batch
rebuild) so it keeps the triggers of 0005 that wake its buyer; a removed suppression is
kept in ``suppression_removal`` with who removed it and why.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import worker.schema

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "test_send",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("campaign", sa.String(64), nullable=False),
        sa.Column("step", sa.String(64), nullable=False),
        sa.Column(
            "order_id", sa.String(64), nullable=True, comment="the order rendered; NULL: the sample"
        ),
        sa.Column("locale", sa.String(35), nullable=False),
        sa.Column("recipient", sa.String(320), nullable=False),
        sa.Column("subject", sa.Text(), nullable=False),
        sa.Column("message_id", sa.String(255), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False, comment="sent, failed, in_doubt"),
        sa.Column("detail", sa.Text(), nullable=False, server_default=""),
        sa.Column("created_by", sa.String(64), nullable=False),
        sa.Column("created_at", worker.schema.UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_test_send")),
    )
    op.add_column(
        "suppression",
        sa.Column(
            "created_by",
            sa.String(64),
            nullable=True,
            comment="the operator who added it; NULL: the worker itself (a bounce, a report)",
        ),
    )
    op.create_table(
        "suppression_removal",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("email", sa.String(320), nullable=False),
        sa.Column("reason", sa.String(32), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False, server_default=""),
        sa.Column("created_at", worker.schema.UtcDateTime(), nullable=False),
        sa.Column("created_by", sa.String(64), nullable=True),
        sa.Column("removed_at", worker.schema.UtcDateTime(), nullable=False),
        sa.Column("removed_by", sa.String(64), nullable=False),
        sa.Column(
            "forced",
            sa.Boolean(),
            nullable=False,
            server_default=sa.false(),
            comment="a hard bounce or spam complaint removed with --force",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_suppression_removal")),
    )
    op.create_index(
        op.f("ix_suppression_removal_email"), "suppression_removal", ["email"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_suppression_removal_email"), table_name="suppression_removal")
    op.drop_table("suppression_removal")
    op.drop_column("suppression", "created_by")
    op.drop_table("test_send")
