"""Threading rules, in their order of confidence; a subject alone never threads."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from worker.domain import Bounce, Classification, MatchMethod, MessageKind, Order
from worker.inbound import parse
from worker.thread import Candidates, SendRef, Threaded, match, wanted

NOW = datetime(2026, 4, 1, 12, 0, tzinfo=UTC)
RECENT = timedelta(days=180)
REPLY = Classification(MessageKind.REPLY, "no other rule matched")


def _order(order_id: str, buyer: str = "mia@buyer.example", days_ago: int = 30) -> Order:
    return Order(order_id, "shop", buyer, delivered_at=NOW - timedelta(days=days_ago))


def _mail(headers: str = "", sender: str = "mia@buyer.example") -> bytes:
    text = f"From: {sender}\nTo: help@shop.example\nSubject: hello\n{headers}\nbody\n"
    return text.replace("\n", "\r\n").encode()


def _thread(raw: bytes, found: Candidates, verdict: Classification = REPLY) -> Threaded:
    message = parse(raw)
    return match(wanted(message, verdict), found, verdict, now=NOW, recent=RECENT)


def test_our_message_id_in_in_reply_to_wins_over_everything_else() -> None:
    found = Candidates(
        sends_by_message_id={"<w7.aa@shop.example>": SendRef("1001", 7)},
        orders_by_message_id={"<w7.aa@shop.example>": "2002"},
        orders_of_counterpart=(_order("3003"),),
    )
    threaded = _thread(_mail("In-Reply-To: <w7.aa@shop.example>"), found)
    assert threaded.match is not None
    assert (threaded.match.order_id, threaded.match.method) == ("1001", MatchMethod.SEND_MESSAGE_ID)
    assert threaded.send_id == 7


def test_a_message_id_deep_in_references_still_threads() -> None:
    found = Candidates(sends_by_message_id={"<w3.bb@shop.example>": SendRef("1001", 3)})
    refs = "References: <w3.bb@shop.example> <x1@buyer.example> <x2@buyer.example>"
    threaded = _thread(_mail(refs), found)
    assert threaded.match and threaded.match.method is MatchMethod.SEND_MESSAGE_ID


def test_the_relays_rewritten_id_threads_to_the_send() -> None:
    ses = "<0100018c2f6a1b2c-5d6e7f80-1a2b-4c3d-9e8f-0a1b2c3d4e5f-000000@email.amazonses.com>"
    relay_id = ses[1:].split("@")[0]
    found = Candidates(sends_by_relay_id={relay_id: SendRef("1001", 9)})
    threaded = _thread(_mail(f"In-Reply-To: {ses}"), found)
    assert threaded.match and threaded.match.method is MatchMethod.RELAY_MESSAGE_ID
    assert threaded.send_id == 9


def test_an_earlier_message_of_the_conversation_threads() -> None:
    found = Candidates(orders_by_message_id={"<q1@buyer.example>": "1001"})
    threaded = _thread(_mail("In-Reply-To: <q1@buyer.example>"), found)
    assert threaded.match and threaded.match.method is MatchMethod.CONVERSATION


def test_reply_token_in_the_recipient_threads() -> None:
    raw = _mail().replace(b"To: help@shop.example", b"To: help+3f9a0c1d2e4b5a6c@shop.example")
    threaded = _thread(raw, Candidates(orders_by_token={"3f9a0c1d2e4b5a6c": "1001"}))
    assert threaded.match and threaded.match.method is MatchMethod.REPLY_TOKEN


def test_order_number_threads_only_when_the_sender_is_the_buyer() -> None:
    verdict = Classification(MessageKind.REPLY, "x", order_numbers=("302-1234567-7654321",))
    found = Candidates(orders_by_number={"302-1234567-7654321": _order("302-1234567-7654321")})
    mine = _thread(_mail(), found, verdict)
    assert mine.match and mine.match.method is MatchMethod.ORDER_NUMBER
    stranger = _thread(_mail(sender="someone@else.example"), found, verdict)
    assert stranger.match is None


def test_order_number_from_an_authenticated_marketplace_threads() -> None:
    verdict = Classification(
        MessageKind.DISPUTE_OPENED,
        "rule=amazon-a-to-z-claim",
        marketplace="amazon",
        order_numbers=("302-1234567-7654321",),
    )
    found = Candidates(orders_by_number={"302-1234567-7654321": _order("302-1234567-7654321")})
    message = parse(_mail(sender="atoz-guarantee-no-reply@amazon.com"))
    proven = wanted(message, verdict, authenticated=True)
    threaded = match(proven, found, verdict, now=NOW, recent=RECENT)
    assert threaded.match and threaded.match.method is MatchMethod.ORDER_NUMBER
    assert "authenticated marketplace" in threaded.match.detail
    # The same From header with no one vouching for it names an order it cannot claim.
    assert (
        _thread(
            raw=_mail(sender="atoz-guarantee-no-reply@amazon.com"), found=found, verdict=verdict
        ).match
        is None
    )


def test_a_signed_return_path_ties_a_report_to_its_send_first() -> None:
    verdict = Classification(
        MessageKind.BOUNCE_HARD, "dsn_status=5.1.1", bounce=Bounce("5.1.1", "mia@buyer.example")
    )
    found = Candidates(
        sends_by_id={12: SendRef("1001", 12, "mia@buyer.example")},
        sends_by_message_id={"<w7.aa@shop.example>": SendRef("2002", 7)},
    )
    message = parse(_mail("In-Reply-To: <w7.aa@shop.example>", sender="mailer-daemon@mx.example"))
    threaded = match(
        wanted(message, verdict, return_path_sends=(12,)), found, verdict, now=NOW, recent=RECENT
    )
    assert threaded.match and threaded.match.method is MatchMethod.RETURN_PATH
    assert threaded.send == SendRef("1001", 12, "mia@buyer.example")


@pytest.mark.parametrize(
    ("orders", "expected"),
    [
        ((_order("1001"),), "1001"),
        ((_order("1001"), _order("1002", days_ago=10)), None),  # two recent: ambiguous
        ((_order("1001"), _order("0999", days_ago=400)), "1001"),  # the old one does not count
        ((_order("0999", days_ago=400),), None),
    ],
)
def test_buyer_address_threads_only_a_single_recent_order(
    orders: tuple[Order, ...], expected: str | None
) -> None:
    threaded = _thread(_mail(), Candidates(orders_of_counterpart=orders))
    assert (threaded.match.order_id if threaded.match else None) == expected
    if threaded.match:
        assert threaded.match.method is MatchMethod.BUYER_ADDRESS


def test_subject_alone_never_threads() -> None:
    raw = _mail().replace(b"Subject: hello", b"Subject: Re: Your order 302-1234567-7654321")
    assert _thread(raw, Candidates()).match is None


def test_a_bounce_threads_by_the_failed_messages_id_and_its_recipient() -> None:
    bounce = Bounce("5.1.1", "mia@buyer.example", "<w5.cc@shop.example>", "user unknown")
    verdict = Classification(MessageKind.BOUNCE_HARD, "dsn_status=5.1.1", bounce=bounce)
    raw = _mail(sender="MAILER-DAEMON@mx.buyer.example")
    message = parse(raw)
    want = wanted(message, verdict)
    assert want.message_ids[0] == "<w5.cc@shop.example>"
    assert want.counterpart == "mia@buyer.example"
    found = Candidates(sends_by_message_id={"<w5.cc@shop.example>": SendRef("1001", 5)})
    threaded = match(want, found, verdict, now=NOW, recent=RECENT)
    assert threaded.match and threaded.send_id == 5


def test_the_sellers_own_answer_threads_by_its_recipient() -> None:
    verdict = Classification(MessageKind.SELLER, "from=help@shop.example")
    raw = (
        b"From: help@shop.example\r\nTo: Mia <mia@buyer.example>\r\nSubject: Re: lid\r\n\r\nok\r\n"
    )
    threaded = _thread(raw, Candidates(orders_of_counterpart=(_order("1001"),)), verdict)
    assert threaded.match and threaded.match.order_id == "1001"
