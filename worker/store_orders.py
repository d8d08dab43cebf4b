"""The store's orders and what hangs off them: customers, disputes, reviews, replies and
suppressions, and the feed imports that upsert them. The planner's view of them (histories) is
worker/store_planning.py.

Kept apart from the send records and the inbound mail, which both build on these rows: the
transaction-level helpers that inbound mail reuses (closing disputes, recording a reply once,
suppressing an address) live here with the records they write.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from datetime import datetime
from itertools import chain, islice
from operator import itemgetter
from typing import Any

from sqlalchemy import Connection, and_, func, select
from sqlalchemy.exc import IntegrityError, StatementError

from worker import schema
from worker.domain import (
    Dispute,
    DisputeKind,
    Order,
    Reply,
    Review,
    Suppression,
    SuppressionReason,
)
from worker.errors import UnknownOrder
from worker.feeds import OrderRow
from worker.react import Suppress
from worker.schema import EPOCH
from worker.shipments import PARCEL_FIELDS, Parcel, Shipment, applied
from worker.store_database import _Database, retried_on_conflict
from worker.store_rows import (
    CUSTOMER_COLUMNS,
    ORDER_FIELD_COLUMNS,
    CustomerParams,
    _customer_params,
    _dispute_values,
    _order_from,
    _order_params,
    _suppression_from,
    _time_binder,
    _time_reader,
)

BATCH_ROWS = 5000
"""Rows an import reads and writes at a time: a few statements per batch, bounded memory."""
UNKNOWN_IDS_SHOWN = 5
"""Orders not stored that a shipments import names to the operator."""
_KEYS_PER_SELECT = 900
"""Order ids per ``IN (...)``: under SQLite's oldest limit of 999 parameters."""
STATEMENT_ROWS = 1024
"""Rows per INSERT statement of an import, at most: a few statements per batch, each quick to
prepare."""


@dataclass(frozen=True, slots=True)
class UpsertCount:
    inserted: int = 0
    updated: int = 0
    older: int = 0
    """Known orders left as they were: every row of theirs was older than what is stored."""
    unknown: int = 0
    """Rows about orders not stored (shipments): left out, not an error."""
    unknown_ids: tuple[str, ...] = ()
    """The first few of those orders (``UNKNOWN_IDS_SHOWN``, one more if there are more), for
    the operator to look up."""


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
            _defer_foreign_keys(tx)
            imported_at = _import_time(tx, now)
            sql = _Statements(tx, now, force)
            for batch in _batches(orders):
                rows = [item if isinstance(item, OrderRow) else OrderRow(item) for item in batch]
                pending = sql.stored_orders(row.order.order_id for row in rows)
                taken = _take_rows(rows, pending, imported_at, force)
                changes = [p for p in pending.values() if p.taken]
                sql.write(taken, changes)
                news = sum(1 for p in changes if p.new)
                inserted += news
                updated += len(changes) - news
                older += len(pending) - len(changes)
        return UpsertCount(inserted, updated, older)

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

    def upsert_shipments(self, shipments: Iterable[Shipment], now: datetime) -> UpsertCount:
        """Apply a shipments file to the orders it names (see :func:`worker.shipments.applied`);
        ``updated`` counts the orders changed, ``unknown`` the rows about orders not stored.
        One transaction, so a file that fails half-way leaves nothing behind."""
        unknown = 0
        unknown_ids: list[str] = []
        changed_ids: set[str] = set()
        order = schema.order
        columns = [order.c.order_id, *(order.c[name] for name in PARCEL_FIELDS)]
        with self._begin() as tx:
            for batch in _batches(shipments):
                keys = sorted({row.order_id for row in batch})
                stored: dict[str, Parcel] = {}
                for start in range(0, len(keys), _KEYS_PER_SELECT):
                    among = order.c.order_id.in_(keys[start : start + _KEYS_PER_SELECT])
                    for found in tx.execute(select(*columns).where(among)):
                        stored[found.order_id] = Parcel(*found[1:])
                parcels = dict(stored)
                for row in batch:
                    parcel = parcels.get(row.order_id)
                    if parcel is None:
                        unknown += 1
                        listed = len(unknown_ids) > UNKNOWN_IDS_SHOWN
                        if not listed and row.order_id not in unknown_ids:
                            unknown_ids.append(row.order_id)
                        continue
                    parcels[row.order_id] = applied(parcel, row)
                for key, parcel in parcels.items():
                    if parcel != stored[key]:
                        _write_parcel(tx, key, parcel, now)
                        changed_ids.add(key)
        return UpsertCount(0, len(changed_ids), unknown=unknown, unknown_ids=tuple(unknown_ids))

    def open_dispute(
        self, order_id: str, kind: DisputeKind, at: datetime, source: str = "manual"
    ) -> None:
        self.upsert_disputes([Dispute(order_id, kind, at, None, source)])

    @retried_on_conflict
    def close_disputes(self, order_id: str, at: datetime) -> int:
        """Close every dispute of the order that is open at ``at``; returns how many."""
        with self._begin() as tx:
            self._require_order(tx, order_id)
            return _close_disputes(tx, order_id, at)

    @retried_on_conflict
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

    @retried_on_conflict
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


def _write_parcel(tx: Connection, order_id: str, parcel: Parcel, now: datetime) -> None:
    order = schema.order
    values = {name: getattr(parcel, name) for name in PARCEL_FIELDS}
    tx.execute(order.update().where(order.c.order_id == order_id).values(**values, updated_at=now))


def compact_tracking_number() -> Any:
    """The stored tracking number as :func:`worker.tracking.clean_number` makes one, upper-
    case: how a carrier's mail names it is compared with it."""
    return func.upper(func.replace(func.trim(schema.order.c.tracking_number), " ", ""))


def _deliver(tx: Connection, tracking_number: str, at: datetime, now: datetime) -> tuple[str, ...]:
    """A carrier's ``delivered`` for every order holding the number (one parcel may carry
    several orders), as a shipments row would set it (:func:`worker.shipments.applied`).
    An order placed after the delivery is not this parcel's: carriers reuse numbers."""
    order = schema.order
    columns = [order.c.order_id, order.c.ordered_at, *(order.c[name] for name in PARCEL_FIELDS)]
    query = select(*columns).where(compact_tracking_number() == tracking_number)
    changed = []
    for found in tx.execute(query.order_by(order.c.order_id)).all():
        if found.ordered_at is not None and found.ordered_at > at:
            continue
        stored = Parcel(*found[2:])
        parcel = applied(stored, Shipment(found.order_id, status="delivered", at=at))
        if parcel != stored:
            _write_parcel(tx, found.order_id, parcel, now)
            changed.append(found.order_id)
    return tuple(changed)


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


# Imports of orders and buyers --------------------------------------------------------------------


def _batches(items: Iterable[Any]) -> Iterator[list[Any]]:
    iterator = iter(items)
    while batch := list(islice(iterator, BATCH_ROWS)):
        yield batch


def _defer_foreign_keys(tx: Connection) -> None:
    """SQLite: the import's foreign keys are checked at its commit instead of at each
    statement (``defer_foreign_keys``, which SQLite switches off itself when the transaction
    ends; see ``_Statements._insert_head`` for why). Every order's buyer is written before
    it, so the commit finds nothing; were it to, the commit fails and nothing is stored, as
    for any failure."""
    if tx.dialect.name == "sqlite":
        tx.exec_driver_sql("PRAGMA defer_foreign_keys = ON")


@dataclass(slots=True)
class _Pending:
    """An order during an import: its values, as of when they are true, whether it is new,
    and whether a row of the import was taken. A stored order's values are not read:
    ``value`` is None until a row is taken, and ``fields`` says which fields the taken rows
    set (the update writes those)."""

    key: str
    value: Order | None
    stamp: datetime | None
    new: bool = False
    taken: bool = False
    fields: frozenset[str] = frozenset()


Taken = list[tuple[Order, datetime]]
"""The rows an import's orders took, with their times, in file order (for their buyers)."""


def _take_rows(
    rows: list[OrderRow], pending: dict[str, _Pending], imported_at: datetime, force: bool
) -> Taken:
    """Each row in file order onto its order; the rows taken, for their buyers. A row is as
    new as the feed says, never newer than the import."""
    taken: Taken = []
    for row in rows:
        stamp = row.updated_at
        if stamp is None or stamp > imported_at:
            stamp = imported_at
        if _take(pending, row, stamp, force):
            taken.append((row.order, stamp))
    return taken


def _take(pending: dict[str, _Pending], row: OrderRow, stamp: datetime, force: bool) -> bool:
    """Apply ``row`` if it is at least as new as what is held (or forced); False if older."""
    key = row.order.order_id
    known = pending.get(key)
    if known is None:
        pending[key] = _Pending(key, row.order, stamp, True, True, row.fields)
    elif force or known.stamp is None or stamp >= known.stamp:
        known.value = _merge_order(known.value, row)
        known.stamp = stamp
        known.taken = True
        if not row.fields <= known.fields:
            known.fields = known.fields | row.fields
    else:
        return False
    return True


_BY_EMAIL = itemgetter(0)
"""A buyer's values in key order."""
_BY_BUYER = itemgetter(ORDER_FIELD_COLUMNS.index("buyer_email"))
"""An order's values by buyer: the buyer index, the foreign key's and the triggers' look-ups
of the buyer go through the addresses in order; more of them than through the order ids."""


class _Statements:
    """An import's reads and writes in the driver's own SQL. Reads: the stamps of the stored
    ones among a batch's orders. Writes: each batch's buyers and orders as a few multi-row
    ``INSERT ... ON CONFLICT DO UPDATE`` statements, without SQLAlchemy's per-row and
    per-value work (which would cost more than the database's own).

    Values are bound as ``schema.UtcDateTime`` binds them (``store_rows._time_binder``); a
    naive datetime is refused with the StatementError SQLAlchemy raises for it. A known order
    takes only the columns of the fields its rows have (``ON CONFLICT DO UPDATE SET``); a new
    one is inserted whole, as before. The conflict path fires the order's UPDATE trigger, as an
    UPDATE would."""

    def __init__(self, tx: Connection, now: datetime, force: bool) -> None:
        self.tx = tx
        style = tx.dialect.paramstyle
        if style not in ("qmark", "format", "pyformat"):
            raise NotImplementedError(f"imports do not know the paramstyle {style!r}")
        self._mark = "?" if style == "qmark" else "%s"
        self._quote = tx.dialect.identifier_preparer.quote
        self._parameters = _parameter_limit(tx)
        bind = _time_binder(tx.dialect)
        self._customer_head = self._insert_head("customer", CUSTOMER_COLUMNS)
        self._customer_tail = self._buyer_merge(force)
        try:
            self.now = bind(now)
            epoch = bind(EPOCH)
        except ValueError as exc:
            raise _refused(self._customer_head, exc) from None
        self._customer_params: CustomerParams = _customer_params(bind, epoch)
        columns = (*ORDER_FIELD_COLUMNS, "updated_at", "source_updated_at", "order_id")
        self._order_head = self._insert_head("order", columns)
        self._order_params = _order_params(bind)
        self._order_tails: dict[frozenset[str], str] = {}
        self._texts: dict[tuple[str, str, int], str] = {}
        self._read_time = _time_reader(tx.dialect)
        self._stamps = f"SELECT order_id, source_updated_at FROM {self._quote('order')} WHERE"

    def stored_orders(self, keys: Iterable[str]) -> dict[str, _Pending]:
        """The stored ones among these orders, with their stamps: their values are not read,
        as an update writes only the fields the taken rows have (the others stay as
        stored)."""
        read = self._read_time
        return {
            key: _Pending(key, None, read(stamp))
            for key, stamp in self._among(self._stamps, "order_id", keys)
        }

    def _among(self, select: str, key: str, values: Iterable[str]) -> Iterator[Any]:
        wanted = sorted(set(values))
        per = self._parameters
        for start in range(0, len(wanted), per):
            chunk = tuple(wanted[start : start + per])
            marks = ", ".join([self._mark] * len(chunk))
            yield from self.tx.exec_driver_sql(f"{select} {key} IN ({marks})", chunk)

    def write(self, taken: Taken, orders: list[_Pending]) -> None:
        """A batch's writes: the buyers first (orders refer to them), then the orders, one
        statement per set of fields their rows have (a file's rows share theirs).

        Each taken row goes to its buyer in file order, merged by the database with what it
        holds (see ``_buyer_merge``); a buyer's second row in the batch goes in a second
        statement, after the first (PostgreSQL changes a row once per statement)."""
        now = self.now
        waves: list[list[tuple[Any, ...]]] = []
        seen: dict[str, int] = {}
        params = self._customer_params
        try:
            for order, stamp in taken:
                wave = seen.get(order.buyer_email, 0)
                seen[order.buyer_email] = wave + 1
                if wave == len(waves):
                    waves.append([])
                waves[wave].append(params(order, now, stamp))
        except ValueError as exc:
            raise _refused(self._customer_head, exc) from None
        for buyers in waves:
            self._upsert(self._customer_head, self._customer_tail, buyers, _BY_EMAIL)
        by_fields: dict[frozenset[str], list[tuple[Any, ...]]] = {}
        values = self._order_params
        try:
            for p in orders:
                assert p.value is not None, "a taken order has its row's values"
                by_fields.setdefault(p.fields, []).append(values(p.value, now, p.stamp))
        except ValueError as exc:
            raise _refused(self._order_head, exc) from None
        for fields, rows in by_fields.items():
            self._upsert(self._order_head, self._order_tail(fields), rows, _BY_BUYER)

    def _buyer_merge(self, force: bool) -> str:
        """A known buyer takes a row at least as new as its values (any row, forced): what
        the row says, but an empty value never erases a known one. Its next_due_at is left
        to the order triggers, which set the epoch only where it is not already (setting it
        here would rewrite its index entry every time)."""
        table, q = self._quote("customer"), self._quote
        kept = [
            f"{q(c)} = COALESCE(NULLIF(excluded.{q(c)}, ''), {table}.{q(c)})"
            for c in ("locale", "country", "timezone")
        ]
        sets = ", ".join(
            [
                f"name = CASE WHEN excluded.name <> '' THEN excluded.name ELSE {table}.name END",
                *kept,
                "updated_at = excluded.updated_at",
                "source_updated_at = excluded.source_updated_at",
            ]
        )
        sql = f"ON CONFLICT (email) DO UPDATE SET {sets}"
        if force:
            return sql
        stored = f"{table}.source_updated_at"
        return f"{sql} WHERE {stored} IS NULL OR excluded.source_updated_at >= {stored}"

    def _upsert(
        self, head: str, tail: str, rows: list[tuple[Any, ...]], key: Callable[[Any], Any]
    ) -> None:
        """Rows in key order (inserts close together in the indexes), in statements of a
        power of two rows each (at most :data:`STATEMENT_ROWS`, and as many parameters as the
        driver takes): a few texts, each prepared once and kept by the driver (SQLite), whatever
        the batches' sizes."""
        if not rows:
            return
        rows.sort(key=key)
        width = len(rows[0])
        most = min(STATEMENT_ROWS, max(1, self._parameters // width))
        start = 0
        while start < len(rows):
            count = min(most, 1 << ((len(rows) - start).bit_length() - 1))
            chunk = rows[start : start + count]
            start += count
            sql = self._sql(head, tail, width, count)
            self.tx.exec_driver_sql(sql, tuple(chain.from_iterable(chunk)))

    def _sql(self, head: str, tail: str, width: int, rows: int) -> str:
        text = self._texts.get((head, tail, rows))
        if text is None:
            row = "(" + ", ".join([self._mark] * width) + ")"
            text = self._texts[(head, tail, rows)] = f"{head} {', '.join([row] * rows)} {tail}"
        return text

    def _order_tail(self, fields: frozenset[str]) -> str:
        known = self._order_tails.get(fields)
        if known is None:
            columns = [c for c in ORDER_FIELD_COLUMNS if c in fields]
            columns += ["updated_at", "source_updated_at"]
            known = self._order_tails[fields] = self._on_conflict("order_id", columns)
        return known

    def _insert_head(self, table: str, columns: tuple[str, ...]) -> str:
        """SQLite: ``OR FAIL``, so a statement that breaks a constraint other than the key
        stops there without undoing its own earlier rows (the import's rollback undoes
        them all). With the foreign keys deferred, SQLite then needs no statement journal:
        a statement that could fail half-way copies each page it changes first, and the
        order triggers make every insert such a statement (about a tenth of the database's
        time in an import)."""
        names = ", ".join(self._quote(c) for c in columns)
        insert = "INSERT OR FAIL INTO" if self.tx.dialect.name == "sqlite" else "INSERT INTO"
        return f"{insert} {self._quote(table)} ({names}) VALUES"

    def _on_conflict(self, key: str, columns: Iterable[str]) -> str:
        sets = ", ".join(f"{c} = excluded.{c}" for c in map(self._quote, columns))
        return f"ON CONFLICT ({self._quote(key)}) DO UPDATE SET {sets}"


_MAX_PARAMETERS = 32766
"""Parameters per statement: SQLite's default limit (PostgreSQL takes 65535)."""


def _parameter_limit(tx: Connection) -> int:
    if tx.dialect.name != "sqlite":
        return _MAX_PARAMETERS
    driver: Any = tx.connection.driver_connection
    try:  # SQLite before 3.32 takes 999; Python 3.11 can ask
        limit = driver.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
    except AttributeError:
        return 999
    return min(int(limit), _MAX_PARAMETERS)


def _refused(sql: str, exc: ValueError) -> StatementError:
    """What ``schema.UtcDateTime`` refuses (a naive datetime), raised as SQLAlchemy does."""
    return StatementError(f"({type(exc).__name__}) {exc}", sql, None, exc)


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
