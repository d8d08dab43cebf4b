"""Real-shaped exports without a delivery column, as sellers download them (eBay's Orders
report, Shopify's orders export, Amazon's Order Report, AliExpress's order export), through
the feed reader, the store, the daemon on an injected clock and a real SMTP sink: check-in,
request and reminder (on Amazon, its one review request) go out counted from each order's
estimated delivery, and a delivery event imported later moves the steps not yet sent."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.conftest import ROOT, settings_for
from worker.clock import FixedClock
from worker.config import Settings
from worker.daemon import Daemon, load_checked_campaigns, policy_from
from worker.delivery import delivery_of
from worker.domain import Order
from worker.feeds import Format, read_orders
from worker.render import Renderer
from worker.shipments import Shipment, read_shipments
from worker.sink import Sink
from worker.store import Store

FEEDS = ROOT / "tests" / "fixtures" / "feeds"
DAY = timedelta(days=1)
HOUR = timedelta(hours=1)

EXPORTS = [
    # fixture, format, an order in it, where its delivery time comes from, its language
    ("ebay_orders_report.csv", Format.EBAY, "21-10442-90817", "estimated: CN->TW post, 7d",
     "zh-Hant"),
    ("shopify_orders_export.csv", Format.SHOPIFY, "#1042", "estimated: CN->JP post, 7d", "ja"),
    ("amazon_order_report.txt", Format.AMAZON, "028-3349201-5566743", "marketplace estimate",
     "de"),
    ("aliexpress_orders.csv", Format.ALIEXPRESS, "8191234567890456",
     "estimated: CN->ES post, 14d", "es"),
]  # fmt: skip


STEPS = {
    # step -> (earliest, latest) days after delivery it may arrive: due on its day, sent in
    # the buyer's send window (a weekend and a pass may come first).
    "follow-up": {"check-in": (7, 10), "review-request": (35, 38)},
    # campaigns/amazon-review-request.yaml: one request 10..14 days after delivery, weekdays.
    "amazon": {"review-request": (10, 18)},
}


def _expected(fmt: Format) -> dict[str, tuple[int, int]]:
    return STEPS["amazon" if fmt is Format.AMAZON else "follow-up"]


def _settings(store: Store, sink: Sink) -> Settings:
    """The shipped campaigns as they are, from a seller in China."""
    return settings_for(
        store, sink.port, campaigns_dir=str(ROOT / "campaigns"), delivery={"ship_from": "CN"}
    )


def _import(store: Store, tmp_path: Path, fixture: str, fmt: Format) -> list[Order]:
    path = tmp_path / fixture
    shutil.copy(FEEDS / fixture, path)
    orders = [o for o in read_orders(path, fmt) if isinstance(o, Order)]
    store.upsert_orders(orders, datetime(2026, 3, 1, tzinfo=UTC))
    return orders


async def _passes(
    daemon: Daemon,
    clock: FixedClock,
    sink: Sink,
    order_id: str,
    until: datetime,
    languages: set[str] | None = None,
) -> dict[str, datetime]:
    """A pass every 6 hours up to ``until``: each step of the order, when it arrived; the
    languages its messages were written in go to ``languages``."""
    arrived: dict[str, datetime] = {}
    while clock.now() < until:
        before = len(sink.received)
        report = await daemon.run_pass()
        assert report.ok, report.summary()
        for message in sink.received[before:]:
            if message["X-Worker-Order"] == order_id:
                arrived[str(message["X-Worker-Step"])] = clock.now()
                if languages is not None:
                    languages.add(str(message["Content-Language"]))
        clock.advance(6 * HOUR)
    return arrived


@pytest.mark.parametrize(("fixture", "fmt", "order_id", "source", "language"), EXPORTS)
async def test_an_export_without_delivery_dates_gets_every_step_from_the_estimate(
    store: Store,
    sink: Sink,
    tmp_path: Path,
    fixture: str,
    fmt: Format,
    order_id: str,
    source: str,
    language: str,
) -> None:
    settings = _settings(store, sink)
    orders = {o.order_id: o for o in _import(store, tmp_path, fixture, fmt)}
    assert all(o.delivered_at is None for o in orders.values()), "no export has a delivery date"
    policy = policy_from(settings)
    delivery = delivery_of(store.order(order_id), None, policy.transit)
    assert delivery is not None and delivery.at is not None
    assert source in delivery.describe()

    renderer = Renderer(settings.templates_dir, settings.default_locale)
    clock = FixedClock(datetime(2026, 3, 1, tzinfo=UTC))
    daemon = Daemon(settings, store, load_checked_campaigns(settings, renderer), renderer, clock)
    languages: set[str] = set()
    arrived = await _passes(daemon, clock, sink, order_id, delivery.at + 70 * DAY, languages)

    assert languages == {language}, "no locale column: the site or the country chose it"
    delivered = delivery.at
    expected = _expected(fmt)
    if fmt is Format.AMAZON:
        assert set(arrived) == set(expected), "one request, nothing else, on Amazon"
    else:
        assert set(arrived) == {*expected, "review-reminder"}, arrived
        gap = arrived["review-reminder"] - arrived["review-request"]
        assert 10 * DAY <= gap <= 18 * DAY
    for step, (earliest, latest) in expected.items():
        assert delivered + earliest * DAY <= arrived[step] <= delivered + latest * DAY, step


@pytest.mark.parametrize(("fixture", "fmt", "order_id"), [e[:3] for e in EXPORTS])
async def test_a_delivery_event_imported_later_moves_the_steps_not_yet_sent(
    store: Store, sink: Sink, tmp_path: Path, fixture: str, fmt: Format, order_id: str
) -> None:
    settings = _settings(store, sink)
    _import(store, tmp_path, fixture, fmt)
    policy = policy_from(settings)
    estimate = delivery_of(store.order(order_id), None, policy.transit)
    assert estimate is not None and estimate.at is not None
    renderer = Renderer(settings.templates_dir, settings.default_locale)
    clock = FixedClock(datetime(2026, 3, 1, tzinfo=UTC))
    daemon = Daemon(settings, store, load_checked_campaigns(settings, renderer), renderer, clock)
    assert await _passes(daemon, clock, sink, order_id, estimate.at) == {}

    # The carrier reports the parcel delivered four days after the estimate.
    late = estimate.at + 4 * DAY
    shipments = tmp_path / "shipments.csv"
    shipments.write_text(
        f"order_id,status,at\n{order_id},delivered,{late.isoformat()}\n", encoding="utf-8"
    )
    store.upsert_shipments([s for s in read_shipments(shipments) if isinstance(s, Shipment)], late)
    event = delivery_of(store.order(order_id), None, policy.transit)
    assert event is not None and (event.at, event.source) == (late, "event")

    arrived = await _passes(daemon, clock, sink, order_id, late + 40 * DAY)
    assert set(arrived) <= {"check-in", "review-request", "review-reminder"}
    for step, (earliest, latest) in _expected(fmt).items():
        assert late + earliest * DAY <= arrived[step] <= late + latest * DAY, "not the estimate's"


def test_a_german_ebay_buyer_gets_german_and_a_taiwanese_one_traditional_chinese(
    store: Store, sink: Sink, tmp_path: Path
) -> None:
    """eBay's Orders report has no locale column: the buyer's country decides, and the
    daemon says so (the rule ``worker plan`` prints)."""
    settings = _settings(store, sink)
    _import(store, tmp_path, "ebay_orders_report.csv", Format.EBAY)
    renderer = Renderer(settings.templates_dir, settings.default_locale)
    daemon = Daemon(
        settings,
        store,
        load_checked_campaigns(settings, renderer),
        renderer,
        FixedClock(datetime(2026, 3, 1, tzinfo=UTC)),
    )
    histories = {h.order.order_id: h for h in store.histories()}
    chosen = {
        order_id: str(daemon.language(histories[order_id], "review-follow-up", "check-in"))
        for order_id in ("12-08831-47710", "21-10442-90817")
    }
    assert chosen == {"12-08831-47710": "de (country DE)", "21-10442-90817": "zh-Hant (country TW)"}
