"""The store on real SQLite files and a real PostgreSQL: upserts, guarded transitions, the claim,
migrations."""

from __future__ import annotations

import sys
import traceback
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from urllib.parse import quote

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import IntegrityError, StatementError

from worker.domain import Dispute, DisputeKind, Order, Review, Send, SendState, SuppressionReason
from worker.errors import FeedError, SchemaOutOfDate, StoreError, UnknownOrder
from worker.feeds import OrderRow
from worker.store import BATCH_ROWS, Store

T0 = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
ORDER = Order(
    "SHOP-1", "shop", "ann@example.com", "Ann", ("Kettle",), "en", "GB",
    ordered_at=T0 - timedelta(days=5), delivered_at=T0,
)  # fmt: skip


def _message_id(send: Send) -> str:
    return f"<w{send.id}@test>"


def test_fresh_database_is_refused_until_upgraded(empty_database_url: str) -> None:
    store = Store.open(empty_database_url)
    with pytest.raises(SchemaOutOfDate, match="worker db upgrade"):
        store.check_schema()
    before, after = store.upgrade()
    assert before is None and after == store.head_revision()
    store.check_schema()
    assert store.upgrade() == (after, after), "upgrading twice is harmless"
    store.close()


def test_migrations_build_exactly_the_declared_schema(store: Store) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from worker.schema import metadata

    with store.engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), metadata)
    assert differences == []


def test_upgrading_a_database_full_of_orders_and_sends_keeps_every_row(
    empty_database_url: str,
) -> None:
    store = Store.open(empty_database_url)
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
        if store.engine.dialect.name == "sqlite":
            foreign_keys = connection.exec_driver_sql("PRAGMA foreign_keys").scalar()
            assert foreign_keys == 1, "enforced again after the migration"
    assert relay == "4Vx1Yz0Q", "the relay's id is read from replies recorded before 0002"
    store.close()


def test_0004_dates_what_is_stored_by_its_last_import(empty_database_url: str) -> None:
    store = Store.open(empty_database_url)
    store.upgrade("0003")
    with store.engine.begin() as connection:
        for statement in (
            "INSERT INTO customer (email, name, country, updated_at)"
            " VALUES ('ann@example.com', 'Ann', 'DE', :t)",
            'INSERT INTO "order" (order_id, marketplace, buyer_email, buyer_name, products,'
            " country, updated_at) VALUES ('SHOP-1', 'shop', 'ann@example.com', 'Ann', '[]',"
            " 'DE', :t)",
        ):
            connection.execute(text(statement), {"t": "2026-03-02 10:00:00.000000"})
    store.upgrade()
    older = OrderRow(replace(ORDER, country="GB"), updated_at=T0 - timedelta(days=1))
    assert store.upsert_orders([older], T0 + timedelta(days=1)).older == 1
    [history] = store.histories()
    assert (history.order.country, history.customer.country) == ("DE", "DE")
    newer = OrderRow(replace(ORDER, country="GB"), updated_at=T0 + timedelta(hours=1))
    assert store.upsert_orders([newer], T0 + timedelta(days=1)).updated == 1
    store.close()


def test_a_review_without_stars_is_kept_and_bad_stars_are_refused(store: Store) -> None:
    store.upsert_orders([ORDER], T0)
    store.upsert_reviews([Review(ORDER.order_id, None, T0, "mailbox")])
    assert [r.rating for r in store.histories()[0].reviews] == [None]
    with pytest.raises(IntegrityError):
        store.upsert_reviews([Review(ORDER.order_id, 7, T0, "import")])


HOUR = timedelta(hours=1)


def test_a_newer_row_replaces_every_field_it_has_and_can_correct_or_clear_a_date(
    store: Store,
) -> None:
    store.upsert_orders([replace(ORDER, delivered_at=T0 + timedelta(days=365))], T0)
    corrected = replace(ORDER, buyer_name="", products=("Filter",), delivered_at=T0 - HOUR)
    count = store.upsert_orders([corrected], T0 + HOUR)
    assert (count.inserted, count.updated, count.older) == (0, 1, 0)
    stored = store.order("SHOP-1")
    assert stored.delivered_at == T0 - HOUR, "a delivery date typed in the future is corrected"
    assert (stored.buyer_name, stored.products) == ("", ("Filter",))
    store.upsert_orders([replace(ORDER, delivered_at=None)], T0 + 2 * HOUR)
    assert store.order("SHOP-1").delivered_at is None, "and cleared"
    assert len(store.histories()) == 1


def test_fields_a_file_has_no_column_for_stay_as_stored(store: Store) -> None:
    store.upsert_orders([ORDER], T0)
    shipped = replace(ORDER, buyer_name="Ann Smith", shipped_at=T0 - HOUR, delivered_at=None)
    columns = frozenset({"order_id", "marketplace", "buyer_email", "buyer_name", "shipped_at"})
    store.upsert_orders([OrderRow(shipped, columns)], T0 + HOUR)
    stored = store.order("SHOP-1")
    assert (stored.buyer_name, stored.shipped_at) == ("Ann Smith", T0 - HOUR)
    assert stored.delivered_at == T0, "a Shopify export has no delivery date to clear it with"


def test_an_older_row_changes_nothing_unless_forced(store: Store) -> None:
    newer = OrderRow(replace(ORDER, country="DE"), updated_at=T0)
    moved_back = replace(ORDER, buyer_email="ann@old.example", country="GB", delivered_at=None)
    older = OrderRow(moved_back, updated_at=T0 - timedelta(days=3))
    store.upsert_orders([newer], T0 + HOUR)
    count = store.upsert_orders([older], T0 + 2 * HOUR)
    assert (count.inserted, count.updated, count.older) == (0, 0, 1)
    [history] = store.histories()
    assert (history.order.buyer_email, history.order.country) == ("ann@example.com", "DE")
    assert history.order.delivered_at == T0
    assert history.customer.country == "DE", "an old export never overwrites the buyer's country"

    assert store.upsert_orders([older], T0 + 3 * HOUR, force=True).updated == 1
    assert store.order("SHOP-1").buyer_email == "ann@old.example"
    assert store.upsert_orders([newer], T0 + 4 * HOUR).updated == 1, (
        "a forced row is as new as it says, not newer"
    )
    assert store.order("SHOP-1").buyer_email == "ann@example.com"


def test_the_buyer_follows_the_newest_row_of_any_order_and_keeps_what_it_leaves_empty(
    store: Store,
) -> None:
    first = OrderRow(replace(ORDER, country="GB"), updated_at=T0 - timedelta(days=9))
    second = replace(ORDER, order_id="SHOP-2", country="DE", locale=None)
    store.upsert_orders([first], T0 - timedelta(days=8))
    store.upsert_orders([OrderRow(second, updated_at=T0)], T0 + HOUR)
    assert store.upsert_orders([first], T0 + 2 * HOUR).updated == 1, "as new as the order"
    customers = {h.order.order_id: h.customer for h in store.histories()}
    assert customers["SHOP-1"].country == "DE", "but older than what the buyer's later order said"
    assert customers["SHOP-1"].locale == "en", "an empty locale never erases a known one"


def test_a_file_imported_later_is_newer_even_if_the_clock_went_back(store: Store) -> None:
    store.upsert_orders([ORDER], T0)
    assert store.upsert_orders([replace(ORDER, country="FR")], T0 - timedelta(days=1)).updated == 1
    assert store.order("SHOP-1").country == "FR"


def test_a_last_updated_time_in_the_future_counts_as_its_import(store: Store) -> None:
    """Else a typo in the feed's own time would freeze the order for good."""
    store.upsert_orders([OrderRow(ORDER, updated_at=T0 + timedelta(days=365))], T0)
    fixed = replace(ORDER, delivered_at=T0 - HOUR)
    assert store.upsert_orders([fixed], T0 + HOUR).updated == 1
    assert store.order("SHOP-1").delivered_at == T0 - HOUR


def test_duplicates_in_one_import_the_later_row_wins(store: Store) -> None:
    count = store.upsert_orders(
        [replace(ORDER, buyer_name="A"), replace(ORDER, buyer_name="B")], T0
    )
    assert (count.inserted, count.updated) == (1, 0)
    assert store.order("SHOP-1").buyer_name == "B"
    rows = [
        OrderRow(replace(ORDER, buyer_name="New"), updated_at=T0),
        OrderRow(replace(ORDER, buyer_name="Stale"), updated_at=T0 - HOUR),
    ]
    assert store.upsert_orders(rows, T0 + HOUR).updated == 1
    assert store.order("SHOP-1").buyer_name == "New", "unless its own time says it is older"


def _failing_after(items: list[object], error: Exception) -> Iterator[object]:
    yield from items
    raise error


def test_an_import_that_fails_half_way_stores_nothing(store: Store) -> None:
    orders = [replace(ORDER, order_id=f"SHOP-{n}") for n in range(2 * BATCH_ROWS + 10)]
    bad = FeedError("not UTF-8 text", where=f"orders.csv:{len(orders) + 2}")
    with pytest.raises(FeedError):
        store.upsert_orders(_failing_after(list(orders), bad), T0)  # type: ignore[arg-type]
    assert store.histories() == []
    store.upsert_orders([ORDER], T0)
    disputes = [Dispute("SHOP-1", DisputeKind.DAMAGED, T0 + n * HOUR) for n in range(BATCH_ROWS)]
    with pytest.raises(FeedError):
        store.upsert_disputes(_failing_after(list(disputes), bad))  # type: ignore[arg-type]
    assert store.histories()[0].disputes == ()


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


# The database password -------------------------------------------------------------------------

PASSWORD = "s3cr3t-p4ss"


def _everything_said(error: BaseException) -> str:
    """Every message the error carries (causes, contexts, a DBAPI error's ``orig``, even a
    suppressed context) and its printed traceback."""
    said, todo, seen = [], [error], []
    while todo:
        current = todo.pop()
        if any(current is s for s in seen):
            continue
        seen.append(current)
        said += [str(current), repr(current)]
        linked = (current.__cause__, current.__context__, getattr(current, "orig", None))
        todo += [item for item in linked if isinstance(item, BaseException)]
    return "\n".join(said + traceback.format_exception(error))


class OperationalError(Exception):
    """Named as drivers name it, so SQLAlchemy wraps it as its OperationalError."""


class Refused(Exception):
    """A driver's own error class SQLAlchemy cannot classify."""


_DBAPI_ERRORS = (
    "InterfaceError", "DatabaseError", "DataError", "IntegrityError", "InternalError",
    "ProgrammingError", "NotSupportedError",
)  # fmt: skip


def _echoing_driver(error: type[Exception]) -> SimpleNamespace:
    """A DB-API module whose connect() fails echoing its arguments, as some drivers' errors
    quote the connection string."""

    def connect(*args: object, **kwargs: object) -> None:
        raise error(f"connection to server at 127.0.0.1, port 1 failed ({args} {kwargs})")

    return SimpleNamespace(
        connect=connect,
        paramstyle="format",
        Error=Exception,
        Warning=Warning,
        **{name: type(name, (Exception,), {}) for name in _DBAPI_ERRORS},
    )


@pytest.mark.parametrize(
    ("password", "error"),
    [(PASSWORD, OperationalError), ("s3cr3t/p4ss%", OperationalError), (PASSWORD, Refused)],
)
def test_database_errors_never_show_the_password(password: str, error: type[Exception]) -> None:
    url = f"postgresql+pg8000://shop:{quote(password, safe='')}@127.0.0.1:1/worker"
    store = Store(create_engine(url, module=_echoing_driver(error)))
    head = Store.open("sqlite://").head_revision()
    assert store.head_revision() == head, "a %-quoted password reaches alembic intact"
    with pytest.raises(StoreError) as caught:
        store.current_revision()
    message = str(caught.value)
    assert message.startswith("postgresql+pg8000://shop:***@127.0.0.1:1/worker: the database")
    assert "port 1 failed" in message
    assert password not in _everything_said(caught.value)
    assert quote(password, safe="") not in _everything_said(caught.value)


@pytest.mark.parametrize(
    ("url", "install"),
    [
        (f"postgresql://shop:{PASSWORD}@127.0.0.1:1/worker", "pip install 'psycopg[binary]'"),
        (f"postgresql+psycopg://shop:{PASSWORD}@127.0.0.1:1/w", "pip install 'psycopg[binary]'"),
        (f"postgresql+psycopg2://shop:{PASSWORD}@127.0.0.1:1/w", "pip install psycopg2-binary"),
    ],
)
def test_a_missing_driver_says_what_to_install(
    url: str, install: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for module in ("psycopg", "psycopg2"):
        monkeypatch.setitem(sys.modules, module, None)  # as if not installed
    with pytest.raises(StoreError) as caught:
        Store.open(url)
    message = str(caught.value)
    assert install in message and "postgresql+psycopg://" in message
    assert PASSWORD not in _everything_said(caught.value)
    assert "shop:***@127.0.0.1" in message


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql//shop:{PASSWORD}@127.0.0.1/worker",
        f"postgresql://shop:{PASSWORD}@127.0.0.1:port/worker",
        f"nosuchdb://shop:{PASSWORD}@127.0.0.1/worker",
    ],
)
def test_a_url_that_cannot_be_used_is_refused_without_its_password(url: str) -> None:
    with pytest.raises(StoreError, match="cannot use this database URL") as caught:
        Store.open(url)
    assert PASSWORD not in _everything_said(caught.value)
