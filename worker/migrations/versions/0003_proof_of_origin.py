"""proof of origin: authentication verdicts, withheld reactions, send recipients and texts

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02 16:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "inbound_message",
        sa.Column(
            "authentication",
            sa.Text(),
            nullable=False,
            server_default="",
            comment="who vouched for the From domain, or why no one did",
        ),
    )
    op.add_column(
        "inbound_message",
        sa.Column(
            "withheld",
            sa.Text(),
            nullable=False,
            server_default="",
            comment="why the message acted on nothing it asked for",
        ),
    )
    op.add_column(
        "send",
        sa.Column("recipient", sa.String(length=320), nullable=True, comment="the address mailed"),
    )
    op.add_column(
        "send",
        sa.Column(
            "body_text",
            sa.Text(),
            nullable=True,
            comment="the text part sent: our words never count as the buyer's",
        ),
    )
    # Disputes opened by a marketplace notice are the ones its closing notice may close.
    op.execute(
        """
        UPDATE dispute SET source = 'marketplace:' || (
            SELECT m.marketplace FROM inbound_message m WHERE m.id = dispute.inbound_message_id
        )
        WHERE source = 'mailbox' AND inbound_message_id IN (
            SELECT id FROM inbound_message
            WHERE kind = 'dispute_opened' AND marketplace IS NOT NULL
        )
        """
    )


def downgrade() -> None:
    op.execute("UPDATE dispute SET source = 'mailbox' WHERE source LIKE 'marketplace:%'")
    with op.batch_alter_table("send", schema=None) as batch_op:
        batch_op.drop_column("body_text")
        batch_op.drop_column("recipient")
    with op.batch_alter_table("inbound_message", schema=None) as batch_op:
        batch_op.drop_column("withheld")
        batch_op.drop_column("authentication")
