"""Disputes an agent reviews, and the buyer's intent stored with each message, on real SQLite
files and a real PostgreSQL: needs_review from an unsure reading, confirm, dismiss (closed at
once, no cool-down, the buyer woken), and the intent tags read back."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tests.messages import plain_mail, read_as
from worker.domain import (
    DisputeKind,
    Intent,
    Match,
    MatchMethod,
    Order,
)
from worker.errors import StoreError
from worker.inbound import Received, parse
from worker.origin import Origin
from worker.react import Standing, react
from worker.schema import EPOCH
from worker.store import Recorded, SoftBounceRule, Store
from worker.store_disputes import agent_name
from worker.store_inbound import Inbound
from worker.thread import Threaded

T0 = datetime(2026, 4, 6, 9, 0, tzinfo=UTC)
BUYER = "ann@example.com"
ORDER = Order(
    "SHOP-1", "shop", BUYER, "Ann", ("Kettle",), "en", "GB",
    ordered_at=T0 - timedelta(days=10), delivered_at=T0 - timedelta(days=3),
)  # fmt: skip
RULE = SoftBounceRule(3, timedelta(days=7))


def _complaint(
    uid: int,
    words: str,
    intent: Intent,
    confidence: float,
    *,
    needs_review: bool,
    at: datetime = T0,
) -> Inbound:
    """A buyer's message threaded to ORDER, as the intent reader read it."""
    message = parse(
        plain_mail(f"Ann <{BUYER}>", "About my order", words, message_id=f"<m{uid}@example.com>")
    )
    verdict = read_as(intent, confidence, needs_review=needs_review)
    matched = Match(ORDER.order_id, MatchMethod.CONVERSATION, "test")
    origin = Origin(BUYER, None, "not authenticated")
    reactions = react(verdict, matched, Standing(BUYER, origin, buyer=BUYER))
    received = Received("help@shop.example", "INBOX", 1, uid, at)
    return Inbound(message, received, verdict, Threaded(matched), reactions)


def _record(store: Store, item: Inbound) -> Recorded:
    return store.record_inbound(
        item.message,
        item.received,
        item.verdict,
        item.threaded,
        item.reactions,
        RULE,
        item.received.received_at,
    )


@pytest.fixture
def shop(store: Store) -> Store:
    store.upsert_orders([ORDER], T0 - timedelta(days=10))
    return store


def test_an_unsure_complaint_opens_a_dispute_that_needs_review(shop: Store) -> None:
    _record(shop, _complaint(1, "The lid has a hairline crack.", Intent.DAMAGED, 0.55,
                             needs_review=True))  # fmt: skip
    [row] = shop.disputes(needs_review=True)
    assert (row.order_id, row.buyer, row.kind) == (ORDER.order_id, BUYER, DisputeKind.DAMAGED)
    assert row.needs_review and row.review is None and row.closed_at is None
    assert row.words.startswith("The lid has a hairline crack.")
    assert row.evidence == "intent=damaged"
    assert (row.intent, row.confidence) == (Intent.DAMAGED, pytest.approx(0.55))
    [dispute] = shop.protections(BUYER)[1]
    assert dispute.needs_review and not dispute.dismissed


def test_a_sure_complaint_opens_an_ordinary_dispute(shop: Store) -> None:
    _record(shop, _complaint(1, "It never arrived.", Intent.NOT_RECEIVED, 0.97,
                             needs_review=False))  # fmt: skip
    assert shop.disputes(needs_review=True) == []
    [row] = shop.disputes()
    assert not row.needs_review
    [dispute] = shop.protections(BUYER)[1]
    assert not dispute.needs_review and not dispute.dismissed


def test_a_batch_stores_needs_review_and_the_intent_as_one_by_one(shop: Store) -> None:
    items = [
        _complaint(1, "Quiero mi dinero.", Intent.REFUND, 0.4, needs_review=True),
        _complaint(2, "Where is my parcel?", Intent.WHERE_IS_MY_ORDER, 0.9, needs_review=False,
                   at=T0 + timedelta(hours=1)),
    ]  # fmt: skip
    shop.record_inbound_batch(items, RULE, T0 + timedelta(hours=1))
    [row] = shop.disputes(needs_review=True)
    assert row.kind is DisputeKind.REFUND
    tags = [(m.intent, m.confidence) for m in shop.inbound_messages()]
    assert tags == [(Intent.REFUND, pytest.approx(0.4)), (Intent.WHERE_IS_MY_ORDER, 0.9)]


def test_confirming_keeps_it_open_and_takes_it_off_the_review_list(shop: Store) -> None:
    _record(shop, _complaint(1, "Broken.", Intent.DAMAGED, 0.5, needs_review=True))
    [row] = shop.disputes(needs_review=True)
    confirmed = shop.confirm_dispute(row.id, "maria", T0 + timedelta(hours=2))
    assert (confirmed.review, confirmed.reviewed_by) == ("confirmed", "maria")
    assert confirmed.reviewed_at == T0 + timedelta(hours=2)
    assert confirmed.closed_at is None and not confirmed.needs_review
    assert shop.disputes(needs_review=True) == []
    assert [d.id for d in shop.disputes()] == [row.id]
    [dispute] = shop.protections(BUYER)[1]
    assert dispute.closed_at is None and not dispute.needs_review and not dispute.dismissed
    with pytest.raises(StoreError, match="already confirmed by maria"):
        shop.confirm_dispute(row.id, "maria", T0 + timedelta(hours=3))


def test_dismissing_closes_it_now_marks_it_dismissed_and_wakes_the_buyer(shop: Store) -> None:
    _record(shop, _complaint(1, "Box dented, product perfect.", Intent.DAMAGED, 0.45,
                             needs_review=True))  # fmt: skip
    [row] = shop.disputes(needs_review=True)
    _park(shop, BUYER)
    at = T0 + timedelta(hours=2)
    dismissed = shop.dismiss_dispute(row.id, "maria", at)
    assert (dismissed.review, dismissed.reviewed_by, dismissed.closed_at) == (
        "dismissed",
        "maria",
        at,
    )
    assert shop.next_due(BUYER) == EPOCH, "the buyer is planned at the next pass"
    assert shop.disputes() == [] and shop.disputes(needs_review=True) == []
    assert [d.id for d in shop.disputes(every=True)] == [row.id]
    [dispute] = shop.protections(BUYER)[1]
    assert dispute.dismissed and dispute.closed_at == at and not dispute.needs_review


def test_answering_an_unknown_or_closed_dispute_is_refused(shop: Store) -> None:
    with pytest.raises(StoreError, match="no dispute 99"):
        shop.dismiss_dispute(99, "maria", T0)
    with pytest.raises(StoreError, match="no dispute 99"):
        shop.confirm_dispute(99, "maria", T0)
    _record(shop, _complaint(1, "Broken.", Intent.DAMAGED, 0.5, needs_review=True))
    [row] = shop.disputes()
    with pytest.raises(StoreError, match="dismiss it at or after its opening"):
        shop.dismiss_dispute(row.id, "maria", T0 - timedelta(hours=1))
    shop.dismiss_dispute(row.id, "maria", T0 + timedelta(hours=1))
    with pytest.raises(StoreError, match="already dismissed by maria"):
        shop.dismiss_dispute(row.id, "maria", T0 + timedelta(hours=2))
    with pytest.raises(StoreError, match="already dismissed"):
        shop.confirm_dispute(row.id, "maria", T0 + timedelta(hours=2))
    shop.open_dispute(ORDER.order_id, DisputeKind.COMPLAINT, T0 + timedelta(hours=3))
    shop.close_disputes(ORDER.order_id, T0 + timedelta(hours=4))
    closed = next(d for d in shop.disputes(every=True) if d.review is None)
    with pytest.raises(StoreError, match=f"dispute {closed.id} was already closed"):
        shop.dismiss_dispute(closed.id, "maria", T0 + timedelta(hours=5))


def test_the_agents_name_is_one_short_visible_line(shop: Store) -> None:
    _record(shop, _complaint(1, "Broken.", Intent.DAMAGED, 0.5, needs_review=True))
    [row] = shop.disputes()
    for bad in ("", "   ", "x" * 65, "eve\x1b[2J", "eve\nmallory", "eve\u202egnp"):
        with pytest.raises(StoreError, match="agent's name"):
            shop.confirm_dispute(row.id, bad, T0 + timedelta(hours=1))
    assert shop.dispute(row.id).review is None, "a refused name changes nothing"
    assert agent_name("  María José  ") == "María José"


def test_a_closed_dispute_no_longer_needs_review(shop: Store) -> None:
    _record(shop, _complaint(1, "Broken.", Intent.DAMAGED, 0.5, needs_review=True))
    shop.close_disputes(ORDER.order_id, T0 + timedelta(hours=1))
    assert shop.disputes(needs_review=True) == []
    [row] = shop.disputes(every=True)
    assert not row.needs_review and row.review is None
    [dispute] = shop.protections(BUYER)[1]
    assert not dispute.needs_review and not dispute.dismissed


def test_the_intent_shows_in_the_conversation(shop: Store) -> None:
    _record(shop, _complaint(1, "Thank you, all good!", Intent.THANKS, 0.88, needs_review=False))
    [entry] = shop.conversation(ORDER.order_id)
    assert (entry.intent, entry.confidence) == (Intent.THANKS, pytest.approx(0.88))


def test_a_confidence_out_of_range_is_stored_within_it(shop: Store) -> None:
    _record(shop, _complaint(1, "Thanks!", Intent.THANKS, float("nan"), needs_review=False))
    _record(shop, _complaint(2, "Thanks!!", Intent.THANKS, 7.0, needs_review=False))
    assert [m.confidence for m in shop.inbound_messages()] == [None, 1.0]


def _park(store: Store, email: str) -> None:
    """The buyer as a pass leaves one with nothing to do: no next look."""
    from sqlalchemy import update

    from worker import schema

    with store.engine.begin() as c:
        c.execute(
            update(schema.customer).where(schema.customer.c.email == email).values(next_due_at=None)
        )
    assert store.next_due(email) is None


def test_0007_keeps_stored_disputes_ordinary_and_messages_untagged(
    empty_database_url: str,
) -> None:
    from sqlalchemy import text

    store = Store.open(empty_database_url)
    store.upgrade("0006")
    rows = [  # as the 0006 code wrote them
        "INSERT INTO customer (email, name, updated_at) VALUES ('ann@example.com', 'Ann', :t)",
        'INSERT INTO "order" (order_id, marketplace, buyer_email, buyer_name, products,'
        " updated_at) VALUES ('SHOP-1', 'shop', 'ann@example.com', 'Ann', '[]', :t)",
        "INSERT INTO dispute (order_id, kind, opened_at, source)"
        " VALUES ('SHOP-1', 'damaged', :t, 'mailbox')",
    ]
    with store.engine.begin() as connection:
        for statement in rows:
            connection.execute(text(statement), {"t": "2026-03-02 10:00:00.000000"})
    assert store.upgrade() == ("0006", store.head_revision())
    [row] = store.disputes()
    assert (row.needs_review, row.review, row.reviewed_by) == (False, None, None)
    [dispute] = store.protections(BUYER)[1]
    assert not dispute.needs_review and not dispute.dismissed
    store.close()
