"""Compose writes the bytes itself: they are what the ``email`` package writes for the same tree,
and what the old construction (``EmailMessage.set_content`` / ``add_alternative``) wrote.

compose builds its MIME tree without the header registry and serialises it once. These tests
hold it to the slow way on every shipped template and locale and on the hostile payloads:
the same header bytes, the same transfer encodings, the same decoded bodies. The one
intended difference is the quoted-printable line length: 76 octets (RFC 2045) where the
``email`` package wrote 78 under the SMTP policy.
"""

from __future__ import annotations

import base64
import email
import email.policy
import re
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.test_compose import FIELDS, NOW, PAYLOADS, SEND, hostile
from tests.unit.test_compose import settings as config
from worker import compose as composing
from worker.compose import POLICY, ComposedMessage, compose
from worker.config import SellerSettings
from worker.domain import Order, Review
from worker.render import RenderedMessage, Renderer, message_context

TEMPLATES = Path(__file__).resolve().parents[2] / "templates"
SELLER = SellerSettings(name="Kettle & Co", signature="Anna, customer service")
NAMES = (
    "Alex Sample",
    "",
    "Jörg Müller-Lüdenscheidt",
    "山田 太郎",
    "محمد علي",
    "x" * 300,
    "Mallory\r\nBcc: evil@evil.example",
    "=?utf-8?q?x=0D=0ABcc:_evil@evil.example?=",
    "😀 " * 40,
)
SETTINGS = (
    config(reply_to="Kettle & Co service <help@shop.example>"),
    config(unsubscribe={"url": "https://shop.example/u?m={message_id}&t=" + "x" * 30}),
    config(
        **{"from": "=?utf-8?q?J=C3=B6rg_Shop?= <s@shop.example>"},
        unsubscribe={"url": "http://shop.example/u", "mailto": "unsub@shop.example"},
    ),
)


def shipped() -> Iterator[tuple[str, dict[str, Any]]]:
    """Every shipped template in every locale, with awkward buyer names, in three settings."""
    renderer = Renderer(TEMPLATES)
    n = 0
    for template in ("check_in", "review_request", "review_reminder", "review_thanks"):
        for locale in renderer.locales(template):
            for name in NAMES:
                n += 1
                order = Order(
                    f"A-{n}",
                    "shop",
                    f"buyer{n}@example.com",
                    name,
                    products=(name or "Glass kettle", "Lid"),
                    review_url="https://shop.example/p/1#reviews",
                )
                review = Review(order.order_id, 4, NOW)
                context = message_context(order, SELLER, review, locale)
                arguments = {
                    "rendered": renderer.render(template, locale, context),
                    "send": replace(SEND, order_id=order.order_id),
                    "order": order,
                    "settings": SETTINGS[n % len(SETTINGS)],
                    "now": NOW,
                    "reply_token": "3f9a0c1d2e4b5a6c" if n % 2 else None,
                }
                yield f"{template}-{locale}-{n}", arguments


def hostile_cases() -> Iterator[tuple[str, dict[str, Any]]]:
    for field in FIELDS:
        for label, payload in PAYLOADS.items():
            yield f"{field}-{label}", hostile(field, payload.value)


def bodies() -> Iterator[tuple[str, dict[str, Any]]]:
    """Texts that take each transfer encoding, and the edges of the choice."""
    texts = {
        "empty": "",
        "short-ascii": "Hello,\n\nthanks.\n",
        "long-ascii-line": "word " * 40 + "\n",
        "998-octets": "x" * 998 + "\n",
        "crlf-and-cr": "a\r\nb\rc\n.\n..\nFrom here\n",
        "trailing-space": "line with space \nand tab\t\n",
        "dots": ".\n.\n..\n.x\n",
        "latin": "Grüße aus München\n" * 12,
        "cjk": "ご注文ありがとうございます。\n" * 12,
        "mixed-first-ten-ascii": "ascii\n" * 10 + "ü" * 200 + "\n",
        "controls": "a\x00b\x0bc\x0cd\x1ce\x85f\u2028g\n",
        "no-newline": "no newline at the end",
        "boundary-like": "--===============1234567890123456789==\n",
    }
    for label, text in texts.items():
        # An empty HTML part would mean a text-only message: see test_text_only_*.
        rendered = RenderedMessage("Subject", text, text or "<p></p>", "en", "x")
        yield f"body-{label}", hostile("step", "reminder") | {"rendered": rendered}


CASES = [*shipped(), *hostile_cases(), *bodies()]


def generated(msg: EmailMessage, policy: Any) -> bytes:
    """What the ``email`` generator writes for ``msg``'s tree, past compose's kept bytes."""
    return EmailMessage.as_bytes(msg, policy=policy)


def boundary_of(raw: bytes) -> str:
    found = re.search(rb'boundary="([^"]+)"', raw)
    assert found is not None
    return found.group(1).decode()


def reference(msg: ComposedMessage, rendered: RenderedMessage) -> bytes:
    """The message as compose built it before: the same header values, given to the header
    registry where they were plain strings, and the parts made by ``set_content``."""
    old = EmailMessage(policy=POLICY)
    language = None
    for name, value in msg.raw_items():
        if name == "Content-Language":
            language = value
        elif name in ("Date", "Auto-Submitted", "List-Unsubscribe-Post"):
            old[name] = str(value)  # parsed by the registry, as before
        elif name not in ("MIME-Version", "Content-Type"):
            old[name] = value
    old.set_content(rendered.text, subtype="plain", charset="utf-8")
    old.add_alternative(rendered.html, subtype="html", charset="utf-8")
    old.set_boundary(boundary_of(bytes(msg)))
    if language is not None:
        old["Content-Language"] = language
    return old.as_bytes(policy=email.policy.SMTP)


def heads(raw: bytes) -> list[bytes]:
    """The header block of the message and of each part."""
    boundary = boundary_of(raw).encode()
    chunks = raw.split(b"--" + boundary)
    assert chunks[-1] == b"--\r\n"
    return [chunk.partition(b"\r\n\r\n")[0] for chunk in chunks[:-1]]


def decoded(raw: bytes) -> list[bytes]:
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    return [part.get_payload(decode=True) for part in parsed.iter_parts()]  # type: ignore[misc]


@pytest.mark.parametrize(("label", "arguments"), CASES, ids=[label for label, _ in CASES])
def test_the_kept_bytes_are_what_the_email_package_writes(
    label: str, arguments: dict[str, Any]
) -> None:
    msg = compose(**arguments)
    raw = bytes(msg)

    assert isinstance(msg, ComposedMessage)
    assert raw is msg.as_bytes() is msg.as_bytes(policy=email.policy.SMTP) is msg.wire
    assert raw == generated(msg, email.policy.SMTP) == generated(msg, POLICY)
    assert raw.isascii()
    lines = raw.split(b"\r\n")
    assert lines[-1] == b"" and all(b"\r" not in line and b"\n" not in line for line in lines)
    assert max(len(line) for line in lines) <= 998
    head = raw.partition(b"\r\n\r\n")[0]
    assert all(len(line) <= 78 for line in head.split(b"\r\n") if not line.startswith(b" <"))


@pytest.mark.parametrize(("label", "arguments"), CASES, ids=[label for label, _ in CASES])
def test_the_message_is_the_one_the_old_construction_wrote(
    label: str, arguments: dict[str, Any]
) -> None:
    msg = compose(**arguments)
    raw, old = bytes(msg), reference(msg, arguments["rendered"])

    assert heads(raw) == heads(old)  # every header, byte for byte, transfer encodings too
    assert decoded(raw) == decoded(old)
    for part in raw.split(b"--" + boundary_of(raw).encode())[1:-1]:
        head, _, body = part.partition(b"\r\n\r\n")
        if b"quoted-printable" in head:
            assert max(len(line) for line in body.split(b"\r\n")) <= 76


def test_a_changed_tree_is_written_afresh() -> None:
    msg = compose(**hostile("step", "reminder"))
    kept = bytes(msg)

    msg["X-Extra"] = "added after compose"
    assert b"\r\nX-Extra: added after compose\r\n" in bytes(msg)
    assert bytes(msg) == generated(msg, POLICY)
    del msg["X-Extra"]
    assert bytes(msg) == kept  # the same tree again

    plain, _ = msg.iter_parts()
    plain.set_payload("changed\n")
    assert b"\r\n\r\nchanged\r\n" in bytes(msg)
    assert bytes(msg) == generated(msg, email.policy.SMTP)

    msg.preamble = "preamble"
    assert bytes(msg).count(b"preamble") == 1

    msg.add_attachment(b"\x00\x01", maintype="application", subtype="octet-stream")
    assert msg.get_content_type() == "multipart/mixed"
    assert bytes(msg) == generated(msg, POLICY)


@pytest.mark.parametrize(
    "now",
    [
        NOW,
        datetime(2024, 12, 31, 23, 59, 59, tzinfo=timezone(timedelta(hours=5, minutes=30))),
        datetime(2025, 3, 30, 1, 30, tzinfo=ZoneInfo("Europe/Berlin")),
        datetime(2025, 7, 4, 8, 5, 1, 999999, tzinfo=ZoneInfo("America/Los_Angeles")),
    ],
)
def test_the_date_is_written_as_the_header_registry_wrote_it(now: datetime) -> None:
    msg = compose(**hostile("step", "reminder") | {"now": now})
    old = EmailMessage(policy=POLICY)
    old["Date"] = format_datetime(now)

    date = next(line for line in bytes(msg).split(b"\r\n") if line.startswith(b"Date:"))
    assert date + b"\r\n" == POLICY.fold_binary("Date", old["Date"])
    parsed = email.message_from_bytes(bytes(msg), policy=email.policy.default)
    assert parsed["Date"].datetime == now.replace(microsecond=0)


def test_other_policies_and_unixfrom_go_through_the_generator() -> None:
    msg = compose(**hostile("step", "reminder"))

    compat = email.policy.compat32.clone(linesep="\r\n")
    assert msg.as_bytes(policy=compat) == generated(msg, compat)
    assert msg.as_bytes(policy=email.policy.default).count(b"\r\n") == 0
    msg.set_unixfrom("From nobody Mon Jun 10 09:30:00 2024")
    assert msg.as_bytes(unixfrom=True).startswith(b"From nobody")
    assert msg.as_string().encode() == bytes(msg)


def test_a_boundary_found_in_a_body_is_never_used(monkeypatch: pytest.MonkeyPatch) -> None:
    taken = "--===============0000000000000000001==\n"
    tokens = iter([1, 1, 2])
    monkeypatch.setattr(composing.secrets, "randbelow", lambda _: next(tokens))
    rendered = RenderedMessage("Subject", taken, "<p>x</p>\n", "en", "x")

    raw = bytes(compose(**hostile("step", "reminder") | {"rendered": rendered}))

    assert boundary_of(raw) == "===============0000000000000000002=="
    plain, _ = decoded(raw)
    assert plain == taken.replace("\n", "\r\n").encode()


def test_constant_headers_are_shared_and_never_changed_by_a_message() -> None:
    first = compose(**hostile("step", "reminder", 1))
    second = compose(**hostile("step", "reminder", 2))

    shared = {name for name, value in first.raw_items() if value is second[name]}
    assert {"From", "Reply-To", "Auto-Submitted", "X-Worker-Campaign", "X-Worker-Step"} <= shared
    assert first["To"] != second["To"]


# The encoded words: counted as they grow, they are the ones the plain definition gives ----------


def encoded_words_by_definition(text: str, room: int) -> list[str]:
    """The longest prefix whose encoded word fits, found by encoding every prefix."""
    limit = min(room, 75)
    words: list[str] = []
    while text:
        end = 1
        while end < len(text) and len(composing._encoded_word(text[: end + 1])) <= limit:
            end += 1
        if end < len(text) and (space := text.rfind(" ", 0, end)) >= end // 2:
            end = space + 1
        words.append(composing._encoded_word(text[:end]))
        text = text[end:]
    return words


def encoded_word_by_definition(text: str) -> str:
    data = text.encode()
    q = "".join(
        chr(byte) if chr(byte) in composing._Q_SAFE else "_" if byte == 0x20 else f"={byte:02X}"
        for byte in data
    )
    b = base64.b64encode(data).decode("ascii")
    return f"=?utf-8?q?{q}?=" if len(q) <= len(b) else f"=?utf-8?b?{b}?="


TEXT = st.text(
    st.characters(blacklist_categories=("Cs",)) | st.sampled_from(" aé好😀=?_"), max_size=200
)


@settings(max_examples=300, deadline=None)
@given(text=TEXT, room=st.integers(min_value=13, max_value=90))
def test_encoded_words_are_the_longest_that_fit(text: str, room: int) -> None:
    assert composing._encoded_words(text, room) == encoded_words_by_definition(text, room)


@settings(max_examples=300, deadline=None)
@given(text=TEXT)
def test_an_encoded_word_is_the_shorter_of_q_and_b(text: str) -> None:
    assert composing._encoded_word(text) == encoded_word_by_definition(text)


@pytest.mark.parametrize("text", ["Hello,\n\nthanks.\n", "Grüße aus München\n" * 12, ""])
def test_text_only_bytes_are_what_the_email_package_writes(text: str) -> None:
    rendered = RenderedMessage("Subject", text, "", "de", "x")
    msg = compose(**(hostile("step", "reminder") | {"rendered": rendered}))
    raw = bytes(msg)

    assert raw == generated(msg, email.policy.SMTP) == generated(msg, POLICY)
    old = EmailMessage(policy=POLICY)
    for name, value in msg.raw_items():
        if name in ("Date", "Auto-Submitted", "List-Unsubscribe-Post"):
            old[name] = str(value)
        elif name not in ("MIME-Version", "Content-Type", "Content-Transfer-Encoding"):
            old[name] = value
    old.set_content(text, subtype="plain", charset="utf-8")
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    before = email.message_from_bytes(old.as_bytes(policy=email.policy.SMTP))
    assert parsed.get_payload(decode=True) == before.get_payload(decode=True)
    assert parsed["Content-Transfer-Encoding"] == before["Content-Transfer-Encoding"]
