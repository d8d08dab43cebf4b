"""One buyer paced as one person, through the store, the daemon and a real SMTP sink: three
orders delivered the same day, and a question that holds the review request until an agent
answers it in the real mailbox (Dovecot)."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

from tests.conftest import ROOT, settings_for
from tests.dovecot import Dovecot, User
from tests.messages import plain_mail
from worker.clock import FixedClock
from worker.config import Settings
from worker.daemon import Daemon, load_checked_campaigns
from worker.domain import Order, SendState
from worker.ingest import Ingest
from worker.render import Renderer
from worker.rules import load_rules
from worker.sink import Sink
from worker.store import Store

DELIVERED = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)  # a Monday
DAY = timedelta(days=1)
HOUR = timedelta(hours=1)


def _order(order_id: str, ordered_day: int, product: str) -> Order:
    return Order(
        order_id, "shop", "ann@buyer.example", "Ann Smith", (product,), "en", "GB",
        ordered_at=DELIVERED - timedelta(days=10 - ordered_day), delivered_at=DELIVERED,
    )  # fmt: skip


def _daemon(settings: Settings, store: Store, clock: FixedClock, *, mailbox: bool) -> Daemon:
    renderer = Renderer(settings.templates_dir, settings.default_locale)
    campaigns = load_checked_campaigns(settings, renderer)
    ingest = (
        Ingest(settings, store, load_rules(settings.inbox.rules_file), clock) if mailbox else None
    )
    return Daemon(settings, store, campaigns, renderer, clock, ingest=ingest)


async def test_three_orders_delivered_the_same_day_get_one_message_every_three_days(
    store: Store, sink: Sink
) -> None:
    orders = [
        _order("SHOP-3", 3, "Tea cups"),
        _order("SHOP-1", 1, "Kettle"),
        _order("SHOP-2", 2, "Tea strainer"),
    ]
    store.upsert_orders(orders, DELIVERED)
    clock = FixedClock(DELIVERED)
    daemon = _daemon(settings_for(store, sink.port), store, clock, mailbox=False)
    arrivals: list[tuple[datetime, str, str]] = []
    for _ in range(80 * 6):  # 80 days, a pass every 4 hours
        before = len(sink.received)
        report = await daemon.run_pass()
        assert report.ok, report.summary()
        arrivals += [
            (clock.now(), m["X-Worker-Order"], m["X-Worker-Step"]) for m in sink.received[before:]
        ]
        clock.advance(4 * HOUR)

    steps = ("check-in", "review-request", "review-reminder")
    assert sorted((o, s) for _, o, s in arrivals) == sorted(
        (o.order_id, s) for o in orders for s in steps
    ), "every step of every order, once"
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(arrivals)]
    assert min(gaps) >= 3 * DAY, arrivals
    for step in steps[:2]:
        assert [o for _, o, s in arrivals if s == step] == ["SHOP-1", "SHOP-2", "SHOP-3"]
    assert not [r for r in store.sends() if r.state is SendState.SKIPPED], "none too late"
    rows = {(r.order_id, r.step): r for r in store.sends()}
    for at, order_id, step in arrivals:
        assert rows[(order_id, step)].sent_at == at


async def test_an_unanswered_question_holds_the_review_request_until_the_agent_answers(
    store: Store, sink: Sink, dovecot: Dovecot, mailbox_user: User
) -> None:
    store.upsert_orders([_order("SHOP-1", 1, "Kettle")], DELIVERED)
    settings = settings_for(
        store,
        sink.port,
        imap=dovecot.imap_settings(mailbox_user, folders=("INBOX", "Sent")).model_dump(),
        inbox={"rules_file": str(ROOT / "config" / "mail-rules.yaml")},
    )
    clock = FixedClock(DELIVERED + 30 * DAY)  # Wednesday
    daemon = _daemon(settings, store, clock, mailbox=True)
    assert daemon.ingest is not None
    question = plain_mail(
        "Ann Smith <ann@buyer.example>",
        "Order SHOP-1: how do I descale the kettle?",
        "Hello, which descaler should I use for it? Ann",
        message_id="<q1@buyer.example>",
    )
    dovecot.append(mailbox_user, "INBOX", question, when=clock.now())
    await daemon.ingest.run_once()
    assert [w.order_id for w in store.awaiting(clock.now())] == ["SHOP-1"]

    clock.at = DELIVERED + 35 * DAY + 2 * HOUR  # the request's day
    for _ in range(3 * 4):  # three days of passes: nothing goes out
        await daemon.run_pass()
        clock.advance(6 * HOUR)
    requests = [m for m in sink.received if m["X-Worker-Step"] == "review-request"]
    assert requests == []
    rows = [r for r in store.sends() if r.step == "review-request"]
    assert all(r.state is SendState.SCHEDULED for r in rows), "held, not skipped"

    answer = plain_mail(
        "Anna <help@shop.example>",
        "Re: Order SHOP-1: how do I descale the kettle?",
        "Citric acid, two spoons. Anna",
        message_id="<a1@shop.example>",
        in_reply_to="<q1@buyer.example>",
        to="ann@buyer.example",
    )
    dovecot.append(mailbox_user, "Sent", answer, flags=["\\Seen"], when=clock.now())
    await daemon.ingest.run_once()
    assert store.awaiting(clock.now()) == []
    for _ in range(8):
        await daemon.run_pass()
        if any(m["X-Worker-Step"] == "review-request" for m in sink.received):
            break
        clock.advance(3 * HOUR)
    [request] = [m for m in sink.received if m["X-Worker-Step"] == "review-request"]
    assert request["X-Worker-Order"] == "SHOP-1"
