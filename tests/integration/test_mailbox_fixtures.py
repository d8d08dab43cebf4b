"""Every fixture message through a real Dovecot: stored once, classified, threaded, acted on.

The unit tests judge each fixture's classification; this sweep checks what the worker then
does about it in the store: disputes opened and closed, reviews, replies, suppressions. The
marketplace fixtures arrive as the seller's receiving server would store them, stamped with
its Authentication-Results; the bounce fixtures are about mail the worker never sent, so
they suppress no one (tests/integration/test_proof_of_origin.py covers the other side).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from tests.conftest import ROOT, settings_for
from tests.dovecot import Dovecot, User
from tests.unit.test_classify import TABLE
from worker.clock import FixedClock
from worker.domain import BUYER_KINDS, DisputeKind, MessageKind, Order, SuppressionReason
from worker.inbound import parse
from worker.ingest import Ingest
from worker.rules import load_rules
from worker.sink import Sink
from worker.store import InboundRow, Store

MAIL = Path(__file__).parents[1] / "fixtures" / "mail"
NOW = datetime(2026, 3, 20, 12, 0, tzinfo=UTC)
MINUTE = timedelta(minutes=1)
TRUSTED = "mx.shop.example"
K = MessageKind
CLOSED = {
    "amazon": "amazon_a_to_z_closed",
    "ebay": "ebay_case_closed",
    "aliexpress": "aliexpress_dispute_closed",
}


def _fixtures() -> list[tuple[str, bytes]]:
    """All fixtures, each marketplace's 'closed' after its 'opened', as mail would arrive."""
    paths = sorted(MAIL.glob("*/*.eml"), key=lambda p: ("closed" in p.stem, str(p)))
    return [(f"{p.parent.name}/{p.stem}", p.read_bytes()) for p in paths]


def _as_received(name: str, raw: bytes) -> bytes:
    """A marketplace's mail passes DMARC at the seller's server, which says so on top."""
    if not name.startswith("marketplace/"):
        return raw
    domain = parse(raw).sender.rpartition("@")[2]
    return f"Authentication-Results: {TRUSTED}; dmarc=pass header.from={domain}\r\n".encode() + raw


def _marketplace(number: str) -> str:
    if number.startswith("#"):
        return "shop"
    return {19: "amazon", 14: "ebay", 16: "aliexpress"}[len(number)]


def _orders(fixtures: list[tuple[str, bytes]]) -> list[Order]:
    """An order for every number a fixture names, bought by that fixture's sender unless a
    marketplace sent it; and one order for each buyer who wrote without a number."""
    orders: dict[str, Order] = {}
    delivered = NOW - timedelta(days=20)
    for name, raw in fixtures:
        expect = TABLE.get(name)
        sender = parse(raw).sender
        if expect is None or expect.kind is K.SELLER or not sender:
            continue
        buyer = f"buyer-of-{len(orders)}@buyer.example" if expect.marketplace else sender
        for number in expect.numbers:
            orders.setdefault(
                number, Order(number, _marketplace(number), buyer, delivered_at=delivered)
            )
        if not expect.numbers and expect.kind in BUYER_KINDS:
            orders.setdefault(
                sender, Order(f"SHOP-{len(orders)}", "shop", sender, delivered_at=delivered)
            )
    return list(orders.values())


async def test_every_fixture_is_stored_once_and_acted_on(
    store: Store, sink: Sink, dovecot: Dovecot, mailbox_user: User
) -> None:
    fixtures = _fixtures()
    store.upsert_orders(_orders(fixtures), NOW)
    for n, (name, raw) in enumerate(fixtures):
        when = NOW - timedelta(hours=2) + n * MINUTE
        dovecot.append(mailbox_user, "INBOX", _as_received(name, raw), when=when)
    settings = settings_for(
        store,
        sink.port,
        imap=dovecot.imap_settings(mailbox_user, batch_size=7).model_dump(),
        inbox={"rules_file": str(ROOT / "config" / "mail-rules.yaml")},
        unsubscribe={"mailto": "unsubscribe@shop.example"},
        authentication={"authserv_ids": [TRUSTED], "verify_dkim": False},
    )
    ingest = Ingest(settings, store, load_rules(settings.inbox.rules_file), FixedClock(NOW))

    report = await ingest.run_once()

    rows = store.inbound_messages()
    assert (report.total, len(rows)) == (len(fixtures), len(fixtures))
    by_uid = {row.uid: row for row in rows}
    named = {name: by_uid[uid] for uid, (name, _) in enumerate(fixtures, start=1)}
    for name, row in named.items():
        if name in TABLE:
            assert row.kind is TABLE[name].kind, name
        else:
            assert row.kind in {K.BOUNCE_HARD, K.BOUNCE_SOFT, K.BOUNCE_POLICY} or name.endswith(
                "human_undeliverable"
            ), name
    _disputes_follow_the_mail(store, named)
    _reviews_replies_and_suppressions_follow_the_mail(store, named)
    assert all(named[n].parse_errors for n in ("broken/missing_boundary", "broken/unknown_charset"))
    again = await ingest.run_once()
    assert (again.total, again.duplicates) == (0, 0), "the checkpoint holds: nothing refetched"


def _disputes_follow_the_mail(store: Store, named: dict[str, InboundRow]) -> None:
    histories = {h.order.order_id: h for h in store.histories()}
    for name, expect in TABLE.items():
        row = named[name]
        if expect.kind not in (K.COMPLAINT, K.DISPUTE_OPENED):
            continue
        order_id = row.order_id
        assert order_id is not None, f"{name} must thread to an order"
        kinds = {d.kind for d in histories[order_id].disputes if d.order_id == order_id}
        accepted = expect.dispute if isinstance(expect.dispute, frozenset) else {expect.dispute}
        assert kinds & accepted, name
    for market, kind in (("amazon", DisputeKind.A_TO_Z), ("ebay", DisputeKind.EBAY_CASE),
                         ("aliexpress", DisputeKind.ALIEXPRESS_DISPUTE)):  # fmt: skip
        closed = named[f"marketplace/{CLOSED[market]}"]
        disputes = histories[closed.order_id].disputes
        assert [d.closed_at is not None for d in disputes if d.kind is kind] == [True], market


def _reviews_replies_and_suppressions_follow_the_mail(
    store: Store, named: dict[str, InboundRow]
) -> None:
    histories = {h.order.order_id: h for h in store.histories()}
    buyer_wrote: dict[str, int] = {}
    for name, expect in TABLE.items():
        order_id = named[name].order_id
        if expect.kind is K.REVIEW:
            assert order_id is not None, name
            assert [r.rating for r in histories[order_id].reviews] == [expect.rating], name
        if expect.kind in BUYER_KINDS and order_id is not None:
            buyer_wrote[order_id] = buyer_wrote.get(order_id, 0) + 1
    replies = {o: len(h.replies) for o, h in histories.items() if h.replies}
    assert replies == buyer_wrote, "one reply per buyer message; none for auto-replies"
    suppressed = {s.email: s.reason for s in store.suppressions()}
    for name, expect in TABLE.items():
        if expect.kind is K.UNSUBSCRIBE:
            sender = named[name].sender
            assert suppressed.get(sender) is SuppressionReason.UNSUBSCRIBE, name
    hard = [r for r in named.values() if r.kind is K.BOUNCE_HARD]
    assert hard
    assert not any(r.bounce_recipient in suppressed for r in hard), "not bounces of our sends"
    assert all("not tied to one of our sends" in r.withheld for r in hard)
    policy = [r for r in named.values() if r.kind is K.BOUNCE_POLICY]
    assert policy and not any(r.bounce_recipient in suppressed for r in policy)
