"""Compose: every header, encodings and injection, checked by parsing the bytes back."""

from __future__ import annotations

import base64
import email
import email.errors
import email.header
import email.policy
import re
from collections import Counter
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from email.message import EmailMessage, Message
from email.utils import getaddresses
from typing import Any

import pytest

from worker.compose import compose
from worker.config import Settings
from worker.domain import Order, Send, SendState
from worker.errors import ConfigError, TemplateError
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


def test_a_text_only_message_is_one_text_plain_part() -> None:
    rendered = RenderedMessage(
        "Bestellung 028-1234567-7654321", "Grüße, Anna\n", "", "de", "templates/x/de.jinja"
    )

    raw, parsed = build(rendered=rendered)

    assert not parsed.is_multipart()
    assert (parsed.get_content_type(), parsed.get_content_charset()) == ("text/plain", "utf-8")
    assert parsed.get_content().replace("\r\n", "\n") == "Grüße, Anna\n"
    assert parsed["Content-Language"] == "de"
    assert parsed["MIME-Version"] == "1.0"
    assert parsed["Subject"] == "Bestellung 028-1234567-7654321"
    assert b"text/html" not in raw and raw.isascii()


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

    raw, parsed = build(order=order)

    assert parsed["To"].addresses[0].addr_spec == "joerg@xn--mnchen-3ya.de"
    assert b"\r\nTo: joerg@xn--mnchen-3ya.de\r\n" in raw  # no empty display name


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


# Hostile data in every header it reaches ---------------------------------------------------
#
# Each payload is what a feed row, a template or a setting could hand to compose; ``shown`` is
# what a reader of the header must see (before the 255-character cut). Every message is parsed
# back with the default policy and with compat32, and written out again and re-parsed as a
# relay or a mail store running this Python (3.11.7, without the CVE-2024-6923 fix) would.


@dataclass(frozen=True)
class Payload:
    value: str
    shown: str


def _ew(text: str, charset: str = "utf-8") -> str:
    """``text`` as one B encoded word, the way an attacker would write it."""
    return f"=?{charset}?b?{base64.b64encode(text.encode(charset)).decode()}?="


def _literal(value: str) -> Payload:
    """Text that looks like encoded words is shown as typed, its ``=?`` broken up."""
    return Payload(value, value.replace("=?", "= ?"))


_BCC = "Bcc: evil@evil.example"
PAYLOADS: dict[str, Payload] = {
    "cr": Payload(f"Mallory\r{_BCC}", f"Mallory {_BCC}"),
    "lf": Payload(f"Mallory\n{_BCC}", f"Mallory {_BCC}"),
    "crlf": Payload(f"Mallory\r\n{_BCC}", f"Mallory {_BCC}"),
    "crlf-blank-line-body": Payload(
        "Mallory\r\n\r\nClick https://evil.example", "Mallory Click https://evil.example"
    ),
    "nul": Payload(f"Mallory\x00{_BCC}", f"Mallory {_BCC}"),
    "nel": Payload(f"Mallory\x85{_BCC}", f"Mallory {_BCC}"),
    "c1-csi": Payload(f"Mallory\x9b{_BCC}", f"Mallory {_BCC}"),
    "line-separator": Payload(f"Mallory\u2028{_BCC}", f"Mallory {_BCC}"),
    "paragraph-separator": Payload(f"Mallory\u2029{_BCC}", f"Mallory {_BCC}"),
    "vt-ff": Payload(f"Mallory\x0b\x0c{_BCC}", f"Mallory {_BCC}"),
    "q-bcc": _literal("=?utf-8?q?x=0D=0ABcc:_evil@evil.example?="),
    "q-upper-to": _literal("=?UTF-8?Q?x=0D=0ATo:_evil@evil.example?="),
    "q-reply-to": _literal("=?utf-8?q?x=0D=0AReply-To:_evil@evil.example?="),
    "q-latin1-cc": _literal("=?iso-8859-1?q?x=0D=0ACc:_evil@evil.example?="),
    "b-bcc": _literal(_ew(f"x\r\n{_BCC}")),
    "b-to": _literal(_ew("x\r\nTo: evil@evil.example")),
    "b-body": _literal(_ew("x\r\n\r\nYour refund is waiting: https://evil.example")),
    "q-mime-body": _literal(
        "=?utf-8?q?x=0D=0AContent-Type:_text/html=0D=0A=0D=0A<a_href=3Dhttps://evil.example>?="
    ),
    "b-lf-only": _literal(_ew(f"x\n{_BCC}")),
    "nested": _literal(_ew("=?utf-8?q?x=0D=0ABcc:_evil@evil.example?=")),
    "adjacent": _literal("=?utf-8?q?x=0D?= =?utf-8?q?=0ABcc:_evil@evil.example?="),
    "adjacent-no-space": _literal("=?utf-8?q?x=0D?==?utf-8?b?CkJjYzogZXZpbEBldmlsLmV4YW1wbGU=?="),
    "quoted-ew": _literal('"=?utf-8?q?x=0D=0ABcc:_evil@evil.example?="'),
    "ew-in-angle": _literal("x <=?utf-8?q?evil=40evil.example?=>"),
    "two-addresses-quoted": Payload('"a@b.example, c@d.example"', '"a@b.example, c@d.example"'),
    "two-addresses": Payload("a@b.example, c@d.example", "a@b.example, c@d.example"),
    "angle-address": Payload("x <evil@example.com>", "x <evil@example.com>"),
    "encoded-address": _literal("=?utf-8?q?a=40b=2Eexample=2C?= c@d.example"),
    "specials": Payload('a"b\\c(d)e;f:g<h>i@j,k', 'a"b\\c(d)e;f:g<h>i@j,k'),
    "group": Payload(
        "friends: evil@example.com, x@example.com;", "friends: evil@example.com, x@example.com;"
    ),
    "umlauts-and-address": Payload(
        'Müller, "Jörg" <evil@example.com>', 'Müller, "Jörg" <evil@example.com>'
    ),
    "10k-ascii": Payload("x" * 10_000, "x" * 10_000),
    "10k-words": Payload("word " * 2_000, " ".join(["word"] * 2_000)),
    "10k-latin": Payload("ü" * 10_000, "ü" * 10_000),
    "10k-cjk": Payload("好" * 10_000, "好" * 10_000),
    "10k-emoji": Payload("😀" * 10_000, "😀" * 10_000),
    "10k-encoded-crlf": _literal("=?utf-8?q?" + "=0D=0A" * 1_600 + "?="),
    "bidi-override": Payload("Alex \u202egnp.exe\u202c", "Alex gnp.exe"),
    "bidi-isolates": Payload(
        "\u2066\u202dmoc.elpmaxe@live\u2069 Sample", "moc.elpmaxe@live Sample"
    ),
    "bidi-embedding": Payload("\u202bמלורי\u202c 12", "מלורי 12"),
    "bidi-marks-stay": Payload("\u200fשלום\u200f 42 \u061cعلي", "\u200fשלום\u200f 42 \u061cعلي"),
    "lone-surrogate": Payload("Mallory\udcff", "Mallory\ufffd"),
}

BUYER = "alex@example.com"
TEXT = "Hello,\n\nhow is it going?\n"
HTML = '<!DOCTYPE html><html lang="en"><body><p>Hello,</p></body></html>\n'
SUBJECT = "Your {}: would you share your experience?"
ORDER_SUBJECT = "Order {}: did it arrive?"
OURS = (
    "message-id",
    "date",
    "from",
    "reply-to",
    "to",
    "subject",
    "auto-submitted",
    "list-unsubscribe",
    "x-worker-order",
    "x-worker-campaign",
    "x-worker-step",
    "mime-version",
    "content-type",
    "content-language",
)


def cut(text: str) -> str:
    """The documented limit: 255 characters, the last an ellipsis."""
    return text if len(text) <= 255 else text[:254].rstrip() + "…"


def hostile(field: str, value: str, n: int = 0) -> dict[str, Any]:
    """compose's arguments with ``value`` where ``field`` comes from."""
    rendered = RenderedMessage("How is it going?", TEXT, HTML, "en", "x")
    order = Order(f"A-{n}", "shop", BUYER.replace("@", f"{n}@"), buyer_name="Alex Sample")
    send = replace(SEND, order_id=order.order_id)
    if field == "buyer_name":
        order = replace(order, buyer_name=value)
    elif field == "product":
        rendered = replace(rendered, subject=SUBJECT.format(value))
    elif field == "order_id":
        order = replace(order, order_id=value)
        send = replace(send, order_id=value)
        rendered = replace(rendered, subject=ORDER_SUBJECT.format(value))
    elif field in {"campaign", "step"}:
        send = replace(send, **{field: value})
    elif field == "locale":
        rendered = replace(rendered, locale=value)
    else:
        raise AssertionError(field)
    config = settings(reply_to="Kettle & Co service <help@shop.example>")
    return {"rendered": rendered, "send": send, "order": order, "settings": config, "now": NOW}


def expected_values(field: str, shown: str) -> dict[str, str]:
    """The headers ``field`` reaches, as a reader decodes them."""
    if field == "buyer_name":
        return {"to": cut(shown)}
    if field == "product":
        return {"subject": cut(SUBJECT.format(shown))}
    if field == "order_id":
        return {"x-worker-order": cut(shown), "subject": cut(ORDER_SUBJECT.format(shown))}
    if field in {"campaign", "step"}:
        return {f"x-worker-{field}": cut(shown)}
    return {}


def unfolded(value: str) -> str:
    return re.sub(r"\r\n(?=[ \t])", "", value)


def decoded(value: str) -> str:
    return str(email.header.make_header(email.header.decode_header(value)))


def only_ours(
    raw: bytes, recipient: str, *, language: bool = True, text: str = TEXT, html: str = HTML
) -> tuple[EmailMessage, Message]:
    """Everything a receiver must find, whatever the data; the default and compat32 parses."""
    head, _, _ = raw.partition(b"\r\n\r\n")
    assert head.isascii()
    assert b"\r" not in raw.replace(b"\r\n", b"") and b"\n" not in raw.replace(b"\r\n", b"")
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998
    assert max(len(line) for line in head.split(b"\r\n")) <= 78
    ours = Counter(name for name in OURS if language or name != "content-language")

    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    assert Counter(name.lower() for name in parsed.keys()) == ours
    for name, value in parsed.items():
        assert "\r" not in value and "\n" not in value, name
    (to,) = parsed["To"].addresses
    assert to.addr_spec == recipient
    (reply_to,) = parsed["Reply-To"].addresses
    assert reply_to.addr_spec == "help@shop.example"
    assert [part.get_content_type() for part in parsed.iter_parts()] == ["text/plain", "text/html"]
    plain, hypertext = parsed.iter_parts()
    assert plain.get_content().replace("\r\n", "\n") == text
    assert hypertext.get_content().replace("\r\n", "\n") == html

    old = email.message_from_bytes(raw, policy=email.policy.compat32)
    assert Counter(name.lower() for name in old.keys()) == ours
    for name, value in old.items():
        assert "\r" not in unfolded(value) and "\n" not in unfolded(value), name
        assert "\r" not in decoded(unfolded(value)), name
        assert "\n" not in decoded(unfolded(value)), name
    assert [addr for _, addr in getaddresses(old.get_all("To"))] == [recipient]
    assert [addr for _, addr in getaddresses(old.get_all("Reply-To"))] == ["help@shop.example"]
    old_plain, old_html = old.get_payload()
    assert old_plain.get_payload(decode=True).decode().replace("\r\n", "\n") == text
    assert old_html.get_payload(decode=True).decode().replace("\r\n", "\n") == html

    again = parsed
    for _ in range(2):
        again = email.message_from_bytes(
            again.as_bytes(policy=email.policy.SMTP), policy=email.policy.default
        )
        assert Counter(name.lower() for name in again.keys()) == ours
        assert [a.addr_spec for a in again["To"].addresses] == [recipient]
    return parsed, old


def reads(parsed: EmailMessage, old: Message, name: str) -> tuple[str, str]:
    """The header as a reader sees it: through the default policy, and through compat32."""
    if name == "to":
        (to,) = parsed["To"].addresses
        ((old_name, _),) = getaddresses(old.get_all("To", []))
        return to.display_name, decoded(old_name)
    return str(parsed[name]), decoded(unfolded(old[name]))


def reads_as_shown(parsed: EmailMessage, old: Message, field: str, shown: str) -> None:
    """The headers ``field`` reaches say ``shown`` (cut), to both parsers."""
    for name, want in expected_values(field, shown).items():
        modern, compat = reads(parsed, old, name)
        assert compat == want
        if name == "to":  # Python's display-name parser adds a space between encoded words
            assert "".join(modern.split()) == "".join(want.split())
        else:
            assert modern == want


FIELDS = ("buyer_name", "product", "order_id", "campaign", "step", "locale")


@pytest.mark.parametrize("field", FIELDS)
@pytest.mark.parametrize("payload", PAYLOADS.values(), ids=PAYLOADS.keys())
def test_hostile_data_reaches_its_headers_as_text_only(field: str, payload: Payload) -> None:
    arguments = hostile(field, payload.value)

    msg = compose(**arguments)

    raw = msg.as_bytes(policy=email.policy.SMTP)
    assert bytes(msg) == raw  # the copy filed in the Sent folder is the same bytes
    parsed, old = only_ours(raw, arguments["order"].buyer_email, language=field != "locale")
    reads_as_shown(parsed, old, field, payload.shown)


@pytest.mark.parametrize("payload", PAYLOADS.values(), ids=PAYLOADS.keys())
def test_a_reply_token_that_is_not_letters_and_digits_is_refused(payload: Payload) -> None:
    with pytest.raises(TemplateError, match="reply token") as caught:
        compose(**hostile("step", "reminder"), reply_token=payload.value)

    assert caught.value.where == "order A-0"


@pytest.mark.parametrize("field", ["buyer_name", "product"])
@pytest.mark.parametrize("payload", PAYLOADS.values(), ids=PAYLOADS.keys())
def test_compat32_writes_the_same_encoded_words(field: str, payload: Payload) -> None:
    """A caller serialising with compat32 re-folds our header strings: still only ours."""
    arguments = hostile(field, payload.value)

    raw = compose(**arguments).as_bytes(policy=email.policy.compat32.clone(linesep="\r\n"))

    parsed, old = only_ours(raw, arguments["order"].buyer_email)
    reads_as_shown(parsed, old, field, payload.shown)


def email_package_injects() -> bool:
    """Whether this Python writes an encoded word's CR LF back raw (CVE-2024-6923)."""
    msg = EmailMessage(policy=email.policy.SMTP)
    msg["Subject"] = PAYLOADS["q-bcc"].value
    msg.set_content("t\n")
    try:
        return b"\r\nBcc: evil@evil.example\r\n" in bytes(msg)
    except email.errors.MessageError:  # HeaderWriteError, from the fixed versions on
        return False


def test_compose_is_safe_on_a_python_whose_email_package_injects() -> None:
    if not email_package_injects():
        pytest.skip("this Python's email package has the CVE-2024-6923 fix")
    arguments = hostile("buyer_name", PAYLOADS["q-bcc"].value)
    msg = compose(**arguments)

    raw = msg.as_bytes(policy=email.policy.SMTP)

    assert bytes(msg) == raw  # the copy filed in the Sent folder is the same bytes
    only_ours(raw, arguments["order"].buyer_email)


def test_configured_display_names_are_decoded_then_cleaned() -> None:
    encoded = "=?utf-8?q?Kettle_=26_Co=0D=0ABcc=3A_x=40evil=2Eexample?="
    config = settings(
        **{
            "from": f"{encoded} <service@shop.example>",
            # "Hélène \u202eetnat\u202c": decoded, the override then removed
            "reply_to": "=?utf-8?b?SMOpbMOobmUg4oCuZXRuYXTigKw=?= <help@shop.example>",
        }
    )
    arguments = hostile("step", "reminder") | {"settings": config}

    raw = compose(**arguments).as_bytes(policy=email.policy.SMTP)

    parsed, _ = only_ours(raw, arguments["order"].buyer_email)
    (sender,) = parsed["From"].addresses
    assert (sender.display_name, sender.addr_spec) == (
        "Kettle & Co Bcc: x@evil.example",
        "service@shop.example",
    )
    assert parsed["Reply-To"].addresses[0].display_name == "Hélène etnat"


def test_unsubscribe_url_carries_no_encoded_word_and_no_second_target() -> None:
    url = 'https://shop.example/u?m={message_id}&x==?utf-8?q?=0D=0ABcc:_e@evil.example?=&y="a"'
    config = settings(unsubscribe={"url": url})

    raw, parsed = build(config=config)

    head = raw.partition(b"\r\n\r\n")[0]
    assert b"=?" not in head.partition(b"List-Unsubscribe:")[2].partition(b"\r\nX-")[0]
    mailto, one_click = parsed["List-Unsubscribe"].split(", ")
    assert mailto == "<mailto:service@shop.example?subject=unsubscribe>"
    assert one_click.startswith("<https://shop.example/u?m=w42.")
    assert one_click.endswith("&x==%3Futf-8?q?=0D=0ABcc:_e@evil.example?=&y=%22a%22>")
    assert parsed["Bcc"] is None


def test_an_unsubscribe_url_too_long_for_a_header_line_is_a_config_error() -> None:
    config = settings(unsubscribe={"url": "https://shop.example/u?t=" + "t" * 1_000})

    with pytest.raises(ConfigError) as caught:
        build(config=config)

    assert caught.value.where == "unsubscribe.url"


@pytest.mark.parametrize(
    "message_id", ["w42@shop.example", "<w42@shop.example>\r\nBcc: e@x", "<=?utf-8?q?x?=@shop>"]
)
def test_compose_refuses_a_message_id_that_is_not_one(message_id: str) -> None:
    send = replace(SEND, message_id=message_id)

    with pytest.raises(ValueError, match="Message-ID"):
        compose(RENDERED, send=send, order=ORDER, settings=settings(), now=NOW)
