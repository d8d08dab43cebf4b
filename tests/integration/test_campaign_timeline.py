"""Ninety days of the shipped campaigns on an injected clock, sent to a real aiosmtpd sink."""

from __future__ import annotations

import email.policy
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path

import pytest

from tests.conftest import settings_for
from worker.clock import FixedClock
from worker.daemon import Daemon, load_checked_campaigns
from worker.domain import Dispute, DisputeKind, Order, Review, SendState
from worker.render import Renderer
from worker.sink import Sink
from worker.store import Store

DAY0 = datetime(2026, 3, 2, 0, 0, tzinfo=UTC)  # a Monday
DAY = timedelta(days=1)

ORDERS = [
    Order(
        "SHOP-1001",
        "shop",
        "ann@example.com",
        "Ann Smith",
        ("Glass kettle 1.7 l",),
        "en",
        "GB",
        delivered_at=DAY0 + timedelta(hours=11),
        review_url="https://shop.example/p/kettle#reviews",
    ),
    Order(
        "12-34567-89012",
        "ebay",
        "jonas@example.de",
        "Jonas Müller",
        ("Milchaufschäumer",),
        "de-AT",
        "AT",
        delivered_at=DAY0 + timedelta(hours=9),
    ),
    Order(
        "8000123456789012",
        "aliexpress",
        "yuki@example.jp",
        "山田 由紀",
        ("保温マグ",),
        "ja",
        "JP",
        delivered_at=DAY0 + timedelta(hours=2),
    ),
    Order(
        "SHOP-1002",
        "shop",
        "claire@example.fr",
        "Claire Dubois",
        ("Moulin à café",),
        "fr",
        "FR",
        delivered_at=DAY0 + timedelta(hours=9),
    ),
    Order(
        "SHOP-1003",
        "shop",
        "claire@example.fr",
        "Claire Dubois",
        ("Filtre",),
        "fr",
        "FR",
        delivered_at=DAY0 + timedelta(hours=9),
    ),
    Order(
        "111-2223334-5556667",
        "amazon",
        "x7@marketplace.amazon.example",
        "Pat",
        ("Kettle",),
        "en",
        "US",
        delivered_at=DAY0,
    ),
]
EVENTS = dict(
    reviews=[Review("12-34567-89012", 5, DAY0 + 40 * DAY + timedelta(hours=8))],
    disputes=[
        # Yuki: item damaged, open from day 3 to day 60.
        Dispute("8000123456789012", DisputeKind.DAMAGED, DAY0 + 3 * DAY, DAY0 + 60 * DAY),
        # Claire: a not-received case on her *other* order, open for the whole 90 days.
        Dispute("SHOP-1003", DisputeKind.NOT_RECEIVED, DAY0 + 5 * DAY),
    ],
)


async def _ninety_days(store: Store, sink: Sink, tmp_path: Path) -> tuple[Daemon, FixedClock, dict]:
    settings = settings_for(store, sink.port)
    store.upsert_orders(ORDERS, DAY0)
    store.upsert_reviews(EVENTS["reviews"])
    store.upsert_disputes(EVENTS["disputes"])
    renderer = Renderer(settings.templates_dir, settings.default_locale)
    clock = FixedClock(DAY0)
    daemon = Daemon(settings, store, load_checked_campaigns(settings, renderer), renderer, clock)
    arrivals: dict[str, list[tuple[float, EmailMessage]]] = defaultdict(list)
    for half_day in range(2 * 90):
        # Twice a day, 07:00 and 13:00 UTC: inside Tokyo's and Europe's working hours.
        clock.at = (
            DAY0 + half_day * timedelta(hours=12) + timedelta(hours=7 if half_day % 2 == 0 else 1)
        )
        before = len(sink.received)
        report = await daemon.run_pass()
        assert report.ok, report.summary()
        again = await daemon.run_pass()
        assert again.outcomes["sent"] == 0, "a second pass at the same moment sent again"
        for message in sink.received[before:]:
            days = (clock.at - DAY0) / DAY
            arrivals[message["X-Worker-Order"]].append((days, message))
    return daemon, clock, arrivals


def _steps(arrivals: list[tuple[float, EmailMessage]]) -> dict[str, float]:
    return {m["X-Worker-Step"]: day for day, m in arrivals}


async def test_ninety_day_timeline(store: Store, sink: Sink, tmp_path: Path) -> None:
    _, _, arrivals = await _ninety_days(store, sink, tmp_path)

    ann = _steps(arrivals["SHOP-1001"])
    assert set(ann) == {"check-in", "review-request", "review-reminder"}
    assert 7 <= ann["check-in"] < 8
    assert 35 <= ann["review-request"] < 36
    assert (
        ann["review-request"] + 10 <= ann["review-reminder"] <= ann["review-request"] + 15 + 3
    )  # + weekend
    assert 45 <= ann["review-reminder"] <= 53

    jonas = _steps(arrivals["12-34567-89012"])
    assert set(jonas) == {"check-in", "review-request", "thank-you"}, (
        "reviewed on day 40: no reminder"
    )
    assert 40 <= jonas["thank-you"] < 41.5

    yuki = _steps(arrivals["8000123456789012"])
    assert all(day >= 63 for day in yuki.values()), f"sent while the dispute was open: {yuki}"
    assert set(yuki) >= {"check-in", "review-request"}, "steps resume after close + 3-day cool-down"

    assert "SHOP-1002" not in arrivals and "SHOP-1003" not in arrivals, "open dispute on any order"
    amazon = arrivals["111-2223334-5556667"]
    assert [(m["X-Worker-Campaign"], m["X-Worker-Step"]) for _, m in amazon] == [
        ("amazon-review-request", "review-request")
    ], "one review request, from the Amazon campaign alone"
    assert 10 <= amazon[0][0] <= 24, "Amazon allows 5 to 30 days after delivery"
    sent = store.sends([SendState.SENT])
    assert len(sent) == sum(len(v) for v in arrivals.values()), "one row per message received"


async def test_each_message_carries_the_headers_and_parts_a_mail_client_needs(
    store: Store, sink: Sink, tmp_path: Path
) -> None:
    _, _, arrivals = await _ninety_days(store, sink, tmp_path)
    rows = {(r.order_id, r.step): r for r in store.sends([SendState.SENT])}
    for order_id, received in arrivals.items():
        for _, message in received:
            row = rows[(order_id, message["X-Worker-Step"])]
            assert message["Message-ID"] == row.message_id
            assert message["Message-ID"].endswith("@shop.example>")
            assert message["From"] == "Kettle & Co <service@shop.example>"
            assert message["Reply-To"] == "Kettle & Co service <help@shop.example>"
            assert message["Auto-Submitted"] == "auto-generated"
            assert message["List-Unsubscribe"].startswith(
                "<mailto:help@shop.example?subject=unsubscribe>"
            )
            assert message["Date"] is not None
            if message["X-Worker-Campaign"] == "amazon-review-request":
                # Amazon takes plain text only: one text/plain part, no HTML.
                assert message.get_content_type() == "text/plain"
                assert message.get_content_charset() == "utf-8"
                assert order_id in message["Subject"]
                continue
            assert message["X-Worker-Campaign"] in {"review-follow-up", "review-thanks"}
            assert message.get_content_type() == "multipart/alternative"
            parts = {p.get_content_type(): p for p in message.iter_parts()}
            assert set(parts) == {"text/plain", "text/html"}
            assert all(p.get_content_charset() == "utf-8" for p in parts.values())

    jonas = arrivals["12-34567-89012"][0][1]
    assert jonas["To"] == "Jonas Müller <jonas@example.de>"
    assert jonas["Content-Language"] == "de"
    assert "Milchaufschäumer" in jonas.get_body(("plain",)).get_content()
    yuki = arrivals["8000123456789012"][0][1]
    raw = yuki.as_bytes(policy=email.policy.SMTP)
    assert b"=?utf-8?" in raw.split(b"\r\n\r\n")[0], "non-ASCII headers are RFC 2047 encoded"
    assert "保温マグ" in str(yuki["Subject"]) + yuki.get_body(("plain",)).get_content()
    assert yuki["Content-Language"] == "ja"


@pytest.mark.parametrize("pass_count", [2])
async def test_restarting_the_daemon_sends_nothing_twice(
    store: Store, sink: Sink, tmp_path: Path, pass_count: int
) -> None:
    settings = settings_for(store, sink.port)
    store.upsert_orders(ORDERS[:1], DAY0)
    renderer = Renderer(settings.templates_dir, settings.default_locale)
    campaigns = load_checked_campaigns(settings, renderer)
    at = DAY0 + 7 * DAY + timedelta(hours=12)
    for _ in range(pass_count):
        fresh = Daemon(settings, store, campaigns, renderer, FixedClock(at))  # a new process
        await fresh.run_pass()
    assert len(sink.received) == 1
    assert [r.step for r in store.sends()] == ["check-in"]
