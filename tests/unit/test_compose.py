"""Compose: every header, encodings and injection, checked by parsing the bytes back."""

from __future__ import annotations

import email
import email.policy
import re
from dataclasses import replace
from datetime import UTC, datetime
from email.message import EmailMessage
from typing import Any

import pytest

from worker.compose import compose
from worker.config import Settings
from worker.domain import Order, Send, SendState
from worker.errors import TemplateError
from worker.render import RenderedMessage
from worker.return_path import Signer

NOW = datetime(2024, 6, 10, 9, 30, tzinfo=UTC)
SIGNER = Signer(b"k" * 32)
UNCLAIMED = Send(
    id=42,
    order_id="028-1234567-7654321",
    campaign="review-request",
    step="reminder",
    state=SendState.SENDING,
    due_at=NOW,
)
MESSAGE_ID = SIGNER.message_id(UNCLAIMED, "shop.example")
SEND = replace(UNCLAIMED, message_id=MESSAGE_ID)
ORDER = Order(
    order_id="028-1234567-7654321",
    marketplace="shop",
    buyer_email="alex@example.com",
    buyer_name="Alex Sample",
    products=("Water bottle",),
)
RENDERED = RenderedMessage(
    subject="How is your water bottle?",
    text="Hello Alex,\n\nhow is it going?\n",
    html='<!DOCTYPE html><html lang="en"><body><p>Hello Alex,</p></body></html>\n',
    locale="en",
    source="templates/check_in/en.jinja",
)


def settings(**overrides: Any) -> Settings:
    data: dict[str, Any] = {"from": "Beispiel Shop <service@shop.example>"} | overrides
    return Settings.model_validate(data)


def roundtrip(msg: EmailMessage) -> tuple[bytes, EmailMessage]:
    raw = bytes(msg)
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    return raw, parsed


def build(
    rendered: RenderedMessage = RENDERED,
    order: Order = ORDER,
    config: Settings | None = None,
) -> tuple[bytes, EmailMessage]:
    msg = compose(rendered, send=SEND, order=order, settings=config or settings(), now=NOW)
    return roundtrip(msg)


def test_headers() -> None:
    config = settings(reply_to="Help <help@shop.example>")
    _, parsed = build(config=config)

    assert parsed["Message-ID"] == MESSAGE_ID
    assert parsed["Date"].datetime == NOW
    assert parsed["From"] == "Beispiel Shop <service@shop.example>"
    assert parsed["Reply-To"] == "Help <help@shop.example>"
    (to,) = parsed["To"].addresses
    assert (to.display_name, to.addr_spec) == ("Alex Sample", "alex@example.com")
    assert parsed["Subject"] == "How is your water bottle?"
    assert parsed["Auto-Submitted"] == "auto-generated"
    assert parsed["Content-Language"] == "en"
    assert parsed["List-Unsubscribe"] == "<mailto:help@shop.example?subject=unsubscribe>"
    assert parsed["List-Unsubscribe-Post"] is None
    assert parsed["X-Worker-Order"] == "028-1234567-7654321"
    assert parsed["X-Worker-Campaign"] == "review-request"
    assert parsed["X-Worker-Step"] == "reminder"
    assert parsed["MIME-Version"] == "1.0"
    plain, _ = parsed.iter_parts()
    assert plain["Content-Language"] is None


def test_no_reply_to_without_setting() -> None:
    _, parsed = build()

    assert parsed["Reply-To"] is None
    assert parsed["List-Unsubscribe"] == "<mailto:service@shop.example?subject=unsubscribe>"


@pytest.mark.parametrize(
    "subject",
    [
        "ご注文の商品はいかがですか？ 028-1234567",
        "Wie läuft es mit Ihrer Trinkflasche (750 ml)? " * 3,
    ],
)
def test_non_ascii_subject_is_rfc2047_encoded(subject: str) -> None:
    subject = subject.strip()
    rendered = RenderedMessage(subject, "Text\n", "<p>Text</p>\n", "ja", "x")

    raw, parsed = build(rendered=rendered)

    header = raw.split(b"\r\n\r\n", 1)[0]
    assert b"=?utf-8?" in header
    assert header.isascii()
    assert parsed["Subject"] == subject


def test_text_and_html_parts_in_utf8() -> None:
    rendered = RenderedMessage(
        "Danke", "Grüße, Anna\n", "<p>Grüße, Anna</p>\n", "de", "templates/x/de.jinja"
    )

    raw, parsed = build(rendered=rendered)

    assert parsed.get_content_type() == "multipart/alternative"
    plain, html = parsed.iter_parts()
    assert (plain.get_content_type(), plain.get_content_charset()) == ("text/plain", "utf-8")
    assert (html.get_content_type(), html.get_content_charset()) == ("text/html", "utf-8")
    assert plain.get_content().replace("\r\n", "\n") == "Grüße, Anna\n"
    assert html.get_content().replace("\r\n", "\n") == "<p>Grüße, Anna</p>\n"
    assert plain["Content-Transfer-Encoding"] in {"quoted-printable", "base64"}
    assert raw.isascii()


def test_message_id_is_stable_per_send_row_and_unguessable_without_the_key() -> None:
    first = SIGNER.message_id(UNCLAIMED, "shop.example")
    other_step = replace(UNCLAIMED, step="request")

    assert first == SIGNER.message_id(UNCLAIMED, "shop.example")
    assert re.fullmatch(r"<w42\.[a-z2-7]{20}@shop\.example>", first)
    assert SIGNER.message_id(other_step, "shop.example") != first
    assert Signer(b"x" * 32).message_id(UNCLAIMED, "shop.example") != first


def test_compose_refuses_a_send_that_was_never_claimed() -> None:
    with pytest.raises(ValueError, match="claimed"):
        compose(RENDERED, send=UNCLAIMED, order=ORDER, settings=settings(), now=NOW)


def test_unsubscribe_mailto_setting_wins() -> None:
    config = settings(reply_to="help@shop.example", unsubscribe={"mailto": "unsub@shop.example"})

    _, parsed = build(config=config)

    assert parsed["List-Unsubscribe"] == "<mailto:unsub@shop.example?subject=unsubscribe>"
    assert parsed["List-Unsubscribe-Post"] is None


def test_https_unsubscribe_url_enables_one_click() -> None:
    url = "https://shop.example/unsubscribe?m={message_id}&token=" + "t" * 80
    config = settings(unsubscribe={"url": url})

    raw, parsed = build(config=config)

    quoted_id = MESSAGE_ID.strip("<>").replace("@", "%40")
    expected_url = url.replace("{message_id}", quoted_id)
    assert parsed["List-Unsubscribe"] == (
        f"<mailto:service@shop.example?subject=unsubscribe>, <{expected_url}>"
    )
    assert parsed["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert f"<{expected_url}>".encode() in raw


def test_http_unsubscribe_url_has_no_one_click() -> None:
    config = settings(unsubscribe={"url": "http://shop.example/unsubscribe"})

    _, parsed = build(config=config)

    assert parsed["List-Unsubscribe"].endswith(", <http://shop.example/unsubscribe>")
    assert parsed["List-Unsubscribe-Post"] is None


def test_header_injection_is_neutralised() -> None:
    order = Order(
        order_id="028-1\r\nBcc: order@evil.example",
        marketplace="shop",
        buyer_email="alex@example.com",
        buyer_name="Mallory\r\nBcc: name@evil.example",
    )
    rendered = RenderedMessage("Hi\nBcc: subject@evil.example", "t\n", "<p>h</p>\n", "en", "x")

    _, parsed = build(rendered=rendered, order=order)

    assert parsed["Bcc"] is None
    assert [k for k in parsed if k.lower() in {"bcc", "cc"}] == []
    (to,) = parsed["To"].addresses
    assert to.addr_spec == "alex@example.com"
    assert to.display_name == "Mallory Bcc: name@evil.example"
    assert parsed["X-Worker-Order"] == "028-1 Bcc: order@evil.example"
    assert parsed["Subject"] == "Hi Bcc: subject@evil.example"


def test_display_name_with_quotes_commas_and_umlauts() -> None:
    order = Order("A-1", "ebay", "joerg@example.de", buyer_name='Müller, "Jörg"')

    _, parsed = build(order=order)

    (to,) = parsed["To"].addresses
    assert (to.display_name, to.addr_spec) == ('Müller, "Jörg"', "joerg@example.de")


def test_internationalised_domain_is_punycoded() -> None:
    order = Order("A-1", "shop", "joerg@münchen.de")

    _, parsed = build(order=order)

    assert parsed["To"].addresses[0].addr_spec == "joerg@xn--mnchen-3ya.de"


@pytest.mark.parametrize(
    "address",
    ["no-at-sign.example.com", "a@b\r\nBcc: c@example.com", "jörg@example.de", "@example.com"],
)
def test_invalid_buyer_address_is_a_template_error(address: str) -> None:
    order = Order("A-7", "shop", address, buyer_name="X")

    with pytest.raises(TemplateError) as caught:
        build(order=order)

    assert caught.value.where == "order A-7"
    assert "buyer address" in caught.value.detail


@pytest.mark.parametrize(
    ("reply_to", "expected"),
    [
        ("Kettle & Co service <help@shop.example>", "help+3f9a0c1d2e4b5a6c@shop.example"),
        (None, "service+3f9a0c1d2e4b5a6c@shop.example"),
        ("help+old@shop.example", "help+3f9a0c1d2e4b5a6c@shop.example"),
    ],
)
def test_reply_token_goes_into_the_reply_to_address(reply_to: str | None, expected: str) -> None:
    config = settings(reply_to=reply_to)
    msg = compose(
        RENDERED, send=SEND, order=ORDER, settings=config, now=NOW, reply_token="3f9a0c1d2e4b5a6c"
    )
    _, parsed = roundtrip(msg)
    assert parsed["Reply-To"].addresses[0].addr_spec == expected
