"""Properties over any input: reading, classifying and threading a message never raise, and
what parsing yields can always be stored (no NUL, no lone surrogate) and shown.

The messages are built from arbitrary text and bytes put where mail has structure: header
names and values, encoded words, charset labels (hostile ones among them), dates, transfer
encodings, nested multiparts and attached messages, line endings, a cut anywhere.
"""

from __future__ import annotations

import base64
import quopri
from datetime import UTC, datetime, timedelta

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.conftest import ROOT
from worker.classify import classify
from worker.domain import Order
from worker.inbound import MAX_ERRORS, InboundMessage, ParseLimits, parse
from worker.rules import load_rules
from worker.thread import Candidates, match, wanted

RULES = load_rules(ROOT / "config" / "mail-rules.yaml")
LIMITS = ParseLimits(max_header_bytes=4096, max_parts=8, max_depth=4, max_text_bytes=2048)
"""Small, so that generated messages reach every limit."""
NOW = datetime(2026, 3, 20, 10, 0, tzinfo=UTC)
ORDER = Order(
    "SHOP-1001", "shop", "ann@buyer.example", delivered_at=NOW - timedelta(days=9)
)  # fmt: skip

# Generating a nested message is slower than Hypothesis expects of a strategy; the examples
# are what is tested, so the health check on generation speed is left out.
SLOW_TO_BUILD = [HealthCheck.too_slow]

CHARSETS = st.one_of(
    st.sampled_from(
        [
            *("utf-8", "us-ascii", "gb2312", "shift_jis", "iso-2022-jp", "utf-16", "utf-7"),
            *("zlib", "hex", "base64", "rot13", "punycode", "idna", "undefined"),
            *("unicode_escape", "raw_unicode_escape", "utf-8\0", "x" * 300, ""),
        ]
    ),
    st.text(max_size=12),
)
NAMES = st.one_of(
    st.sampled_from(
        [
            *("From", "To", "Cc", "Sender", "Subject", "Date", "Message-ID", "In-Reply-To"),
            *("References", "Content-Type", "Content-Transfer-Encoding", "Auto-Submitted"),
            *("Content-Disposition", "X-Autoreply", "Precedence", "List-Unsubscribe"),
            *("Return-Path", "Delivered-To", "X-Original-To", "Reply-To"),
        ]
    ),
    st.from_regex(r"[!-9;-~]{1,20}", fullmatch=True),
)
ENDINGS = st.sampled_from(["\r\n", "\n", "\r"])


@st.composite
def encoded_words(draw: st.DrawFn) -> str:
    charset = draw(CHARSETS).replace("?", "")
    data = draw(st.binary(max_size=40))
    match draw(st.sampled_from("BQX")):
        case "B":
            return f"=?{charset}?B?{base64.b64encode(data).decode()}?="
        case "Q":
            encoded = quopri.encodestring(data, header=True).decode("ascii", "replace")
            return f"=?{charset}?Q?{encoded}?="
    return f"=?{charset}?{draw(st.text(max_size=3))}?{draw(st.text(max_size=20))}?="


DATES = st.one_of(
    st.datetimes(timezones=st.timezones()).map(lambda d: d.strftime("%a, %d %b %Y %H:%M:%S %z")),
    st.from_regex(r"[A-Za-z]{3}, -?[0-9]{1,60} [A-Za-z]{3} -?[0-9]{1,60} [0-9:]{1,20}( [+-]\d+)?"),
    st.text(max_size=40),
)
VALUES = st.one_of(
    st.text(max_size=80),
    st.lists(st.one_of(encoded_words(), st.text(max_size=10)), max_size=6).map(" ".join),
    st.lists(st.from_regex(r"<[^>]{0,20}>", fullmatch=True), max_size=5).map(" ".join),
    DATES,
    st.builds(lambda c: f"text/plain; charset={c}", CHARSETS),
    st.builds(lambda n, a: f'"{n}" <{a}>', st.text(max_size=20), st.emails()),
)
HEADERS = st.lists(st.tuples(NAMES, VALUES), max_size=12)


@st.composite
def leaf(draw: st.DrawFn) -> bytes:
    kind = draw(
        st.sampled_from(
            [
                *("text/plain", "text/html", "application/octet-stream"),
                *("message/delivery-status", "text/rfc822-headers", "message/rfc822"),
            ]
        )
    )
    encoding = draw(st.sampled_from(["7bit", "8bit", "base64", "quoted-printable", "x-uuencode"]))
    body = draw(st.one_of(st.binary(max_size=300), st.text(max_size=300).map(str.encode)))
    if encoding == "base64" and draw(st.booleans()):
        body = base64.encodebytes(body)
    elif encoding == "quoted-printable" and draw(st.booleans()):
        body = quopri.encodestring(body)
    head = (
        f'Content-Type: {kind}; charset="{draw(CHARSETS)}"\r\n'
        f"Content-Transfer-Encoding: {encoding}\r\n"
    )
    if draw(st.booleans()):
        head += f"Content-Disposition: {draw(st.sampled_from(['attachment', 'inline', '']))}\r\n"
    return head.encode("utf-8", "surrogatepass") + b"\r\n" + body


def multipart(children: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    @st.composite
    def build(draw: st.DrawFn) -> bytes:
        boundary = draw(st.from_regex(r"[A-Za-z0-9'()+_,./:=? -]{1,20}", fullmatch=True))
        subtype = draw(st.sampled_from(["mixed", "alternative", "report", "digest", "related"]))
        parts = draw(st.lists(children, max_size=4))
        mark = boundary.encode()
        body = b"".join(b"--" + mark + b"\r\n" + part + b"\r\n" for part in parts)
        if draw(st.booleans()):
            body += b"--" + mark + b"--\r\n"
        head = f'Content-Type: multipart/{subtype}; boundary="{boundary}"\r\n\r\n'
        return head.encode() + body

    return build()


def attached(children: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    return children.map(lambda inner: b"Content-Type: message/rfc822\r\n\r\n" + inner)


BODIES = st.recursive(
    leaf(), lambda children: st.one_of(multipart(children), attached(children)), max_leaves=12
)


@st.composite
def messages(draw: st.DrawFn) -> bytes:
    headers = draw(HEADERS)
    head = "".join(f"{name}: {value}\r\n" for name, value in headers)
    raw = head.encode("utf-8", "surrogatepass") + draw(BODIES)
    ending = draw(ENDINGS)
    if ending != "\r\n":
        raw = raw.replace(b"\r\n", ending.encode())
    if draw(st.booleans()):
        raw = raw[: draw(st.integers(0, len(raw)))]
    return raw


def assert_sound(message: InboundMessage) -> None:
    """Nothing went wrong inside, and every field can be stored and printed."""
    assert not any(error.startswith("unreadable:") for error in message.errors), message.errors
    assert len(message.errors) <= MAX_ERRORS
    assert len(message.text) <= LIMITS.max_text_bytes
    assert message.date is None or message.date.tzinfo is UTC
    texts = [
        message.subject,
        message.sender,
        message.sender_name,
        message.text,
        message.message_id or "",
        message.truncated or "",
        *message.recipients,
        *message.thread_ids,
        *message.errors,
        *(part for pair in message.headers for part in pair),
    ]
    for text in texts:
        assert "\0" not in text
        text.encode("utf-8")  # no lone surrogate: a database would refuse it


@settings(max_examples=300, deadline=timedelta(seconds=2))
@given(st.binary(max_size=3000))
def test_parse_reads_any_bytes(raw: bytes) -> None:
    assert_sound(parse(raw, limits=LIMITS))


@settings(max_examples=200, deadline=timedelta(seconds=2), suppress_health_check=SLOW_TO_BUILD)
@given(messages())
@example(b"From: =?UTF16?B?000?=\r\n\r\n")  # found: UTF-16 without BOM, odd length
@example(b'Content-Type: text/plain; charset="utf-8\0"\r\n\r\n\x80')  # found: NUL in errors
def test_parse_reads_any_mail_shaped_bytes(raw: bytes) -> None:
    assert_sound(parse(raw, limits=LIMITS))


@settings(max_examples=150, deadline=timedelta(seconds=2), suppress_health_check=SLOW_TO_BUILD)
@given(messages(), st.booleans())
def test_classify_and_thread_take_any_message(raw: bytes, limited: bool) -> None:
    message = parse(raw, limits=LIMITS) if limited else parse(raw)
    verdict = classify(message, RULES, seller_addresses=frozenset())
    want = wanted(message, verdict)
    for found in (Candidates(), _made_up(want.order_numbers, want.message_ids, want.tokens)):
        threaded = match(want, found, verdict, now=NOW, recent=timedelta(days=180))
        assert threaded.match is None or threaded.match.order_id == ORDER.order_id


def _made_up(
    numbers: tuple[str, ...], message_ids: tuple[str, ...], tokens: tuple[str, ...]
) -> Candidates:
    """One order, found by everything the message asked for."""
    return Candidates(
        orders_by_message_id=dict.fromkeys(message_ids, ORDER.order_id),
        orders_by_token=dict.fromkeys(tokens, ORDER.order_id),
        orders_by_number=dict.fromkeys(numbers, ORDER),
        orders_of_counterpart=(ORDER,),
    )
