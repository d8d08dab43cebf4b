"""No single message stops or stalls the mailbox: each is stored or quarantined, the next is
read, and the checkpoint moves past it. Through a real Dovecot."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from tests.conftest import ROOT, settings_for
from tests.dovecot import Dovecot, User
from worker.clock import FixedClock
from worker.config import Settings
from worker.domain import MessageKind, Order
from worker.ingest import Ingest, Reading
from worker.mailbox import FetchedMessage
from worker.rules import load_rules
from worker.sink import Sink
from worker.store import Store

NOW = datetime(2026, 3, 20, 12, 0, tzinfo=UTC)
BUYER = Order("#2001", "shop", "dana@buyer.example", "Dana", delivered_at=NOW - timedelta(days=9))
MB = 1024 * 1024


def _message(headers: str, body: bytes, content_type: str = "text/plain; charset=utf-8") -> bytes:
    head = (
        "From: Eve <eve@attacker.example>\r\nTo: help@shop.example\r\n"
        f"Message-ID: <{abs(hash((headers, len(body))))}@attacker.example>\r\n"
        f"MIME-Version: 1.0\r\nContent-Type: {content_type}\r\n{headers}"
    )
    return head.encode() + b"\r\n" + body


def _nested(depth: int) -> bytes:
    opening = b"".join(
        f'--b{i}\r\nContent-Type: multipart/mixed; boundary="b{i + 1}"\r\n\r\n'.encode()
        for i in range(depth)
    )
    closing = b"".join(f"--b{i}--\r\n".encode() for i in reversed(range(depth)))
    return opening + b"--b%d\r\nContent-Type: text/plain\r\n\r\ndeep\r\n" % depth + closing


HOSTILE: dict[str, bytes] = {
    "zlib charset": _message("Subject: x\r\n", b"x\x9c\x03\x00", "text/plain; charset=zlib"),
    "hex charset": _message("Subject: x\r\n", b"zz", "text/plain; charset=hex"),
    "punycode charset": _message(
        "Subject: =?punycode?q?abc?=\r\n", b"\xff\xfe", "text/plain; charset=punycode"
    ),
    "huge date": _message(
        "Subject: x\r\nDate: Mon, 1 Jan 9" + "9" * 400 + " 00:00 +0000\r\n", b"x"
    ),
    "nested 1000 deep": _message(
        "Subject: deep\r\n", _nested(1000), 'multipart/mixed; boundary="b0"'
    ),
    "1 MB whitespace subject": _message("Subject: " + " \t" * (MB // 2) + "x\r\n", b"x"),
    "1 MB regex bait body": _message("Subject: hi\r\n", (b"a " * (MB // 2)) + b"!"),
    "5000 parts": _message(
        "Subject: parts\r\n",
        b"".join(b"--p\r\nContent-Type: text/plain\r\n\r\nx\r\n" for _ in range(5000))
        + b"--p--\r\n",
        'multipart/mixed; boundary="p"',
    ),
}


def _reply(n: int) -> bytes:
    return (
        f"From: Dana <{BUYER.buyer_email}>\r\nTo: help@shop.example\r\n"
        f"Subject: question {n}\r\nMessage-ID: <q{n}@buyer.example>\r\n\r\n"
        f"Thank you, it all arrived well. ({n})\r\n"
    ).encode()


def _settings(store: Store, sink: Sink, dovecot: Dovecot, user: User, **inbox: object) -> Settings:
    return settings_for(
        store,
        sink.port,
        imap=dovecot.imap_settings(user).model_dump(),
        inbox={"rules_file": str(ROOT / "config" / "mail-rules.yaml"), **inbox},
    )


async def test_each_hostile_message_is_stored_or_quarantined_and_the_next_is_read(
    store: Store, sink: Sink, dovecot: Dovecot, mailbox_user: User
) -> None:
    store.upsert_orders([BUYER], NOW)
    for n, raw in enumerate(HOSTILE.values()):
        dovecot.append(mailbox_user, "INBOX", raw, when=NOW)
        dovecot.append(mailbox_user, "INBOX", _reply(n), when=NOW)
    settings = _settings(store, sink, dovecot, mailbox_user)
    ingest = Ingest(settings, store, load_rules(settings.inbox.rules_file), FixedClock(NOW))

    started = time.perf_counter()
    report = await ingest.run_once()
    elapsed = time.perf_counter() - started

    assert elapsed < 60, f"{len(HOSTILE)} hostile messages took {elapsed:.1f} s"
    rows = {row.uid: row for row in store.inbound_messages()}
    assert sorted(rows) == list(range(1, 2 * len(HOSTILE) + 1)), "every message stored once"
    for n, name in enumerate(HOSTILE):
        hostile, after = rows[2 * n + 1], rows[2 * n + 2]
        assert hostile.order_id is None, name  # the attacker's mail is tied to no order
        assert after.kind is MessageKind.REPLY and after.order_id == BUYER.order_id, name
    # Whatever the intent reader makes of the junk (a run of "a" may read as a complaint),
    # it acts on no buyer's order: the attacker has none.
    assert [h.disputes for h in store.histories()] == [()]
    checkpoint = store.checkpoint(ingest.name, "INBOX")
    assert checkpoint is not None and checkpoint.last_uid == 2 * len(HOSTILE)
    assert report.total == 2 * len(HOSTILE)


class _Runaway(Ingest):
    """Reading the message whose subject says so never finishes, as a runaway would."""

    def __init__(self, *args: object, release: threading.Event, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.release = release

    def _read(self, fetched: FetchedMessage) -> Reading:
        if b"Subject: runaway" in fetched.raw:
            self.release.wait(timeout=30)
        return super()._read(fetched)


@pytest.fixture
def release() -> Iterator[threading.Event]:
    event = threading.Event()
    yield event
    event.set()  # let the abandoned reader thread end with the test


async def test_a_message_that_cannot_be_read_in_time_is_quarantined_and_reading_goes_on(
    store: Store, sink: Sink, dovecot: Dovecot, mailbox_user: User, release: threading.Event
) -> None:
    store.upsert_orders([BUYER], NOW)
    dovecot.append(mailbox_user, "INBOX", _message("Subject: runaway\r\n", b"x"), when=NOW)
    dovecot.append(mailbox_user, "INBOX", _reply(1), when=NOW)
    settings = _settings(store, sink, dovecot, mailbox_user, read_timeout_s=0.5)
    rules = load_rules(settings.inbox.rules_file)
    ingest = _Runaway(settings, store, rules, FixedClock(NOW), release=release)

    report = await ingest.run_once()

    first, second = store.inbound_messages()
    assert first.kind is MessageKind.QUARANTINED
    assert "not read within 0.5 s" in first.evidence
    assert store.raw_message(first.id).startswith(b"From: Eve")  # kept whole for an agent
    assert second.kind is MessageKind.REPLY and second.order_id == BUYER.order_id
    assert report.stored[MessageKind.QUARANTINED.value] == 1
    checkpoint = store.checkpoint(ingest.name, "INBOX")
    assert checkpoint is not None and checkpoint.last_uid == 2
