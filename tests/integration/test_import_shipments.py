"""``worker import shipments`` end to end: real files, the command's handler, a real database.

A shipments file updates the orders it names and only with what it has: a partial file never
blanks a field, an older event never overwrites a newer status, unknown orders are counted and
left out, bad rows are rejected naming the file and line while the rest is imported.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import select

from tests.conftest import Importer
from worker import schema, store_orders
from worker.store import Store

Run = Callable[..., tuple[int, str, str]]
ORDERS = (
    "order_id,marketplace,buyer_email,country,shipped_at\n"
    "S-1,shop,ann@example.com,DE,2026-03-02T10:00:00Z\n"
    "S-2,shop,bob@example.com,FR,\n"
    "S-3,shop,cy@example.com,US,2026-03-01T09:00:00Z\n"
)


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@pytest.fixture
def run(run_import: Importer, tmp_path: Path) -> Iterator[Run]:
    """``worker import ARGS...`` as the command line runs it, (exit code, stdout, stderr),
    on a store holding the orders the shipments are about."""

    def run(*args: str | Path) -> tuple[int, str, str]:
        done = run_import(*args)
        return done.code, done.out, done.err

    orders = tmp_path / "orders.csv"
    orders.write_text(ORDERS, encoding="utf-8")
    assert run("orders", orders)[0] == 0
    yield run


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_a_full_file_sets_carrier_tracking_status_and_the_delivery_event(
    tmp_path: Path, run: Run, store: Store
) -> None:
    shipments = write(
        tmp_path / "shipments.csv",
        "order_id,carrier,tracking_number,status,at\n"
        "S-1,DHL,00340434161094042557,shipped,2026-03-01T08:00:00Z\n"
        "S-1,DHL,00340434161094042557,delivered,2026-03-05T14:30:00Z\n"
        "S-2,La Poste,6A12345678901,shipped,2026-03-03T09:00:00Z\n",
    )
    code, out, err = run("shipments", shipments)
    assert (code, err) == (0, "")
    assert out == f"{shipments}: 0 new, 2 updated, 0 rejected\n"

    s1 = store.order("S-1")
    assert (s1.carrier, s1.tracking_number) == ("DHL", "00340434161094042557")
    assert s1.delivery_event_at == at("2026-03-05T14:30:00")
    assert (s1.shipment_status, s1.shipment_status_at) == ("delivered", at("2026-03-05T14:30"))
    assert s1.shipped_at == at("2026-03-02T10:00"), "the feed's shipped time stays"
    s2 = store.order("S-2")
    assert s2.shipped_at == at("2026-03-03T09:00"), "an unknown shipped time is taken"
    assert (s2.shipment_status, s2.delivery_event_at) == ("shipped", None)


def test_a_partial_file_updates_what_it_has_and_never_blanks_a_field(
    tmp_path: Path, run: Run, store: Store
) -> None:
    full = write(
        tmp_path / "full.tsv",
        "order_id\tcarrier\ttracking_number\tstatus\tat\n"
        "S-1\tDHL\tJJD0001\tin_transit\t2026-03-03T08:00:00Z\n",
    )
    assert run("shipments", full)[0] == 0
    numbers = write(
        tmp_path / "numbers.tsv", "order_id\ttracking_number\tcarrier\nS-1\tJJD0002\t\n"
    )
    assert run("shipments", numbers)[0] == 0
    delivered = write(
        tmp_path / "delivered.jsonl",
        '{"order_id": "S-1", "status": "Delivered", "at": "2026-03-06T11:00:00+01:00"}\n',
    )
    assert run("shipments", delivered)[0] == 0

    order = store.order("S-1")
    assert (order.carrier, order.tracking_number) == ("DHL", "JJD0002")
    assert order.delivery_event_at == at("2026-03-06T10:00")
    assert order.shipment_status == "delivered"
    assert (order.country, order.shipped_at) == ("DE", at("2026-03-02T10:00"))


def test_an_older_event_never_overwrites_a_newer_status(
    tmp_path: Path, run: Run, store: Store
) -> None:
    newer = write(
        tmp_path / "newer.jsonl",
        '{"order_id": "S-3", "status": "returned", "at": "2026-03-20T09:00:00Z"}\n',
    )
    older = write(
        tmp_path / "older.jsonl",
        '{"order_id": "S-3", "status": "out_for_delivery", "at": "2026-03-10T07:00:00Z"}\n'
        '{"order_id": "S-3", "status": "exception", "at": "2026-03-11T07:00:00Z"}\n',
    )
    run("shipments", newer)
    code, out, _ = run("shipments", older)
    assert code == 0 and "0 updated" in out
    order = store.order("S-3")
    assert (order.shipment_status, order.shipment_status_at) == ("returned", at("2026-03-20T09:00"))


def test_unknown_orders_are_counted_and_reported_not_errors(
    tmp_path: Path, run: Run, store: Store
) -> None:
    shipments = write(
        tmp_path / "shipments.csv",
        "order_id,tracking_number\nS-1,T1\nX-9,T9\nX-8,T8\nX-9,T7\n",
    )
    code, out, err = run("shipments", shipments)
    assert (code, err) == (0, "")
    assert out == (
        f"{shipments}: 0 new, 1 updated, 0 rejected; 3 about orders not stored, left out "
        "('X-9', 'X-8'; import them first with `worker import orders`)\n"
    )
    assert store.order("S-1").tracking_number == "T1"


def test_bad_rows_are_rejected_by_file_and_line_and_the_rest_imported(
    tmp_path: Path, run: Run, store: Store
) -> None:
    shipments = write(
        tmp_path / "shipments.csv",
        "order_id,carrier,tracking_number,status,at\n"
        "S-1,DHL,T1,lost,2026-03-04\n"
        "S-1,DHL,T1,delivered,\n"
        "S-1,DHL\x1b[31m,T1,,\n"
        f"S-1,{'D' * 65},T1,,\n"
        "S-1,DHL,T1,delivered,yesterday\n"
        ",DHL,T1,,\n"
        "S-2,Colissimo,6A999,in transit,2026-03-04T12:00:00Z\n",
    )
    code, out, err = run("shipments", shipments)
    assert code == 1
    assert out.startswith(f"{shipments}: 0 new, 1 updated, 6 rejected (written to ")
    lines = err.splitlines()
    assert [line.split(": ")[0] for line in lines] == [f"{shipments}:{n}" for n in range(2, 8)]
    assert "status 'lost' is not one of shipped, in_transit" in lines[0]
    assert "at is empty; status delivered needs the time it happened" in lines[1]
    assert "carrier contains a control character" in lines[2]
    assert "carrier is longer than 64 characters" in lines[3]
    assert "at: 'yesterday' is not an ISO 8601 date" in lines[4]
    assert "order_id is empty" in lines[5]
    assert (tmp_path / "shipments.rejects.csv").exists()

    assert store.order("S-1").carrier is None, "no bad row reached the order"
    s2 = store.order("S-2")
    assert (s2.carrier, s2.shipment_status) == ("Colissimo", "in_transit")


def test_an_updated_order_wakes_its_buyer_for_planning(
    tmp_path: Path, run: Run, store: Store
) -> None:
    customer = schema.customer
    never = datetime(9999, 1, 1, tzinfo=UTC)
    with store.engine.begin() as tx:
        tx.execute(customer.update().values(next_due_at=never))
    shipments = write(
        tmp_path / "s.csv", "order_id,status,at\nS-1,delivered,2026-03-05T14:30:00Z\n"
    )
    run("shipments", shipments)
    with store.engine.connect() as c:
        due = {e: d for e, d in c.execute(select(customer.c.email, customer.c.next_due_at))}
    assert due["ann@example.com"] < never
    assert due["bob@example.com"] == never


def test_a_file_longer_than_a_batch_counts_each_order_once(
    tmp_path: Path, run: Run, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_orders, "BATCH_ROWS", 2)
    monkeypatch.setattr(store_orders, "_KEYS_PER_SELECT", 1)
    shipments = write(
        tmp_path / "s.csv",
        "order_id,status,at\n"
        "S-1,shipped,2026-03-02T10:00:00Z\n"
        "S-2,shipped,2026-03-03T10:00:00Z\n"
        "S-1,in_transit,2026-03-03T10:00:00Z\n"
        "S-1,delivered,2026-03-05T10:00:00Z\n"
        "S-2,delivered,2026-03-06T10:00:00Z\n",
    )
    code, out, _ = run("shipments", shipments)
    assert (code, out) == (0, f"{shipments}: 0 new, 2 updated, 0 rejected\n")
    assert store.order("S-1").delivery_event_at == at("2026-03-05T10:00")
    assert store.order("S-2").delivery_event_at == at("2026-03-06T10:00")
