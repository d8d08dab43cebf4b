"""pauses: an operator's stop on sending, for everything, a marketplace or a campaign

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04 12:00:00.000000

A new table only: every pass reads it (one small query) and the daemon again before each
claim, so a pause stored by `worker pause` on any machine stops every worker within a pass.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import worker.schema

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "pause",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column(
            "scope", sa.String(16), nullable=False, comment="everything, marketplace or campaign"
        ),
        sa.Column(
            "target", sa.String(64), nullable=False, comment="the marketplace or campaign; '' all"
        ),
        sa.Column("paused_by", sa.String(64), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False, server_default=""),
        sa.Column("paused_at", worker.schema.UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_pause")),
        sa.UniqueConstraint("scope", "target", name=op.f("uq_pause_scope")),
        sa.CheckConstraint(
            "scope IN ('everything', 'marketplace', 'campaign')", name=op.f("ck_pause_scope_known")
        ),
    )


def downgrade() -> None:
    op.drop_table("pause")
