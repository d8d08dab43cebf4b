"""`worker report`: per campaign step, sent and held-out orders and what followed each, from
one grouped query, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from worker import schema
from worker.domain import DisputeKind, Order, Reply, Review, SendState
from worker.plan import HOLDOUT
from worker.store import Store
from worker.store_report import Group, difference

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
SENT_AT = NOW - timedelta(days=20)
DAY = timedelta(days=1)


def _orders(store: Store, count: int, start: int = 0) -> list[str]:
    ids = [f"ORD-{n}" for n in range(start, start + count)]
    store.upsert_orders(
        [Order(i, "shop", f"{i.lower()}@example.com", "B", ("Kettle",)) for i in ids],
        SENT_AT - 40 * DAY,
    )
    return ids


def _sends(
    store: Store, ids: list[str], state: SendState, at: datetime, *, step: str = "review-request"
) -> None:
    rows = [
        {
            "order_id": i,
            "campaign": "follow-up",
            "step": step,
            "state": state.value,
            "due_at": at,
            "reason": HOLDOUT if state is SendState.SKIPPED else "",
            "sent_at": at if state is SendState.SENT else None,
            "created_at": at,
            "updated_at": at,
        }
        for i in ids
    ]
    with store.engine.begin() as tx:
        tx.execute(schema.send.insert(), rows)


def _constructed(store: Store) -> None:
    """40 orders sent the request, 30 held out, and what followed (or came before)."""
    sent, held = _orders(store, 40), _orders(store, 30, start=100)
    _sends(store, sent, SendState.SENT, SENT_AT)
    _sends(store, held, SendState.SKIPPED, SENT_AT)
    after, before = SENT_AT + DAY, SENT_AT - DAY
    # Reviews: 20 of the sent (15 good), 6 held out (3 good); one review before the send
    # and one after NOW count for nothing.
    store.upsert_reviews(
        [Review(i, 5 if n < 15 else 2, after) for n, i in enumerate(sent[:20])]
        + [Review(i, 4 if n < 3 else 1, after) for n, i in enumerate(held[:6])]
        + [Review(sent[30], 5, before), Review(sent[31], 5, NOW + DAY)]
    )
    for i in sent[:8] + held[:3]:  # replies: 8 sent, 3 held out; two replies to one order
        store.add_reply(Reply(i, after))
    store.add_reply(Reply(sent[0], after + DAY))
    store.add_reply(Reply(held[10], before))  # before the would-be message: not counted
    for i in sent[:2] + held[:1]:
        store.open_dispute(i, DisputeKind.DAMAGED, after)
    # Outside the window, and other states: not counted.
    _sends(store, _orders(store, 5, start=200), SendState.SENT, NOW - 60 * DAY)
    _sends(store, _orders(store, 3, start=300), SendState.FAILED, SENT_AT)


def test_the_report_counts_what_followed_the_message_and_the_hold_out(store: Store) -> None:
    _constructed(store)
    [step] = store.step_report(NOW - 30 * DAY, NOW)
    assert (step.campaign, step.step) == ("follow-up", "review-request")
    assert step.sent == Group(orders=40, replied=8, disputed=2, reviewed=20, good_reviews=15)
    assert step.held_out == Group(orders=30, replied=3, disputed=1, reviewed=6, good_reviews=3)
    assert step.comparable
    change, margin = difference(step, "reviewed") or (0.0, 0.0)
    assert change == pytest.approx(20 / 40 - 6 / 30)
    assert 0 < margin < change


def test_the_report_takes_a_window_and_a_campaign(store: Store) -> None:
    _constructed(store)
    [older] = store.step_report(NOW - 90 * DAY, NOW)
    assert older.sent.orders == 45
    assert store.step_report(NOW - 10 * DAY, NOW) == []
    assert store.step_report(NOW - 30 * DAY, NOW, campaign="other") == []


def test_a_small_hold_out_is_not_compared(store: Store) -> None:
    _sends(store, _orders(store, 10), SendState.SENT, SENT_AT)
    _sends(store, _orders(store, 29, start=100), SendState.SKIPPED, SENT_AT)
    [step] = store.step_report(NOW - 30 * DAY, NOW)
    assert step.held_out.orders == 29 and not step.comparable
    assert difference(step, "reviewed") is None
