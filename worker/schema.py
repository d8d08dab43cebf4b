"""Table definitions. Alembic migrations under ``worker/migrations`` create and change them.

Times are stored as naive UTC and read back tz-aware, the same on SQLite and PostgreSQL.
Exactly-once is a database constraint: one ``send`` row per (order, campaign, step).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    CheckConstraint,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
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
    Column("updated_at", UtcDateTime, nullable=False),
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
    UniqueConstraint("order_id", "kind", "opened_at"),
)

review = Table(
    "review",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("order_id", String(64), ForeignKey("order.order_id"), nullable=False),
    Column("rating", Integer, nullable=False),
    Column("reviewed_at", UtcDateTime, nullable=False),
    Column("source", String(32), nullable=False),
    UniqueConstraint("order_id", "source"),
    CheckConstraint("rating BETWEEN 1 AND 5", name="rating_range"),
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
    Column("message_id", String(255)),
    Column("relay_reply", Text, comment="the server's 250 text; relays report their own id here"),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("not_before", UtcDateTime),
    Column("claimed_at", UtcDateTime),
    Column("claimed_by", String(128)),
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
)
