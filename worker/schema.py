"""Table definitions. Alembic migrations under ``worker/migrations`` create and change them.

Times are stored as naive UTC and read back tz-aware, the same on SQLite and PostgreSQL.
Exactly-once is a database constraint: one ``send`` row per (order, campaign, step).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.sql.expression import false
from sqlalchemy.types import TypeDecorator

from worker.domain import SendState


class UtcDateTime(TypeDecorator[datetime]):
    """Refuses naive datetimes on the way in; returns tz-aware UTC on the way out."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r} reached the database")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC)


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
"""``customer.next_due_at`` of a buyer whose data changed: plan them at the next pass."""

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_name)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

customer = Table(
    "customer",
    metadata,
    Column("email", String(320), primary_key=True, comment="normalised address"),
    Column("name", Text, nullable=False, server_default=""),
    Column("locale", String(35)),
    Column("country", String(2)),
    Column("timezone", String(64)),
    Column("updated_at", UtcDateTime, nullable=False),
    Column(
        "source_updated_at",
        UtcDateTime,
        comment="the feed's last-updated time of the values, else the import's",
    ),
    Column(
        "next_due_at",
        UtcDateTime,
        comment="the next moment a pass must plan this buyer; NULL: only an event can change "
        "anything. Triggers set it to EPOCH on every write that can change a decision.",
    ),
    Index("ix_customer_next_due_at", "next_due_at", "email"),
)

order = Table(
    "order",
    metadata,
    Column("order_id", String(64), primary_key=True),
    Column("marketplace", String(16), nullable=False),
    Column("buyer_email", String(320), ForeignKey("customer.email"), nullable=False, index=True),
    Column("buyer_name", Text, nullable=False, server_default=""),
    Column("products", Text, nullable=False, server_default="[]", comment="JSON list of names"),
    Column("locale", String(35)),
    Column("country", String(2)),
    Column("ordered_at", UtcDateTime),
    Column("shipped_at", UtcDateTime),
    Column("delivered_at", UtcDateTime),
    Column("review_url", Text),
    Column("site", String(64), comment="marketplace site host: ebay.de, amazon.co.jp"),
    Column("carrier", String(64)),
    Column("tracking_number", String(64)),
    Column("shipping_service", String(64)),
    Column("expected_delivery_at", UtcDateTime, comment="the marketplace's own estimate"),
    Column("delivery_event_at", UtcDateTime, comment="a delivery event; outranks the rest"),
    Column("shipment_status", String(24)),
    Column("shipment_status_at", UtcDateTime),
    Column("reply_token", String(32), unique=True, comment="reply+TOKEN@ threads replies"),
    Column("updated_at", UtcDateTime, nullable=False),
    Column(
        "source_updated_at",
        UtcDateTime,
        comment="the feed's last-updated time of the values, else the import's",
    ),
)

dispute = Table(
    "dispute",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("order_id", String(64), ForeignKey("order.order_id"), nullable=False, index=True),
    Column("kind", String(32), nullable=False),
    Column("opened_at", UtcDateTime, nullable=False),
    Column("closed_at", UtcDateTime),
    Column("source", String(32), nullable=False),
    Column("inbound_message_id", Integer, ForeignKey("inbound_message.id")),
    Column(
        "needs_review",
        Boolean,
        nullable=False,
        server_default=false(),
        comment="opened on an unsure reading of the buyer's mail: an agent confirms or dismisses",
    ),
    Column("review", String(16), comment="an agent's word: confirmed, dismissed; NULL: none"),
    Column("reviewed_at", UtcDateTime),
    Column("reviewed_by", String(64), comment="the agent who confirmed or dismissed it"),
    UniqueConstraint("order_id", "kind", "opened_at"),
)

review = Table(
    "review",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("order_id", String(64), ForeignKey("order.order_id"), nullable=False),
    Column("rating", Integer, comment="1-5; empty when a notification did not say"),
    Column("reviewed_at", UtcDateTime, nullable=False),
    Column("source", String(32), nullable=False),
    UniqueConstraint("order_id", "source"),
    CheckConstraint("rating IS NULL OR rating BETWEEN 1 AND 5", name="rating_range"),
)

reply = Table(
    "reply",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("order_id", String(64), ForeignKey("order.order_id"), nullable=False),
    Column("replied_at", UtcDateTime, nullable=False),
    Column("source", String(32), nullable=False),
    UniqueConstraint("order_id", "replied_at", "source"),
)

send = Table(
    "send",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("order_id", String(64), ForeignKey("order.order_id"), nullable=False),
    Column("campaign", String(64), nullable=False),
    Column("step", String(64), nullable=False),
    Column("state", String(16), nullable=False),
    Column("due_at", UtcDateTime, nullable=False),
    Column("reason", Text, nullable=False, server_default=""),
    Column("message_id", String(255), index=True),
    Column("relay_reply", Text, comment="the server's 250 text; relays report their own id here"),
    Column("relay_message_id", String(255), index=True, comment="the id read from relay_reply"),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("not_before", UtcDateTime),
    Column("claimed_at", UtcDateTime),
    Column("claimed_by", String(128)),
    Column("recipient", String(320), comment="the address mailed"),
    Column("body_text", Text, comment="the text part sent: our words never count as the buyer's"),
    Column("sent_at", UtcDateTime),
    Column("created_at", UtcDateTime, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
    UniqueConstraint("order_id", "campaign", "step"),
    CheckConstraint(
        "state IN (" + ", ".join(f"'{s.value}'" for s in SendState) + ")", name="state_known"
    ),
    Index("ix_send_state_not_before", "state", "not_before"),
)

suppression = Table(
    "suppression",
    metadata,
    Column("email", String(320), primary_key=True),
    Column("reason", String(32), nullable=False),
    Column("detail", Text, nullable=False, server_default=""),
    Column("created_at", UtcDateTime, nullable=False),
    Column(
        "created_by",
        String(64),
        comment="the operator who added it; NULL: the worker itself (a bounce, a report)",
    ),
)

inbound_message = Table(
    "inbound_message",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("mailbox", String(320), nullable=False, comment="user@host it was read from"),
    Column("folder", String(255), nullable=False),
    Column("uidvalidity", BigInteger, nullable=False),
    Column("uid", BigInteger, nullable=False),
    Column("message_id", String(998), nullable=False, comment="empty when the message had none"),
    Column("content_hash", String(64), nullable=False, comment="sha256 of the raw bytes"),
    Column("received_at", UtcDateTime, nullable=False, comment="IMAP INTERNALDATE"),
    Column("dated_at", UtcDateTime, comment="the Date header, as the sender claims"),
    Column("sender", String(320), nullable=False, index=True),
    Column("sender_name", Text, nullable=False, server_default=""),
    Column("recipients", Text, nullable=False, server_default="[]", comment="JSON list"),
    Column("subject", Text, nullable=False, server_default=""),
    Column("thread_ids", Text, nullable=False, server_default="[]", comment="JSON list"),
    Column("body_text", Text, nullable=False, server_default=""),
    Column("raw", LargeBinary, nullable=False),
    Column("parse_errors", Text, nullable=False, server_default="[]", comment="JSON list"),
    Column("kind", String(32), nullable=False),
    Column("evidence", Text, nullable=False, server_default=""),
    Column("intent", String(32), comment="what the buyer's words want (worker.domain.Intent)"),
    Column("intent_confidence", Float, comment="how sure the intent reader was, 0 to 1"),
    Column("dispute_kind", String(32)),
    Column("rating", Integer),
    Column("marketplace", String(32)),
    Column("bounce_status", String(16)),
    Column("bounce_recipient", String(320)),
    Column("order_id", String(64), ForeignKey("order.order_id"), index=True),
    Column("send_id", Integer, ForeignKey("send.id"), comment="the send it answers or bounces"),
    Column("match_method", String(32)),
    Column("match_detail", Text, nullable=False, server_default=""),
    Column(
        "authentication",
        Text,
        nullable=False,
        server_default="",
        comment="who vouched for the From domain, or why no one did",
    ),
    Column(
        "withheld",
        Text,
        nullable=False,
        server_default="",
        comment="why the message acted on nothing it asked for",
    ),
    Column("ingested_at", UtcDateTime, nullable=False),
    UniqueConstraint("message_id", "content_hash", name="uq_inbound_message_identity"),
    Index("ix_inbound_message_message_id", "message_id"),
    Index("ix_inbound_message_bounce", "bounce_recipient", "kind", "received_at"),
)

mailbox_checkpoint = Table(
    "mailbox_checkpoint",
    metadata,
    Column("mailbox", String(320), primary_key=True),
    Column("folder", String(255), primary_key=True),
    Column("uidvalidity", BigInteger, nullable=False),
    Column("last_uid", BigInteger, nullable=False, comment="every UID up to here is stored"),
    Column("updated_at", UtcDateTime, nullable=False),
)

worker_state = Table(
    "worker_state",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
)

mailbox_lease = Table(
    "mailbox_lease",
    metadata,
    Column("mailbox", String(320), primary_key=True, comment="user@host, as in mailbox_checkpoint"),
    Column("holder", String(128), nullable=False, comment="the worker reading it"),
    Column("taken_at", UtcDateTime, nullable=False),
    Column("expires_at", UtcDateTime, nullable=False, comment="renewed by every read"),
    Column("read_at", UtcDateTime, comment="when its holder last read every folder to the end"),
)

test_send = Table(
    "test_send",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("campaign", String(64), nullable=False),
    Column("step", String(64), nullable=False),
    Column("order_id", String(64), comment="the order rendered; NULL: the sample"),
    Column("locale", String(35), nullable=False),
    Column("recipient", String(320), nullable=False),
    Column("subject", Text, nullable=False),
    Column("message_id", String(255), nullable=False),
    Column("outcome", String(16), nullable=False, comment="sent, failed, in_doubt"),
    Column("detail", Text, nullable=False, server_default=""),
    Column("created_by", String(64), nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
)
"""``worker send-test``: apart from ``send``, so a test counts for no order, cap or plan."""

suppression_removal = Table(
    "suppression_removal",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("email", String(320), nullable=False, index=True),
    Column("reason", String(32), nullable=False),
    Column("detail", Text, nullable=False, server_default=""),
    Column("created_at", UtcDateTime, nullable=False),
    Column("created_by", String(64)),
    Column("removed_at", UtcDateTime, nullable=False),
    Column("removed_by", String(64), nullable=False),
    Column(
        "forced",
        Boolean,
        nullable=False,
        server_default=false(),
        comment="a hard bounce or spam complaint removed with --force",
    ),
)
"""Every suppression an operator removed, with who and when: the address may be mailed again."""

pause = Table(
    "pause",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("scope", String(16), nullable=False, comment="everything, marketplace or campaign"),
    Column("target", String(64), nullable=False, comment="the marketplace or campaign; '' all"),
    Column("paused_by", String(64), nullable=False),
    Column("reason", Text, nullable=False, server_default=""),
    Column("paused_at", UtcDateTime, nullable=False),
    UniqueConstraint("scope", "target"),
    CheckConstraint("scope IN ('everything', 'marketplace', 'campaign')", name="scope_known"),
)
"""An operator's stop on sending (worker/pauses.py): read by every pass and before each claim."""
