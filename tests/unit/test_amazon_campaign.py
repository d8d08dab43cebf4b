"""Amazon orders get exactly one review request, from campaigns/amazon-review-request.yaml,
inside Amazon's rules; every other shipped campaign leaves them alone.

The orders come from Amazon's own Order Report (tests/fixtures/feeds), read by the feed
importer as an operator's import would; the planner runs on the shipped campaign files with
an injected clock, and each due step is "sent" by writing a sent row, as the daemon does.
"""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from worker.campaign import load_campaigns
from worker.compose import compose
from worker.config import SellerSettings, Settings
from worker.delivery import delivery_of
from worker.domain import Customer, Dispute, DisputeKind, Order, Review, Send, SendState
from worker.feeds import Format, RejectedRow, read_orders
from worker.plan import OrderHistory, Policy, plan
from worker.render import Renderer, message_context

ROOT = Path(__file__).resolve().parents[2]
FEEDS = ROOT / "tests" / "fixtures" / "feeds"
SHIPPED = load_campaigns(ROOT / "campaigns")
ACTIVE = [c for c in SHIPPED if c.enabled]
AMAZON = next(c for c in SHIPPED if c.name == "amazon-review-request")
FOLLOW_UP = next(c for c in SHIPPED if c.name == "review-follow-up")
POLICY = Policy()
SELLER = SellerSettings(name="Beispiel Shop", signature="Anna, Kundenservice")
STEP = timedelta(hours=3)
# A web address, an e-mail address or a phone number: what Amazon refuses in a message.
CONTACT = re.compile(
    r"https?://|www\.|\b[a-z0-9-]+\.(com|de|co\.jp|example)\b|@|\+?\d[\d ()/-]{7,}\d",
    re.IGNORECASE,
)


def imported() -> list[Order]:
    rows = list(read_orders(FEEDS / "amazon_order_report.txt", Format.AMAZON))
    orders = [r for r in rows if not isinstance(r, RejectedRow)]
    assert [o.marketplace for o in orders] == ["amazon", "amazon"]
    assert all(o.buyer_email.split("@")[1].startswith("marketplace.amazon.") for o in orders)
    return orders


def history(order: Order) -> OrderHistory:
    customer = Customer(order.buyer_email, order.buyer_name, order.locale, order.country)
    return OrderHistory(order, customer)


def run(histories: list[OrderHistory], start: datetime, days: int) -> list[tuple[str, Send]]:
    """Every pass from ``start`` for ``days``, every 3 hours: what was sent, in order."""
    sent: list[tuple[str, Send]] = []
    now = start
    while now <= start + timedelta(days=days):
        for decision in plan(histories, ACTIVE, now, POLICY).due:
            index = next(
                i for i, h in enumerate(histories) if h.order.order_id == decision.order_id
            )
            h = histories[index]
            row = Send(
                len(sent) + 1,
                decision.order_id,
                decision.campaign,
                decision.step,
                SendState.SENT,
                now,
                sent_at=now,
            )
            histories[index] = replace(h, sends={**h.sends, (row.campaign, row.step): row})
            sent.append((decision.order_id, row))
        now += STEP
    return sent


def test_an_imported_amazon_order_gets_exactly_one_review_request_5_to_30_days_after_delivery() -> (
    None
):
    orders = imported()
    start = min(o.ordered_at for o in orders if o.ordered_at is not None)

    sent = run([history(o) for o in orders], start, days=60)

    assert sorted((order_id, s.campaign, s.step) for order_id, s in sent) == sorted(
        (o.order_id, "amazon-review-request", "review-request") for o in orders
    )
    for order in orders:
        delivery = delivery_of(order, order.country, POLICY.transit)
        assert delivery is not None and delivery.at is not None
        (when,) = [s.sent_at for order_id, s in sent if order_id == order.order_id]
        assert when is not None
        assert timedelta(days=5) <= when - delivery.at <= timedelta(days=30)


def test_an_amazon_order_reviewed_before_the_request_gets_nothing() -> None:
    order = imported()[0]
    assert order.ordered_at is not None
    reviewed = Review(order.order_id, 2, order.ordered_at + timedelta(days=6), "amazon")

    sent = run([replace(history(order), reviews=(reviewed,))], order.ordered_at, days=60)

    assert sent == []


@pytest.mark.parametrize(("closed_after", "sent"), [(20, True), (28, False)])
def test_a_dispute_never_pushes_the_amazon_request_past_30_days_after_delivery(
    closed_after: int, sent: bool
) -> None:
    order = imported()[0]
    assert order.ordered_at is not None
    delivery = delivery_of(order, order.country, POLICY.transit)
    assert delivery is not None and delivery.at is not None
    # Opened before the request's day, closed 20 or 28 days after delivery: with the 3-day
    # cool-down the request may go on day 23, and may not on day 31.
    dispute = Dispute(
        order.order_id,
        DisputeKind.NOT_AS_DESCRIBED,
        delivery.at + timedelta(days=2),
        closed_at=delivery.at + timedelta(days=closed_after),
    )
    held = replace(history(order), disputes=(dispute,))

    done = run([held], order.ordered_at, days=60)

    assert [(s.campaign, s.step) for _, s in done] == (
        [("amazon-review-request", "review-request")] if sent else []
    )
    for _, row in done:
        assert row.sent_at is not None and row.sent_at - delivery.at <= timedelta(days=30)
    if not sent:
        after = delivery.at + timedelta(days=closed_after + 4)
        (decision,) = plan([held], [AMAZON], after, POLICY).decisions
        assert decision.reason.startswith("too_late: ") and "after delivered (latest 30d)" in (
            decision.reason
        )


def test_the_shipped_follow_up_and_thanks_skip_amazon_and_the_amazon_campaign_skips_the_rest() -> (
    None
):
    assert "amazon" not in FOLLOW_UP.marketplaces
    assert AMAZON.marketplaces == frozenset({"amazon"})
    others = [c for c in SHIPPED if c is not AMAZON]
    assert all("amazon" not in c.marketplaces for c in others)
    order = imported()[0]
    assert order.ordered_at is not None
    shop = replace(order, order_id="S-1", marketplace="shop", buyer_email="ann@example.com")

    decisions = plan(
        [history(order), history(shop)], ACTIVE, order.ordered_at + timedelta(days=20), POLICY
    ).decisions

    assert {d.campaign for d in decisions if d.order_id == order.order_id} == {AMAZON.name}
    assert AMAZON.name not in {d.campaign for d in decisions if d.order_id == "S-1"}


def test_the_amazon_step_keeps_inside_amazons_window() -> None:
    (step,) = AMAZON.steps
    assert step.kind.asks_for_review
    assert step.trigger.event is not None and step.trigger.event.value == "delivered"
    assert step.delay_min >= timedelta(days=5)
    assert step.latest is not None and step.latest <= timedelta(days=30)


@pytest.mark.parametrize("locale", Renderer(ROOT / "templates").locales("amazon_review_request"))
@pytest.mark.parametrize("count", [0, 1, 2, 5])
def test_the_amazon_request_is_plain_text_with_the_order_number_and_no_contact_details(
    locale: str, count: int
) -> None:
    order = replace(
        imported()[0],
        products=tuple(f"Knoblauchpresse Modell {n} aus Edelstahl" for n in range(count)),
        review_url="https://shop.example/r/1",  # a feed's review link never reaches it
    )
    renderer = Renderer(ROOT / "templates")

    message = renderer.render(
        "amazon_review_request", locale, message_context(order, SELLER, None, locale)
    )

    assert message.locale == locale and message.html == ""
    assert order.order_id in message.subject
    for part in (message.subject, message.text):
        assert not CONTACT.search(part.replace(order.order_id, "")), part
        assert "None" not in part and "  " not in part
    assert "\n\n\n" not in message.text and "<" not in message.text


def test_the_amazon_request_is_mailed_as_one_text_plain_part() -> None:
    order = imported()[0]
    rendered = Renderer(ROOT / "templates").render(
        "amazon_review_request", order.locale, message_context(order, SELLER, None, "de")
    )
    send = Send(
        1,
        order.order_id,
        AMAZON.name,
        "review-request",
        SendState.SENDING,
        datetime(2026, 3, 20, 9, tzinfo=UTC),
        message_id="<a1b2c3@shop.example>",
    )
    settings = Settings.model_validate({"from": "Beispiel Shop <service@shop.example>"})

    msg = compose(rendered, send=send, order=order, settings=settings, now=send.due_at)

    assert not msg.is_multipart() and msg.get_content_type() == "text/plain"
    assert msg["To"].endswith("@marketplace.amazon.de>")
    assert "028-3349201-5566743" in msg["Subject"]
