"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-22 20:59:57.511319
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import worker.schema

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "customer",
        sa.Column("email", sa.String(length=320), nullable=False, comment="normalised address"),
        sa.Column("name", sa.Text(), server_default="", nullable=False),
        sa.Column("locale", sa.String(length=35), nullable=True),
        sa.Column("country", sa.String(length=2), nullable=True),
        sa.Column("timezone", sa.String(length=64), nullable=True),
        sa.Column("updated_at", worker.schema.UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("email", name=op.f("pk_customer")),
    )
    op.create_table(
        "suppression",
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("reason", sa.String(length=32), nullable=False),
        sa.Column("detail", sa.Text(), server_default="", nullable=False),
        sa.Column("created_at", worker.schema.UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("email", name=op.f("pk_suppression")),
    )
    op.create_table(
        "order",
        sa.Column("order_id", sa.String(length=64), nullable=False),
        sa.Column("marketplace", sa.String(length=16), nullable=False),
        sa.Column("buyer_email", sa.String(length=320), nullable=False),
        sa.Column("buyer_name", sa.Text(), server_default="", nullable=False),
        sa.Column(
            "products", sa.Text(), server_default="[]", nullable=False, comment="JSON list of names"
        ),
        sa.Column("locale", sa.String(length=35), nullable=True),
        sa.Column("country", sa.String(length=2), nullable=True),
        sa.Column("ordered_at", worker.schema.UtcDateTime(), nullable=True),
        sa.Column("shipped_at", worker.schema.UtcDateTime(), nullable=True),
        sa.Column("delivered_at", worker.schema.UtcDateTime(), nullable=True),
        sa.Column("review_url", sa.Text(), nullable=True),
        sa.Column("updated_at", worker.schema.UtcDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["buyer_email"], ["customer.email"], name=op.f("fk_order_buyer_email_customer")
        ),
        sa.PrimaryKeyConstraint("order_id", name=op.f("pk_order")),
    )
    with op.batch_alter_table("order", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_order_buyer_email"), ["buyer_email"], unique=False)

    op.create_table(
        "dispute",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("order_id", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("opened_at", worker.schema.UtcDateTime(), nullable=False),
        sa.Column("closed_at", worker.schema.UtcDateTime(), nullable=True),
        sa.Column("source", sa.String(length=32), nullable=False),
        sa.ForeignKeyConstraint(
            ["order_id"], ["order.order_id"], name=op.f("fk_dispute_order_id_order")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dispute")),
        sa.UniqueConstraint("order_id", "kind", "opened_at", name=op.f("uq_dispute_order_id")),
    )
    with op.batch_alter_table("dispute", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_dispute_order_id"), ["order_id"], unique=False)

    op.create_table(
        "reply",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("order_id", sa.String(length=64), nullable=False),
        sa.Column("replied_at", worker.schema.UtcDateTime(), nullable=False),
        sa.Column("source", sa.String(length=32), nullable=False),
        sa.ForeignKeyConstraint(
            ["order_id"], ["order.order_id"], name=op.f("fk_reply_order_id_order")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_reply")),
        sa.UniqueConstraint("order_id", "replied_at", "source", name=op.f("uq_reply_order_id")),
    )
    op.create_table(
        "review",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("order_id", sa.String(length=64), nullable=False),
        sa.Column("rating", sa.Integer(), nullable=False),
        sa.Column("reviewed_at", worker.schema.UtcDateTime(), nullable=False),
        sa.Column("source", sa.String(length=32), nullable=False),
        sa.CheckConstraint("rating BETWEEN 1 AND 5", name=op.f("ck_review_rating_range")),
        sa.ForeignKeyConstraint(
            ["order_id"], ["order.order_id"], name=op.f("fk_review_order_id_order")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_review")),
        sa.UniqueConstraint("order_id", "source", name=op.f("uq_review_order_id")),
    )
    op.create_table(
        "send",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("order_id", sa.String(length=64), nullable=False),
        sa.Column("campaign", sa.String(length=64), nullable=False),
        sa.Column("step", sa.String(length=64), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("due_at", worker.schema.UtcDateTime(), nullable=False),
        sa.Column("reason", sa.Text(), server_default="", nullable=False),
        sa.Column("message_id", sa.String(length=255), nullable=True),
        sa.Column(
            "relay_reply",
            sa.Text(),
            nullable=True,
            comment="the server's 250 text; relays report their own id here",
        ),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("not_before", worker.schema.UtcDateTime(), nullable=True),
        sa.Column("claimed_at", worker.schema.UtcDateTime(), nullable=True),
        sa.Column("claimed_by", sa.String(length=128), nullable=True),
        sa.Column("sent_at", worker.schema.UtcDateTime(), nullable=True),
        sa.Column("created_at", worker.schema.UtcDateTime(), nullable=False),
        sa.Column("updated_at", worker.schema.UtcDateTime(), nullable=False),
        sa.CheckConstraint(
            "state IN ('scheduled', 'sending', 'sent', 'skipped', 'failed', 'in_doubt')",
            name=op.f("ck_send_state_known"),
        ),
        sa.ForeignKeyConstraint(
            ["order_id"], ["order.order_id"], name=op.f("fk_send_order_id_order")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_send")),
        sa.UniqueConstraint("order_id", "campaign", "step", name=op.f("uq_send_order_id")),
    )
    with op.batch_alter_table("send", schema=None) as batch_op:
        batch_op.create_index("ix_send_state_not_before", ["state", "not_before"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("send", schema=None) as batch_op:
        batch_op.drop_index("ix_send_state_not_before")

    op.drop_table("send")
    op.drop_table("review")
    op.drop_table("reply")
    with op.batch_alter_table("dispute", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_dispute_order_id"))

    op.drop_table("dispute")
    with op.batch_alter_table("order", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_order_buyer_email"))

    op.drop_table("order")
    op.drop_table("suppression")
    op.drop_table("customer")
