"""A shipments row onto what an order stores about its parcel: pure, no database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from worker.shipments import Parcel, Shipment, applied, shipment

AT = datetime(2026, 3, 5, 14, 30, tzinfo=UTC)
HOUR = timedelta(hours=1)


def test_a_row_without_values_changes_nothing():
    parcel = Parcel("DHL", "T1", AT, None, "shipped", AT)
    assert applied(parcel, Shipment("1")) is parcel


def test_delivered_sets_the_event_and_the_status():
    got = applied(Parcel(shipment_status="in_transit", shipment_status_at=AT - HOUR),
                  Shipment("1", status="delivered", at=AT))  # fmt: skip
    assert got == Parcel(None, None, None, AT, "delivered", AT)


def test_shipped_sets_the_shipped_time_only_when_unknown():
    known = Parcel(shipped_at=AT - 24 * HOUR)
    assert applied(known, Shipment("1", status="shipped", at=AT)).shipped_at == AT - 24 * HOUR
    assert applied(Parcel(), Shipment("1", status="shipped", at=AT)).shipped_at == AT


def test_an_older_status_never_overwrites_a_newer_one_and_an_equal_one_does():
    newer = Parcel(shipment_status="returned", shipment_status_at=AT)
    older = applied(newer, Shipment("1", status="in_transit", at=AT - HOUR))
    assert (older.shipment_status, older.shipment_status_at) == ("returned", AT)
    same = applied(newer, Shipment("1", status="exception", at=AT))
    assert same.shipment_status == "exception"


def test_an_old_delivered_row_still_records_the_delivery_event():
    newer = Parcel(shipment_status="returned", shipment_status_at=AT)
    got = applied(newer, Shipment("1", status="delivered", at=AT - 48 * HOUR))
    assert (got.delivery_event_at, got.shipment_status) == (AT - 48 * HOUR, "returned")


@pytest.mark.parametrize(
    ("cells", "expected"),
    [
        ({"order_id": " 1 ", "status": "Out for delivery", "at": "2026-03-05T14:30:00Z"},
         Shipment("1", status="out_for_delivery", at=AT)),
        ({"order_id": "1", "carrier": "", "tracking_number": " T1 "},
         Shipment("1", tracking_number="T1")),
        ({"order_id": "1", "status": "IN-TRANSIT", "at": "2026-03-05T15:30:00+01:00"},
         Shipment("1", status="in_transit", at=AT)),
    ],
)  # fmt: skip
def test_cells_are_read_leniently(cells: dict[str, str], expected: Shipment):
    assert shipment(cells) == expected


@pytest.mark.parametrize(
    ("cells", "message"),
    [
        ({"order_id": ""}, "order_id is empty"),
        ({"order_id": "1\n2"}, "order_id contains a control character"),
        ({"order_id": "1", "tracking_number": "T\u202e1"}, "tracking_number contains a control"),
        ({"order_id": "1", "tracking_number": "9" * 65}, "longer than 64 characters"),
        ({"order_id": "1", "status": "lost", "at": "2026-03-05"}, "status 'lost' is not one of"),
        ({"order_id": "1", "status": "delivered"}, "at is empty; status delivered needs"),
    ],
)
def test_bad_cells_are_refused_saying_why(cells: dict[str, str], message: str):
    with pytest.raises(ValueError, match=message):
        shipment(cells)
