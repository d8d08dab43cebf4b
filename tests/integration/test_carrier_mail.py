"""A carrier's "your parcel was delivered" mail, through a real Dovecot: proven, it sets the
delivery event of the order holding its tracking number, as a shipments row would, and the
plan counts from it; forged, or naming no parcel of ours, it is stored and does nothing."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path

import dkim
from structlog.testing import capture_logs

from tests.certificates import make_dkim_key
from tests.dovecot import Dovecot, User
from tests.integration.test_proof_of_origin import _settings  # the trusted-server setup
from worker.clock import FixedClock
from worker.config import Settings
from worker.daemon import Daemon, load_checked_campaigns
from worker.domain import MatchMethod, MessageKind, Order
from worker.ingest import Ingest
from worker.origin import DnsLookup
from worker.render import Renderer
from worker.return_path import Signer
from worker.rules import load_rules
from worker.sink import Sink
from worker.store import InboundRow, Store

NOW = datetime(2026, 3, 20, 12, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
TRUSTED = "mx.shop.example"
SIGNER = Signer(b"test-key-" * 4)
MIA_NUMBER = "00340434161234567890"
LEO_NUMBER = "00340434169876543210"


def _order(order_id: str, buyer: str, number: str) -> Order:
    return Order(
        order_id,
        "ebay",
        buyer,
        buyer.split("@")[0].title(),
        country="DE",
        ordered_at=NOW - 8 * DAY,
        shipped_at=NOW - 6 * DAY,
        carrier="DHL",
        tracking_number=number,
    )


# Mia's number is stored as the export printed it, in groups: the mail names it compact.
MIA = _order("12-34567-89012", "mia@buyer.example", "00340 43416 1234 5678 90")
MIA_TOO = _order("12-34567-89013", "mia@buyer.example", MIA_NUMBER)  # the same parcel
LEO = _order("12-34567-89014", "leo@buyer.example", LEO_NUMBER)


def _no_keys(name: bytes, timeout: float = 5) -> bytes | None:
    return None


def _ingest(settings: Settings, store: Store, dns: DnsLookup = _no_keys) -> Ingest:
    rules = load_rules(settings.inbox.rules_file)
    return Ingest(settings, store, rules, FixedClock(NOW), signer=SIGNER, dkim_dns=dns)


def _dhl(number: str, *, written: datetime, proven: bool, tag: str) -> bytes:
    """DHL's notice as the seller's receiving server stores it: stamped with its verdict."""
    message = EmailMessage()
    if proven:
        message["Authentication-Results"] = (
            f"{TRUSTED}; dkim=pass header.d=dhl.de; dmarc=pass header.from=dhl.de"
        )
    message["From"] = "DHL Paket <noreply@dhl.de>"
    message["To"] = "service@shop.example"
    message["Subject"] = f"Ihre DHL Sendung {number} wurde zugestellt"
    message["Date"] = format_datetime(written)
    message["Message-ID"] = f"<{tag}.{number}@dhl.de>"
    message["List-Unsubscribe"] = "<https://www.dhl.de/abmelden>"
    message["Auto-Submitted"] = "auto-generated"
    message.set_content(
        f"Hallo,\n\nIhre Sendung {number} wurde heute erfolgreich zugestellt.\n"
        "Ablageort: Briefkasten\n\nIhr DHL Team\n"
    )
    return message.as_bytes()


def _daemon(settings: Settings, store: Store) -> Daemon:
    renderer = Renderer(settings.templates_dir, settings.default_locale)
    campaigns = load_checked_campaigns(settings, renderer)
    return Daemon(settings, store, campaigns, renderer, FixedClock(NOW), signer=SIGNER)


def _delivery_sources(settings: Settings, store: Store) -> dict[str, str]:
    """What ``worker plan`` shows for each order's delivered-triggered steps."""
    daemon = _daemon(settings, store)
    return {
        d.order_id: d.delivery.source
        for plan, _ in daemon.plan_batches_with_histories(NOW)
        for d in plan.decisions
        if d.delivery is not None
    }


def _row(store: Store, number: str) -> InboundRow:
    return next(r for r in store.inbound_messages() if number in r.subject)


async def test_an_authenticated_carrier_notice_sets_the_delivery_event(
    store: Store, sink: Sink, dovecot: Dovecot, mailbox_user: User
) -> None:
    store.upsert_orders([MIA, MIA_TOO, LEO], NOW - 8 * DAY)
    settings = _settings(store, sink, dovecot, mailbox_user)
    assert set(_delivery_sources(settings, store).values()) == {"estimated"}
    await _daemon(settings, store).run_pass()  # planned: Mia's next look is days away
    asleep = store.next_due(MIA.buyer_email)
    assert asleep is not None and asleep > NOW
    written = NOW - 3 * HOUR
    raw = _dhl(MIA_NUMBER, written=written, proven=True, tag="a")
    dovecot.append(mailbox_user, "INBOX", raw, when=NOW - 2 * HOUR)

    with capture_logs() as logs:
        await _ingest(settings, store).run_once()

    [told] = [e for e in logs if e["event"] == "parcel.delivered"]
    assert (told["orders"], told["at"]) == ([MIA.order_id, MIA_TOO.order_id], written.isoformat())
    for order_id in (MIA.order_id, MIA_TOO.order_id):  # one parcel, both orders
        order = store.order(order_id)
        assert order.delivery_event_at == written
        assert (order.shipment_status, order.shipment_status_at) == ("delivered", written)
    assert store.order(LEO.order_id).delivery_event_at is None
    woken = store.next_due(MIA.buyer_email)
    assert woken is not None and woken < NOW, "the delivery wakes the buyer for the next pass"
    sources = _delivery_sources(settings, store)
    assert sources[MIA.order_id] == sources[MIA_TOO.order_id] == "event"
    assert sources[LEO.order_id] == "estimated"
    row = _row(store, MIA_NUMBER)
    assert row.kind is MessageKind.DELIVERED
    assert f"carrier=dhl phrase=de:wurde zugestellt tracking={MIA_NUMBER}" == row.evidence
    assert row.match_method == MatchMethod.TRACKING_NUMBER and not row.withheld
    # Never an answer to wait for, never a dispute or a suppression.
    assert store.awaiting(NOW) == []
    assert all(not h.disputes for h in store.histories())
    assert store.suppressions() == []


async def test_a_forged_or_unknown_notice_changes_nothing(
    store: Store, sink: Sink, dovecot: Dovecot, mailbox_user: User
) -> None:
    store.upsert_orders([LEO], NOW - 8 * DAY)
    forged = _dhl(LEO_NUMBER, written=NOW - 3 * HOUR, proven=False, tag="forged")
    unknown = _dhl("00340434165555555555", written=NOW - 3 * HOUR, proven=True, tag="unknown")
    dovecot.append(mailbox_user, "INBOX", forged, when=NOW - 2 * HOUR)
    dovecot.append(mailbox_user, "INBOX", unknown, when=NOW - 2 * HOUR)
    settings = _settings(store, sink, dovecot, mailbox_user)

    report = await _ingest(settings, store).run_once()

    assert report.total == 2
    leo = store.order(LEO.order_id)
    assert (leo.delivery_event_at, leo.shipment_status) == (None, None)
    assert _delivery_sources(settings, store)[LEO.order_id] == "estimated"
    withheld = _row(store, LEO_NUMBER)
    assert withheld.kind is MessageKind.DELIVERED and withheld.order_id is None
    assert withheld.withheld.startswith("delivery withheld: not authenticated as dhl.de")
    nobody = _row(store, "00340434165555555555")
    assert nobody.kind is MessageKind.DELIVERED and nobody.order_id is None
    assert "no order holds a tracking number it names" in nobody.withheld


async def test_a_notice_dated_in_the_future_counts_from_its_arrival(
    store: Store, sink: Sink, dovecot: Dovecot, mailbox_user: User
) -> None:
    """And an order placed after the delivery is not that parcel's (numbers are reused)."""
    # Ordered a week ago: after the 30-day-old delivery the second notice reports.
    reused = replace(
        _order("12-34567-89016", "eve@buyer.example", LEO_NUMBER), ordered_at=NOW - 7 * DAY
    )
    store.upsert_orders([MIA, reused], NOW - 8 * DAY)
    arrived = NOW - 2 * HOUR
    ahead = _dhl(MIA_NUMBER, written=NOW + 2 * DAY, proven=True, tag="ahead")
    old = _dhl(LEO_NUMBER, written=NOW - 30 * DAY, proven=True, tag="reused")
    dovecot.append(mailbox_user, "INBOX", ahead, when=arrived)
    dovecot.append(mailbox_user, "INBOX", old, when=arrived)
    settings = _settings(store, sink, dovecot, mailbox_user)

    await _ingest(settings, store).run_once()

    assert store.order(MIA.order_id).delivery_event_at == arrived
    assert store.order(reused.order_id).delivery_event_at is None


async def test_without_a_trusted_header_the_carriers_dkim_signature_proves_it(
    store: Store, sink: Sink, dovecot: Dovecot, mailbox_user: User, tmp_path: Path
) -> None:
    store.upsert_orders([MIA], NOW - 8 * DAY)
    pem, record = make_dkim_key(tmp_path)
    raw = _dhl(MIA_NUMBER, written=NOW - 3 * HOUR, proven=False, tag="dkim")
    signed = dkim.sign(raw, b"s1", b"dhl.de", pem, include_headers=[b"from", b"subject", b"date"])
    dovecot.append(mailbox_user, "INBOX", bytes(signed) + raw, when=NOW - 2 * HOUR)
    settings = _settings(store, sink, dovecot, mailbox_user)

    def dns(name: bytes, timeout: float = 5) -> bytes | None:
        return record if name == b"s1._domainkey.dhl.de." else None

    await _ingest(settings, store, dns).run_once()

    assert store.order(MIA.order_id).delivery_event_at == NOW - 3 * HOUR
    row = _row(store, MIA_NUMBER)
    assert "dkim verified d=dhl.de" in row.authentication and not row.withheld
