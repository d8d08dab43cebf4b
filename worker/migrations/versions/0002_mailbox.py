"""mailbox: inbound messages, checkpoints, reply tokens

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22 22:27:59.803892
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import worker.schema

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "mailbox_checkpoint",
        sa.Column("mailbox", sa.String(length=320), nullable=False),
        sa.Column("folder", sa.String(length=255), nullable=False),
        sa.Column("uidvalidity", sa.BigInteger(), nullable=False),
        sa.Column(
            "last_uid", sa.BigInteger(), nullable=False, comment="every UID up to here is stored"
        ),
        sa.Column("updated_at", worker.schema.UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("mailbox", "folder", name=op.f("pk_mailbox_checkpoint")),
    )
    op.create_table(
        "inbound_message",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column(
            "mailbox", sa.String(length=320), nullable=False, comment="user@host it was read from"
        ),
        sa.Column("folder", sa.String(length=255), nullable=False),
        sa.Column("uidvalidity", sa.BigInteger(), nullable=False),
        sa.Column("uid", sa.BigInteger(), nullable=False),
        sa.Column(
            "message_id",
            sa.String(length=998),
            nullable=False,
            comment="empty when the message had none",
        ),
        sa.Column(
            "content_hash", sa.String(length=64), nullable=False, comment="sha256 of the raw bytes"
        ),
        sa.Column(
            "received_at", worker.schema.UtcDateTime(), nullable=False, comment="IMAP INTERNALDATE"
        ),
        sa.Column(
            "dated_at",
            worker.schema.UtcDateTime(),
            nullable=True,
            comment="the Date header, as the sender claims",
        ),
        sa.Column("sender", sa.String(length=320), nullable=False),
        sa.Column("sender_name", sa.Text(), server_default="", nullable=False),
        sa.Column(
            "recipients", sa.Text(), server_default="[]", nullable=False, comment="JSON list"
        ),
        sa.Column("subject", sa.Text(), server_default="", nullable=False),
        sa.Column(
            "thread_ids", sa.Text(), server_default="[]", nullable=False, comment="JSON list"
        ),
        sa.Column("body_text", sa.Text(), server_default="", nullable=False),
        sa.Column("raw", sa.LargeBinary(), nullable=False),
        sa.Column(
            "parse_errors", sa.Text(), server_default="[]", nullable=False, comment="JSON list"
        ),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("evidence", sa.Text(), server_default="", nullable=False),
        sa.Column("dispute_kind", sa.String(length=32), nullable=True),
        sa.Column("rating", sa.Integer(), nullable=True),
        sa.Column("marketplace", sa.String(length=32), nullable=True),
        sa.Column("bounce_status", sa.String(length=16), nullable=True),
        sa.Column("bounce_recipient", sa.String(length=320), nullable=True),
        sa.Column("order_id", sa.String(length=64), nullable=True),
        sa.Column("send_id", sa.Integer(), nullable=True, comment="the send it answers or bounces"),
        sa.Column("match_method", sa.String(length=32), nullable=True),
        sa.Column("match_detail", sa.Text(), server_default="", nullable=False),
        sa.Column("ingested_at", worker.schema.UtcDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["order_id"], ["order.order_id"], name=op.f("fk_inbound_message_order_id_order")
        ),
        sa.ForeignKeyConstraint(
            ["send_id"], ["send.id"], name=op.f("fk_inbound_message_send_id_send")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_inbound_message")),
        sa.UniqueConstraint("message_id", "content_hash", name="uq_inbound_message_identity"),
    )
    with op.batch_alter_table("inbound_message", schema=None) as batch_op:
        batch_op.create_index(
            "ix_inbound_message_bounce", ["bounce_recipient", "kind", "received_at"], unique=False
        )
        batch_op.create_index("ix_inbound_message_message_id", ["message_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_inbound_message_order_id"), ["order_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_inbound_message_sender"), ["sender"], unique=False)

    with op.batch_alter_table("dispute", schema=None) as batch_op:
        batch_op.add_column(sa.Column("inbound_message_id", sa.Integer(), nullable=True))
        batch_op.create_foreign_key(
            batch_op.f("fk_dispute_inbound_message_id_inbound_message"),
            "inbound_message",
            ["inbound_message_id"],
            ["id"],
        )

    with op.batch_alter_table("order", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "reply_token",
                sa.String(length=32),
                nullable=True,
                comment="reply+TOKEN@ threads replies",
            )
        )
        batch_op.create_unique_constraint(batch_op.f("uq_order_reply_token"), ["reply_token"])

    # A marketplace notification can say "a review was posted" without the stars.
    with op.batch_alter_table("review", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("ck_review_rating_range"), type_="check")
        batch_op.alter_column(
            "rating",
            existing_type=sa.INTEGER(),
            nullable=True,
            comment="1-5; empty when a notification did not say",
        )
        batch_op.create_check_constraint("rating_range", "rating IS NULL OR rating BETWEEN 1 AND 5")

    with op.batch_alter_table("send", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "relay_message_id",
                sa.String(length=255),
                nullable=True,
                comment="the id read from relay_reply",
            )
        )
        batch_op.create_index(batch_op.f("ix_send_message_id"), ["message_id"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_send_relay_message_id"), ["relay_message_id"], unique=False
        )

    _backfill_relay_message_ids()


def _backfill_relay_message_ids() -> None:
    """Sends recorded before this revision keep their relay's id in the 250 reply text."""
    from worker.send import relay_message_id

    bind = op.get_bind()
    rows = bind.execute(sa.text("SELECT id, relay_reply FROM send WHERE relay_reply IS NOT NULL"))
    for send_id, reply in rows.fetchall():
        found = relay_message_id(reply)
        if found:
            bind.execute(
                sa.text("UPDATE send SET relay_message_id = :found WHERE id = :id"),
                {"found": found, "id": send_id},
            )


def downgrade() -> None:
    with op.batch_alter_table("send", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_send_relay_message_id"))
        batch_op.drop_index(batch_op.f("ix_send_message_id"))
        batch_op.drop_column("relay_message_id")

    op.execute("DELETE FROM review WHERE rating IS NULL")
    with op.batch_alter_table("review", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("ck_review_rating_range"), type_="check")
        batch_op.alter_column("rating", existing_type=sa.INTEGER(), nullable=False, comment=None)
        batch_op.create_check_constraint("rating_range", "rating BETWEEN 1 AND 5")

    with op.batch_alter_table("order", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("uq_order_reply_token"), type_="unique")
        batch_op.drop_column("reply_token")

    with op.batch_alter_table("dispute", schema=None) as batch_op:
        batch_op.drop_constraint(
            batch_op.f("fk_dispute_inbound_message_id_inbound_message"), type_="foreignkey"
        )
        batch_op.drop_column("inbound_message_id")

    with op.batch_alter_table("inbound_message", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_inbound_message_sender"))
        batch_op.drop_index(batch_op.f("ix_inbound_message_order_id"))
        batch_op.drop_index("ix_inbound_message_message_id")
        batch_op.drop_index("ix_inbound_message_bounce")

    op.drop_table("inbound_message")
    op.drop_table("mailbox_checkpoint")
