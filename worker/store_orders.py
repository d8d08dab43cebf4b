"""The store's orders and what hangs off them: customers, disputes, reviews, replies and
suppressions, the feed imports that upsert them, and the planner's view of them (histories).

Kept apart from the send records and the inbound mail, which both build on these rows: the
transaction-level helpers that inbound mail reuses (closing disputes, recording a reply once,
suppressing an address) live here with the records they write.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from datetime import datetime
from itertools import islice
from typing import Any

from sqlalchemy import Connection, RowMapping, and_, bindparam, func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError

from worker import schema
from worker.domain import (
    Customer,
    Dispute,
    DisputeKind,
    Order,
    Reply,
    Review,
    Send,
    Suppression,
    SuppressionReason,
)
from worker.errors import UnknownOrder
from worker.feeds import OrderRow
from worker.plan import OrderHistory
from worker.react import Suppress
from worker.store_database import _Database
from worker.store_rows import (
    _customer_from,
    _customer_values,
    _dispute_from,
    _dispute_values,
    _order_from,
    _order_values,
    _reply_from,
    _review_from,
    _send_from,
    _suppression_from,
)

BATCH_ROWS = 500


@dataclass(frozen=True, slots=True)
class UpsertCount:
    inserted: int = 0
    updated: int = 0
    older: int = 0
    """Known orders left as they were: every row of theirs was older than what is stored."""


class OrdersMixin(_Database):
    # Orders and events ----------------------------------------------------------------------

    def upsert_orders(
        self, orders: Iterable[Order | OrderRow], now: datetime, *, force: bool = False
    ) -> UpsertCount:
        """Insert new orders; a known order takes a row only when the row is at least as new as
        what is stored, so an old export never undoes a newer one and a newer one can clear or
        correct any date. A row is as new as the feed's own last-updated time, else as the
        import (``now``, never before a time already stored: a file imported later is newer).
        Then each field the row's file has replaces the stored one; a plain Order has them all.
        The buyer's name, locale, country and zone follow the same rule, but an empty value
        never erases one (they come from all the buyer's orders). ``force`` takes every row
        whatever its age (a correction). One transaction, so a file that fails half-way leaves
        nothing behind."""
        inserted = updated = older = 0
        with self._begin() as tx:
            imported_at = _import_time(tx, now)
            for batch in _batches(orders):
                rows = [item if isinstance(item, OrderRow) else OrderRow(item) for item in batch]
                keys = [row.order.order_id for row in rows]
                pending = {
                    key: _Pending(_order_from(stored), stored["source_updated_at"])
                    for key, stored in _rows_by(tx, schema.order, "order_id", keys).items()
                }
                emails = list({row.order.buyer_email for row in rows})
                buyers = {
                    email: _Pending(_customer_from(stored), stored["source_updated_at"])
                    for email, stored in _rows_by(tx, schema.customer, "email", emails).items()
                }
                for row in rows:
                    stamp = imported_at
                    if row.updated_at is not None:
                        stamp = min(row.updated_at, imported_at)
                    taken = _take(pending, row.order.order_id, row, stamp, force, _merge_order)
                    if taken:
                        _take(buyers, row.order.buyer_email, row, stamp, force, _merge_customer)
                self._write_customers(tx, [b for b in buyers.values() if b.new or b.taken], now)
                news = [_order_values(p.value, now, p.stamp) for p in pending.values() if p.new]
                changed = [
                    {**_order_values(p.value, now, p.stamp), "key": key}
                    for key, p in pending.items()
                    if p.taken and not p.new
                ]
                if news:
                    tx.execute(schema.order.insert(), news)
                if changed:
                    tx.execute(_order_update(changed[0]), changed)
                inserted += len(news)
                updated += len(changed)
                older += sum(1 for p in pending.values() if not (p.new or p.taken))
        return UpsertCount(inserted, updated, older)

    def _write_customers(self, tx: Connection, buyers: list[_Pending], now: datetime) -> None:
        if not buyers:
            return
        table = schema.customer
        postgresql = self.engine.dialect.name == "postgresql"
        insert: Any = pg_insert(table) if postgresql else sqlite_insert(table)
        kept = ("name", "locale", "country", "timezone", "updated_at", "source_updated_at")
        statement = insert.on_conflict_do_update(
            index_elements=["email"], set_={k: insert.excluded[k] for k in kept}
        )
        tx.execute(statement, [_customer_values(b.value, now, b.stamp) for b in buyers])

    def upsert_disputes(self, disputes: Iterable[Dispute]) -> UpsertCount:
        """Keyed by (order, kind, opened_at); a later close date wins. One transaction."""
        inserted = updated = 0
        with self._begin() as tx:
            for item in disputes:
                self._require_order(tx, item.order_id)
                key = and_(
                    schema.dispute.c.order_id == item.order_id,
                    schema.dispute.c.kind == item.kind.value,
                    schema.dispute.c.opened_at == item.opened_at,
                )
                closed = tx.execute(select(schema.dispute.c.closed_at).where(key)).first()
                if closed is None:
                    tx.execute(schema.dispute.insert().values(_dispute_values(item)))
                    inserted += 1
                elif item.closed_at is not None and (
                    closed[0] is None or item.closed_at > closed[0]
                ):
                    tx.execute(schema.dispute.update().where(key).values(closed_at=item.closed_at))
                    updated += 1
        return UpsertCount(inserted, updated)

    def upsert_reviews(self, reviews: Iterable[Review]) -> UpsertCount:
        """One review per (order, source); the newer one wins. One transaction."""
        inserted = updated = 0
        with self._begin() as tx:
            for item in reviews:
                self._require_order(tx, item.order_id)
                key = and_(
                    schema.review.c.order_id == item.order_id,
                    schema.review.c.source == item.source,
                )
                known = tx.execute(select(schema.review.c.reviewed_at).where(key)).first()
                values = {
                    "order_id": item.order_id,
                    "rating": item.rating,
                    "reviewed_at": item.reviewed_at,
                    "source": item.source,
                }
                if known is None:
                    tx.execute(schema.review.insert().values(values))
                    inserted += 1
                elif item.reviewed_at >= known[0]:
                    tx.execute(schema.review.update().where(key).values(values))
                    updated += 1
        return UpsertCount(inserted, updated)

    def open_dispute(
        self, order_id: str, kind: DisputeKind, at: datetime, source: str = "manual"
    ) -> None:
        self.upsert_disputes([Dispute(order_id, kind, at, None, source)])

    def close_disputes(self, order_id: str, at: datetime) -> int:
        """Close every dispute of the order that is open at ``at``; returns how many."""
        with self._begin() as tx:
            self._require_order(tx, order_id)
            return _close_disputes(tx, order_id, at)

    def add_reply(self, reply: Reply) -> None:
        with self._begin() as tx:
            self._require_order(tx, reply.order_id)
            # the same reply recorded twice is still one reply
            _insert_ignoring_duplicate(
                tx,
                schema.reply.insert().values(
                    order_id=reply.order_id, replied_at=reply.replied_at, source=reply.source
                ),
            )

    def suppress(
        self, email: str, reason: SuppressionReason, at: datetime, detail: str = ""
    ) -> bool:
        """Add a suppression; False if the address was already suppressed (first reason stays)."""
        with self._begin() as tx:
            return _suppress(tx, Suppress(email, reason, detail), at)

    def _require_order(self, tx: Connection, order_id: str) -> None:
        if (
            tx.execute(
                select(schema.order.c.order_id).where(schema.order.c.order_id == order_id)
            ).first()
            is None
        ):
            raise UnknownOrder(
                f"no order {order_id!r}; import it first with `worker import orders`"
            )

    def has_order(self, order_id: str) -> bool:
        with self._connect() as connection:
            query = select(schema.order.c.order_id).where(schema.order.c.order_id == order_id)
            return connection.execute(query).first() is not None

    def order(self, order_id: str) -> Order:
        with self._connect() as connection:
            return self._order_in(connection, order_id)

    # Planning input -------------------------------------------------------------------------

    def histories(self) -> list[OrderHistory]:
        """Every order with what the planner needs; the buyer's disputes span all their orders."""
        with self._connect() as c:
            return list(_histories_of(c, None).values())

    def suppressions(self) -> list[Suppression]:
        with self._connect() as c:
            return [
                _suppression_from(r)
                for r in c.execute(
                    select(schema.suppression).order_by(schema.suppression.c.created_at)
                ).mappings()
            ]

    def _order_in(self, tx: Connection, order_id: str) -> Order:
        row = tx.execute(select(schema.order).where(schema.order.c.order_id == order_id))
        found = row.mappings().first()
        if found is None:
            raise UnknownOrder(
                f"no order {order_id!r}; import it first with `worker import orders`"
            )
        return _order_from(found)


# Orders and events, inside a transaction -------------------------------------------------------


def _close_disputes(tx: Connection, order_id: str, at: datetime, *only: Any) -> int:
    dispute = schema.dispute
    result = tx.execute(
        dispute.update()
        .where(
            dispute.c.order_id == order_id,
            dispute.c.closed_at.is_(None),
            dispute.c.opened_at <= at,
            *only,
        )
        .values(closed_at=at)
    )
    return int(result.rowcount)


def _insert_ignoring_duplicate(tx: Connection, statement: Any) -> bool:
    try:
        with tx.begin_nested():
            tx.execute(statement)
    except IntegrityError:
        return False
    return True


def _suppress(tx: Connection, item: Suppress, at: datetime) -> bool:
    table = schema.suppression
    if tx.execute(select(table.c.email).where(table.c.email == item.email)).first():
        return False
    tx.execute(
        table.insert().values(
            email=item.email, reason=item.reason.value, detail=item.detail, created_at=at
        )
    )
    return True


def _histories_of(c: Connection, order_ids: set[str] | None) -> dict[str, OrderHistory]:
    """The planner's view of these orders (``None``: of every order), read in ``c``."""
    order = schema.order
    query = (
        select(order) if order_ids is None else select(order).where(order.c.order_id.in_(order_ids))
    )
    orders = [_order_from(r) for r in c.execute(query).mappings()]
    buyers = {o.buyer_email for o in orders}
    ids = {o.order_id for o in orders}

    def rows(table: Any, *where: Any) -> Iterator[RowMapping]:
        return iter(c.execute(select(table).where(*where) if where else select(table)).mappings())

    every = order_ids is None
    customers = {
        r["email"]: _customer_from(r)
        for r in rows(schema.customer, *(() if every else (schema.customer.c.email.in_(buyers),)))
    }
    buyer_of_dispute = select(order.c.buyer_email, schema.dispute).join(
        order, order.c.order_id == schema.dispute.c.order_id
    )
    if not every:
        buyer_of_dispute = buyer_of_dispute.where(order.c.buyer_email.in_(buyers))
    disputes: dict[str, list[Dispute]] = defaultdict(list)
    for r in c.execute(buyer_of_dispute).mappings():
        disputes[r["buyer_email"]].append(_dispute_from(r))
    reviews = _group(c, schema.review, _review_from, None if every else ids)
    replies = _group(c, schema.reply, _reply_from, None if every else ids)
    sends: dict[str, dict[tuple[str, str], Send]] = defaultdict(dict)
    for r in rows(schema.send, *(() if every else (schema.send.c.order_id.in_(ids),))):
        sends[r["order_id"]][(r["campaign"], r["step"])] = _send_from(r)
    suppressions = {
        r["email"]: _suppression_from(r)
        for r in rows(
            schema.suppression, *(() if every else (schema.suppression.c.email.in_(buyers),))
        )
    }
    return {
        o.order_id: OrderHistory(
            order=o,
            customer=customers.get(o.buyer_email, Customer(o.buyer_email)),
            disputes=tuple(disputes.get(o.buyer_email, ())),
            reviews=tuple(reviews.get(o.order_id, ())),
            replies=tuple(replies.get(o.order_id, ())),
            sends=sends.get(o.order_id, {}),
            suppression=suppressions.get(o.buyer_email),
        )
        for o in orders
    }


# Imports of orders and buyers --------------------------------------------------------------------


def _batches(items: Iterable[Any]) -> Iterator[list[Any]]:
    iterator = iter(items)
    while batch := list(islice(iterator, BATCH_ROWS)):
        yield batch


def _rows_by(tx: Connection, table: Any, key: str, values: list[str]) -> dict[str, RowMapping]:
    rows = tx.execute(select(table).where(table.c[key].in_(values))).mappings()
    return {r[key]: r for r in rows}


def _group(
    connection: Connection,
    table: Any,
    convert: Callable[[RowMapping], Any],
    order_ids: set[str] | None = None,
) -> dict[str, list[Any]]:
    query = (
        select(table) if order_ids is None else select(table).where(table.c.order_id.in_(order_ids))
    )
    grouped: dict[str, list[Any]] = defaultdict(list)
    for row in connection.execute(query).mappings():
        grouped[row["order_id"]].append(convert(row))
    return grouped


@dataclass(frozen=True, slots=True)
class _Pending:
    """An order or a buyer during an import: its values, as of when they are true, whether it
    is new, and whether a row of the import was taken."""

    value: Any
    stamp: datetime | None
    new: bool = False
    taken: bool = False


def _take(
    pending: dict[str, _Pending],
    key: str,
    row: OrderRow,
    stamp: datetime,
    force: bool,
    merge: Callable[[Any, OrderRow], Any],
) -> bool:
    """Apply ``row`` if it is at least as new as what is held (or forced); False if older."""
    known = pending.get(key)
    if known is None:
        pending[key] = _Pending(merge(None, row), stamp, new=True, taken=True)
    elif force or known.stamp is None or stamp >= known.stamp:
        pending[key] = _Pending(merge(known.value, row), stamp, known.new, taken=True)
    else:
        return False
    return True


def _order_update(values: dict[str, Any]) -> Any:
    """An UPDATE for executemany: ``key`` names the order, the other values are set."""
    columns = [name for name in values if name not in ("order_id", "key")]
    return (
        schema.order.update()
        .where(schema.order.c.order_id == bindparam("key"))
        .values({name: bindparam(name) for name in columns})
    )


def _import_time(tx: Connection, now: datetime) -> datetime:
    """The import's own time, never before one already stored: the file imported later is the
    newer one even if the clock was set back in between."""
    stored: list[datetime | None] = [
        tx.execute(select(func.max(table.c.source_updated_at))).scalar()
        for table in (schema.order, schema.customer)
    ]
    return max([now, *(moment for moment in stored if moment is not None)])


def _merge_order(known: Order | None, row: OrderRow) -> Order:
    """The row is at least as new: every field its file has replaces the stored one, empty or
    not (so a wrong date can be cleared); fields its file has no column for stay as stored."""
    if known is None:
        return row.order
    changes = {name: getattr(row.order, name) for name in row.fields if name != "order_id"}
    return replace(known, **changes)


def _merge_customer(known: Customer | None, row: OrderRow) -> Customer:
    """What the row knows of its buyer fills in; an empty value never erases a known one."""
    order = row.order
    if known is None:
        return Customer(
            order.buyer_email, order.buyer_name, order.locale, order.country, order.timezone
        )
    return Customer(
        known.email,
        order.buyer_name or known.name,
        order.locale or known.locale,
        order.country or known.country,
        order.timezone or known.timezone,
    )
