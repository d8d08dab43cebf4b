"""The word each shipped template tells the buyer to reply with is read as an unsubscribe by
the shipped mail rules; a reply that only quotes the template's unsubscribe line is not.

Rendered through the real Renderer and classified as the mailbox reader does, so a change of
wording on either side (template or config/mail-rules.yaml) that breaks the promise fails.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.unit.test_template_content import UNSUBSCRIBE_WORD
from worker.classify import classify
from worker.config import SellerSettings
from worker.domain import MessageKind, Order, Review
from worker.inbound import parse
from worker.render import Renderer, message_context
from worker.rules import MailRules, load_rules

ROOT = Path(__file__).resolve().parents[2]
TEMPLATES = ("check_in", "review_request", "review_reminder", "review_thanks", "shipping_notice")
# The word in the template's last paragraph, as the buyer would type it back.
WORD = UNSUBSCRIBE_WORD
THANKS = {
    "en": "Thanks, all good.",
    "de": "Danke, alles gut.",
    "fr": "Merci, tout va bien.",
    "es": "Gracias, todo bien.",
    "it": "Grazie, tutto bene.",
    "ja": "ありがとうございます。問題ありません。",
    "zh": "谢谢，一切都好。",
    "zh-Hant": "謝謝，一切都好。",
}
SELLER = SellerSettings(name="Example Shop", signature="Anna")


@pytest.fixture(scope="module")
def rules() -> MailRules:
    return load_rules(ROOT / "config" / "mail-rules.yaml")


def rendered_text(template: str, locale: str) -> tuple[str, str]:
    order = Order("A-1", "shop", "buyer@buyer.example", "Maria", ("Teapot",), locale)
    review = Review("A-1", 5, datetime(2026, 3, 10, 9, 0, tzinfo=UTC))
    message = Renderer(ROOT / "templates").render(
        template, locale, message_context(order, SELLER, review, locale)
    )
    return message.subject, message.text


def reply(subject: str, body: str, quoted: str) -> bytes:
    quote = "\n".join(f"> {line}" if line else ">" for line in quoted.splitlines())
    lines = [
        "Message-ID: <r1@buyer.example>",
        "Date: Thu, 12 Mar 2026 09:00:00 +0000",
        "From: Maria <buyer@buyer.example>",
        "To: help@shop.example",
        f"Subject: Re: {subject}",
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=utf-8",
        "",
        body,
        "",
        "On Wed, 11 Mar 2026 at 10:00, Example Shop <help@shop.example> wrote:",
        quote,
    ]
    return "\n".join(lines).encode("utf-8")


def kind(rules: MailRules, raw: bytes) -> MessageKind:
    seller = frozenset({"help@shop.example"})
    return classify(parse(raw), rules, seller_addresses=seller).kind


@pytest.mark.parametrize("locale", list(WORD))
@pytest.mark.parametrize("template", TEMPLATES)
def test_replying_the_word_the_template_names_unsubscribes(
    rules: MailRules, template: str, locale: str
) -> None:
    subject, text = rendered_text(template, locale)
    paragraphs = [p for p in text.split("\n\n") if p.strip()]
    unsubscribe_line = next(p for p in paragraphs if WORD[locale] in p)
    assert paragraphs.index(unsubscribe_line) >= len(paragraphs) - 3, "near the signature"

    assert kind(rules, reply(subject, WORD[locale], text)) is MessageKind.UNSUBSCRIBE


@pytest.mark.parametrize("locale", list(WORD))
@pytest.mark.parametrize("template", TEMPLATES)
def test_a_reply_quoting_the_unsubscribe_line_is_not_an_unsubscribe(
    rules: MailRules, template: str, locale: str
) -> None:
    subject, text = rendered_text(template, locale)

    assert kind(rules, reply(subject, THANKS[locale], text)) is not MessageKind.UNSUBSCRIBE
