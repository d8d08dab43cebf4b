"""A pass plans the buyers that are due, not every buyer stored (worker/store_planning.py).

Each buyer's next look (``customer.next_due_at``) is written back by the pass that plans them,
and every write that can change a decision sets it to the epoch through a trigger (migration
0005), on SQLite and on PostgreSQL alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text

from tests.conftest import ROOT
from worker import schema
from worker.campaign import load_campaigns
from worker.domain import (
    Dispute,
    DisputeKind,
    Order,
    Reply,
    Review,
    SendState,
    SuppressionReason,
)
from worker.plan import OrderHistory, Plan, Policy, plan, plan_inputs_digest
from worker.store import Store

DELIVERED = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
DAY = timedelta(days=1)
FAR = datetime(2099, 1, 1, tzinfo=UTC)
CAMPAIGNS = load_campaigns(ROOT / "campaigns")
POLICY = Policy()


def _order(number: int, buyer: str) -> Order:
    return Order(
        f"SHOP-{number}", "shop", buyer, "Ann Smith", ("Glass kettle",), "en", "GB",
        delivered_at=DELIVERED,
    )  # fmt: skip


class Planner:
    """The pass's ``decide``, remembering which buyers it was shown."""

    def __init__(self, now: datetime) -> None:
        self.now = now
        self.seen: list[str] = []

    def __call__(self, histories: Sequence[OrderHistory]) -> Plan:
        self.seen += sorted({h.order.buyer_email for h in histories})
        return plan(histories, CAMPAIGNS, self.now, POLICY)


def _pass(store: Store, now: datetime, limit: int = 500) -> list[str]:
    """Every due batch at ``now``, as the daemon walks them; the buyers planned."""
    planner = Planner(now)
    after = None
    while (batch := store.plan_due(now, planner, after=after, limit=limit)) is not None:
        after = batch.cursor
        if not batch.full:
            break
    return planner.seen


def _park_everyone(store: Store) -> None:
    """Every buyer's next look far away: only a write can make one due now."""
    with store.engine.begin() as tx:
        tx.execute(schema.customer.update().values(next_due_at=FAR))


def test_every_watched_table_has_its_triggers_at_head(store: Store) -> None:
    if store.engine.dialect.name == "sqlite":
        query = "SELECT name FROM sqlite_master WHERE type = 'trigger'"
    else:
        query = "SELECT tgname FROM pg_trigger WHERE NOT tgisinternal"
    with store.engine.connect() as connection:
        found = set(connection.execute(text(query)).scalars())
    expected = {
        f"tr_{table}_{event}_wakes_buyer"
        for table, events in {
            "order": ("insert", "update"),
            "dispute": ("insert", "update"),
            "review": ("insert", "update"),
            "reply": ("insert",),
            "send": ("insert", "update"),
            "inbound_message": ("insert", "update"),
            "suppression": ("insert", "update", "delete"),
        }.items()
        for event in events
    }
    assert expected <= found


def test_a_new_buyer_is_due_at_once(store: Store) -> None:
    store.upsert_orders([_order(1, "ann@buyer.example")], DELIVERED)
    assert store.next_due("ann@buyer.example") == schema.EPOCH


@pytest.mark.parametrize(
    "write",
    [
        "order_update",
        "dispute_opened",
        "dispute_closed",
        "review",
        "reply",
        "suppression",
        "send_recorded",
    ],
)
def test_each_write_that_can_change_a_decision_wakes_the_buyer(store: Store, write: str) -> None:
    ann, ben = "ann@buyer.example", "ben@buyer.example"
    store.upsert_orders([_order(1, ann), _order(2, ben)], DELIVERED)
    if write == "dispute_closed":
        store.open_dispute("SHOP-1", DisputeKind.NOT_RECEIVED, DELIVERED + DAY)
    if write == "send_recorded":
        _pass(store, DELIVERED + 8 * DAY)  # schedules the check-ins
    _park_everyone(store)

    now = DELIVERED + 9 * DAY
    if write == "order_update":
        changed = _order(1, ann)
        store.upsert_orders([Order(**{**_fields(changed), "locale": "de"})], now)
    elif write == "dispute_opened":
        store.upsert_disputes([Dispute("SHOP-1", DisputeKind.DAMAGED, now)])
    elif write == "dispute_closed":
        assert store.close_disputes("SHOP-1", now) == 1
    elif write == "review":
        store.upsert_reviews([Review("SHOP-1", 5, now, "import")])
    elif write == "reply":
        store.add_reply(Reply("SHOP-1", now))
    elif write == "suppression":
        store.suppress(ann, SuppressionReason.UNSUBSCRIBE, now)
    else:
        [scheduled] = [s for s in store.sends([SendState.SCHEDULED]) if s.order_id == "SHOP-1"]
        claim = store.claim([scheduled.id], now, "w1", lambda send: "<m@x>", lambda s, h: None)
        assert [send.id for send in claim.sends] == [scheduled.id]

    assert store.next_due(ann) == schema.EPOCH
    assert store.next_due(ben) == FAR  # the other buyer is left alone
    assert _pass(store, now) == [ann]


def _fields(order: Order) -> dict[str, object]:
    return {name: getattr(order, name) for name in order.__dataclass_fields__}


def test_a_pass_plans_only_the_buyers_that_are_due(store: Store) -> None:
    buyers = [f"buyer{n:03}@buyer.example" for n in range(30)]
    store.upsert_orders([_order(n, b) for n, b in enumerate(buyers)], DELIVERED)
    assert sorted(_pass(store, DELIVERED, limit=7)) == buyers  # everyone is new: all due

    # Nothing is due the day after delivery: the check-in waits for day 7; no one is planned.
    assert _pass(store, DELIVERED + DAY) == []
    looks = [store.next_due(b) for b in buyers]
    assert all(look is not None and DELIVERED + DAY < look < DELIVERED + 9 * DAY for look in looks)
    last_look = max(look for look in looks if look is not None)

    # One buyer writes: that buyer alone is planned, before their look.
    store.add_reply(Reply("SHOP-3", DELIVERED + 2 * DAY))
    assert _pass(store, DELIVERED + 2 * DAY) == [buyers[3]]

    # By the last look, everyone's check-in is due: each buyer planned once, in batches of 7.
    seen = _pass(store, last_look, limit=7)
    assert sorted(seen) == buyers
    due = [s for s in store.sends([SendState.SCHEDULED]) if s.step == "check-in"]
    assert len(due) == 30


def test_changed_campaigns_make_every_buyer_due_once(store: Store) -> None:
    buyers = [f"buyer{n:03}@buyer.example" for n in range(5)]
    store.upsert_orders([_order(n, b) for n, b in enumerate(buyers)], DELIVERED)
    digest = plan_inputs_digest(CAMPAIGNS, POLICY)
    assert store.plan_inputs_changed(digest, DELIVERED)  # the first pass ever
    _pass(store, DELIVERED)
    assert _pass(store, DELIVERED + DAY) == []

    assert not store.plan_inputs_changed(digest, DELIVERED + DAY)  # unchanged: nothing due
    assert _pass(store, DELIVERED + DAY) == []

    changed = plan_inputs_digest(CAMPAIGNS[1:], POLICY)
    assert changed != digest
    assert store.plan_inputs_changed(changed, DELIVERED + DAY)
    assert sorted(_pass(store, DELIVERED + DAY)) == buyers
    assert _pass(store, DELIVERED + DAY) == []  # and only once


def test_the_next_look_is_the_earliest_moment_anything_can_change(store: Store) -> None:
    store.upsert_orders([_order(1, "ann@buyer.example")], DELIVERED)
    _pass(store, DELIVERED)
    look = store.next_due("ann@buyer.example")
    assert look is not None
    assert store.next_look() == look
    # Planned just before the look, the buyer's steps all wait; at it, one is due.
    before = plan(store.histories(), CAMPAIGNS, look - timedelta(seconds=1), POLICY)
    at = plan(store.histories(), CAMPAIGNS, look, POLICY)
    assert not before.due
    assert at.due
