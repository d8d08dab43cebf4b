"""The store on real SQLite files: upserts, guarded transitions, the claim, migrations."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError, StatementError

from worker.domain import Dispute, DisputeKind, Order, Review, Send, SendState, SuppressionReason
from worker.errors import SchemaOutOfDate, UnknownOrder
from worker.store import Store

T0 = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
ORDER = Order(
    "SHOP-1", "shop", "ann@example.com", "Ann", ("Kettle",), "en", "GB",
    ordered_at=T0 - timedelta(days=5), delivered_at=T0,
)  # fmt: skip


def _message_id(send: Send) -> str:
    return f"<w{send.id}@test>"


def test_fresh_database_is_refused_until_upgraded(tmp_path: Path) -> None:
    store = Store.open(f"sqlite:///{tmp_path / 'new' / 'worker.db'}")
    with pytest.raises(SchemaOutOfDate, match="worker db upgrade"):
        store.check_schema()
    before, after = store.upgrade()
    assert before is None and after == store.head_revision()
    store.check_schema()
    assert store.upgrade() == (after, after), "upgrading twice is harmless"


def test_migrations_build_exactly_the_declared_schema(store: Store) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from worker.schema import metadata

    with store.engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), metadata)
    assert differences == []


def test_upgrading_a_database_full_of_orders_and_sends_keeps_every_row(tmp_path: Path) -> None:
    store = Store.open(f"sqlite:///{tmp_path / 'old.db'}")
    store.upgrade("0001")
    rows = [  # as the 0001 code wrote them
        "INSERT INTO customer (email, name, updated_at) VALUES ('ann@example.com', 'Ann', :t)",
        'INSERT INTO "order" (order_id, marketplace, buyer_email, buyer_name, products,'
        " updated_at) VALUES ('SHOP-1', 'shop', 'ann@example.com', 'Ann', '[]', :t)",
        "INSERT INTO dispute (order_id, kind, opened_at, closed_at, source)"
        " VALUES ('SHOP-1', 'damaged', :t, :t, 'import')",
        "INSERT INTO review (order_id, rating, reviewed_at, source) VALUES ('SHOP-1', 5, :t, 'x')",
        "INSERT INTO send (order_id, campaign, step, state, due_at, message_id, relay_reply,"
        " sent_at, created_at, updated_at) VALUES ('SHOP-1', 'c', 's', 'sent', :t, '<w1@t>',"
        " '2.0.0 Ok: queued as 4Vx1Yz0Q', :t, :t, :t)",
    ]
    with store.engine.begin() as connection:
        for statement in rows:
            connection.execute(text(statement), {"t": "2026-03-02 10:00:00"})

    assert store.upgrade() == ("0001", store.head_revision())

    history = store.histories()[0]
    assert (len(history.disputes), [r.rating for r in history.reviews]) == (1, [5])
    assert [s.state for s in store.sends()] == [SendState.SENT]
    with store.engine.connect() as connection:
        relay = connection.exec_driver_sql("SELECT relay_message_id FROM send").scalar()
        foreign_keys = connection.exec_driver_sql("PRAGMA foreign_keys").scalar()
    assert relay == "4Vx1Yz0Q", "the relay's id is read from replies recorded before 0002"
    assert foreign_keys == 1, "enforced again after the migration"


def test_a_review_without_stars_is_kept_and_bad_stars_are_refused(store: Store) -> None:
    store.upsert_orders([ORDER], T0)
    store.upsert_reviews([Review(ORDER.order_id, None, T0, "mailbox")])
    assert [r.rating for r in store.histories()[0].reviews] == [None]
    with pytest.raises(IntegrityError):
        store.upsert_reviews([Review(ORDER.order_id, 7, T0, "import")])


def test_reimport_is_an_upsert_where_later_dates_and_new_values_win(store: Store) -> None:
    assert store.upsert_orders([ORDER], T0).inserted == 1
    later = replace(ORDER, buyer_name="", products=("Filter",), delivered_at=T0 + timedelta(days=1))
    earlier = replace(ORDER, delivered_at=T0 - timedelta(days=3), shipped_at=T0 - timedelta(days=4))
    count = store.upsert_orders([later, earlier], T0)
    assert (count.inserted, count.updated) == (0, 1), "two rows of one order in a batch merge"
    stored = store.order("SHOP-1")
    assert stored.delivered_at == T0 + timedelta(days=1)
    assert stored.shipped_at == T0 - timedelta(days=4), "a date learnt later fills the gap"
    assert stored.buyer_name == "Ann", "an empty value does not erase a known one"
    assert stored.products == ("Kettle", "Filter")
    assert len(store.histories()) == 1


def test_disputes_are_keyed_and_closing_is_an_update(store: Store) -> None:
    store.upsert_orders([ORDER], T0)
    opened = Dispute("SHOP-1", DisputeKind.DAMAGED, T0 + timedelta(days=1))
    assert store.upsert_disputes([opened]).inserted == 1
    closed = replace(opened, closed_at=T0 + timedelta(days=4))
    assert store.upsert_disputes([closed, opened]).updated == 1, (
        "a later close wins; none does not reopen"
    )
    [history] = store.histories()
    assert history.disputes == (replace(closed, source="import"),)
    assert store.close_disputes("SHOP-1", T0 + timedelta(days=9)) == 0
    with pytest.raises(UnknownOrder):
        store.open_dispute("NOPE", DisputeKind.DAMAGED, T0)


def test_a_buyers_disputes_reach_every_order_of_that_buyer(store: Store) -> None:
    second = replace(ORDER, order_id="SHOP-2")
    store.upsert_orders([ORDER, second], T0)
    store.open_dispute("SHOP-2", DisputeKind.NOT_RECEIVED, T0)
    histories = {h.order.order_id: h for h in store.histories()}
    assert [d.order_id for d in histories["SHOP-1"].disputes] == ["SHOP-2"]


def test_reviews_one_per_source_and_the_newer_wins(store: Store) -> None:
    store.upsert_orders([ORDER], T0)
    store.upsert_reviews([Review("SHOP-1", 2, T0 + timedelta(days=3), "shop")])
    store.upsert_reviews([Review("SHOP-1", 5, T0 + timedelta(days=5), "shop")])
    store.upsert_reviews([Review("SHOP-1", 1, T0 + timedelta(days=1), "shop")])
    [history] = store.histories()
    assert [(r.rating, r.reviewed_at) for r in history.reviews] == [(5, T0 + timedelta(days=5))]


def test_times_come_back_tz_aware_utc_and_naive_ones_are_refused(store: Store) -> None:
    store.upsert_orders([ORDER], T0)
    assert store.order("SHOP-1").delivered_at == T0
    assert store.order("SHOP-1").delivered_at.tzinfo is UTC
    with pytest.raises(StatementError, match="naive datetime"):
        store.upsert_orders([replace(ORDER, order_id="X", delivered_at=datetime(2026, 1, 1))], T0)  # noqa: DTZ001


def test_schedule_is_idempotent_and_claim_is_exclusive(store: Store) -> None:
    store.upsert_orders([ORDER], T0)
    first = store.schedule("SHOP-1", "c", "s", T0, T0)
    assert store.schedule("SHOP-1", "c", "s", T0 + timedelta(days=1), T0).id == first.id
    [claimed] = store.claim([first.id], T0, "worker-a", _message_id).sends
    assert claimed.state is SendState.SENDING and claimed.attempts == 1
    assert claimed.message_id == f"<w{first.id}@test>"
    assert store.claim([first.id], T0, "worker-b", _message_id).sends == []
    assert store.mark_sent(first.id, "250 ok", T0)
    assert not store.mark_sent(first.id, "250 ok", T0), "transitions are guarded by state"
    assert not store.mark_failed(first.id, "late", T0)
    assert store.sends()[0].state is SendState.SENT


def test_released_send_is_claimable_only_after_not_before(store: Store) -> None:
    store.upsert_orders([ORDER], T0)
    row = store.schedule("SHOP-1", "c", "s", T0, T0)
    store.claim([row.id], T0, "w", _message_id)
    store.release(row.id, "451 busy", T0 + timedelta(minutes=15), T0)
    assert store.claim([row.id], T0 + timedelta(minutes=14), "w", _message_id).sends == []
    [again] = store.claim([row.id], T0 + timedelta(minutes=15), "w", _message_id).sends
    assert again.attempts == 2


def test_skip_never_overrides_a_terminal_row(store: Store) -> None:
    store.upsert_orders([ORDER], T0)
    row = store.schedule("SHOP-1", "c", "s", T0, T0)
    store.claim([row.id], T0, "w", _message_id)
    store.mark_sent(row.id, "250", T0)
    assert store.record_skip("SHOP-1", "c", "s", T0, "reviewed", T0).state is SendState.SENT
    other = store.schedule("SHOP-1", "c", "t", T0, T0)
    skipped = store.record_skip("SHOP-1", "c", "t", T0, "reviewed", T0)
    assert (skipped.id, skipped.state, skipped.reason) == (other.id, SendState.SKIPPED, "reviewed")


def test_stale_claims_become_in_doubt_and_fresh_ones_stay(store: Store) -> None:
    store.upsert_orders([ORDER], T0)
    old = store.schedule("SHOP-1", "c", "old", T0, T0)
    new = store.schedule("SHOP-1", "c", "new", T0, T0)
    store.claim([old.id], T0, "w", _message_id)
    store.claim([new.id], T0 + timedelta(minutes=10), "w", _message_id)
    expired = store.expire_claims(T0 + timedelta(minutes=5), T0 + timedelta(minutes=11))
    assert [e.step for e in expired] == ["old"]
    states = {s.step: s.state for s in store.sends()}
    assert states == {"old": SendState.IN_DOUBT, "new": SendState.SENDING}


def test_first_suppression_reason_stays(store: Store) -> None:
    assert store.suppress("ann@example.com", SuppressionReason.UNSUBSCRIBE, T0)
    assert not store.suppress("ann@example.com", SuppressionReason.HARD_BOUNCE, T0)
    assert [s.reason for s in store.suppressions()] == [SuppressionReason.UNSUBSCRIBE]
