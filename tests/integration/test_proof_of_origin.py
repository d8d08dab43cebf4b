"""Forged mail changes nothing; the same mail, proven, does. Through a real Dovecot.

The attacker writes marketplace notices (closing a claim, leaving feedback), delivery
reports and unsubscribes about a buyer. Only what the seller's receiving server vouches
for (Authentication-Results with its authserv-id), what DKIM proves, or what carries the
worker's own signed return path or Message-ID may act.
"""

from __future__ import annotations

import email
import email.policy
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dkim
import pytest

from tests.certificates import make_dkim_key
from tests.conftest import ROOT, settings_for
from tests.dovecot import Dovecot, User
from worker.clock import FixedClock
from worker.config import Settings
from worker.daemon import Daemon, load_checked_campaigns
from worker.domain import DisputeKind, MessageKind, Order, SendState, SuppressionReason
from worker.ingest import Ingest
from worker.origin import DnsLookup
from worker.render import Renderer
from worker.return_path import Signer
from worker.rules import load_rules
from worker.sink import Sink
from worker.store import Store

MARKETPLACE = Path(__file__).parents[1] / "fixtures" / "mail" / "marketplace"
NOW = datetime(2026, 3, 20, 12, 0, tzinfo=UTC)
OPENED = NOW - timedelta(days=5)
TRUSTED = "mx.shop.example"
AMAZON_ORDER = "112-4567890-1234567"  # named by the fixture notice
EBAY_ORDER = "24-11223-44556"
ANN = Order(
    AMAZON_ORDER, "amazon", "ann@buyer.example", "Ann", delivered_at=NOW - timedelta(days=9)
)
BEN = Order(EBAY_ORDER, "ebay", "ben@buyer.example", "Ben", delivered_at=NOW - timedelta(days=9))
CARL = Order("#1042", "shop", "carl@buyer.example", "Carl", delivered_at=NOW - timedelta(days=9))
SIGNER = Signer(b"test-key-" * 4)


def _settings(store: Store, sink: Sink, dovecot: Dovecot, user: User) -> Settings:
    return settings_for(
        store,
        sink.port,
        imap=dovecot.imap_settings(user).model_dump(),
        inbox={"rules_file": str(ROOT / "config" / "mail-rules.yaml")},
        authentication={"authserv_ids": [TRUSTED], "verify_dkim": True, "dns_timeout_s": 1},
    )


def _ingest(settings: Settings, store: Store, dns: DnsLookup | None = None) -> Ingest:
    rules = load_rules(settings.inbox.rules_file)
    return Ingest(settings, store, rules, FixedClock(NOW), signer=SIGNER, dkim_dns=dns or _no_keys)


def _no_keys(name: bytes, timeout: float = 5) -> bytes | None:
    return None


def _stamped(raw: bytes, *headers: str, sender: str | None = None) -> bytes:
    """The fixture as the seller's receiving server would store it, with other headers."""
    head, _, body = raw.replace(b"\r\n", b"\n").partition(b"\n\n")
    lines = [line for line in head.split(b"\n") if not line.lower().startswith(b"from:")]
    origin = sender or _from_of(head)
    new = [h.encode() for h in headers] + [f"From: {origin}".encode(), *lines]
    return b"\r\n".join(new) + b"\r\n\r\n" + body.replace(b"\n", b"\r\n")


def _from_of(head: bytes) -> str:
    line = next(x for x in head.split(b"\n") if x.lower().startswith(b"from:"))
    return line.split(b":", 1)[1].decode().strip()


def _ar(text: str, authserv: str = TRUSTED) -> str:
    return f"Authentication-Results: {authserv}; {text}"


def _fixture(name: str) -> bytes:
    return (MARKETPLACE / f"{name}.eml").read_bytes()


def _open_disputes(store: Store) -> None:
    store.upsert_orders([ANN, BEN], NOW - timedelta(days=9))
    store.open_dispute(AMAZON_ORDER, DisputeKind.A_TO_Z, OPENED, source="marketplace:amazon")
    store.open_dispute(AMAZON_ORDER, DisputeKind.DAMAGED, OPENED, source="mailbox")
    store.open_dispute(AMAZON_ORDER, DisputeKind.REFUND, OPENED, source="manual")


def _still_open(store: Store) -> set[DisputeKind]:
    history = next(h for h in store.histories() if h.order.order_id == AMAZON_ORDER)
    return {d.kind for d in history.disputes if d.closed_at is None}


FORGERIES = {
    "plain From forgery": (),
    "failed DMARC": (_ar("dmarc=fail (p=reject) header.from=amazon.com"),),
    "someone else's header": (
        _ar("dmarc=pass header.from=amazon.com", authserv="mx.attacker.example"),
    ),
    "pass for another domain": (_ar("dmarc=pass header.from=attacker.example"),),
}


async def test_forged_closing_notices_and_feedback_change_nothing(
    store: Store, sink: Sink, dovecot: Dovecot, mailbox_user: User
) -> None:
    _open_disputes(store)
    closing, feedback = _fixture("amazon_a_to_z_closed"), _fixture("ebay_feedback_positive")
    n = 0
    for headers in FORGERIES.values():
        for raw in (closing, feedback):
            n += 1
            dovecot.append(mailbox_user, "INBOX", _stamped(raw, *headers), when=NOW)
    encoded_word = (
        "=?utf-8?q?Amazon_=3Catoz-guarantee-no-reply=40amazon.com=3E?= <eve@attacker.example>"
    )
    forged = _stamped(closing, _ar("dmarc=pass header.from=attacker.example"), sender=encoded_word)
    dovecot.append(mailbox_user, "INBOX", forged, when=NOW)
    settings = _settings(store, sink, dovecot, mailbox_user)

    report = await _ingest(settings, store).run_once()

    assert report.total == n + 1
    assert _still_open(store) == {DisputeKind.A_TO_Z, DisputeKind.DAMAGED, DisputeKind.REFUND}
    assert all(not h.reviews for h in store.histories())
    relaxing = {MessageKind.DISPUTE_CLOSED, MessageKind.REVIEW}
    notices = [r for r in store.inbound_messages() if r.kind in relaxing]
    assert len(notices) == 2 * len(FORGERIES)  # the encoded-word one is no Amazon notice
    assert all("withheld: not authenticated" in r.withheld for r in notices)
    encoded = next(r for r in store.inbound_messages() if "eve@" in r.sender)
    assert encoded.sender == "eve@attacker.example"  # the addr-spec, not the encoded word


async def test_authenticated_notices_act_and_close_only_what_the_marketplace_opened(
    store: Store, sink: Sink, dovecot: Dovecot, mailbox_user: User
) -> None:
    _open_disputes(store)
    closing = _stamped(_fixture("amazon_a_to_z_closed"), _ar("dmarc=pass header.from=amazon.com"))
    feedback = _stamped(_fixture("ebay_feedback_positive"), _ar("dkim=pass header.d=ebay.com"))
    dovecot.append(mailbox_user, "INBOX", closing, when=NOW)
    dovecot.append(mailbox_user, "INBOX", feedback, when=NOW)
    settings = _settings(store, sink, dovecot, mailbox_user)

    await _ingest(settings, store).run_once()

    # The A-to-z claim is closed; the buyer's complaint and the agent's dispute stay open.
    assert _still_open(store) == {DisputeKind.DAMAGED, DisputeKind.REFUND}
    ben = next(h for h in store.histories() if h.order.order_id == EBAY_ORDER)
    assert [r.rating for r in ben.reviews] == [5]
    rows = store.inbound_messages()
    assert all(not r.withheld and "pass" in r.authentication for r in rows)


async def test_without_a_trusted_header_dkim_is_checked_by_the_worker(
    store: Store, sink: Sink, dovecot: Dovecot, mailbox_user: User, tmp_path: Path
) -> None:
    _open_disputes(store)
    pem, record = make_dkim_key(tmp_path)
    raw = _stamped(_fixture("amazon_a_to_z_closed"))
    signed = dkim.sign(raw, b"s1", b"amazon.com", pem, include_headers=[b"from", b"subject"])
    dovecot.append(mailbox_user, "INBOX", bytes(signed) + raw, when=NOW)
    settings = _settings(store, sink, dovecot, mailbox_user)

    def dns(name: bytes, timeout: float = 5) -> bytes | None:
        return record if name == b"s1._domainkey.amazon.com." else None

    await _ingest(settings, store, dns).run_once()

    assert _still_open(store) == {DisputeKind.DAMAGED, DisputeKind.REFUND}
    (row,) = store.inbound_messages()
    assert "dkim verified d=amazon.com" in row.authentication


# Reports and unsubscribes: tied to what we sent, or acting on no buyer ---------------------


async def _one_sent_check_in(store: Store, sink: Sink, settings: Settings) -> tuple[str, str]:
    """A real pass sends Carl's check-in; returns (envelope sender, Message-ID) as received."""
    store.upsert_orders([CARL], NOW - timedelta(days=9))
    renderer = Renderer(settings.templates_dir, settings.default_locale)
    campaigns = load_checked_campaigns(settings, renderer)
    at = NOW - timedelta(days=2) + timedelta(hours=1)  # a Wednesday, in the send window
    daemon = Daemon(settings, store, campaigns, renderer, FixedClock(at), signer=SIGNER)
    await daemon.run_pass()
    (sent,) = [s for s in store.sends() if s.state is SendState.SENT]
    (path,) = (sink.options.maildir / "new").iterdir()
    received = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
    assert sent.message_id == received["Message-ID"]
    return str(received["Return-Path"]).strip("<>"), str(sent.message_id)


def _dsn(to: str, recipient: str, original_id: str, *, status: str = "5.1.1") -> bytes:
    return (
        f"From: Mail Delivery System <MAILER-DAEMON@mx.buyer.example>\r\n"
        f"To: {to}\r\n"
        f"Subject: Undelivered Mail Returned to Sender\r\n"
        f"Message-ID: <dsn-{abs(hash((to, recipient, original_id)))}@mx.buyer.example>\r\n"
        f"MIME-Version: 1.0\r\n"
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\r\n\r\n'
        f"--B\r\nContent-Type: text/plain\r\n\r\nI could not deliver your message.\r\n"
        f"--B\r\nContent-Type: message/delivery-status\r\n\r\n"
        f"Reporting-MTA: dns; mx.buyer.example\r\n\r\n"
        f"Final-Recipient: rfc822; {recipient}\r\nAction: failed\r\nStatus: {status}\r\n"
        f"Diagnostic-Code: smtp; 550 {status} <{recipient}>: Recipient address rejected: "
        f"User unknown\r\n"
        f"--B\r\nContent-Type: text/rfc822-headers\r\n\r\n"
        f"From: service@shop.example\r\nTo: {recipient}\r\nMessage-ID: {original_id}\r\n"
        f"--B--\r\n"
    ).encode()


async def test_reports_suppress_only_when_tied_to_our_send(
    store: Store, sink: Sink, dovecot: Dovecot, mailbox_user: User
) -> None:
    settings = _settings(store, sink, dovecot, mailbox_user)
    return_path, _ = await _one_sent_check_in(store, sink, settings)
    assert SIGNER.sends_in((return_path,)), return_path  # the envelope carries our token
    buyer = CARL.buyer_email
    strangers = [
        _dsn("help@shop.example", buyer, "<guess-1@shop.example>"),  # a third party's DSN
        (
            "From: eve@attacker.example\r\nTo: help@shop.example\r\n"
            f"X-Failed-Recipients: {buyer}\r\nSubject: Mail delivery failed\r\n\r\n"
            f"550 5.1.1 {buyer} user unknown\r\n"
        ).encode(),
        (
            "From: eve@attacker.example\r\nTo: help@shop.example\r\n"
            f"Subject: Re: order {CARL.order_id}\r\n\r\nunsubscribe\r\n"
        ).encode(),
    ]
    for raw in strangers:
        dovecot.append(mailbox_user, "INBOX", raw, when=NOW)
    ingest = _ingest(settings, store)
    await ingest.run_once()
    assert {s.email for s in store.suppressions()} == {"eve@attacker.example"}
    assert buyer not in {s.email for s in store.suppressions()}

    dovecot.append(mailbox_user, "INBOX", _dsn(return_path, buyer, "<x@y>"), when=NOW)
    await ingest.run_once()
    suppressed = {s.email: s.reason for s in store.suppressions()}
    assert suppressed.get(buyer) is SuppressionReason.HARD_BOUNCE


async def test_a_report_quoting_our_message_id_ties_too_and_arf_suppresses(
    store: Store, sink: Sink, dovecot: Dovecot, mailbox_user: User
) -> None:
    settings = _settings(store, sink, dovecot, mailbox_user)
    _, message_id = await _one_sent_check_in(store, sink, settings)
    buyer = CARL.buyer_email
    arf = (
        "From: feedbackloop@isp.example\r\nTo: help@shop.example\r\nSubject: complaint\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=feedback-report; boundary="F"\r\n\r\n'
        "--F\r\nContent-Type: text/plain\r\n\r\nThis is an abuse report.\r\n"
        "--F\r\nContent-Type: message/feedback-report\r\n\r\n"
        "Feedback-Type: abuse\r\nUser-Agent: isp-fbl/1.0\r\nVersion: 1\r\n"
        f"Original-Rcpt-To: {buyer}\r\n"
        "--F\r\nContent-Type: text/rfc822-headers\r\n\r\n"
        f"From: service@shop.example\r\nTo: {buyer}\r\nMessage-ID: {message_id}\r\n"
        "--F--\r\n"
    ).encode()
    dovecot.append(mailbox_user, "INBOX", arf, when=NOW)

    await _ingest(settings, store).run_once()

    (row,) = store.inbound_messages()
    assert row.kind is MessageKind.SPAM_COMPLAINT
    assert {s.email: s.reason for s in store.suppressions()} == {
        buyer: SuppressionReason.SPAM_COMPLAINT
    }


@pytest.mark.parametrize("forged_id", ["<w1.aaaaaaaaaaaaaaaaaaaa@shop.example>", "<w1.0@x>"])
async def test_a_guessed_message_id_ties_nothing(
    store: Store, sink: Sink, dovecot: Dovecot, mailbox_user: User, forged_id: str
) -> None:
    settings = _settings(store, sink, dovecot, mailbox_user)
    await _one_sent_check_in(store, sink, settings)
    dovecot.append(
        mailbox_user, "INBOX", _dsn("help@shop.example", CARL.buyer_email, forged_id), when=NOW
    )

    await _ingest(settings, store).run_once()

    assert store.suppressions() == []
    (row,) = store.inbound_messages()
    assert "not tied to one of our sends" in row.withheld
