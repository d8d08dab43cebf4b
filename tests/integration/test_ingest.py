"""The mailbox end to end: a real Dovecot, the real SMTP sink, a real SQLite file.

Messages are APPENDed to Dovecot as any mail client would; the worker reads them over IMAP,
classifies, threads and reacts, and the tests look at what the store then says.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.exc import IntegrityError

from tests.conftest import ROOT, settings_for
from tests.dovecot import Dovecot, User
from tests.messages import plain_mail
from worker.clock import FixedClock
from worker.config import Settings
from worker.daemon import Daemon, load_checked_campaigns
from worker.domain import DisputeKind, MatchMethod, MessageKind, Order, SendState
from worker.errors import MailboxError, StoreError
from worker.ingest import Ingest, IngestReport, Reading
from worker.mailbox import FetchedMessage
from worker.render import Renderer
from worker.rules import load_rules
from worker.sink import Sink
from worker.store import Recorded, Store

DELIVERED = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)  # a Monday
DAY = timedelta(days=1)
ANN = Order(
    "SHOP-1001", "shop", "ann@buyer.example", "Ann Smith", ("Glass kettle",), "en", "GB",
    delivered_at=DELIVERED,
)  # fmt: skip
BEN = Order(
    "SHOP-1002", "shop", "ben@buyer.example", "Ben Jones", ("Tea strainer",), "en", "GB",
    delivered_at=DELIVERED,
)  # fmt: skip


def _settings(store: Store, sink: Sink, dovecot: Dovecot, user: User, **imap: object) -> Settings:
    imap_settings = dovecot.imap_settings(user, **imap).model_dump()
    return settings_for(
        store,
        sink.port,
        imap=imap_settings,
        inbox={"rules_file": str(ROOT / "config" / "mail-rules.yaml")},
    )


def _daemon(settings: Settings, store: Store, clock: FixedClock) -> Daemon:
    renderer = Renderer(settings.templates_dir, settings.default_locale)
    campaigns = load_checked_campaigns(settings, renderer)
    ingest = Ingest(settings, store, load_rules(settings.inbox.rules_file), clock)
    return Daemon(settings, store, campaigns, renderer, clock, ingest=ingest)


def _sent_message_id(store: Store, order_id: str, step: str) -> str:
    row = next(s for s in store.sends() if s.order_id == order_id and s.step == step)
    assert row.state is SendState.SENT and row.message_id
    return row.message_id


async def test_a_reply_to_our_check_in_threads_to_the_order(
    store: Store, sink: Sink, dovecot: Dovecot, mailbox_user: User
) -> None:
    store.upsert_orders([ANN], DELIVERED)
    clock = FixedClock(DELIVERED + 7 * DAY)
    daemon = _daemon(_settings(store, sink, dovecot, mailbox_user), store, clock)
    assert (await daemon.run_once()).outcomes["sent"] == 1
    check_in = _sent_message_id(store, ANN.order_id, "check-in")

    clock.advance(DAY)
    reply = plain_mail(
        "Ann Smith <Ann@Buyer.Example>",
        "Re: How is your kettle?",
        "It works well, thank you!\n\n> How is your kettle? Did it arrive safely?",
        message_id="<r1@buyer.example>",
        in_reply_to=check_in,
    )
    dovecot.append(mailbox_user, "INBOX", reply, when=clock.now())
    assert daemon.ingest is not None
    report = await daemon.ingest.run_once()

    assert report.stored == {"reply": 1}
    [row] = store.inbound_messages()
    assert (row.kind, row.order_id, row.match_method) == (
        MessageKind.REPLY,
        ANN.order_id,
        MatchMethod.SEND_MESSAGE_ID.value,
    )
    assert [r.source for r in store.histories()[0].replies] == ["mailbox"]
    conversation = store.conversation(ANN.order_id)
    assert [(e.direction, e.label) for e in conversation] == [
        ("out", "review-follow-up/check-in"),
        ("in", "reply"),
    ]


async def test_our_own_check_in_coming_back_unmarked_opens_no_dispute(
    store: Store, sink: Sink, dovecot: Dovecot, mailbox_user: User
) -> None:
    """An out-of-office in a language the rules do not cover pastes our check-in back, with
    no quote marker: "missing or damaged" are our words, not the buyer's."""
    store.upsert_orders([ANN], DELIVERED)
    clock = FixedClock(DELIVERED + 7 * DAY)
    daemon = _daemon(_settings(store, sink, dovecot, mailbox_user), store, clock)
    assert (await daemon.run_once()).outcomes["sent"] == 1
    (ours,) = store.texts_sent_to(ANN.buyer_email)
    assert "damaged" in ours

    clock.advance(DAY)
    echo = plain_mail(
        "Ann Smith <ann@buyer.example>", "부재중", f"부재중입니다.\n\n{ours}", message_id="<e1@b>"
    )
    dovecot.append(mailbox_user, "INBOX", echo, when=clock.now())
    assert daemon.ingest is not None
    await daemon.ingest.run_once()

    [row] = store.inbound_messages()
    assert row.kind is not MessageKind.COMPLAINT, row.evidence
    assert store.histories()[0].disputes == ()


async def test_a_complaint_between_two_passes_stops_the_review_request_due_in_the_second(
    store: Store, sink: Sink, dovecot: Dovecot, mailbox_user: User
) -> None:
    store.upsert_orders([ANN, BEN], DELIVERED)
    clock = FixedClock(DELIVERED + 7 * DAY)
    daemon = _daemon(_settings(store, sink, dovecot, mailbox_user), store, clock)
    assert (await daemon.run_once()).outcomes["sent"] == 2  # both check-ins
    ann_check_in = _sent_message_id(store, ANN.order_id, "check-in")

    clock.advance(27 * DAY + timedelta(hours=1))  # day 34: nothing due yet
    assert (await daemon.run_once()).outcomes["sent"] == 0
    complaint = plain_mail(
        "ann@buyer.example",
        "Re: How is your kettle?",
        "The lid arrived broken and the kettle leaks. I want a refund.",
        message_id="<c1@buyer.example>",
        in_reply_to=ann_check_in,
    )
    dovecot.append(mailbox_user, "INBOX", complaint, when=clock.now())

    clock.advance(DAY)  # day 35: both review requests are due
    second = await daemon.run_once()

    assert second.outcomes["sent"] == 1, "Ben's review request, not Ann's"
    ann_steps = {s.step: s for s in store.sends() if s.order_id == ANN.order_id}
    assert "review-request" not in ann_steps
    decisions = {(d.order_id, d.step): d for d in daemon.plan().decisions}
    assert decisions[(ANN.order_id, "review-request")].reason == "dispute_open"
    [dispute] = store.histories()[0].disputes
    assert dispute.source == "mailbox"
    assert dispute.kind in {DisputeKind.DAMAGED, DisputeKind.REFUND}
    recipients = [str(m["To"]) for m in sink.received]
    assert sum("ann@buyer.example" in r for r in recipients) == 1  # only the check-in


class _Interrupted(Ingest):
    """Stops Dovecot (``server``) while reading the ``n``th message it fetched."""

    def __init__(self, *args: Any, n: int, server: Dovecot) -> None:
        super().__init__(*args)
        self.server, self.left = server, n

    def _read(self, fetched: FetchedMessage) -> Reading:
        self.left -= 1
        if self.left == 0:
            self.server.stop()
        return super()._read(fetched)


class _Crash(BaseException):
    """A killed process: nothing in the worker handles it."""


def _dies_storing(store: Store, monkeypatch: pytest.MonkeyPatch, n: int) -> None:
    """The worker dies in the middle of storing the ``n``th message, inside its batch's
    transaction, after the batch's rows were written."""
    apply = store._apply
    left = [n]

    def dying(*args: Any, **kwargs: Any) -> Recorded:
        left[0] -= 1
        if left[0] == 0:
            raise _Crash("killed while storing")
        return apply(*args, **kwargs)

    monkeypatch.setattr(store, "_apply", dying)


async def _twelve_questions(store: Store, server: Dovecot, user: User) -> None:
    store.upsert_orders([ANN], DELIVERED)
    for n in range(12):
        raw = plain_mail(
            "ann@buyer.example", f"question {n}", f"Is {n} ok?", message_id=f"<q{n}@b>"
        )
        server.append(user, "INBOX", raw, when=DELIVERED + n * timedelta(minutes=1))


def _each_stored_once(store: Store) -> None:
    rows = store.inbound_messages()
    assert sorted(r.uid for r in rows) == list(range(1, 13))
    assert sorted(r.subject for r in rows) == sorted(f"question {n}" for n in range(12))
    assert len(store.histories()[0].replies) == 12


async def test_stopping_dovecot_mid_batch_loses_nothing_and_repeats_nothing(
    store: Store, sink: Sink, private_dovecot: Dovecot
) -> None:
    user = private_dovecot.add_user("seller", "pw")
    await _twelve_questions(store, private_dovecot, user)
    settings = _settings(store, sink, private_dovecot, user, batch_size=5)
    clock = FixedClock(DELIVERED + DAY)
    rules = load_rules(settings.inbox.rules_file)
    interrupted = _Interrupted(settings, store, rules, clock, n=7, server=private_dovecot)

    with pytest.raises(MailboxError):
        await interrupted.run_once()  # Dovecot goes away in the middle of the second batch
    assert len(store.inbound_messages()) == 10, "the batch already fetched is stored"

    private_dovecot.start()
    report = await Ingest(settings, store, rules, clock).run_once()

    assert (report.total, report.duplicates) == (2, 0)
    _each_stored_once(store)


async def test_a_worker_killed_mid_batch_resumes_after_the_last_stored_batch(
    store: Store,
    sink: Sink,
    dovecot: Dovecot,
    mailbox_user: User,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await _twelve_questions(store, dovecot, mailbox_user)
    settings = _settings(store, sink, dovecot, mailbox_user, batch_size=5)
    clock = FixedClock(DELIVERED + DAY)
    rules = load_rules(settings.inbox.rules_file)
    ingest = Ingest(settings, store, rules, clock)
    _dies_storing(store, monkeypatch, n=7)

    with pytest.raises(_Crash):
        await ingest.run_once()
    assert len(store.inbound_messages()) == 5, "the second batch is stored whole or not at all"
    checkpoint = store.checkpoint(ingest.name, "INBOX")
    assert checkpoint is not None and checkpoint.last_uid == 5
    assert len(store.histories()[0].replies) == 5

    monkeypatch.undo()
    report = await Ingest(settings, store, rules, clock).run_once()

    assert (report.total, report.duplicates) == (7, 0)
    _each_stored_once(store)


async def test_a_message_the_database_refuses_is_quarantined_and_its_batch_is_stored(
    store: Store,
    sink: Sink,
    dovecot: Dovecot,
    mailbox_user: User,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await _twelve_questions(store, dovecot, mailbox_user)
    settings = _settings(store, sink, dovecot, mailbox_user, batch_size=5)
    ingest = Ingest(
        settings, store, load_rules(settings.inbox.rules_file), FixedClock(DELIVERED + DAY)
    )
    apply = store._apply

    def refusing(tx: Any, row_id: int, received: Any, threaded: Any, *args: Any, **kw: Any) -> Any:
        if received.uid == 7 and threaded.match is not None:
            raise IntegrityError("INSERT ...", {}, Exception("a value this database refuses"))
        return apply(tx, row_id, received, threaded, *args, **kw)

    monkeypatch.setattr(store, "_apply", refusing)
    report = await ingest.run_once()

    rows = {row.uid: row for row in store.inbound_messages()}
    assert sorted(rows) == list(range(1, 13)), "every message stored once"
    refused = rows[7]
    assert refused.kind is MessageKind.QUARANTINED and refused.order_id is None
    assert "cannot be stored" in refused.evidence and "refuses" in refused.evidence
    assert b"question 6" in store.raw_message(refused.id)  # kept whole for an agent
    assert all(rows[uid].order_id == ANN.order_id for uid in rows if uid != 7)
    assert len(store.histories()[0].replies) == 11
    assert report.stored == {"reply": 11, "quarantined": 1}
    checkpoint = store.checkpoint(ingest.name, "INBOX")
    assert checkpoint is not None and checkpoint.last_uid == 12


async def test_a_failing_database_stores_nothing_of_the_batch_and_the_next_pass_reads_it(
    store: Store,
    sink: Sink,
    dovecot: Dovecot,
    mailbox_user: User,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await _twelve_questions(store, dovecot, mailbox_user)
    settings = _settings(store, sink, dovecot, mailbox_user, batch_size=5)
    rules = load_rules(settings.inbox.rules_file)
    ingest = Ingest(settings, store, rules, FixedClock(DELIVERED + DAY))
    apply = store._apply

    def failing(tx: Any, row_id: int, received: Any, *args: Any, **kw: Any) -> Any:
        if received.uid == 7:
            raise StoreError("the database failed: disk I/O error")
        return apply(tx, row_id, received, *args, **kw)

    monkeypatch.setattr(store, "_apply", failing)
    with pytest.raises(StoreError):
        await ingest.run_once()
    assert sorted(r.uid for r in store.inbound_messages()) == list(range(1, 7))
    checkpoint = store.checkpoint(ingest.name, "INBOX")
    assert checkpoint is not None and checkpoint.last_uid == 6, "up to the last one stored"

    monkeypatch.undo()
    report = await Ingest(settings, store, rules, FixedClock(DELIVERED + DAY)).run_once()
    assert (report.total, report.duplicates) == (6, 0)
    _each_stored_once(store)


async def test_a_reply_to_a_message_of_the_same_batch_threads_to_its_order(
    store: Store, sink: Sink, dovecot: Dovecot, mailbox_user: User
) -> None:
    store.upsert_orders([ANN], DELIVERED)
    question = plain_mail("ann@buyer.example", "Lid", "Is the lid glass?", message_id="<a1@buyer>")
    colleague = plain_mail(
        "bob@colleague.example", "Re: Lid", "Ann asked me to add: the box was open.",
        message_id="<b1@colleague>", in_reply_to="<a1@buyer>",
    )  # fmt: skip
    again = plain_mail("ann@buyer.example", "Lid", "Is the lid glass?", message_id="<a1@buyer>")
    for raw in (question, colleague, again):
        dovecot.append(mailbox_user, "INBOX", raw, when=DELIVERED + DAY)
    settings = _settings(store, sink, dovecot, mailbox_user)
    clock = FixedClock(DELIVERED + 2 * DAY)
    ingest = Ingest(settings, store, load_rules(settings.inbox.rules_file), clock)

    report = await ingest.run_once()

    assert (report.total, report.duplicates) == (2, 1), "the same message twice is stored once"
    first, second = store.inbound_messages()
    assert (first.order_id, first.match_method) == (ANN.order_id, MatchMethod.BUYER_ADDRESS.value)
    assert (second.order_id, second.match_method) == (
        ANN.order_id,
        MatchMethod.CONVERSATION.value,
    )


async def test_a_uidvalidity_change_rescans_without_duplicates(
    store: Store, sink: Sink, private_dovecot: Dovecot
) -> None:
    user = private_dovecot.add_user("seller", "pw")
    store.upsert_orders([ANN], DELIVERED)
    for n in range(3):
        raw = plain_mail("ann@buyer.example", f"note {n}", "hello", message_id=f"<n{n}@b>")
        private_dovecot.append(user, "INBOX", raw, when=DELIVERED)
    settings = _settings(store, sink, private_dovecot, user)
    ingest = Ingest(settings, store, load_rules(settings.inbox.rules_file), FixedClock(DELIVERED))
    assert (await ingest.run_once()).total == 3

    private_dovecot.change_uidvalidity(user, "INBOX")
    raw = plain_mail("ann@buyer.example", "note 3", "hello again", message_id="<n3@b>")
    private_dovecot.append(user, "INBOX", raw, when=DELIVERED)
    report = await ingest.run_once()

    assert (report.total, report.duplicates) == (1, 3)
    assert sorted(r.subject for r in store.inbound_messages()) == [f"note {n}" for n in range(4)]


async def test_bounces_suppress_hard_at_once_and_soft_after_the_limit(
    store: Store, sink: Sink, dovecot: Dovecot, mailbox_user: User
) -> None:
    store.upsert_orders([ANN, BEN], DELIVERED)
    settings = _settings(store, sink, dovecot, mailbox_user)
    settings = settings.model_copy(
        update={"inbox": settings.inbox.model_copy(update={"soft_bounce_limit": 2})}
    )
    clock = FixedClock(DELIVERED + 7 * DAY)
    daemon = _daemon(settings, store, clock)
    await daemon.run_once()
    ann_id = _sent_message_id(store, ANN.order_id, "check-in")
    ben_id = _sent_message_id(store, BEN.order_id, "check-in")
    dovecot.append(mailbox_user, "INBOX", _dsn(ANN.buyer_email, "5.1.1", ann_id, "n1"))
    dovecot.append(mailbox_user, "INBOX", _dsn(BEN.buyer_email, "4.2.2", ben_id, "n2"))
    assert daemon.ingest is not None
    await daemon.ingest.run_once()
    assert {s.email: s.reason.value for s in store.suppressions()} == {
        ANN.buyer_email: "hard_bounce"
    }

    dovecot.append(mailbox_user, "INBOX", _dsn(BEN.buyer_email, "4.2.2", ben_id, "n3"))
    await daemon.ingest.run_once()
    assert {s.email: s.reason.value for s in store.suppressions()} == {
        ANN.buyer_email: "hard_bounce",
        BEN.buyer_email: "soft_bounces",
    }
    bounces = store.inbound_messages(kinds=[MessageKind.BOUNCE_HARD, MessageKind.BOUNCE_SOFT])
    assert {(r.order_id, r.match_method) for r in bounces} == {
        (ANN.order_id, "send_message_id"),
        (BEN.order_id, "send_message_id"),
    }


async def test_soft_bounces_in_one_batch_count_as_they_would_one_by_one(
    store: Store, sink: Sink, dovecot: Dovecot, mailbox_user: User
) -> None:
    """A batch inserts its rows before reacting: each message's count must still leave out
    the reports after it."""
    store.upsert_orders([BEN], DELIVERED)
    settings = _settings(store, sink, dovecot, mailbox_user)
    settings = settings.model_copy(
        update={"inbox": settings.inbox.model_copy(update={"soft_bounce_limit": 2})}
    )
    clock = FixedClock(DELIVERED + 7 * DAY)
    daemon = _daemon(settings, store, clock)
    await daemon.run_once()
    ben_id = _sent_message_id(store, BEN.order_id, "check-in")
    reports = [_dsn(BEN.buyer_email, "4.2.2", ben_id, f"s{n}") for n in range(3)]
    batch = [FetchedMessage(n + 1, raw, clock.now(), len(raw)) for n, raw in enumerate(reports)]
    assert daemon.ingest is not None

    recorded = await daemon.ingest.take_batch(batch, "INBOX", 1, IngestReport())

    assert [[s.email for s in r.suppressed] for r in recorded] == [[], [BEN.buyer_email], []]
    assert [s.reason.value for s in store.suppressions()] == ["soft_bounces"]


def _dsn(recipient: str, status: str, original_id: str, tag: str) -> bytes:
    """A Postfix-shaped RFC 3464 report about one of our messages."""
    action = "failed" if status.startswith("5") else "delayed"
    code = "550" if status.startswith("5") else "452"
    text = (
        "From: MAILER-DAEMON@mx.shop.example (Mail Delivery System)\r\n"
        "To: service@shop.example\r\n"
        "Subject: Undelivered Mail Returned to Sender\r\n"
        f"Message-ID: <dsn-{tag}@mx.shop.example>\r\n"
        "Date: Mon, 09 Mar 2026 10:00:00 +0000\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\r\n\r\n'
        "--B\r\nContent-Type: text/plain\r\n\r\nI'm sorry to have to inform you...\r\n"
        "--B\r\nContent-Type: message/delivery-status\r\n\r\n"
        "Reporting-MTA: dns; mx.shop.example\r\n\r\n"
        f"Final-Recipient: rfc822; {recipient}\r\nAction: {action}\r\nStatus: {status}\r\n"
        f"Diagnostic-Code: smtp; {code} {status} mailbox problem\r\n\r\n"
        "--B\r\nContent-Type: text/rfc822-headers\r\n\r\n"
        f"From: service@shop.example\r\nTo: {recipient}\r\nMessage-ID: {original_id}\r\n"
        "Subject: How is your kettle?\r\n\r\n--B--\r\n"
    )
    return text.encode()


async def test_the_sellers_answer_in_sent_ends_the_wait_and_sent_copies_are_kept(
    store: Store, sink: Sink, dovecot: Dovecot, mailbox_user: User
) -> None:
    store.upsert_orders([ANN], DELIVERED)
    settings = _settings(
        store, sink, dovecot, mailbox_user, folders=("INBOX", "Sent"), sent_folder="Sent"
    )
    clock = FixedClock(DELIVERED + 7 * DAY)
    daemon = _daemon(settings, store, clock)
    await daemon.run_once()
    check_in = _sent_message_id(store, ANN.order_id, "check-in")
    with dovecot.client(mailbox_user) as client:
        client.select_folder("Sent", readonly=True)
        [uid] = client.search("ALL")
        copy = client.fetch([uid], ["FLAGS", "BODY.PEEK[]"])[uid]
    assert b"\\Seen" in copy[b"FLAGS"]
    assert (
        email.message_from_bytes(copy[b"BODY[]"], policy=email.policy.default)["Message-ID"]
        == check_in
    )

    clock.advance(DAY)
    question = plain_mail(
        "ann@buyer.example", "Re: How is your kettle?", "How do I descale it?",
        message_id="<q@buyer.example>", in_reply_to=check_in,
    )  # fmt: skip
    dovecot.append(mailbox_user, "INBOX", question, when=clock.now())
    assert daemon.ingest is not None
    await daemon.ingest.run_once()
    clock.advance(timedelta(hours=25))
    waiting = store.awaiting(clock.now() - settings.inbox.awaiting_after)
    assert [w.order_id for w in waiting] == [ANN.order_id], "the campaign mail is no answer"

    answer = plain_mail(
        "Anna <help@shop.example>", "Re: How is your kettle?", "Use citric acid, 2 spoons.",
        message_id="<a@shop.example>", in_reply_to="<q@buyer.example>", to="ann@buyer.example",
    )  # fmt: skip
    dovecot.append(mailbox_user, "Sent", answer, flags=["\\Seen"], when=clock.now())
    await daemon.ingest.run_once()
    assert store.awaiting(clock.now()) == []
    kinds = [(e.direction, e.label) for e in store.conversation(ANN.order_id)]
    assert kinds[-2:] == [("in", "reply"), ("out", "seller")]


async def test_mail_nobody_can_thread_waits_for_an_agent(
    store: Store, sink: Sink, dovecot: Dovecot, mailbox_user: User
) -> None:
    store.upsert_orders([ANN], DELIVERED)
    stranger = plain_mail(
        "someone@else.example", "Order SHOP-1001?", "Is this the kettle shop?", message_id="<s@e>"
    )
    dovecot.append(mailbox_user, "INBOX", stranger)
    settings = _settings(store, sink, dovecot, mailbox_user)
    ingest = Ingest(settings, store, load_rules(settings.inbox.rules_file), FixedClock(DELIVERED))
    report = await ingest.run_once()
    assert report.unmatched == 1
    [row] = store.inbound_messages(unmatched=True)
    assert row.sender == "someone@else.example" and row.order_id is None


async def test_the_running_daemon_reads_new_mail_as_it_arrives(
    store: Store, sink: Sink, dovecot: Dovecot, mailbox_user: User
) -> None:
    store.upsert_orders([ANN], DELIVERED)
    settings = _settings(
        store, sink, dovecot, mailbox_user, poll_interval_s=30, folders=("INBOX", "Sent")
    )
    clock = FixedClock(DELIVERED + 3 * DAY)
    daemon = _daemon(settings, store, clock)
    stop = asyncio.Event()
    running = asyncio.create_task(daemon.run(stop))
    try:
        await _until(lambda: daemon.ingest is not None and daemon.ingest.last_read_at is not None)
        complaint = plain_mail(
            "ann@buyer.example", "Where is my parcel?", "My order has not arrived yet.",
            message_id="<late@buyer.example>",
        )  # fmt: skip
        dovecot.append(mailbox_user, "INBOX", complaint, when=clock.now())
        # IDLE on INBOX, though Sent was read last; not the 30 s poll
        await _until(lambda: bool(store.histories()[0].disputes))
    finally:
        stop.set()
        await asyncio.wait_for(running, timeout=10)
    [dispute] = store.histories()[0].disputes
    assert dispute.kind is DisputeKind.NOT_RECEIVED


async def _until(condition: Callable[[], bool], timeout_s: float = 15.0) -> None:
    """Wait for a state the daemon reaches on its own task; there is no event to await."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


async def test_a_reply_without_headers_threads_by_the_reply_token(
    store: Store, sink: Sink, dovecot: Dovecot, mailbox_user: User
) -> None:
    store.upsert_orders([ANN], DELIVERED)
    settings = _settings(store, sink, dovecot, mailbox_user)
    settings = settings.model_copy(
        update={"inbox": settings.inbox.model_copy(update={"reply_tokens": True})}
    )
    clock = FixedClock(DELIVERED + 7 * DAY)
    daemon = _daemon(settings, store, clock)
    await daemon.run_once()
    [sent] = sink.received
    reply_to = sent["Reply-To"].addresses[0].addr_spec
    assert reply_to.startswith("help+") and reply_to.endswith("@shop.example")

    forwarded = plain_mail(
        "ann.smith@work.example", "Fwd: kettle", "Writing from work: all fine.",
        message_id="<w@work.example>", to=reply_to,
    )  # fmt: skip
    dovecot.append(mailbox_user, "INBOX", forwarded, when=clock.now())
    assert daemon.ingest is not None
    await daemon.ingest.run_once()
    [row] = store.inbound_messages()
    assert (row.order_id, row.match_method) == (ANN.order_id, MatchMethod.REPLY_TOKEN.value)


async def test_old_mail_in_a_newly_connected_mailbox_reopens_no_complaint(
    store: Store, sink: Sink, dovecot: Dovecot, mailbox_user: User
) -> None:
    store.upsert_orders([ANN], DELIVERED)
    clock = FixedClock(DELIVERED + 100 * DAY)
    old = DELIVERED + 5 * DAY
    complaint = plain_mail("ann@buyer.example", "Broken", "It arrived broken.", message_id="<o1@b>")
    leave = plain_mail("ann@buyer.example", "unsubscribe", "", message_id="<o2@b>")
    dovecot.append(mailbox_user, "INBOX", complaint, when=old)
    dovecot.append(mailbox_user, "INBOX", leave, when=old + DAY)
    settings = _settings(store, sink, dovecot, mailbox_user)
    await Ingest(settings, store, load_rules(settings.inbox.rules_file), clock).run_once()

    assert [r.kind for r in store.inbound_messages()] == [
        MessageKind.COMPLAINT,
        MessageKind.UNSUBSCRIBE,
    ]
    assert store.histories()[0].disputes == ()
    assert [s.email for s in store.suppressions()] == [ANN.buyer_email]


def test_fixture_folder_exists() -> None:
    assert (Path(__file__).parents[1] / "fixtures" / "mail").is_dir()
