"""Conversion between the store's table rows and the domain's values (orders, customers,
disputes, reviews, replies, suppressions, sends), shared by every part of the store.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from sqlalchemy import RowMapping
from sqlalchemy.engine import Dialect

from worker.domain import (
    Customer,
    Dispute,
    DisputeKind,
    Order,
    Reply,
    Review,
    Send,
    SendState,
    Suppression,
    SuppressionReason,
)

# Imports: rows in the driver's own form, for executemany without SQLAlchemy's per-value work ----

TimeBinder = Callable[[datetime | None], Any]
_SQLITE_TIME = "%04d-%02d-%02d %02d:%02d:%02d.%06d"
"""SQLAlchemy's DATETIME storage format on SQLite."""


def _time_binder(dialect: Dialect) -> TimeBinder:
    """What ``schema.UtcDateTime`` binds (naive UTC, a naive value refused), in the form the
    driver stores: SQLite the text SQLAlchemy's DATETIME writes (``2026-03-02 10:00:00.000000``,
    which the triggers' epoch and every comparison in SQL rely on), other drivers the naive
    datetime itself. A refusal is a ValueError, as from the type; the caller wraps it."""
    text = dialect.name == "sqlite"

    def bind(moment: datetime | None) -> Any:
        if moment is None:
            return None
        if moment.tzinfo is not UTC:
            if moment.tzinfo is None:
                raise ValueError(f"naive datetime {moment!r} reached the database")
            moment = moment.astimezone(UTC)
        if text:
            return _SQLITE_TIME % (
                moment.year, moment.month, moment.day,
                moment.hour, moment.minute, moment.second, moment.microsecond,
            )  # fmt: skip
        return moment.replace(tzinfo=None)

    return bind


TimeReader = Callable[[Any], datetime | None]


def _time_reader(dialect: Dialect) -> TimeReader:
    """What ``schema.UtcDateTime`` reads, from what the driver gives: SQLite's text as
    SQLAlchemy's DATETIME parses it (``datetime.fromisoformat``), other drivers' naive
    datetime; tz-aware UTC either way."""
    if dialect.name == "sqlite":

        def read_text(value: Any) -> datetime | None:
            if value is None:
                return None
            return datetime.fromisoformat(value).replace(tzinfo=UTC)

        return read_text

    def read(value: Any) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC)

    return read


CUSTOMER_COLUMNS = (
    "email", "name", "locale", "country", "timezone", "updated_at", "source_updated_at",
    "next_due_at",
)  # fmt: skip
"""The customer columns an import writes, in the order of :func:`_customer_params`."""

CustomerParams = Callable[[Order, Any, datetime | None], tuple[Any, ...]]


def _customer_params(bind: TimeBinder, due: Any) -> CustomerParams:
    """A function giving what an order says of its buyer, ``now`` (bound already) as
    ``updated_at``, the row's time as ``source_updated_at`` and ``due`` (bound: the epoch,
    plan this buyer at the next pass) as ``next_due_at``."""

    def params(order: Order, now: Any, stamp: datetime | None) -> tuple[Any, ...]:
        return (
            order.buyer_email, order.buyer_name, order.locale, order.country, order.timezone,
            now, bind(stamp), due,
        )  # fmt: skip

    return params


ORDER_FIELD_COLUMNS = (
    "marketplace", "buyer_email", "buyer_name", "products", "locale", "country", "ordered_at",
    "shipped_at", "delivered_at", "review_url", "site", "carrier", "tracking_number",
    "shipping_service", "expected_delivery_at", "delivery_event_at", "shipment_status",
    "shipment_status_at",
)  # fmt: skip
"""The order's fields that are columns of its row, but its key (``timezone`` is the buyer's)."""

OrderParams = Callable[[Order, Any, datetime | None], tuple[Any, ...]]


def _order_params(bind: TimeBinder) -> OrderParams:
    """A function giving an order's values for :data:`ORDER_FIELD_COLUMNS`, then
    ``updated_at`` (``now``, bound already), ``source_updated_at`` and ``order_id``, in the
    driver's form."""

    def params(order: Order, now: Any, stamp: datetime | None) -> tuple[Any, ...]:
        return (
            order.marketplace, order.buyer_email, order.buyer_name,
            _products_json(order.products), order.locale, order.country,
            bind(order.ordered_at), bind(order.shipped_at), bind(order.delivered_at),
            order.review_url, order.site, order.carrier, order.tracking_number,
            order.shipping_service, bind(order.expected_delivery_at),
            bind(order.delivery_event_at), order.shipment_status, bind(order.shipment_status_at),
            now, bind(stamp), order.order_id,
        )  # fmt: skip

    return params


@lru_cache(maxsize=4096)
def _products_json(products: tuple[str, ...]) -> str:
    """The stored JSON list; a shop sells the same products again and again (bounded cache)."""
    return json.dumps(list(products), ensure_ascii=False)


def _order_from(row: RowMapping) -> Order:
    return Order(
        order_id=row["order_id"],
        marketplace=row["marketplace"],
        buyer_email=row["buyer_email"],
        buyer_name=row["buyer_name"],
        products=tuple(json.loads(row["products"])),
        locale=row["locale"],
        country=row["country"],
        ordered_at=row["ordered_at"],
        shipped_at=row["shipped_at"],
        delivered_at=row["delivered_at"],
        review_url=row["review_url"],
        site=row["site"],
        carrier=row["carrier"],
        tracking_number=row["tracking_number"],
        shipping_service=row["shipping_service"],
        expected_delivery_at=row["expected_delivery_at"],
        delivery_event_at=row["delivery_event_at"],
        shipment_status=row["shipment_status"],
        shipment_status_at=row["shipment_status_at"],
    )


def _customer_from(row: RowMapping) -> Customer:
    return Customer(row["email"], row["name"], row["locale"], row["country"], row["timezone"])


def _dispute_values(item: Dispute) -> dict[str, Any]:
    return {
        "order_id": item.order_id,
        "kind": item.kind.value,
        "opened_at": item.opened_at,
        "closed_at": item.closed_at,
        "source": item.source,
        "needs_review": item.needs_review,
    }


CONFIRMED, DISMISSED = "confirmed", "dismissed"
"""``dispute.review``: an agent's word on a dispute (NULL: none yet)."""


def _dispute_from(row: RowMapping) -> Dispute:
    """``needs_review`` only while it is open and no agent has answered it; ``dismissed``
    from the agent's word (``worker.store_disputes``)."""
    return Dispute(
        row["order_id"],
        DisputeKind(row["kind"]),
        row["opened_at"],
        row["closed_at"],
        row["source"],
        needs_review=bool(row["needs_review"])
        and row["review"] is None
        and row["closed_at"] is None,
        dismissed=row["review"] == DISMISSED,
    )


def _review_from(row: RowMapping) -> Review:
    return Review(row["order_id"], row["rating"], row["reviewed_at"], row["source"])


def _reply_from(row: RowMapping) -> Reply:
    return Reply(row["order_id"], row["replied_at"], row["source"])


def _suppression_from(row: RowMapping) -> Suppression:
    return Suppression(
        row["email"], SuppressionReason(row["reason"]), row["created_at"], row["detail"]
    )


def _send_from(row: RowMapping) -> Send:
    return Send(
        id=row["id"],
        order_id=row["order_id"],
        campaign=row["campaign"],
        step=row["step"],
        state=SendState(row["state"]),
        due_at=row["due_at"],
        reason=row["reason"],
        message_id=row["message_id"],
        attempts=row["attempts"],
        not_before=row["not_before"],
        claimed_at=row["claimed_at"],
        sent_at=row["sent_at"],
    )
