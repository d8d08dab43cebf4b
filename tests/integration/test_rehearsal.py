"""The calendar (``worker plan --from --days``) and ``worker explain`` agree with what the
daemon then sends, on an injected clock, to a real aiosmtpd sink."""

from __future__ import annotations

from collections import Counter
from datetime import date, datetime, timedelta
from typing import cast

from tests.conftest import settings_for
from tests.integration.test_campaign_timeline import DAY0, EVENTS, ORDERS
from worker.clock import FixedClock
from worker.daemon import Daemon, load_checked_campaigns
from worker.domain import Dispute, Review, SendState
from worker.plan import Verdict
from worker.rehearsal import STEP, Explanation, explain, reason_kind, rehearse
from worker.render import Renderer
from worker.sink import Sink
from worker.store import Store

DAYS = 70
REVIEWS = cast(list[Review], EVENTS["reviews"])
DISPUTES = cast(list[Dispute], EVENTS["disputes"])


def _next_tick(moment: datetime) -> datetime:
    """The first tick of the rehearsal's clock at or after ``moment``."""
    ticks = -(-(moment - DAY0) // STEP)
    return DAY0 + ticks * STEP


def _daemon(store: Store, sink: Sink) -> tuple[Daemon, FixedClock]:
    settings = settings_for(store, sink.port)
    store.upsert_orders(ORDERS, DAY0)
    store.upsert_reviews(REVIEWS)
    store.upsert_disputes(DISPUTES)
    renderer = Renderer(settings.templates_dir, settings.default_locale)
    clock = FixedClock(DAY0)
    daemon = Daemon(settings, store, load_checked_campaigns(settings, renderer), renderer, clock)
    return daemon, clock


async def _run_until(
    daemon: Daemon, clock: FixedClock, sink: Sink, end: datetime
) -> Counter[tuple[date, str, str]]:
    """Passes as the daemon takes them (at its next wake-up), on the rehearsal's hourly
    ticks; what the sink received, per (day, campaign, step)."""
    arrived: Counter[tuple[date, str, str]] = Counter()
    while clock.at < end:
        before = len(sink.received)
        report = await daemon.run_pass()
        assert report.ok, report.summary()
        for message in sink.received[before:]:
            arrived[(clock.at.date(), message["X-Worker-Campaign"], message["X-Worker-Step"])] += 1
        wake = report.next_wakeup
        if wake is None:
            break
        clock.at = max(clock.at + STEP, _next_tick(wake))
    return arrived


def _story(store: Store, daemon: Daemon, order_id: str, at: datetime) -> Explanation:
    return explain(store.buyer_histories(order_id), order_id, daemon.campaigns, at, daemon.policy)


async def test_the_calendar_counts_what_the_daemon_then_sends(store: Store, sink: Sink) -> None:
    daemon, clock = _daemon(store, sink)
    before = store.sends()
    calendar = rehearse(store.every_history(), daemon.campaigns, DAY0, DAYS, daemon.policy)
    assert store.sends() == before, "the rehearsal wrote to the database"

    arrived = await _run_until(daemon, clock, sink, DAY0 + timedelta(days=DAYS))

    assert sum(arrived.values()) >= 8, "too few sends to compare anything"
    assert {k: v for k, v in calendar.sent.items() if v} == dict(arrived)
    skipped = Counter(
        (r.campaign, r.step, reason_kind(r.reason)) for r in store.sends([SendState.SKIPPED])
    )
    rehearsed = Counter[tuple[str, str, str]]()
    for (_day, campaign, step, reason), count in calendar.skipped.items():
        rehearsed[(campaign, step, reason)] += count
    assert rehearsed == skipped
    assert skipped, "nothing skipped: the test shows nothing about skips"
    sent_ids = calendar.orders[(date(2026, 3, 9), "review-follow-up", "check-in", "sent")]
    assert "SHOP-1001" in sent_ids


async def test_explain_matches_the_sink(store: Store, sink: Sink) -> None:
    daemon, clock = _daemon(store, sink)
    middle = DAY0 + timedelta(days=38)
    await _run_until(daemon, clock, sink, middle)
    by_id = {m["Message-ID"]: m for m in sink.received}
    waiting: list[tuple[str, str, str]] = []
    for order in ORDERS:
        story = _story(store, daemon, order.order_id, middle)
        applies = {c.campaign: c for c in story.campaigns}
        if order.marketplace == "amazon":
            assert not applies["review-follow-up"].applies
            assert "not covered" in applies["review-follow-up"].why_not
        for campaign in story.campaigns:
            for step in campaign.steps:
                if step.send is not None and step.send.state is SendState.SENT:
                    message = by_id[step.send.message_id]
                    assert message["X-Worker-Order"] == order.order_id
                    assert message["X-Worker-Step"] == step.step
                    assert f"Message-ID {step.send.message_id}" in step.happened
                elif step.verdict is Verdict.WAIT:
                    assert step.happened.startswith("waiting")
                    waiting.append((order.order_id, campaign.campaign, step.step))
        if order.order_id == "SHOP-1003":
            assert any("dispute opened" in e.text for e in story.events)
    assert waiting, "nothing waits at day 38: the test shows nothing"
    received = {
        (m["X-Worker-Order"], m["X-Worker-Campaign"], m["X-Worker-Step"]) for m in by_id.values()
    }
    assert not received & set(waiting), "explain said waiting for a step the sink received"
    told_sent = [
        s
        for order in ORDERS
        for c in _story(store, daemon, order.order_id, middle).campaigns
        for s in c.steps
        if s.send is not None and s.send.state is SendState.SENT
    ]
    assert len(told_sent) == len(sink.received)
