"""intents and dispute review: each inbound message's intent and confidence; a dispute's
needs_review flag and an agent's confirmed/dismissed word on it

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04 08:00:00.000000

Columns are added and dropped in place (no batch rebuild), so the dispute and inbound_message
tables keep the triggers of 0005 that wake their buyer.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import worker.schema

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

_INBOUND = (
    ("intent", sa.String(32), "what the buyer's words want (worker.domain.Intent)"),
    ("intent_confidence", sa.Float(), "how sure the intent reader was, 0 to 1"),
)
_DISPUTE = (
    ("review", sa.String(16), "an agent's word: confirmed, dismissed; NULL: none"),
    ("reviewed_at", worker.schema.UtcDateTime(), None),
    ("reviewed_by", sa.String(64), "the agent who confirmed or dismissed it"),
)


def upgrade() -> None:
    for name, kind, comment in _INBOUND:
        op.add_column("inbound_message", sa.Column(name, kind, nullable=True, comment=comment))
    op.add_column(
        "dispute",
        sa.Column(
            "needs_review",
            sa.Boolean(),
            nullable=False,
            server_default=sa.false(),
            comment="opened on an unsure reading of the buyer's mail: an agent confirms or "
            "dismisses",
        ),
    )
    for name, kind, comment in _DISPUTE:
        op.add_column("dispute", sa.Column(name, kind, nullable=True, comment=comment))


def downgrade() -> None:
    for name, _kind, _comment in reversed(_DISPUTE):
        op.drop_column("dispute", name)
    op.drop_column("dispute", "needs_review")
    for name, _kind, _comment in reversed(_INBOUND):
        op.drop_column("inbound_message", name)
