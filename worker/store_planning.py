"""The store's side of planning: which buyers a pass must plan, the planner's view of them
(histories), and what a pass writes back in the same transaction: skipped steps, scheduled
rows for the due ones, and each buyer's next look.

Each buyer (disputes, suppressions and caps are per buyer) carries ``customer.next_due_at``:
the next moment at which planning them may answer differently. A pass plans only buyers whose
moment has come, a bounded batch per transaction, so its cost follows what is due, not what
is stored. Triggers (migration 0005) set the moment to the epoch on every write that can
change a decision, in that write's own transaction; a changed campaign file or planning
setting sets it for every buyer once (:meth:`PlanningMixin.plan_inputs_changed`).

Several workers: a batch's buyers are locked (``FOR UPDATE SKIP LOCKED`` on PostgreSQL), so two
workers plan disjoint buyers, and a write that wakes a buyer being planned waits for the batch
to commit, then wakes it again. SQLite takes the write lock at the batch's start (``BEGIN
IMMEDIATE``) for the same effect within one process.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, RowMapping, and_, bindparam, func, or_, select, tuple_
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from worker import schema
from worker.domain import (
    Customer,
    Dispute,
    MessageKind,
    Send,
    SendState,
    Suppression,
    ThreadEntry,
)
from worker.plan import Decision, OrderHistory, Plan, next_looks
from worker.store_database import _Database, retried_on_conflict
from worker.store_inbound import _spoken
from worker.store_rows import (
    _customer_from,
    _dispute_from,
    _order_from,
    _reply_from,
    _review_from,
    _send_from,
    _suppression_from,
)

BUYER_BATCH = 500
"""Buyers planned per transaction: bounded memory, short locks."""
PLAN_INPUTS = "plan_inputs"
"""The ``worker_state`` key of the digest of the campaigns and settings last planned with."""


@dataclass(frozen=True, slots=True)
class DueCursor:
    """Where a pass's walk over due buyers stands: (next_due_at, email) of the last one."""

    next_due_at: datetime
    email: str


@dataclass(frozen=True, slots=True)
class Planned:
    """One batch of due buyers, planned and recorded."""

    plan: Plan
    histories: dict[str, OrderHistory]
    """By order id: every order of the batch's buyers."""
    due: list[tuple[Decision, int]]
    """The due steps with their ``scheduled`` send rows, to claim."""
    looks: dict[str, datetime | None]
    """Each buyer's next look, as written."""
    cursor: DueCursor
    full: bool
    """The batch was as large as asked: more buyers may be due after ``cursor``."""


class PlanningMixin(_Database):
    def histories(self) -> list[OrderHistory]:
        """Every order with what the planner needs. For tests and small stores: a pass and
        ``worker plan`` read :meth:`every_history` in batches instead."""
        return [h for batch in self.every_history() for h in batch]

    def buyer_histories(self, order_id: str) -> list[OrderHistory]:
        """Every order of the buyer of ``order_id``, as the planner sees them together
        (``worker explain``); empty if the order is unknown."""
        order = schema.order
        with self._connect() as c:
            buyer = select(order.c.buyer_email).where(order.c.order_id == order_id)
            return list(
                _histories_where(c, order.c.buyer_email.in_(buyer.scalar_subquery())).values()
            )

    def every_history(self, batch: int = BUYER_BATCH) -> Iterator[list[OrderHistory]]:
        """Every buyer's histories, ``batch`` buyers at a time, in address order: constant
        memory however many orders are stored. Each batch is read in its own transaction."""
        after = ""
        customer = schema.customer
        while True:
            with self._connect() as c:
                emails = list(
                    c.execute(
                        select(customer.c.email)
                        .where(customer.c.email > after)
                        .order_by(customer.c.email)
                        .limit(batch)
                    ).scalars()
                )
                if not emails:
                    return
                histories = _histories_where(c, schema.order.c.buyer_email.in_(emails))
            yield list(histories.values())
            after = emails[-1]

    @retried_on_conflict
    def plan_inputs_changed(self, digest: str, now: datetime) -> bool:
        """Store ``digest`` (:func:`worker.plan.plan_inputs_digest`); if it differs from the
        one stored, every buyer is due: the next pass plans them all, in batches."""
        state = schema.worker_state
        with self._begin() as tx:
            # The row first (an empty digest), so two workers starting on a fresh database
            # lock the same row instead of both inserting it.
            tx.execute(
                _insert_ignoring_duplicates(tx, state),
                [{"key": PLAN_INPUTS, "value": "", "updated_at": now}],
            )
            stored = tx.execute(
                select(state.c.value).where(state.c.key == PLAN_INPUTS).with_for_update()
            ).scalar_one()
            if stored == digest:
                return False
            tx.execute(schema.customer.update().values(next_due_at=schema.EPOCH))
            tx.execute(
                state.update()
                .where(state.c.key == PLAN_INPUTS)
                .values(value=digest, updated_at=now)
            )
            return True

    @retried_on_conflict
    def plan_due(
        self,
        now: datetime,
        decide: Callable[[Sequence[OrderHistory]], Plan],
        *,
        after: DueCursor | None = None,
        planned: frozenset[str] | set[str] = frozenset(),
        limit: int = BUYER_BATCH,
    ) -> Planned | None:
        """Plan the next batch of buyers due at ``now`` (after ``after``), in one transaction:
        read their histories, ``decide``, record the skipped steps, schedule the due ones and
        write each buyer's next look. None when no buyer is due past ``after``.

        ``planned``: buyers this pass already planned whose next look has come already (a due
        step looks again): met again in the walk, they are passed over, not planned twice.
        """
        customer = schema.customer
        query = (
            select(customer.c.email, customer.c.next_due_at)
            .where(customer.c.next_due_at <= now)
            .order_by(customer.c.next_due_at, customer.c.email)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        if after is not None:
            query = query.where(
                or_(
                    customer.c.next_due_at > after.next_due_at,
                    and_(
                        customer.c.next_due_at == after.next_due_at,
                        customer.c.email > after.email,
                    ),
                )
            )
        with self._begin_write() as tx:
            rows = tx.execute(query).all()
            if not rows:
                return None
            cursor = DueCursor(rows[-1].next_due_at, rows[-1].email)
            emails = [r.email for r in rows if r.email not in planned]
            histories = (
                _histories_where(tx, schema.order.c.buyer_email.in_(emails)) if emails else {}
            )
            decided = decide(list(histories.values()))
            _record_skips(tx, decided.skipped, now)
            due = _schedule(tx, decided.due, now)
            looks = next_looks(histories.values(), decided.decisions, now)
            _write_looks(tx, {email: looks.get(email) for email in emails})
        return Planned(decided, histories, due, looks, cursor, full=len(rows) == limit)

    def protections(self, email: str) -> tuple[Suppression | None, tuple[Dispute, ...]]:
        """The buyer's suppression and disputes as stored now: what a claim checked, asked
        again just before a message claimed a moment ago goes out."""
        order, dispute, suppression = schema.order, schema.dispute, schema.suppression
        with self._connect() as c:
            found = c.execute(select(suppression).where(suppression.c.email == email)).mappings()
            stopped = next((_suppression_from(r) for r in found), None)
            rows = c.execute(
                select(dispute)
                .join(order, order.c.order_id == dispute.c.order_id)
                .where(order.c.buyer_email == email)
            ).mappings()
            return stopped, tuple(_dispute_from(r) for r in rows)

    def next_look(self) -> datetime | None:
        """The earliest next look of any buyer: when a pass has work (the daemon's wake-up;
        a moment already past means at once)."""
        customer = schema.customer
        with self._connect() as c:
            found: datetime | None = c.execute(
                select(customer.c.next_due_at)
                .where(customer.c.next_due_at.is_not(None))
                .order_by(customer.c.next_due_at)
                .limit(1)
            ).scalar()
            return found

    def next_due(self, email: str) -> datetime | None:
        """The buyer's next look (``worker plan`` and the tests show it)."""
        customer = schema.customer
        with self._connect() as c:
            found: datetime | None = c.execute(
                select(customer.c.next_due_at).where(customer.c.email == email)
            ).scalar()
            return found


def _record_skips(tx: Connection, skipped: Sequence[Decision], now: datetime) -> None:
    """A skip is for good: a new row is inserted ``skipped``; a row still ``scheduled`` is
    moved; a row in any other state is left as it is."""
    if not skipped:
        return
    send = schema.send
    tx.execute(
        _insert_ignoring_duplicates(tx, send),
        [_send_values(d, SendState.SKIPPED, now) | {"reason": d.reason} for d in skipped],
    )
    tx.execute(
        send.update()
        .where(
            send.c.order_id == bindparam("key_order"),
            send.c.campaign == bindparam("key_campaign"),
            send.c.step == bindparam("key_step"),
            send.c.state == SendState.SCHEDULED.value,
        )
        .values(state=SendState.SKIPPED.value, reason=bindparam("skip_reason"), updated_at=now),
        [
            {
                "key_order": d.order_id,
                "key_campaign": d.campaign,
                "key_step": d.step,
                "skip_reason": d.reason,
            }
            for d in skipped
        ],
    )


def _schedule(tx: Connection, due: Sequence[Decision], now: datetime) -> list[tuple[Decision, int]]:
    """The ``scheduled`` row of each due step, created if missing (the unique constraint, not
    an earlier read, decides who creates it)."""
    if not due:
        return []
    send = schema.send
    tx.execute(
        _insert_ignoring_duplicates(tx, send),
        [_send_values(d, SendState.SCHEDULED, now) for d in due],
    )
    keys = {(d.order_id, d.campaign, d.step) for d in due}
    ids = {
        (r.order_id, r.campaign, r.step): r.id
        for r in tx.execute(
            select(send.c.id, send.c.order_id, send.c.campaign, send.c.step).where(
                send.c.order_id.in_({d.order_id for d in due}),
                tuple_(send.c.order_id, send.c.campaign, send.c.step).in_(keys),
            )
        )
    }
    return [(d, ids[(d.order_id, d.campaign, d.step)]) for d in due]


def _send_values(decision: Decision, state: SendState, now: datetime) -> dict[str, Any]:
    return {
        "order_id": decision.order_id,
        "campaign": decision.campaign,
        "step": decision.step,
        "state": state.value,
        "due_at": decision.at or now,
        "reason": "",
        "created_at": now,
        "updated_at": now,
    }


def _insert_ignoring_duplicates(tx: Connection, table: Any) -> Any:
    insert: Any = pg_insert(table) if tx.dialect.name == "postgresql" else sqlite_insert(table)
    return insert.on_conflict_do_nothing()


def _write_looks(tx: Connection, looks: dict[str, datetime | None]) -> None:
    if not looks:
        return
    customer = schema.customer
    tx.execute(
        customer.update()
        .where(customer.c.email == bindparam("buyer"))
        .values(next_due_at=bindparam("look")),
        [{"buyer": email, "look": at} for email, at in looks.items()],
    )


def _histories_of(c: Connection, order_ids: Iterable[str]) -> dict[str, OrderHistory]:
    """The planner's view of these orders, read in ``c``."""
    return _histories_where(c, schema.order.c.order_id.in_(set(order_ids)))


def _histories_where(c: Connection, condition: Any) -> dict[str, OrderHistory]:
    """The planner's view of the orders meeting ``condition``, by order id, read in ``c``:
    with each the buyer's disputes on any of their orders and the buyer's suppression."""
    order = schema.order
    query = select(order).where(condition).order_by(order.c.buyer_email, order.c.order_id)
    orders = [_order_from(r) for r in c.execute(query).mappings()]
    if not orders:
        return {}
    buyers = {o.buyer_email for o in orders}
    ids = {o.order_id for o in orders}

    def rows(table: Any, *where: Any) -> Iterator[RowMapping]:
        return iter(c.execute(select(table).where(*where)).mappings())

    customers = {
        r["email"]: _customer_from(r)
        for r in rows(schema.customer, schema.customer.c.email.in_(buyers))
    }
    buyer_of_dispute = (
        select(order.c.buyer_email, schema.dispute)
        .join(order, order.c.order_id == schema.dispute.c.order_id)
        .where(order.c.buyer_email.in_(buyers))
    )
    disputes: dict[str, list[Dispute]] = defaultdict(list)
    for r in c.execute(buyer_of_dispute).mappings():
        disputes[r["buyer_email"]].append(_dispute_from(r))
    reviews = _group(c, schema.review, _review_from, ids)
    replies = _group(c, schema.reply, _reply_from, ids)
    sends: dict[str, dict[tuple[str, str], Send]] = defaultdict(dict)
    for r in rows(schema.send, schema.send.c.order_id.in_(ids)):
        sends[r["order_id"]][(r["campaign"], r["step"])] = _send_from(r)
    suppressions = {
        r["email"]: _suppression_from(r)
        for r in rows(schema.suppression, schema.suppression.c.email.in_(buyers))
    }
    conversations = _conversations(c, buyers)
    last_sent = _last_sent(c, buyers)
    return {
        o.order_id: OrderHistory(
            order=o,
            customer=customers.get(o.buyer_email, Customer(o.buyer_email)),
            disputes=tuple(disputes.get(o.buyer_email, ())),
            reviews=tuple(reviews.get(o.order_id, ())),
            replies=tuple(replies.get(o.order_id, ())),
            sends=sends.get(o.order_id, {}),
            suppression=suppressions.get(o.buyer_email),
            conversation=conversations.get(o.buyer_email, ()),
            buyer_last_sent=last_sent.get(o.buyer_email),
        )
        for o in orders
    }


def _conversations(c: Connection, buyers: set[str]) -> dict[str, tuple[ThreadEntry, ...]]:
    """Each buyer's conversation with the seller over all their orders, oldest first."""
    inbound, order = schema.inbound_message, schema.order
    query = (
        select(order.c.buyer_email, inbound.c.received_at, inbound.c.kind)
        .join(order, order.c.order_id == inbound.c.order_id)
        .where(order.c.buyer_email.in_(buyers), _spoken())
        .order_by(inbound.c.received_at, inbound.c.id)
    )
    said: dict[str, list[ThreadEntry]] = defaultdict(list)
    for r in c.execute(query):
        said[r.buyer_email].append(ThreadEntry(r.received_at, r.kind != MessageKind.SELLER.value))
    return {buyer: tuple(entries) for buyer, entries in said.items()}


def _last_sent(c: Connection, buyers: set[str]) -> dict[str, datetime]:
    """When each buyer was last written to, on any order: a sent message, or one claimed
    that may have gone (sending, in doubt), from its claim."""
    send, order = schema.send, schema.order
    gone = send.c.state.in_(
        [SendState.SENT.value, SendState.SENDING.value, SendState.IN_DOUBT.value]
    )
    moment = func.max(func.coalesce(send.c.sent_at, send.c.claimed_at))
    query = (
        select(order.c.buyer_email, moment.label("at"))
        .join(order, order.c.order_id == send.c.order_id)
        .where(order.c.buyer_email.in_(buyers), gone)
        .group_by(order.c.buyer_email)
    )
    return {r.buyer_email: r.at for r in c.execute(query) if r.at is not None}


def _group(
    c: Connection, table: Any, convert: Callable[[RowMapping], Any], order_ids: set[str]
) -> dict[str, list[Any]]:
    grouped: dict[str, list[Any]] = defaultdict(list)
    for row in c.execute(select(table).where(table.c.order_id.in_(order_ids))).mappings():
        grouped[row["order_id"]].append(convert(row))
    return grouped
