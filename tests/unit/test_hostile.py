"""Messages written to hurt: each is read within a time and a memory bound, never raises,
and says in ``errors`` or ``truncated`` what it could not read.

Before the reading was bounded, each of these raised (the IMAP checkpoint then never passed
the message, and the worker stopped on it for ever), ran for minutes or took gigabytes.
"""

from __future__ import annotations

import base64
import random
import time
import tracemalloc
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from worker.inbound import MAX_ERRORS, MAX_THREAD_IDS, InboundMessage, ParseLimits, parse

SECONDS = 2.0
"""Per message, on a shared CI core; most take a few milliseconds."""
MEMORY = 32 * 1024 * 1024
"""Peak allocated while parsing one message (tracemalloc), unless a case says otherwise."""
DEFAULT = ParseLimits()
ROOMY = ParseLimits(max_header_bytes=4 * 1024 * 1024, max_text_bytes=1024 * 1024)
"""Limits that let a long header or text through, to show the reading itself is linear."""


@dataclass(frozen=True)
class Hostile:
    name: str
    raw: Callable[[], bytes]
    """Built when the case runs, so collecting the tests stays cheap."""
    says: str | None = None
    """Found in ``errors`` or ``truncated``; ``None`` when the message is readable after all."""
    check: Callable[[InboundMessage], bool] | None = None
    limits: ParseLimits = DEFAULT
    memory: int = MEMORY


def mail(headers: str, body: bytes = b"Hello\r\n") -> bytes:
    head = headers.replace("\n", "\r\n").encode("utf-8", "surrogateescape")
    return b"From: buyer@example.com\r\n" + head + b"\r\n" + body


def charset(label: str, body: bytes = b"Hello") -> Callable[[], bytes]:
    word = base64.b64encode(b"Hello").decode()
    return lambda: mail(
        f'Subject: =?{label}?B?{word}?=\nContent-Type: text/plain; charset="{label}"\n', body
    )


def dated(value: str) -> Callable[[], bytes]:
    return lambda: mail(f"Date: {value}\n")


def nested(depth: int) -> bytes:
    opening = b"".join(
        b"Content-Type: multipart/mixed; boundary=b%d\r\n\r\n--b%d\r\n" % (n, n)
        for n in range(depth)
    )
    closing = b"".join(b"\r\n--b%d--" % n for n in reversed(range(depth)))
    return b"From: buyer@example.com\r\n" + opening + b"Content-Type: text/plain\r\n\r\nx" + closing


def attached(depth: int) -> bytes:
    inner = b"Content-Type: message/rfc822\r\n\r\n" * depth + b"Subject: inner\r\n\r\ntext\r\n"
    return mail("Content-Type: message/rfc822\n", inner)


def parts(count: int) -> bytes:
    each = b"".join(b"--x\r\nContent-Type: text/plain\r\n\r\npart %d\r\n" % n for n in range(count))
    return mail("Content-Type: multipart/mixed; boundary=x\n", each + b"--x--\r\n")


def delivery_status(blocks: int) -> bytes:
    status = b"Action: failed\r\nStatus: 5.1.1\r\n\r\n" * blocks
    body = b"--x\r\nContent-Type: message/delivery-status\r\n\r\n" + status + b"--x--\r\n"
    return mail("Content-Type: multipart/report; boundary=x\n", body)


def base64_text(size: int, multipart: bool) -> bytes:
    encoded = (b"QUFB" * 19 + b"\r\n") * (size // 78)
    part = b"Content-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n\r\n" + encoded
    if not multipart:
        return b"From: buyer@example.com\r\n" + part
    body = b"--x\r\nContent-Type: text/plain\r\n\r\nSee attached.\r\n--x\r\n" + part + b"--x--\r\n"
    return mail("Content-Type: multipart/mixed; boundary=x\n", body)


def html(markup: bytes) -> Callable[[], bytes]:
    return lambda: mail("Content-Type: text/html; charset=utf-8\n", markup)


def noise() -> bytes:
    return random.Random(7).randbytes(1_000_000)


CASES = [
    Hostile("charset zlib (a bomb)", charset("zlib", zlib.compress(b"\0" * 20_000_000, 1)),
            "unknown charset 'zlib'"),
    Hostile("charset hex", charset("hex", b"48656c6c6f"), "unknown charset 'hex'",
            lambda m: m.text == "48656c6c6f"),
    Hostile("charset base64", charset("base64", b"SGVsbG8="), "unknown charset 'base64'"),
    Hostile("charset rot13", charset("rot13"), "unknown charset 'rot13'",
            lambda m: m.text == "Hello" and m.subject == "Hello"),
    Hostile("charset punycode", charset("punycode", b"\xff\xfe-caf\xe9"),
            "unknown charset 'punycode'"),
    Hostile("charset idna", charset("idna", b"a" * 300 + b".\xff"), "unknown charset 'idna'"),
    Hostile("charset undefined", charset("undefined"), "unknown charset 'undefined'"),
    Hostile("charset unicode_escape", charset("unicode_escape", b"\\x1b[2J"),
            "unknown charset 'unicode_escape'", lambda m: "\x1b" not in m.text),
    Hostile("charset with a NUL", charset("utf-8\0"), None,
            lambda m: m.text == "Hello" and m.subject == "Hello"),
    Hostile("charset of 300 characters", charset("x" * 300), "unknown charset 'xxxx",
            lambda m: all(len(e) < 200 for e in m.errors)),
    Hostile("Date: 400-digit year", dated("Mon, 02 Mar " + "9" * 400 + " 10:00 +0000"),
            "Date: cannot read", lambda m: m.date is None),
    Hostile("Date: 5,000-digit number", dated("9" * 5000), "Date: cannot read"),
    Hostile("Date: offset of 400 digits", dated("Mon, 02 Mar 2026 10:00 +" + "9" * 400),
            "Date: cannot read"),
    Hostile("Date: offset past a day", dated("Mon, 02 Mar 2026 10:00 +9999"),
            "Date: cannot read"),
    Hostile("Date: far future, past datetime", dated("Fri, 31 Dec 9999 23:59:59 -1200"),
            "Date: cannot read"),
    Hostile("Date: year 99999999", dated("02 Mar 99999999 10:00"), "Date: cannot read"),
    Hostile("Date: negative year", dated("Mon, 02 Mar -2026 10:00:00 +0100")),
    Hostile("multipart nested 1,000 deep", lambda: nested(1000), "depth > max_depth 20"),
    Hostile("message/rfc822 nested 1,000 deep", lambda: attached(1000), "depth > max_depth 20"),
    Hostile("5,000 parts", lambda: parts(5000), "parts > max_parts 200",
            lambda m: m.text == "part 0"),
    Hostile("delivery status of 10,000 blocks", lambda: delivery_status(10_000),
            "parts > max_parts 200"),
    Hostile("30 MB of base64 in a text/plain part", lambda: base64_text(30_000_000, True),
            "> max_message_bytes 25000000", lambda m: m.text == "See attached."),
    Hostile("20 MB of base64 text, within max_message_bytes",
            lambda: base64_text(20_000_000, False), "text > max_text_bytes 262144",
            lambda m: len(m.text) == 262144, memory=200 * 1024 * 1024),
    Hostile("1 MB of headers", lambda: mail("X-Junk: 1234567890\n" * 55_000),
            "> max_header_bytes 262144", lambda m: m.text == "Hello"),
    Hostile("1 MB subject of blank runs", lambda: mail("Subject: " + "a \t " * 250_000 + "\n"),
            "> max_header_bytes"),
    Hostile("1 MB subject of blank runs, header allowed",
            lambda: mail("Subject: " + "a \t " * 250_000 + "\n"), None,
            lambda m: m.subject == " ".join(["a"] * 250_000), ROOMY),
    Hostile("50,000 encoded words", lambda: mail("Subject: " + "=?utf-8?q?a?= " * 50_000 + "\n"),
            None, lambda m: m.subject == "a" * 50_000, ROOMY),
    Hostile("100,000 unclosed encoded words",
            lambda: mail("Subject: " + "=?a?q?x " * 100_000 + "\n"), None,
            lambda m: m.subject.startswith("=?a?q?x =?a?q?x"), ROOMY),
    Hostile("encoded words: bogus charset, bad base64",
            lambda: mail("Subject: =?x-bogus?B?SGVsbG8=?= =?utf-8?B?A?=\n"),
            "Subject: unknown charset 'x-bogus'",
            lambda m: any("malformed encoded word" in e for e in m.errors)),
    Hostile("5,000 distinct bogus charsets",
            lambda: mail("Subject: " + "".join(f"=?x{n}?q?a?= " for n in range(5000)) + "\n"),
            f"... and {5000 - MAX_ERRORS + 1} more", lambda m: len(m.errors) == MAX_ERRORS,
            ROOMY),
    Hostile("NUL in headers", lambda: mail("Subject: hello\0world\nTo: a\0@shop.example\n"),
            None, lambda m: m.subject == "hello\ufffdworld" and "\0" not in repr(m.headers)),
    Hostile("CR-only line endings",
            lambda: b"From: a@b.example\rSubject: cr\rContent-Type: text/plain\r\rone\rtwo\r",
            None, lambda m: (m.sender, m.subject, m.text) == ("a@b.example", "cr", "one\ntwo")),
    Hostile("unterminated boundary",
            lambda: mail("Content-Type: multipart/mixed; boundary=x\n", b"--x\r\n\r\nstill\r\n"),
            "MIME: CloseBoundaryNotFoundDefect", lambda m: m.text == "still"),
    Hostile("boundary never opened",
            lambda: mail("Content-Type: multipart/mixed; boundary=x\n", b"no parts\r\n" * 9999),
            "MIME: StartBoundaryNotFoundDefect"),
    Hostile("Content-Type of 200,000 parameters",
            lambda: mail('Content-Type: multipart/mixed; a="' + ";" * 200_000 + "\n"),
            "MIME: NoBoundaryInMultipartDefect"),
    Hostile("From: 100,000 nested comments", lambda: mail("From: " + "(" * 100_000 + "\n"),
            "addresses nested too deep"),
    Hostile("To: 100,000 angle brackets", lambda: mail("To: " + "<" * 100_000 + "\n"),
            None, lambda m: m.recipients == ()),
    Hostile("References: 100,000 Message-IDs",
            lambda: mail("References: " + " ".join(f"<{n}@x>" for n in range(100_000)) + "\n"),
            None, lambda m: m.thread_ids[:2] == ("<99999@x>", "<99998@x>")
            and len(m.references) == MAX_THREAD_IDS, ROOMY),
    Hostile("HTML: <script 100,000 times, never closed", html(b"<script" * 100_000),
            "text > max_text_bytes"),
    Hostile("HTML: <script 100,000 times, read whole", html(b"<script" * 100_000), None,
            lambda m: m.text == "<script" * 100_000, ROOMY),
    Hostile("HTML: 60,000 closed styles", html(b"<style></style>x" * 60_000), None,
            lambda m: m.text == "x" * 60_000, ROOMY),
    Hostile("HTML: 150,000 tags", html(b"<b>x</b><br>" * 50_000), None,
            lambda m: m.text.startswith("x\nx\nx"), ROOMY),
    Hostile("HTML: a reference of 5,000 digits", html(b"&#" + b"9" * 5000 + b"; ok"), None,
            lambda m: m.text == "\ufffd ok"),
    Hostile("empty", lambda: b"", None, lambda m: m.headers == () and m.text == ""),
    Hostile("1 MB of NUL", lambda: b"\0" * 1_000_000, "> max_header_bytes"),
    Hostile("1 MB of noise", noise, "text > max_text_bytes"),
]  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_hostile_message_is_read_within_bounds(case: Hostile) -> None:
    raw = case.raw()
    started = time.perf_counter()
    message = parse(raw, limits=case.limits)
    elapsed = time.perf_counter() - started
    tracemalloc.start()
    try:
        parse(raw, limits=case.limits)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    said = [*message.errors, message.truncated or ""]
    assert not any(line.startswith("unreadable:") for line in said), said
    if case.says is not None:
        assert any(case.says in line for line in said), said
    assert case.check is None or case.check(message), message
    assert elapsed < SECONDS, f"{elapsed:.2f} s"
    assert peak < case.memory, f"{peak / 1e6:.1f} MB"


def test_a_message_past_max_message_bytes_keeps_its_header() -> None:
    raw = base64_text(30_000_000, True)
    message = parse(raw)
    assert message.truncated == f"size {len(raw)} > max_message_bytes 25000000"
    assert f"truncated: {message.truncated}" in message.errors
    assert message.sender == "buyer@example.com"
    assert message.raw is raw, "stored as given: what was fetched is what is kept"


def test_a_partly_fetched_message_says_so() -> None:
    start = mail("Subject: big\n", b"The start of a long message")
    message = parse(start, size=90_000_000)
    assert message.truncated == "size 90000000 > max_message_bytes 25000000"
    assert (message.subject, message.text) == ("big", "The start of a long message")
    smaller = parse(start, size=len(start) + 10)
    assert smaller.truncated == f"only {len(start)} of {len(start) + 10} bytes read"


def test_a_message_within_every_limit_is_not_marked() -> None:
    message = parse(mail("Subject: fine\n"))
    assert message.truncated is None
    assert message.errors == ()
