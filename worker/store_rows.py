"""Conversion between the store's table rows and the domain's values (orders, customers,
disputes, reviews, replies, suppressions, sends), shared by every part of the store.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from sqlalchemy import RowMapping

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


def _customer_values(customer: Customer, now: datetime, stamp: datetime | None) -> dict[str, Any]:
    return {
        "email": customer.email,
        "name": customer.name,
        "locale": customer.locale,
        "country": customer.country,
        "timezone": customer.timezone,
        "updated_at": now,
        "source_updated_at": stamp,
    }


def _order_values(order: Order, now: datetime, stamp: datetime | None) -> dict[str, Any]:
    return {
        "order_id": order.order_id,
        "marketplace": order.marketplace,
        "buyer_email": order.buyer_email,
        "buyer_name": order.buyer_name,
        "products": json.dumps(list(order.products), ensure_ascii=False),
        "locale": order.locale,
        "country": order.country,
        "ordered_at": order.ordered_at,
        "shipped_at": order.shipped_at,
        "delivered_at": order.delivered_at,
        "review_url": order.review_url,
        "updated_at": now,
        "source_updated_at": stamp,
    }


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
    }


def _dispute_from(row: RowMapping) -> Dispute:
    return Dispute(
        row["order_id"], DisputeKind(row["kind"]), row["opened_at"], row["closed_at"], row["source"]
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
