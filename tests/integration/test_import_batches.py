"""Big imports in batches and multi-row statements give what one row at a time would give.

``Store.upsert_orders`` reads a batch's stored stamps, decides which rows each order takes and
writes buyers and orders in a few statements, the buyers merged by the database. Here tiny
batch and statement sizes make every path run: an order or a buyer twice in one batch and in
two batches, rows older than what is stored, files without some columns, ``--replace``. The
store must hold exactly what the documented rule gives, applied one row at a time.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from worker import schema, store_orders
from worker.domain import Customer, Order
from worker.feeds import ORDER_FIELDS, OrderRow
from worker.store import Store, UpsertCount

T0 = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)
PARTIAL = frozenset({"order_id", "marketplace", "buyer_email", "buyer_name", "delivered_at"})


@pytest.fixture
def small_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_orders, "BATCH_ROWS", 7)
    monkeypatch.setattr(store_orders, "STATEMENT_ROWS", 4)


@dataclass
class Rule:
    """The documented rule, one row at a time (what the store did before batches)."""

    orders: dict[str, tuple[Order, datetime]]
    buyers: dict[str, tuple[Customer, datetime]]

    def upsert(self, rows: list[OrderRow], now: datetime, batch: int, force: bool) -> UpsertCount:
        stamps = [s for _, s in self.orders.values()] + [s for _, s in self.buyers.values()]
        imported_at = max([now, *stamps])
        inserted = updated = older = 0
        for start in range(0, len(rows), batch):
            part = rows[start : start + batch]
            stored = {row.order.order_id for row in part} & self.orders.keys()
            taken: set[str] = set()
            for row in part:
                stamp = min(row.updated_at or imported_at, imported_at)
                if self._take_order(row, stamp, force):
                    taken.add(row.order.order_id)
                    self._take_buyer(row.order, stamp, force)
            inserted += len({row.order.order_id for row in part} - stored)
            updated += len(taken & stored)
            older += len(stored - taken)
        return UpsertCount(inserted, updated, older)

    def _take_order(self, row: OrderRow, stamp: datetime, force: bool) -> bool:
        known = self.orders.get(row.order.order_id)
        if known is None:
            self.orders[row.order.order_id] = (row.order, stamp)
            return True
        if not (force or stamp >= known[1]):
            return False
        changes = {name: getattr(row.order, name) for name in row.fields if name != "order_id"}
        self.orders[row.order.order_id] = (replace(known[0], **changes), stamp)
        return True

    def _take_buyer(self, order: Order, stamp: datetime, force: bool) -> None:
        email = order.buyer_email
        known = self.buyers.get(email)
        if known is None:
            values = Customer(email, order.buyer_name, order.locale, order.country, order.timezone)
            self.buyers[email] = (values, stamp)
        elif force or stamp >= known[1]:
            old = known[0]
            merged = Customer(
                email,
                order.buyer_name or old.name,
                order.locale or old.locale,
                order.country or old.country,
                order.timezone or old.timezone,
            )
            self.buyers[email] = (merged, stamp)


def _rows(rng: random.Random, count: int, when: datetime) -> list[OrderRow]:
    """Few orders and fewer buyers, so both come back within a batch and across batches."""
    rows = []
    for _ in range(count):
        n, buyer = rng.randrange(25), rng.randrange(9)
        order = Order(
            f"O-{n}",
            rng.choice(["shop", "ebay"]),
            f"buyer{buyer}@example.com",
            rng.choice(["", f"Buyer {buyer}", f"B. {buyer}"]),
            tuple(rng.sample(["Kettle", "Lid", "Mug"], rng.randrange(3))),
            rng.choice([None, "de-DE", "fr-FR"]),
            rng.choice([None, "DE", "FR"]),
            ordered_at=when - timedelta(days=3),
            delivered_at=rng.choice([None, when - timedelta(days=1)]),
            timezone=rng.choice([None, "Europe/Berlin"]),
        )
        fields = rng.choice([ORDER_FIELDS, ORDER_FIELDS, PARTIAL])
        updated = rng.choice([None, when - rng.randrange(48) * HOUR])
        rows.append(OrderRow(order, fields, updated))
    return rows


def _stored(store: Store) -> tuple[dict[str, Order], dict[str, Customer]]:
    """Every order, and every buyer (one whose orders all moved to another address too)."""
    c = schema.customer.c
    with store.engine.connect() as connection:
        rows = connection.execute(select(c.email, c.name, c.locale, c.country, c.timezone))
        buyers = {row.email: Customer(*row) for row in rows}
    return {h.order.order_id: h.order for h in store.histories()}, buyers


@pytest.mark.usefixtures("small_batches")
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_batched_imports_store_what_the_rule_gives_row_by_row(store: Store, seed: int) -> None:
    rng = random.Random(seed)
    rule = Rule({}, {})
    for step, force in enumerate([False, False, True, False]):
        now = T0 + step * 24 * HOUR
        rows = _rows(rng, 40, now)
        expected = rule.upsert(rows, now, store_orders.BATCH_ROWS, force)
        assert store.upsert_orders(rows, now, force=force) == expected, f"import {step}"
        orders, buyers = _stored(store)
        assert orders == {
            key: replace(order, timezone=None)  # the zone is the buyer's, not the order's
            for key, (order, _) in rule.orders.items()
        }
        assert buyers == {email: customer for email, (customer, _) in rule.buyers.items()}


def test_a_buyers_row_older_than_what_is_stored_is_skipped_before_a_newer_one(
    store: Store,
) -> None:
    """Merging the batch's rows first, then with what is stored, would keep "fr" here."""
    first = Order("A-1", "shop", "ann@example.com", "Ann", locale="de-DE", country="DE")
    store.upsert_orders([OrderRow(first, updated_at=T0)], T0)
    older = replace(first, order_id="A-2", locale="fr-FR")
    newer = replace(first, order_id="A-3", buyer_name="Ann B.", locale=None, country="AT")
    rows = [OrderRow(older, updated_at=T0 - HOUR), OrderRow(newer, updated_at=T0 + HOUR)]
    assert store.upsert_orders(rows, T0 + 2 * HOUR).inserted == 2
    [buyer] = {h.customer for h in store.histories()}
    assert buyer == Customer("ann@example.com", "Ann B.", "de-DE", "AT")


def test_every_imported_buyer_is_due_at_the_next_pass(store: Store) -> None:
    known = Order("K-1", "shop", "known@example.com", "Kim")
    store.upsert_orders([known], T0)
    with store.engine.begin() as connection:
        connection.execute(schema.customer.update().values(next_due_at=None))
    new = Order("N-1", "shop", "new@example.com", "Nia")
    store.upsert_orders([replace(known, buyer_name="Kim K."), new], T0 + HOUR)
    with store.engine.connect() as connection:
        query = select(schema.customer.c.email, schema.customer.c.next_due_at)
        due = {email: moment for email, moment in connection.execute(query)}
    assert due == {"known@example.com": schema.EPOCH, "new@example.com": schema.EPOCH}
