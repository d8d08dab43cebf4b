"""The store's inbound mail: the folders' checkpoints, what threading needs to match a
message, storing a message with its reactions (disputes, reviews, replies, suppressions), and
reading the mail back (conversations, orders awaiting an answer, listings, raw bytes, filing
an unmatched message), plus the order's reply token and the text of our sends that may come
back quoted.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, RowMapping, and_, bindparam, func, or_, select

from worker import schema
from worker.domain import (
    Bounce,
    Classification,
    DisputeKind,
    Intent,
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
from worker.store_database import _Database, retried_on_conflict
from worker.store_orders import (
    _close_disputes,
    _deliver,
    _insert_ignoring_duplicate,
    _suppress,
    compact_tracking_number,
)
from worker.store_rows import _order_from
from worker.thread import Candidates, SendRef, Threaded, Wanted

IN_CHUNK = 500
"""Values per ``IN (...)`` list of a batched look-up: SQLite takes at most 32,766 parameters
in one statement, and a hostile message can name a hundred Message-IDs."""


SPOKEN = (MessageKind.COMPLAINT, MessageKind.REPLY, MessageKind.SELLER)
"""The kinds of message that take part in a conversation (see :func:`_spoken`)."""


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
    delivered: tuple[str, ...] = ()
    """Orders whose delivery event a carrier's notice set."""


@dataclass(frozen=True, slots=True)
class Inbound:
    """One message to store: what reading, threading and reacting made of it."""

    message: InboundMessage
    received: Received
    verdict: Classification
    threaded: Threaded
    reactions: Reactions
    authentication: str = ""

    @property
    def identity(self) -> tuple[str, str]:
        """What makes a message the same message: its Message-ID and its bytes' hash."""
        return (self.message.message_id or "", self.message.content_hash)


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
    intent: Intent | None = None
    """What the buyer's words want, as the intent reader read them when the mail came in."""
    confidence: float | None = None


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
    intent: Intent | None = None
    confidence: float | None = None


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

    @retried_on_conflict
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
                orders_by_tracking=_orders_by_tracking(c, want.tracking_numbers),
            )

    def candidates_for(self, wants: Sequence[Wanted]) -> list[Candidates]:
        """``candidates`` for a batch of messages, each kind of look-up one query for all of
        them. Each message's ``Candidates`` answers its own keys as ``candidates`` would;
        what the batch itself stores is not in them (the caller threads later messages of
        the batch to earlier ones)."""
        send, inbound, order = schema.send, schema.inbound_message, schema.order
        message_ids = _union(w.message_ids for w in wants)
        counterparts = _union((w.counterpart,) for w in wants if w.counterpart)
        with self._connect() as c:
            threaded = inbound.c.order_id.is_not(None)
            sends_by_id = {
                ref.send_id: ref
                for ref in _send_refs(
                    c, send.c.id, _union(w.return_path_sends for w in wants)
                ).values()
            }
            sends_by_message_id = _send_refs(c, send.c.message_id, message_ids)
            sends_by_relay_id = _send_refs(
                c, send.c.relay_message_id, _union(w.relay_ids for w in wants)
            )
            orders_by_message_id = _pairs(
                c, inbound.c.message_id, inbound.c.order_id, message_ids, threaded
            )
            orders_by_token = _pairs(
                c, order.c.reply_token, order.c.order_id, _union(w.tokens for w in wants)
            )
            numbers = _union(w.order_numbers for w in wants)
            orders_by_number = {o.order_id: o for o in _orders_in(c, order.c.order_id, numbers)}
            of_counterpart: dict[str, list[Order]] = {}
            for found in _orders_in(c, order.c.buyer_email, counterparts):
                of_counterpart.setdefault(found.buyer_email, []).append(found)
            by_tracking = _orders_by_tracking(c, _union(w.tracking_numbers for w in wants))
        return [
            Candidates(
                sends_by_id=sends_by_id,
                sends_by_message_id=sends_by_message_id,
                sends_by_relay_id=sends_by_relay_id,
                orders_by_message_id=orders_by_message_id,
                orders_by_token=orders_by_token,
                orders_by_number=orders_by_number,
                orders_by_tracking={
                    n: by_tracking[n] for n in w.tracking_numbers if n in by_tracking
                },
                orders_of_counterpart=tuple(of_counterpart.get(w.counterpart, ()))
                if w.counterpart
                else (),
            )
            for w in wants
        ]

    def buyers_of(self, order_ids: Iterable[str]) -> dict[str, str]:
        """Each order's buyer address, in one query; an order that does not exist is left
        out."""
        order = schema.order
        wanted = list(dict.fromkeys(order_ids))
        found: dict[str, str] = {}
        with self._connect() as c:
            for chunk in _chunks(wanted):
                query = select(order.c.order_id, order.c.buyer_email).where(
                    order.c.order_id.in_(chunk)
                )
                found.update({order_id: buyer for order_id, buyer in c.execute(query)})
        return found

    def stored_identities(self, identities: Iterable[tuple[str, str]]) -> set[tuple[str, str]]:
        """Which of these (Message-ID, content hash) pairs are stored already."""
        with self._connect() as c:
            return _stored_identities(c, identities)

    @retried_on_conflict
    def record_inbound_batch(
        self, items: Sequence[Inbound], soft_bounces: SoftBounceRule, now: datetime
    ) -> list[Recorded]:
        """``record_inbound`` for a fetched batch, in one transaction: all stored or none.

        Each message is recognised, inserted and reacted to as ``record_inbound`` would, in
        the batch's order, so each sees what the earlier ones wrote. The rows are inserted
        together (the soft-bounce count of a message leaves out the rows of the messages
        after it, as one by one they would not be there yet) and the replies marked after the
        other reactions (nothing reads them). Each folder's checkpoint moves once, past its
        last message.
        """
        if not items:
            return []
        with self._begin() as tx:
            known = _stored_identities(tx, [item.identity for item in items])
            fresh: list[int] = []
            for index, item in enumerate(items):
                if item.identity not in known:
                    known.add(item.identity)
                    fresh.append(index)
            ids = _insert_rows(tx, [_inbound_values(items[i], now) for i in fresh])
            outcomes = [Recorded(None, duplicate=True) for _ in items]
            replies: list[dict[str, Any]] = []
            for position, (index, row_id) in enumerate(zip(fresh, ids, strict=True)):
                item = items[index]
                outcomes[index] = self._apply(
                    tx,
                    row_id,
                    item.received,
                    item.threaded,
                    item.reactions,
                    soft_bounces,
                    replies=replies,
                    not_yet=ids[position + 1 :],
                )
            _mark_replied(tx, replies)
            last: dict[tuple[str, str], Received] = {}
            for item in items:
                place = (item.received.mailbox, item.received.folder)
                if place not in last or last[place].uid < item.received.uid:
                    last[place] = item.received
            for got in last.values():
                point = Checkpoint(got.mailbox, got.folder, got.uidvalidity, got.uid)
                _put_checkpoint(tx, point, now, only_forward=True)
        return outcomes

    @retried_on_conflict
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
        *,
        replies: list[dict[str, Any]] | None = None,
        not_yet: Sequence[int] = (),
    ) -> Recorded:
        """``replies``: collect the reply rows there instead of inserting them (a batch
        inserts them together). ``not_yet``: rows the soft-bounce count must not see, as
        they would not be there yet one message at a time (a batch inserts all its rows
        before reacting)."""
        at = received.received_at
        order_id = threaded.match.order_id if threaded.match else None
        source = reactions.dispute_source
        if reactions.hold_buyer:  # the sender's own latest order, never the one matched
            order_id, source = _latest_order_of(tx, reactions.hold_buyer), "mailbox:unthreaded"
        dispute = None
        if order_id is not None and reactions.open_dispute is not None:
            dispute = reactions.open_dispute
            _open_dispute(
                tx,
                order_id,
                dispute,
                at,
                source,
                row_id,
                needs_review=reactions.needs_review,
                guarded=replies is None,
            )
        closed = 0
        if order_id is not None and reactions.close_disputes is not None:
            closed = _close_noticed(tx, order_id, reactions.close_disputes, at)
        if order_id is not None and reactions.review:
            _add_review(tx, order_id, reactions.rating, at)
        if order_id is not None and reactions.reply:
            reply = {"order_id": order_id, "replied_at": at, "source": "mailbox"}
            if replies is not None:
                replies.append(reply)
            else:
                _insert_ignoring_duplicate(tx, schema.reply.insert().values(**reply))
        suppressions = list(reactions.suppress)
        if reactions.soft_bounce:
            suppressions.extend(
                _soft_bounce_limit(tx, reactions.soft_bounce, at, soft_bounces, not_yet)
            )
        added = tuple(s for s in suppressions if _suppress(tx, s, at))
        delivered: tuple[str, ...] = ()
        if order_id is not None and reactions.delivered is not None:
            parcel = reactions.delivered
            delivered = _deliver(tx, parcel.tracking_number, parcel.at, at)
        return Recorded(
            row_id, False, dispute, order_id if dispute else None, closed, added, delivered
        )

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
        query = (
            select(
                inbound.c.order_id,
                inbound.c.received_at,
                inbound.c.sender,
                inbound.c.subject,
                inbound.c.kind,
            )
            .where(_spoken())
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
        self,
        *,
        unmatched: bool = False,
        kinds: Iterable[MessageKind] | None = None,
        intents: Iterable[Intent] | None = None,
    ) -> list[InboundRow]:
        inbound = schema.inbound_message
        query = select(*_READ).order_by(inbound.c.received_at, inbound.c.id)
        if unmatched:
            query = query.where(inbound.c.order_id.is_(None))
        if kinds is not None:
            query = query.where(inbound.c.kind.in_([k.value for k in kinds]))
        if intents is not None:
            query = query.where(inbound.c.intent.in_([i.value for i in intents]))
        with self._connect() as c:
            return [_inbound_row_from(r) for r in c.execute(query).mappings()]

    @retried_on_conflict
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

    def texts_sent_to_each(
        self, addresses: Iterable[str], limit: int = 10
    ) -> dict[str, tuple[str, ...]]:
        """``texts_sent_to`` for many addresses, in one query per ``IN_CHUNK`` of them."""
        send = schema.send
        wanted = list(dict.fromkeys(a for a in addresses if a))
        found: dict[str, list[str]] = {address: [] for address in wanted}
        with self._connect() as c:
            for chunk in _chunks(wanted):
                newest = func.row_number().over(
                    partition_by=send.c.recipient,
                    order_by=(send.c.sent_at.desc(), send.c.id.desc()),
                )
                ranked = (
                    select(send.c.recipient, send.c.body_text, newest.label("n"))
                    .where(send.c.recipient.in_(chunk), send.c.body_text.is_not(None))
                    .subquery()
                )
                query = (
                    select(ranked.c.recipient, ranked.c.body_text)
                    .where(ranked.c.n <= limit)
                    .order_by(ranked.c.recipient, ranked.c.n)
                )
                for recipient, text in c.execute(query):
                    found[recipient].append(text)
        return {address: tuple(texts) for address, texts in found.items()}

    def raw_message(self, row_id: int) -> bytes:
        inbound = schema.inbound_message
        with self._connect() as c:
            raw = c.execute(select(inbound.c.raw).where(inbound.c.id == row_id)).scalar()
        if raw is None:
            raise StoreError(f"no inbound message {row_id}", where=self.where)
        return bytes(raw)

    @retried_on_conflict
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


# Statements made once: building a SQLAlchemy statement costs several times what running
# a small one does, and these run for each message stored.
_INBOUND, _DISPUTE, _CHECKPOINT = schema.inbound_message, schema.dispute, schema.mailbox_checkpoint
_STORED = select(_INBOUND.c.id).where(
    _INBOUND.c.message_id == bindparam("message_id"),
    _INBOUND.c.content_hash == bindparam("content_hash"),
)
_STORED_AMONG = select(_INBOUND.c.message_id, _INBOUND.c.content_hash).where(
    _INBOUND.c.message_id.in_(bindparam("message_ids", expanding=True)),
    _INBOUND.c.content_hash.in_(bindparam("hashes", expanding=True)),
)
"""Both columns of the unique index, so the look-up uses it; the pairs are picked after."""
_INSERT_INBOUND = _INBOUND.insert().returning(_INBOUND.c.id)
_INSERT_INBOUND_MANY = _INBOUND.insert().returning(
    _INBOUND.c.id, _INBOUND.c.message_id, _INBOUND.c.content_hash
)
_CHECKPOINT_KEY = and_(
    _CHECKPOINT.c.mailbox == bindparam("key_mailbox"),
    _CHECKPOINT.c.folder == bindparam("key_folder"),
)
_CHECKPOINT_NOW = select(_CHECKPOINT.c.uidvalidity, _CHECKPOINT.c.last_uid).where(_CHECKPOINT_KEY)
_CHECKPOINT_MOVE = _CHECKPOINT.update().where(_CHECKPOINT_KEY)
_DISPUTE_OF_KIND = (
    _DISPUTE.c.order_id == bindparam("order_id"),
    _DISPUTE.c.kind == bindparam("kind"),
)
_DISPUTE_OPEN = select(_DISPUTE.c.id).where(*_DISPUTE_OF_KIND, _DISPUTE.c.closed_at.is_(None))
_DISPUTE_CLASH = select(_DISPUTE.c.id).where(
    *_DISPUTE_OF_KIND,
    or_(_DISPUTE.c.closed_at.is_(None), _DISPUTE.c.opened_at == bindparam("opened_at")),
)
"""An open dispute of that kind, or this very one (closed since): either way, none to add."""
_DISPUTE_INSERT = _DISPUTE.insert()
_SOFT_BOUNCES = select(func.count()).where(
    _INBOUND.c.bounce_recipient == bindparam("email"),
    _INBOUND.c.kind == MessageKind.BOUNCE_SOFT.value,
    _INBOUND.c.withheld == "",  # only reports tied to one of our sends count
    _INBOUND.c.received_at > bindparam("since"),
    _INBOUND.c.received_at <= bindparam("at"),
)
_SOFT_BOUNCES_BUT = _SOFT_BOUNCES.where(_INBOUND.c.id.not_in(bindparam("not_yet", expanding=True)))
_LATEST_ORDER = (
    select(schema.order.c.order_id)
    .where(schema.order.c.buyer_email == bindparam("email"))
    .order_by(
        func.coalesce(
            schema.order.c.delivered_at, schema.order.c.shipped_at, schema.order.c.ordered_at
        ).desc(),
        schema.order.c.updated_at.desc(),
    )
    .limit(1)
)

_READ = [c for c in schema.inbound_message.c if c.name != "raw"]
"""Listing and threading never need a message's raw bytes; `raw_message` reads them."""


def _spoken() -> Any:
    """Messages of a conversation about an order: the buyer's words and the seller's
    answers. An unsubscribe asks for silence, not an answer; the worker's own campaign mail
    answers nothing. ``worker inbox --awaiting`` and the planner's ``awaiting_answer`` read
    the same rows, so both say the same buyer is waiting."""
    inbound = schema.inbound_message
    return and_(
        inbound.c.order_id.is_not(None),
        inbound.c.kind.in_([k.value for k in SPOKEN]),
        ~_campaign_copies(),
    )


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
    found: dict[str, str] = {}
    for chunk in _chunks(wanted):
        rows = c.execute(select(key, value).where(key.in_(chunk), *where))
        found.update({k: v for k, v in rows})
    return found


def _union(groups: Iterable[Iterable[Any]]) -> list[Any]:
    """Every value once, in the order first seen."""
    return list(dict.fromkeys(value for group in groups for value in group))


def _chunks(values: Sequence[Any]) -> Iterable[Sequence[Any]]:
    return (values[start : start + IN_CHUNK] for start in range(0, len(values), IN_CHUNK))


def _orders_in(c: Connection, column: Any, values: Sequence[str]) -> list[Order]:
    return [order for chunk in _chunks(values) for order in _orders_where(c, column.in_(chunk))]


def _stored_identities(
    c: Connection, identities: Iterable[tuple[str, str]]
) -> set[tuple[str, str]]:
    wanted = set(identities)
    found: set[tuple[str, str]] = set()
    for chunk in _chunks(list(wanted)):
        ids = list({message_id for message_id, _ in chunk})
        hashes = list({digest for _, digest in chunk})
        rows = c.execute(_STORED_AMONG, {"message_ids": ids, "hashes": hashes})
        found.update(pair for pair in ((m, d) for m, d in rows) if pair in wanted)
    return found


def _insert_rows(tx: Connection, rows: list[dict[str, Any]]) -> list[int]:
    """The new rows' ids, in the order of ``rows`` (each a different message): one statement
    (or a few) for all. The ids are matched to the rows by the messages' identity, as the
    order RETURNING gives them in is not promised."""
    if not rows:
        return []
    stored = tx.execute(_INSERT_INBOUND_MANY, rows)
    ids = {(mid, digest): int(row_id) for row_id, mid, digest in stored}
    return [ids[(row["message_id"], row["content_hash"])] for row in rows]


def _mark_replied(tx: Connection, replies: list[dict[str, Any]]) -> None:
    """Insert the reply rows a batch collected, each once, leaving those already there."""
    if not replies:
        return
    reply = schema.reply
    orders = list(dict.fromkeys(r["order_id"] for r in replies))
    seen: set[tuple[str, datetime]] = set()
    for chunk in _chunks(orders):
        query = select(reply.c.order_id, reply.c.replied_at).where(
            reply.c.order_id.in_(chunk), reply.c.source == "mailbox"
        )
        seen.update((order_id, at) for order_id, at in tx.execute(query))
    new = []
    for row in replies:
        key = (row["order_id"], row["replied_at"])
        if key not in seen:
            seen.add(key)
            new.append(row)
    if new:
        tx.execute(reply.insert(), new)


def _orders_by_tracking(c: Connection, numbers: Sequence[str]) -> dict[str, Order]:
    """Compact, upper-case tracking number -> the first order (by id) holding it. The stored
    numbers are compacted to compare, which no index serves: only an authenticated carrier's
    notice asks, and it names a few numbers."""
    found: dict[str, Order] = {}
    compact = compact_tracking_number()
    for chunk in _chunks(list(numbers)):
        query = (
            select(schema.order, compact.label("compact_number"))
            .where(compact.in_(chunk))
            .order_by(schema.order.c.order_id)
        )
        for row in c.execute(query).mappings():
            found.setdefault(row["compact_number"], _order_from(row))
    return found


def _orders_where(c: Connection, condition: Any) -> tuple[Order, ...]:
    return tuple(
        _order_from(r) for r in c.execute(select(schema.order).where(condition)).mappings()
    )


def _send_refs(c: Connection, column: Any, values: Sequence[Any]) -> dict[Any, SendRef]:
    send = schema.send
    found: dict[Any, SendRef] = {}
    for chunk in _chunks(values):
        query = select(column, send.c.order_id, send.c.id, send.c.recipient).where(
            column.in_(chunk)
        )
        found.update(
            {
                value: SendRef(order_id, send_id, to)
                for value, order_id, send_id, to in c.execute(query)
            }
        )
    return found


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
    values = _row(message, received, verdict, threaded, now, authentication, withheld)
    identity = {"message_id": values["message_id"], "content_hash": values["content_hash"]}
    if tx.execute(_STORED, identity).first() is not None:
        return None
    # Parameters apart from the statement: SQLAlchemy compiles this 30-column insert once.
    return int(tx.execute(_INSERT_INBOUND, values).scalar_one())


def _inbound_values(item: Inbound, now: datetime) -> dict[str, Any]:
    return _row(
        item.message,
        item.received,
        item.verdict,
        item.threaded,
        now,
        item.authentication,
        item.reactions.withheld,
    )


def _row(
    message: InboundMessage,
    received: Received,
    verdict: Classification,
    threaded: Threaded,
    now: datetime,
    authentication: str,
    withheld: str,
) -> dict[str, Any]:
    bounce = verdict.bounce
    match = threaded.match
    return {
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
        "intent": verdict.intent.value if verdict.intent else None,
        "intent_confidence": _confidence(verdict.confidence),
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


def _confidence(value: float | None) -> float | None:
    """Within 0..1, or none: a reader's NaN or infinity must not reach a column or a sort."""
    if value is None or not math.isfinite(value):
        return None
    return min(1.0, max(0.0, float(value)))


def _intent_from(value: str | None) -> Intent | None:
    """A stored tag the running code no longer knows (a later version wrote it) reads as none."""
    try:
        return Intent(value) if value else None
    except ValueError:
        return None


def _put_checkpoint(
    tx: Connection, point: Checkpoint, now: datetime, *, only_forward: bool
) -> None:
    key = {"key_mailbox": point.mailbox, "key_folder": point.folder}
    known = tx.execute(_CHECKPOINT_NOW, key).first()
    values = {"uidvalidity": point.uidvalidity, "last_uid": point.last_uid, "updated_at": now}
    if known is None:
        row = {"mailbox": point.mailbox, "folder": point.folder, **values}
        tx.execute(_CHECKPOINT.insert(), row)
        return
    uidvalidity, last_uid = known
    if only_forward and uidvalidity == point.uidvalidity and last_uid >= point.last_uid:
        return
    tx.execute(_CHECKPOINT_MOVE, {**key, **values})


def _latest_order_of(tx: Connection, email: str) -> str | None:
    found = tx.execute(_LATEST_ORDER, {"email": email}).scalar()
    return str(found) if found is not None else None


def _open_dispute(
    tx: Connection,
    order_id: str,
    kind: DisputeKind,
    at: datetime,
    source: str,
    row_id: int,
    *,
    needs_review: bool = False,
    guarded: bool = True,
) -> None:
    """``guarded=False`` (a batch, which is stored again one by one if any statement fails):
    one query for both reasons not to insert, no savepoint. ``needs_review``: the reading was
    unsure, an agent is to confirm or dismiss it (a sure one already open stays as it is)."""
    of_kind = {"order_id": order_id, "kind": kind.value}
    row = {
        **of_kind,
        "opened_at": at,
        "source": source,
        "inbound_message_id": row_id,
        "needs_review": needs_review,
    }
    if not guarded:
        if tx.execute(_DISPUTE_CLASH, {**of_kind, "opened_at": at}).first() is None:
            tx.execute(_DISPUTE_INSERT, row)
        return
    if tx.execute(_DISPUTE_OPEN, of_kind).first() is not None:
        return  # the buyer writing twice about the same problem is one dispute
    _insert_ignoring_duplicate(tx, _DISPUTE.insert().values(**row))


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
    tx: Connection, email: str, at: datetime, rule: SoftBounceRule, not_yet: Sequence[int] = ()
) -> list[Suppress]:
    within = {"email": email, "since": at - rule.window, "at": at}
    if not_yet:
        count = tx.execute(_SOFT_BOUNCES_BUT, {**within, "not_yet": list(not_yet)}).scalar_one()
    else:
        count = tx.execute(_SOFT_BOUNCES, within).scalar_one()
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
        intent=_intent_from(row["intent"]),
        confidence=row["intent_confidence"],
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
        intent=_intent_from(row["intent"]),
        confidence=row["intent_confidence"],
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
        intent=_intent_from(row["intent"]),
        confidence=row["intent_confidence"],
    )
