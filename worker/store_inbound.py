"""The store's inbound mail: the folders' checkpoints, what threading needs to match a
message, storing a message with its reactions (disputes, reviews, replies, suppressions), and
reading the mail back (conversations, orders awaiting an answer, listings, raw bytes, filing
an unmatched message), plus the order's reply token and the text of our sends that may come
back quoted.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, RowMapping, and_, func, select

from worker import schema
from worker.domain import (
    Bounce,
    Classification,
    DisputeKind,
    Match,
    MatchMethod,
    MessageKind,
    Order,
    SuppressionReason,
)
from worker.errors import StoreError
from worker.inbound import InboundMessage, Received
from worker.origin import Origin
from worker.react import CloseDisputes, Reactions, Standing, Suppress, react
from worker.store_database import _Database
from worker.store_orders import _close_disputes, _insert_ignoring_duplicate, _suppress
from worker.store_rows import _order_from
from worker.thread import Candidates, SendRef, Threaded, Wanted


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """Every message of the folder up to ``last_uid`` is stored, under this UIDVALIDITY."""

    mailbox: str
    folder: str
    uidvalidity: int
    last_uid: int


@dataclass(frozen=True, slots=True)
class SoftBounceRule:
    limit: int
    window: timedelta


@dataclass(frozen=True, slots=True)
class Recorded:
    """What storing one inbound message changed."""

    row_id: int | None
    duplicate: bool
    dispute: DisputeKind | None = None
    dispute_order: str | None = None
    disputes_closed: int = 0
    suppressed: tuple[Suppress, ...] = ()


@dataclass(frozen=True, slots=True)
class ConversationEntry:
    at: datetime
    direction: str
    """``in`` (to the seller) or ``out`` (the seller's or the worker's)."""
    who: str
    subject: str
    text: str
    label: str
    """The message kind, or ``campaign/step`` for the worker's sends."""
    detail: str


@dataclass(frozen=True, slots=True)
class Awaiting:
    order_id: str
    since: datetime
    buyer: str
    subject: str
    kind: str


@dataclass(frozen=True, slots=True)
class InboundRow:
    id: int
    received_at: datetime
    folder: str
    uid: int
    sender: str
    subject: str
    kind: MessageKind
    evidence: str
    order_id: str | None
    match_method: str | None
    match_detail: str
    parse_errors: tuple[str, ...]
    bounce_recipient: str | None = None
    authentication: str = ""
    withheld: str = ""


class InboundMixin(_Database):
    # Inbound mail ---------------------------------------------------------------------------

    def checkpoint(self, mailbox: str, folder: str) -> Checkpoint | None:
        table = schema.mailbox_checkpoint
        query = select(table).where(table.c.mailbox == mailbox, table.c.folder == folder)
        with self._connect() as c:
            row = c.execute(query).mappings().first()
        if row is None:
            return None
        return Checkpoint(mailbox, folder, row["uidvalidity"], row["last_uid"])

    def save_checkpoint(self, checkpoint: Checkpoint, now: datetime) -> None:
        """Start a folder, or restart it after a UIDVALIDITY change, before its first message."""
        with self._begin() as tx:
            _put_checkpoint(tx, checkpoint, now, only_forward=False)

    def candidates(self, want: Wanted) -> Candidates:
        """Everything ``worker.thread.match`` may need for one message, in a few queries."""
        send, inbound, order = schema.send, schema.inbound_message, schema.order
        with self._connect() as c:
            threaded = inbound.c.order_id.is_not(None)
            of_counterpart = (
                _orders_where(c, order.c.buyer_email == want.counterpart)
                if want.counterpart
                else ()
            )
            return Candidates(
                sends_by_id={
                    ref.send_id: ref
                    for ref in _send_refs(c, send.c.id, want.return_path_sends).values()
                },
                sends_by_message_id=_send_refs(c, send.c.message_id, want.message_ids),
                sends_by_relay_id=_send_refs(c, send.c.relay_message_id, want.relay_ids),
                orders_by_message_id=_pairs(
                    c, inbound.c.message_id, inbound.c.order_id, want.message_ids, threaded
                ),
                orders_by_token=_pairs(c, order.c.reply_token, order.c.order_id, want.tokens),
                orders_by_number={
                    o.order_id: o
                    for o in (
                        _orders_where(c, order.c.order_id.in_(want.order_numbers))
                        if want.order_numbers
                        else ()
                    )
                },
                orders_of_counterpart=of_counterpart,
            )

    def record_inbound(
        self,
        message: InboundMessage,
        received: Received,
        verdict: Classification,
        threaded: Threaded,
        reactions: Reactions,
        soft_bounces: SoftBounceRule,
        now: datetime,
        authentication: str = "",
    ) -> Recorded:
        """Store the message, apply its reactions and advance the checkpoint, all or nothing.

        A message already stored (same Message-ID and bytes: a rescan after a UIDVALIDITY
        change, or the same mail in two folders) only advances the checkpoint.
        """
        with self._begin() as tx:
            row_id = _insert_inbound(
                tx, message, received, verdict, threaded, now, authentication, reactions.withheld
            )
            outcome = Recorded(row_id, duplicate=row_id is None)
            if row_id is not None:
                outcome = self._apply(tx, row_id, received, threaded, reactions, soft_bounces)
            checkpoint = Checkpoint(
                received.mailbox, received.folder, received.uidvalidity, received.uid
            )
            _put_checkpoint(tx, checkpoint, now, only_forward=True)
        return outcome

    def _apply(
        self,
        tx: Connection,
        row_id: int,
        received: Received,
        threaded: Threaded,
        reactions: Reactions,
        soft_bounces: SoftBounceRule,
    ) -> Recorded:
        at = received.received_at
        order_id = threaded.match.order_id if threaded.match else None
        source = reactions.dispute_source
        if reactions.hold_buyer:  # the sender's own latest order, never the one matched
            order_id, source = _latest_order_of(tx, reactions.hold_buyer), "mailbox:unthreaded"
        dispute = None
        if order_id is not None and reactions.open_dispute is not None:
            dispute = reactions.open_dispute
            _open_dispute(tx, order_id, dispute, at, source, row_id)
        closed = 0
        if order_id is not None and reactions.close_disputes is not None:
            closed = _close_noticed(tx, order_id, reactions.close_disputes, at)
        if order_id is not None and reactions.review:
            _add_review(tx, order_id, reactions.rating, at)
        if order_id is not None and reactions.reply:
            _insert_ignoring_duplicate(
                tx, schema.reply.insert().values(order_id=order_id, replied_at=at, source="mailbox")
            )
        suppressions = list(reactions.suppress)
        if reactions.soft_bounce:
            suppressions.extend(_soft_bounce_limit(tx, reactions.soft_bounce, at, soft_bounces))
        added = tuple(s for s in suppressions if _suppress(tx, s, at))
        return Recorded(row_id, False, dispute, order_id if dispute else None, closed, added)

    def conversation(self, order_id: str) -> list[ConversationEntry]:
        """Our sends and every message threaded to the order, oldest first."""
        inbound, send = schema.inbound_message, schema.send
        with self._connect() as c:
            self._require_order(c, order_id)
            # The Sent folder's copy of a campaign message is that send, listed once.
            messages = c.execute(
                select(*_READ).where(inbound.c.order_id == order_id, ~_campaign_copies())
            ).mappings()
            entries = [_entry_from_inbound(r) for r in messages]
            sends = c.execute(
                select(send).where(send.c.order_id == order_id, send.c.sent_at.is_not(None))
            ).mappings()
            entries.extend(_entry_from_send(r) for r in sends)
        return sorted(entries, key=lambda e: (e.at, e.direction))

    def awaiting(self, answered_before: datetime) -> list[Awaiting]:
        """Orders whose last word is the buyer's, written before ``answered_before``.

        The seller's answer is any message from the seller's own address threaded to the
        order, except the worker's own campaign mail: an automatic review request is not an
        answer to a buyer's question.
        """
        inbound = schema.inbound_message
        # An unsubscribe asks for silence, not an answer.
        spoken = [k.value for k in (MessageKind.COMPLAINT, MessageKind.REPLY, MessageKind.SELLER)]
        query = (
            select(
                inbound.c.order_id,
                inbound.c.received_at,
                inbound.c.sender,
                inbound.c.subject,
                inbound.c.kind,
            )
            .where(
                inbound.c.order_id.is_not(None),
                inbound.c.kind.in_(spoken),
                ~_campaign_copies(),
            )
            .order_by(inbound.c.received_at, inbound.c.id)
        )
        last: dict[str, RowMapping] = {}
        with self._connect() as c:
            for row in c.execute(query).mappings():
                last[row["order_id"]] = row
        waiting = [
            Awaiting(order_id, row["received_at"], row["sender"], row["subject"], row["kind"])
            for order_id, row in last.items()
            if row["kind"] != MessageKind.SELLER.value and row["received_at"] <= answered_before
        ]
        return sorted(waiting, key=lambda a: a.since)

    def inbound_messages(
        self, *, unmatched: bool = False, kinds: Iterable[MessageKind] | None = None
    ) -> list[InboundRow]:
        inbound = schema.inbound_message
        query = select(*_READ).order_by(inbound.c.received_at, inbound.c.id)
        if unmatched:
            query = query.where(inbound.c.order_id.is_(None))
        if kinds is not None:
            query = query.where(inbound.c.kind.in_([k.value for k in kinds]))
        with self._connect() as c:
            return [_inbound_row_from(r) for r in c.execute(query).mappings()]

    def assign_inbound(self, row_id: int, order_id: str, soft_bounces: SoftBounceRule) -> Recorded:
        """An agent files an unmatched message under an order; it then acts as if threaded."""
        inbound = schema.inbound_message
        with self._begin() as tx:
            order = self._order_in(tx, order_id)
            row = tx.execute(select(inbound).where(inbound.c.id == row_id)).mappings().first()
            if row is None:
                raise StoreError(f"no inbound message {row_id}; see `worker inbox --unmatched`")
            if row["order_id"] is not None:
                raise StoreError(f"message {row_id} is already filed under {row['order_id']}")
            matched = Match(order_id, MatchMethod.MANUAL, "filed by an agent")
            # Filing vouches for the order, not for the sender: an unproven notice still
            # closes nothing (an agent closes a dispute with `worker dispute close`).
            origin = Origin(row["sender"], None, row["authentication"] or "not authenticated")
            standing = Standing(row["sender"], origin, buyer=order.buyer_email)
            reactions = react(_verdict_from(row), matched, standing)
            tx.execute(
                inbound.update()
                .where(inbound.c.id == row_id)
                .values(
                    order_id=order_id,
                    match_method=matched.method.value,
                    match_detail=matched.detail,
                )
            )
            received = Received(
                row["mailbox"], row["folder"], row["uidvalidity"], row["uid"], row["received_at"]
            )
            return self._apply(tx, row_id, received, Threaded(matched), reactions, soft_bounces)

    def texts_sent_to(self, address: str, limit: int = 10) -> tuple[str, ...]:
        """The text of our latest messages to ``address``: what may come back quoted."""
        if not address:
            return ()
        send = schema.send
        query = (
            select(send.c.body_text)
            .where(send.c.recipient == address, send.c.body_text.is_not(None))
            .order_by(send.c.sent_at.desc())
            .limit(limit)
        )
        with self._connect() as c:
            return tuple(text for (text,) in c.execute(query))

    def raw_message(self, row_id: int) -> bytes:
        inbound = schema.inbound_message
        with self._connect() as c:
            raw = c.execute(select(inbound.c.raw).where(inbound.c.id == row_id)).scalar()
        if raw is None:
            raise StoreError(f"no inbound message {row_id}", where=self.where)
        return bytes(raw)

    def reply_token(self, order_id: str, new_token: Callable[[], str]) -> str:
        """The order's reply token, made with ``new_token`` the first time it is asked for."""
        order = schema.order
        with self._begin() as tx:
            self._require_order(tx, order_id)
            query = select(order.c.reply_token).where(order.c.order_id == order_id)
            token = tx.execute(query).scalar()
            if token is None:
                token = new_token()
                tx.execute(
                    order.update()
                    .where(order.c.order_id == order_id, order.c.reply_token.is_(None))
                    .values(reply_token=token)
                )
                token = tx.execute(query).scalar()
        assert isinstance(token, str)
        return token


# Inbound mail, inside a transaction -----------------------------------------------------------


_READ = [c for c in schema.inbound_message.c if c.name != "raw"]
"""Listing and threading never need a message's raw bytes; `raw_message` reads them."""


def _campaign_copies() -> Any:
    """Our own campaign mail as the Sent folder holds it: the send, not an agent's answer."""
    inbound, send = schema.inbound_message, schema.send
    ours = select(send.c.message_id).where(send.c.message_id.is_not(None))
    return and_(inbound.c.kind == MessageKind.SELLER.value, inbound.c.message_id.in_(ours))


def _close_noticed(tx: Connection, order_id: str, which: CloseDisputes, at: datetime) -> int:
    """A marketplace's closing notice closes only what that marketplace opened (or its
    export brought in) of that kind: never a dispute an agent or a complaint opened."""
    dispute, order = schema.dispute, schema.order
    sources = [f"marketplace:{which.marketplace}"]
    of_order = select(order.c.marketplace).where(order.c.order_id == order_id)
    if tx.execute(of_order).scalar() == which.marketplace:
        sources.append("import")
    kind = dispute.c.kind == which.kind.value
    return _close_disputes(tx, order_id, at, kind, dispute.c.source.in_(sources))


def _pairs(
    c: Connection, key: Any, value: Any, wanted: Sequence[str], *where: Any
) -> dict[str, str]:
    """``{key: value}`` for rows whose key is wanted; no query when nothing is wanted."""
    if not wanted:
        return {}
    rows = c.execute(select(key, value).where(key.in_(wanted), *where))
    return {k: v for k, v in rows}


def _orders_where(c: Connection, condition: Any) -> tuple[Order, ...]:
    return tuple(
        _order_from(r) for r in c.execute(select(schema.order).where(condition)).mappings()
    )


def _send_refs(c: Connection, column: Any, values: Sequence[Any]) -> dict[Any, SendRef]:
    if not values:
        return {}
    send = schema.send
    query = select(column, send.c.order_id, send.c.id, send.c.recipient).where(column.in_(values))
    return {
        value: SendRef(order_id, send_id, to) for value, order_id, send_id, to in c.execute(query)
    }


def _insert_inbound(
    tx: Connection,
    message: InboundMessage,
    received: Received,
    verdict: Classification,
    threaded: Threaded,
    now: datetime,
    authentication: str,
    withheld: str,
) -> int | None:
    """The new row's id, or ``None`` when the same message is already stored."""
    bounce = verdict.bounce
    match = threaded.match
    values = {
        "mailbox": received.mailbox,
        "folder": received.folder,
        "uidvalidity": received.uidvalidity,
        "uid": received.uid,
        "message_id": message.message_id or "",
        "content_hash": message.content_hash,
        "received_at": received.received_at,
        "dated_at": message.date,
        "sender": message.sender,
        "sender_name": message.sender_name,
        "recipients": json.dumps(list(message.recipients)),
        "subject": message.subject,
        "thread_ids": json.dumps(list(message.thread_ids)),
        "body_text": message.text,
        "raw": message.raw,
        "parse_errors": json.dumps(list(message.errors), ensure_ascii=False),
        "kind": verdict.kind.value,
        "evidence": verdict.evidence,
        "dispute_kind": verdict.dispute_kind.value if verdict.dispute_kind else None,
        "rating": verdict.rating,
        "marketplace": verdict.marketplace,
        "bounce_status": bounce.status if bounce else None,
        "bounce_recipient": bounce.recipient if bounce else None,
        "order_id": match.order_id if match else None,
        "send_id": threaded.send_id,
        "match_method": match.method.value if match else None,
        "match_detail": match.detail if match else "",
        "authentication": authentication,
        "withheld": withheld,
        "ingested_at": now,
    }
    table = schema.inbound_message
    identity = and_(
        table.c.message_id == values["message_id"],
        table.c.content_hash == values["content_hash"],
    )
    if tx.execute(select(table.c.id).where(identity)).first() is not None:
        return None
    # Parameters apart from the statement: SQLAlchemy compiles this 30-column insert once.
    return int(tx.execute(table.insert().returning(table.c.id), values).scalar_one())


def _put_checkpoint(
    tx: Connection, point: Checkpoint, now: datetime, *, only_forward: bool
) -> None:
    table = schema.mailbox_checkpoint
    key = and_(table.c.mailbox == point.mailbox, table.c.folder == point.folder)
    known = tx.execute(select(table).where(key)).mappings().first()
    values = {"uidvalidity": point.uidvalidity, "last_uid": point.last_uid, "updated_at": now}
    if known is None:
        tx.execute(table.insert(), {"mailbox": point.mailbox, "folder": point.folder, **values})
        return
    same_folder = known["uidvalidity"] == point.uidvalidity
    if only_forward and same_folder and known["last_uid"] >= point.last_uid:
        return
    tx.execute(table.update().where(key), values)


def _latest_order_of(tx: Connection, email: str) -> str | None:
    order = schema.order
    moment = func.coalesce(order.c.delivered_at, order.c.shipped_at, order.c.ordered_at)
    query = (
        select(order.c.order_id)
        .where(order.c.buyer_email == email)
        .order_by(moment.desc(), order.c.updated_at.desc())
        .limit(1)
    )
    found = tx.execute(query).scalar()
    return str(found) if found is not None else None


def _open_dispute(
    tx: Connection, order_id: str, kind: DisputeKind, at: datetime, source: str, row_id: int
) -> None:
    dispute = schema.dispute
    already = select(dispute.c.id).where(
        dispute.c.order_id == order_id, dispute.c.kind == kind.value, dispute.c.closed_at.is_(None)
    )
    if tx.execute(already).first() is not None:
        return  # the buyer writing twice about the same problem is one dispute
    _insert_ignoring_duplicate(
        tx,
        dispute.insert().values(
            order_id=order_id,
            kind=kind.value,
            opened_at=at,
            source=source,
            inbound_message_id=row_id,
        ),
    )


def _add_review(tx: Connection, order_id: str, rating: int | None, at: datetime) -> None:
    review = schema.review
    key = and_(review.c.order_id == order_id, review.c.source == "mailbox")
    if tx.execute(select(review.c.id).where(key)).first() is None:
        tx.execute(
            review.insert().values(
                order_id=order_id, rating=rating, reviewed_at=at, source="mailbox"
            )
        )
    elif rating is not None:  # a revised rating replaces the earlier one
        tx.execute(review.update().where(key).values(rating=rating, reviewed_at=at))


def _soft_bounce_limit(
    tx: Connection, email: str, at: datetime, rule: SoftBounceRule
) -> list[Suppress]:
    inbound = schema.inbound_message
    count = tx.execute(
        select(func.count()).where(
            inbound.c.bounce_recipient == email,
            inbound.c.kind == MessageKind.BOUNCE_SOFT.value,
            inbound.c.withheld == "",  # only reports tied to one of our sends count
            inbound.c.received_at > at - rule.window,
            inbound.c.received_at <= at,
        )
    ).scalar_one()
    if count < rule.limit:
        return []
    detail = f"{count} soft bounces within {rule.window.days} days"
    return [Suppress(email, SuppressionReason.SOFT_BOUNCES, detail)]


def _verdict_from(row: RowMapping) -> Classification:
    bounce = None
    if row["bounce_status"] is not None or row["bounce_recipient"] is not None:
        bounce = Bounce(row["bounce_status"] or "", row["bounce_recipient"] or "")
    return Classification(
        MessageKind(row["kind"]),
        row["evidence"],
        dispute_kind=DisputeKind(row["dispute_kind"]) if row["dispute_kind"] else None,
        rating=row["rating"],
        bounce=bounce,
        marketplace=row["marketplace"],
    )


def _entry_from_inbound(row: RowMapping) -> ConversationEntry:
    seller = row["kind"] == MessageKind.SELLER.value
    detail = f"matched by {row['match_method']}"
    if row["evidence"]:
        detail = f"{row['evidence']}; {detail}"
    if row["withheld"]:
        detail = f"{detail}; {row['withheld']}"
    return ConversationEntry(
        at=row["received_at"],
        direction="out" if seller else "in",
        who=row["sender"],
        subject=row["subject"],
        text=row["body_text"],
        label=row["kind"],
        detail=detail,
    )


def _entry_from_send(row: RowMapping) -> ConversationEntry:
    return ConversationEntry(
        at=row["sent_at"],
        direction="out",
        who="worker",
        subject="",
        text="",
        label=f"{row['campaign']}/{row['step']}",
        detail=f"{row['state']} {row['message_id'] or ''}".strip(),
    )


def _inbound_row_from(row: RowMapping) -> InboundRow:
    return InboundRow(
        id=row["id"],
        received_at=row["received_at"],
        folder=row["folder"],
        uid=row["uid"],
        sender=row["sender"],
        subject=row["subject"],
        kind=MessageKind(row["kind"]),
        evidence=row["evidence"],
        order_id=row["order_id"],
        match_method=row["match_method"],
        match_detail=row["match_detail"],
        parse_errors=tuple(json.loads(row["parse_errors"])),
        bounce_recipient=row["bounce_recipient"],
        authentication=row["authentication"],
        withheld=row["withheld"],
    )
