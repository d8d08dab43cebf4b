"""Hostile order data through a real SMTP conversation: the relay receives only our headers.

The payload table and the checks on the received bytes are the unit tests' (compose is the
only place they can go wrong); this proves that nothing between compose and the relay
(Mailer's policy, aiosmtplib, the SMTP dot-stuffing) parses a header again or changes what
it says. One loopback server and one connection for all of the messages, with a time limit.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import replace
from pathlib import Path

import pytest

from tests.integration.smtp_server import scripted_server
from tests.unit.test_compose import (
    FIELDS,
    NOW,
    PAYLOADS,
    SEND,
    cut,
    hostile,
    only_ours,
    reads_as_shown,
    settings,
)
from worker.compose import compose
from worker.config import SellerSettings, SmtpSettings
from worker.domain import Order
from worker.render import Renderer, message_context
from worker.send import Mailer, Sent

RETURN_PATH = "bounces+b1@shop.example"
TEMPLATES = Path(__file__).resolve().parents[2] / "templates"
FEED_REFUSES = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")
"""What ``worker.feeds`` refuses at import: such text never reaches a template."""


def smtp(port: int) -> SmtpSettings:
    return SmtpSettings(
        host="127.0.0.1",
        port=port,
        timeout_s=5.0,
        message_deadline_s=10.0,
        concurrency=1,
        attempts=1,
        helo_name="worker.test",
    )


@pytest.mark.timeout(90)
async def test_every_payload_in_every_field_reaches_the_relay_as_text_only() -> None:
    cases = [(field, payload) for payload in PAYLOADS.values() for field in FIELDS]
    recipients = [f"alex{n}@example.com" for n in range(len(cases))]
    composed = []

    async with scripted_server() as server:
        async with asyncio.timeout(60), Mailer(smtp(server.port)) as mailer:
            for n, (field, payload) in enumerate(cases):
                message = compose(**hostile(field, payload.value, n))
                outcome = await mailer.send(message, sender=RETURN_PATH, recipient=recipients[n])
                assert isinstance(outcome, Sent), (field, payload, outcome)
                composed.append(bytes(message))

    assert server.seen.connections == 1
    assert server.seen.recipients == recipients  # one RCPT per message, the buyer's
    assert server.seen.messages == composed  # the relay got compose's bytes, as filed in Sent
    for (field, payload), recipient, raw in zip(
        cases, recipients, server.seen.messages, strict=True
    ):
        parsed, old = only_ours(raw, recipient, language=field != "locale")
        reads_as_shown(parsed, old, field, payload.shown)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("locale", ["en", "ja"])
async def test_hostile_orders_through_the_shipped_templates(locale: str) -> None:
    """What an import lets through, in the buyer name, product and order number at once."""
    renderer = Renderer(TEMPLATES)
    seller = SellerSettings(name="Kettle & Co", signature="Anna, customer service")
    config = settings(reply_to="Kettle & Co service <help@shop.example>")
    payloads = [p for p in PAYLOADS.values() if not FEED_REFUSES.search(p.value)]
    sent = []

    async with scripted_server() as server:
        async with asyncio.timeout(45), Mailer(smtp(server.port)) as mailer:
            for n, payload in enumerate(payloads):
                value = payload.value.replace("\udcff", "\ufffd")  # a feed's text is valid UTF-8
                order = Order(value, "shop", f"alex{n}@example.com", value, products=(value,))
                rendered = renderer.render(
                    "review_request", locale, message_context(order, seller, None, locale)
                )
                message = compose(
                    rendered,
                    send=replace(SEND, order_id=order.order_id),
                    order=order,
                    settings=config,
                    now=NOW,
                )
                outcome = await mailer.send(
                    message, sender=RETURN_PATH, recipient=order.buyer_email
                )
                assert isinstance(outcome, Sent), (payload, outcome)
                sent.append((order, rendered, payload))

    assert server.seen.recipients == [order.buyer_email for order, _, _ in sent]
    for (order, rendered, payload), raw in zip(sent, server.seen.messages, strict=True):
        html = rendered.html.removesuffix("\n") + "\n"  # set_content ends a part with one
        parsed, old = only_ours(raw, order.buyer_email, text=rendered.text, html=html)
        shown = payload.shown.replace("\udcff", "\ufffd")
        reads_as_shown(parsed, old, "buyer_name", shown)
        assert str(parsed["X-Worker-Order"]) == cut(shown)
        assert str(parsed["Content-Language"]) == locale
