"""Shipments files: what carriers said about each parcel (``worker import shipments``).

Columns ``order_id, carrier, tracking_number, status, at``; only ``order_id`` is required, so
a file with just the tracking numbers, or just the delivery scans, updates what it has and
leaves the rest. Read like the order feeds (CSV, TSV or JSONL, a bad row is rejected naming
its line and the rest is read); the store applies the rows (``Store.upsert_shipments``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, fields, replace
from datetime import datetime
from pathlib import Path

from worker.feeds import RejectedRow, parse_instant, read_cells

STATUSES = ("shipped", "in_transit", "out_for_delivery", "delivered", "exception", "returned")
"""A parcel's statuses, in the order they usually come."""
MAX_ORDER_ID = 64
MAX_CARRIER = 64
MAX_TRACKING_NUMBER = 64

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
"""Controls, line breaks and bidi overrides: a carrier name or tracking number reaches mail
headers, logs and the operator's terminal."""
_STATUS_SPELLING = re.compile(r"[\s-]+")


@dataclass(frozen=True, slots=True)
class Shipment:
    """One row: ``None`` is a column the file lacks or leaves empty, never a value to store."""

    order_id: str
    carrier: str | None = None
    tracking_number: str | None = None
    status: str | None = None
    at: datetime | None = None
    """When the status happened; required with a status."""


@dataclass(frozen=True, slots=True)
class Parcel:
    """What an order stores about its parcel: the columns a shipments file can change."""

    carrier: str | None = None
    tracking_number: str | None = None
    shipped_at: datetime | None = None
    delivery_event_at: datetime | None = None
    shipment_status: str | None = None
    shipment_status_at: datetime | None = None


PARCEL_FIELDS = tuple(f.name for f in fields(Parcel))


def applied(parcel: Parcel, row: Shipment) -> Parcel:
    """``parcel`` after ``row``: what the row has replaces, what it lacks stays (a partial
    file never blanks a field). ``delivered`` sets the delivery event (the time every other
    source of a delivery time gives way to); ``shipped`` sets the shipped time only if it is
    unknown (the feed's own is the seller's word). The status is the latest by its time: an
    older event, in this file or a later one, never overwrites a newer one."""
    changes: dict[str, object] = {}
    if row.carrier is not None:
        changes["carrier"] = row.carrier
    if row.tracking_number is not None:
        changes["tracking_number"] = row.tracking_number
    if row.status is not None and row.at is not None:
        if row.status == "delivered":
            changes["delivery_event_at"] = row.at
        if row.status == "shipped" and parcel.shipped_at is None:
            changes["shipped_at"] = row.at
        known = parcel.shipment_status_at
        if known is None or row.at >= known:
            changes["shipment_status"] = row.status
            changes["shipment_status_at"] = row.at
    return replace(parcel, **changes) if changes else parcel  # type: ignore[arg-type]


def _text(cells: Mapping[str, str], name: str, limit: int) -> str | None:
    value = (cells.get(name) or "").strip()
    if not value:
        return None
    if _CONTROL.search(value):
        raise ValueError(f"{name} contains a control character or line break {value!r}")
    if len(value) > limit:
        raise ValueError(f"{name} is longer than {limit} characters")
    return value


def _status(text: str | None) -> str | None:
    if text is None:
        return None
    status = _STATUS_SPELLING.sub("_", text.lower())
    if status not in STATUSES:
        raise ValueError(f"status {text!r} is not one of {', '.join(STATUSES)}")
    return status


def shipment(cells: Mapping[str, str]) -> Shipment:
    """A row's cells as a Shipment; ValueError says what is wrong with it."""
    order_id = _text(cells, "order_id", MAX_ORDER_ID)
    if order_id is None:
        raise ValueError("order_id is empty")
    status = _status(_text(cells, "status", 32))
    try:
        at = parse_instant(cells.get("at") or "")
    except ValueError as exc:
        raise ValueError(f"at: {exc}") from None
    if status is not None and at is None:
        raise ValueError(f"at is empty; status {status} needs the time it happened")
    return Shipment(
        order_id=order_id,
        carrier=_text(cells, "carrier", MAX_CARRIER),
        tracking_number=_text(cells, "tracking_number", MAX_TRACKING_NUMBER),
        status=status,
        at=at,
    )


def read_shipments(path: Path, *, progress: bool = False) -> Iterator[Shipment | RejectedRow]:
    """Shipments from CSV, TSV or JSONL; FeedError (when iterated) if the file is unreadable."""
    return read_cells(path, ("order_id",), shipment, progress=progress)
