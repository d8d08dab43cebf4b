"""The store: orders, events and the send records, on SQLite or PostgreSQL.

Every method is one short transaction. State changes of a send are guarded by the state they
expect (``WHERE state = 'sending'``), so two workers can never both move the same row, and the
claim is one ``UPDATE ... WHERE id IN (SELECT ... FOR UPDATE SKIP LOCKED) RETURNING`` that is
committed before the SMTP conversation begins.
"""

from __future__ import annotations

import contextlib
import json
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from importlib.resources import files
from itertools import islice
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, RowMapping, and_, create_engine, event, func, or_, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError, OperationalError, SQLAlchemyError

from worker import schema
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
from worker.errors import DuplicateSend, SchemaOutOfDate, StoreError, UnknownOrder
from worker.plan import OrderHistory

BATCH_ROWS = 500
STALE_CLAIM_REASON = (
    "the worker stopped during the SMTP conversation; check the relay's log before re-sending"
)


@dataclass(frozen=True, slots=True)
class UpsertCount:
    inserted: int = 0
    updated: int = 0


def _alembic_config(engine: Engine) -> Config:
    config = Config()
    config.set_main_option("script_location", str(files("worker") / "migrations"))
    config.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False))
    return config


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


class Store:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @classmethod
    def open(cls, url: str) -> Store:
        """Connect; for a SQLite file, create its folder so ``var/worker.db`` just works."""
        try:
            engine = create_engine(url)
        except (SQLAlchemyError, ValueError) as exc:
            raise StoreError(f"cannot use database URL {url!r}: {exc}") from exc
        if engine.dialect.name == "sqlite":
            database = engine.url.database
            if database and database != ":memory:":
                Path(database).parent.mkdir(parents=True, exist_ok=True)
            event.listen(engine, "connect", _sqlite_pragmas)
        return cls(engine)

    def close(self) -> None:
        self.engine.dispose()

    @property
    def where(self) -> str:
        return self.engine.url.render_as_string(hide_password=True)

    # Schema ---------------------------------------------------------------------------------

    def upgrade(self) -> tuple[str | None, str]:
        """Apply pending migrations; returns (revision before, revision after)."""
        before = self.current_revision()
        config = _alembic_config(self.engine)
        with self._connect() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
            connection.commit()
        return before, self.head_revision()

    def current_revision(self) -> str | None:
        with self._connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()

    def head_revision(self) -> str:
        head = ScriptDirectory.from_config(_alembic_config(self.engine)).get_current_head()
        assert head is not None
        return head

    def check_schema(self) -> None:
        """Refuse to work on a database that is not at the latest migration."""
        current, head = self.current_revision(), self.head_revision()
        if current != head:
            have = current or "empty"
            raise SchemaOutOfDate(
                f"the database is at revision {have}, the code needs {head}; "
                "run `worker db upgrade`",
                where=self.where,
            )

    @contextlib.contextmanager
    def _connect(self) -> Iterator[Connection]:
        """A connection for reads; database failures become a StoreError naming the database."""
        with self._database_errors(), self.engine.connect() as connection:
            yield connection

    @contextlib.contextmanager
    def _begin(self) -> Iterator[Connection]:
        """One transaction, committed on leaving the block, rolled back on an error."""
        with self._database_errors(), self.engine.begin() as connection:
            yield connection

    @contextlib.contextmanager
    def _database_errors(self) -> Iterator[None]:
        try:
            yield
        except OperationalError as exc:
            raise StoreError(f"the database failed: {exc.orig}", where=self.where) from exc

    # Orders and events ----------------------------------------------------------------------

    def upsert_orders(self, orders: Iterable[Order], now: datetime) -> UpsertCount:
        """Insert new orders, merge known ones: non-empty values replace, later dates win."""
        inserted = updated = 0
        for batch in _batches(orders):
            with self._begin() as tx:
                known = _rows_by(tx, schema.order, "order_id", [o.order_id for o in batch])
                for incoming in _merge_duplicates(batch):
                    self._upsert_customer(tx, incoming, now)
                    existing = known.get(incoming.order_id)
                    if existing is None:
                        tx.execute(schema.order.insert().values(_order_values(incoming, now)))
                        inserted += 1
                    else:
                        merged = _merge_order(_order_from(existing), incoming)
                        tx.execute(
                            schema.order.update()
                            .where(schema.order.c.order_id == incoming.order_id)
                            .values(_order_values(merged, now))
                        )
                        updated += 1
        return UpsertCount(inserted, updated)

    def _upsert_customer(self, tx: Connection, order: Order, now: datetime) -> None:
        values = {
            "email": order.buyer_email,
            "name": order.buyer_name,
            "locale": order.locale,
            "country": order.country,
            "timezone": order.timezone,
            "updated_at": now,
        }
        table = schema.customer
        if self.engine.dialect.name == "postgresql":
            statement: Any = pg_insert(table).values(values)
        else:
            statement = sqlite_insert(table).values(values)
        fresh = {
            k: func.coalesce(func.nullif(statement.excluded[k], ""), table.c[k])
            for k in ("name", "locale", "country", "timezone")
        }
        tx.execute(
            statement.on_conflict_do_update(
                index_elements=["email"],
                set_={**fresh, "updated_at": statement.excluded.updated_at},
            )
        )

    def upsert_disputes(self, disputes: Iterable[Dispute]) -> UpsertCount:
        """Keyed by (order, kind, opened_at); a later close date wins."""
        inserted = updated = 0
        for batch in _batches(disputes):
            with self._begin() as tx:
                for item in batch:
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
                        tx.execute(
                            schema.dispute.update().where(key).values(closed_at=item.closed_at)
                        )
                        updated += 1
        return UpsertCount(inserted, updated)

    def upsert_reviews(self, reviews: Iterable[Review]) -> UpsertCount:
        """One review per (order, source); the newer one wins."""
        inserted = updated = 0
        for batch in _batches(reviews):
            with self._begin() as tx:
                for item in batch:
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
            result = tx.execute(
                schema.dispute.update()
                .where(
                    schema.dispute.c.order_id == order_id,
                    schema.dispute.c.closed_at.is_(None),
                    schema.dispute.c.opened_at <= at,
                )
                .values(closed_at=at)
            )
            return int(result.rowcount)

    def add_reply(self, reply: Reply) -> None:
        with self._begin() as tx:
            self._require_order(tx, reply.order_id)
            try:
                with tx.begin_nested():
                    tx.execute(
                        schema.reply.insert().values(
                            order_id=reply.order_id,
                            replied_at=reply.replied_at,
                            source=reply.source,
                        )
                    )
            except IntegrityError:
                pass  # the same reply recorded twice is still one reply

    def suppress(
        self, email: str, reason: SuppressionReason, at: datetime, detail: str = ""
    ) -> bool:
        """Add a suppression; False if the address was already suppressed (first reason stays)."""
        with self._begin() as tx:
            if tx.execute(
                select(schema.suppression.c.email).where(schema.suppression.c.email == email)
            ).first():
                return False
            tx.execute(
                schema.suppression.insert().values(
                    email=email, reason=reason.value, detail=detail, created_at=at
                )
            )
            return True

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
            row = (
                connection.execute(select(schema.order).where(schema.order.c.order_id == order_id))
                .mappings()
                .first()
            )
        if row is None:
            raise UnknownOrder(
                f"no order {order_id!r}; import it first with `worker import orders`"
            )
        return _order_from(row)

    # Planning input -------------------------------------------------------------------------

    def histories(self) -> list[OrderHistory]:
        """Every order with what the planner needs; the buyer's disputes span all their orders."""
        with self._connect() as c:
            orders = [_order_from(r) for r in c.execute(select(schema.order)).mappings()]
            customers = {
                r["email"]: _customer_from(r) for r in c.execute(select(schema.customer)).mappings()
            }
            buyer_of = {o.order_id: o.buyer_email for o in orders}
            disputes: dict[str, list[Dispute]] = defaultdict(list)
            for r in c.execute(select(schema.dispute)).mappings():
                disputes[buyer_of[r["order_id"]]].append(_dispute_from(r))
            reviews = _group(c, schema.review, _review_from)
            replies = _group(c, schema.reply, _reply_from)
            sends: dict[str, dict[tuple[str, str], Send]] = defaultdict(dict)
            for r in c.execute(select(schema.send)).mappings():
                sends[r["order_id"]][(r["campaign"], r["step"])] = _send_from(r)
            suppressions = {
                r["email"]: _suppression_from(r)
                for r in c.execute(select(schema.suppression)).mappings()
            }
        return [
            OrderHistory(
                order=o,
                customer=customers.get(o.buyer_email, Customer(o.buyer_email)),
                disputes=tuple(disputes.get(o.buyer_email, ())),
                reviews=tuple(reviews.get(o.order_id, ())),
                replies=tuple(replies.get(o.order_id, ())),
                sends=sends.get(o.order_id, {}),
                suppression=suppressions.get(o.buyer_email),
            )
            for o in orders
        ]

    # Send records ---------------------------------------------------------------------------

    def schedule(
        self, order_id: str, campaign: str, step: str, due_at: datetime, now: datetime
    ) -> Send:
        """The row that exists before any SMTP conversation; returns the existing one if any."""
        with self._begin() as tx:
            with contextlib.suppress(DuplicateSend):
                self._insert_send(tx, order_id, campaign, step, SendState.SCHEDULED, due_at, now)
            return self._existing_send(tx, order_id, campaign, step)

    def record_skip(
        self, order_id: str, campaign: str, step: str, due_at: datetime, reason: str, now: datetime
    ) -> Send:
        """Record a step that will never be sent; a still-scheduled row is skipped too."""
        with self._begin() as tx:
            try:
                self._insert_send(
                    tx, order_id, campaign, step, SendState.SKIPPED, due_at, now, reason
                )
            except DuplicateSend:
                existing = self._existing_send(tx, order_id, campaign, step)
                self._move(
                    tx, existing.id, SendState.SCHEDULED, SendState.SKIPPED, now, reason=reason
                )
            return self._existing_send(tx, order_id, campaign, step)

    def _insert_send(
        self,
        tx: Connection,
        order_id: str,
        campaign: str,
        step: str,
        state: SendState,
        due_at: datetime,
        now: datetime,
        reason: str = "",
    ) -> None:
        """The unique constraint, not an earlier read, decides who creates the row."""
        values: dict[str, object] = {"order_id": order_id, "campaign": campaign, "step": step}
        values |= {"state": state.value, "due_at": due_at, "reason": reason}
        values |= {"created_at": now, "updated_at": now}
        try:
            with tx.begin_nested():
                tx.execute(schema.send.insert().values(values))
        except IntegrityError as exc:
            raise DuplicateSend(where=f"order {order_id} {campaign}/{step}") from exc

    def _existing_send(self, tx: Connection, order_id: str, campaign: str, step: str) -> Send:
        table = schema.send
        row = (
            tx.execute(
                select(table).where(
                    table.c.order_id == order_id, table.c.campaign == campaign, table.c.step == step
                )
            )
            .mappings()
            .one()
        )
        return _send_from(row)

    def claim(
        self, send_ids: Sequence[int], now: datetime, worker: str, message_id: Callable[[Send], str]
    ) -> list[Send]:
        """Mark due rows ``sending`` and commit, so no other worker can take them."""
        if not send_ids:
            return []
        table = schema.send
        claimable = (
            select(table.c.id)
            .where(
                table.c.id.in_(list(send_ids)),
                table.c.state == SendState.SCHEDULED.value,
                or_(table.c.not_before.is_(None), table.c.not_before <= now),
            )
            .with_for_update(skip_locked=True)
            .scalar_subquery()
        )
        with self._begin() as tx:
            rows = (
                tx.execute(
                    table.update()
                    .where(table.c.id.in_(claimable), table.c.state == SendState.SCHEDULED.value)
                    .values(
                        state=SendState.SENDING.value,
                        claimed_at=now,
                        claimed_by=worker,
                        attempts=table.c.attempts + 1,
                        updated_at=now,
                    )
                    .returning(*table.c)
                )
                .mappings()
                .all()
            )
            claimed = [_send_from(r) for r in rows]
            for row in claimed:
                mid = message_id(row)
                tx.execute(table.update().where(table.c.id == row.id).values(message_id=mid))
        return sorted((replace(r, message_id=message_id(r)) for r in claimed), key=lambda s: s.id)

    def mark_sent(self, send_id: int, reply: str, now: datetime) -> bool:
        with self._begin() as tx:
            return self._move(
                tx,
                send_id,
                SendState.SENDING,
                SendState.SENT,
                now,
                sent_at=now,
                relay_reply=reply,
                reason="",
            )

    def mark_failed(self, send_id: int, reason: str, now: datetime) -> bool:
        with self._begin() as tx:
            return self._move(tx, send_id, SendState.SENDING, SendState.FAILED, now, reason=reason)

    def mark_in_doubt(self, send_id: int, reason: str, now: datetime) -> bool:
        with self._begin() as tx:
            return self._move(
                tx, send_id, SendState.SENDING, SendState.IN_DOUBT, now, reason=reason
            )

    def release(self, send_id: int, reason: str, not_before: datetime, now: datetime) -> bool:
        """Give a transiently failed claim back, to be retried no earlier than ``not_before``."""
        with self._begin() as tx:
            return self._move(
                tx,
                send_id,
                SendState.SENDING,
                SendState.SCHEDULED,
                now,
                reason=reason,
                not_before=not_before,
            )

    def expire_claims(self, claimed_before: datetime, now: datetime) -> list[Send]:
        """Claims older than any message deadline belong to a worker that died mid-send."""
        table = schema.send
        with self._begin() as tx:
            rows = (
                tx.execute(
                    table.update()
                    .where(
                        table.c.state == SendState.SENDING.value,
                        table.c.claimed_at < claimed_before,
                    )
                    .values(
                        state=SendState.IN_DOUBT.value,
                        updated_at=now,
                        reason=STALE_CLAIM_REASON,
                    )
                    .returning(*table.c)
                )
                .mappings()
                .all()
            )
        return [_send_from(r) for r in rows]

    def sends(self, states: Iterable[SendState] | None = None) -> list[Send]:
        query = select(schema.send).order_by(schema.send.c.due_at, schema.send.c.id)
        if states is not None:
            query = query.where(schema.send.c.state.in_([s.value for s in states]))
        with self._connect() as c:
            return [_send_from(r) for r in c.execute(query).mappings()]

    def suppressions(self) -> list[Suppression]:
        with self._connect() as c:
            return [
                _suppression_from(r)
                for r in c.execute(
                    select(schema.suppression).order_by(schema.suppression.c.created_at)
                ).mappings()
            ]

    def _move(
        self,
        tx: Connection,
        send_id: int,
        expected: SendState,
        to: SendState,
        now: datetime,
        **values: Any,
    ) -> bool:
        table = schema.send
        result = tx.execute(
            table.update()
            .where(table.c.id == send_id, table.c.state == expected.value)
            .values(state=to.value, updated_at=now, **values)
        )
        return bool(result.rowcount == 1)


# Row <-> value conversion ----------------------------------------------------------------------


def _batches(items: Iterable[Any]) -> Iterator[list[Any]]:
    iterator = iter(items)
    while batch := list(islice(iterator, BATCH_ROWS)):
        yield batch


def _rows_by(tx: Connection, table: Any, key: str, values: list[str]) -> dict[str, RowMapping]:
    rows = tx.execute(select(table).where(table.c[key].in_(values))).mappings()
    return {r[key]: r for r in rows}


def _group(
    connection: Connection, table: Any, convert: Callable[[RowMapping], Any]
) -> dict[str, list[Any]]:
    grouped: dict[str, list[Any]] = defaultdict(list)
    for row in connection.execute(select(table)).mappings():
        grouped[row["order_id"]].append(convert(row))
    return grouped


def _merge_duplicates(batch: list[Order]) -> list[Order]:
    """The same order twice in one batch merges like a re-import would."""
    merged: dict[str, Order] = {}
    for item in batch:
        merged[item.order_id] = (
            _merge_order(merged[item.order_id], item) if item.order_id in merged else item
        )
    return list(merged.values())


def _later(a: datetime | None, b: datetime | None) -> datetime | None:
    if a is None or b is None:
        return a or b
    return max(a, b)


def _merge_order(known: Order, incoming: Order) -> Order:
    """Non-empty incoming values replace stored ones; for dates the later one wins."""
    products = tuple(dict.fromkeys((*known.products, *incoming.products)))
    return Order(
        order_id=known.order_id,
        marketplace=incoming.marketplace or known.marketplace,
        buyer_email=incoming.buyer_email or known.buyer_email,
        buyer_name=incoming.buyer_name or known.buyer_name,
        products=products,
        locale=incoming.locale or known.locale,
        country=incoming.country or known.country,
        ordered_at=_later(known.ordered_at, incoming.ordered_at),
        shipped_at=_later(known.shipped_at, incoming.shipped_at),
        delivered_at=_later(known.delivered_at, incoming.delivered_at),
        review_url=incoming.review_url or known.review_url,
        timezone=incoming.timezone or known.timezone,
    )


def _order_values(order: Order, now: datetime) -> dict[str, Any]:
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
