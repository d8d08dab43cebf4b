"""What each kind of message makes the worker do."""

from __future__ import annotations

from worker.domain import (
    Bounce,
    Classification,
    DisputeKind,
    Match,
    MatchMethod,
    MessageKind,
    SuppressionReason,
)
from worker.react import Reactions, react

MATCH = Match("1001", MatchMethod.SEND_MESSAGE_ID)
BUYER = "mia@buyer.example"


def test_hard_bounce_suppresses_the_original_recipient() -> None:
    bounce = Bounce("5.1.1", "old@buyer.example", None, "550 5.1.1 user unknown")
    verdict = Classification(MessageKind.BOUNCE_HARD, "dsn_status=5.1.1", bounce=bounce)
    done = react(verdict, MATCH, "mailer-daemon@mx.example", BUYER)
    assert [(s.email, s.reason) for s in done.suppress] == [
        ("old@buyer.example", SuppressionReason.HARD_BOUNCE)
    ]
    assert done == Reactions(suppress=done.suppress)


def test_soft_and_policy_bounces_suppress_no_one() -> None:
    soft = Classification(
        MessageKind.BOUNCE_SOFT, "dsn_status=4.2.2", bounce=Bounce("4.2.2", BUYER)
    )
    assert react(soft, MATCH, "mailer-daemon@x", BUYER) == Reactions(soft_bounce=BUYER)
    policy = Classification(
        MessageKind.BOUNCE_POLICY, "dsn_status=5.7.1", bounce=Bounce("5.7.1", BUYER)
    )
    assert react(policy, MATCH, "mailer-daemon@x", BUYER) == Reactions()


def test_auto_reply_is_recorded_only() -> None:
    verdict = Classification(MessageKind.AUTO_REPLY, "header=Auto-Submitted: auto-replied")
    assert react(verdict, MATCH, BUYER, BUYER) == Reactions()


def test_unsubscribe_suppresses_sender_and_the_orders_buyer() -> None:
    verdict = Classification(MessageKind.UNSUBSCRIBE, "keyword=de:abmelden")
    done = react(verdict, MATCH, "mia.work@office.example", BUYER)
    assert {s.email for s in done.suppress} == {"mia.work@office.example", BUYER}
    assert {s.reason for s in done.suppress} == {SuppressionReason.UNSUBSCRIBE}


def test_complaint_opens_a_dispute_of_its_kind_and_counts_as_a_reply() -> None:
    verdict = Classification(
        MessageKind.COMPLAINT, "keyword=en:not arrived", dispute_kind=DisputeKind.NOT_RECEIVED
    )
    assert react(verdict, MATCH, BUYER, BUYER) == Reactions(
        open_dispute=DisputeKind.NOT_RECEIVED, reply=True
    )


def test_unthreaded_complaint_still_holds_the_buyer() -> None:
    verdict = Classification(
        MessageKind.COMPLAINT, "keyword=en:refund", dispute_kind=DisputeKind.REFUND
    )
    assert react(verdict, None, BUYER, None) == Reactions(
        open_dispute=DisputeKind.REFUND, hold_buyer=BUYER
    )


def test_marketplace_events() -> None:
    opened = Classification(
        MessageKind.DISPUTE_OPENED, "rule=a-to-z", dispute_kind=DisputeKind.A_TO_Z
    )
    assert react(opened, MATCH, "x@amazon.com", BUYER).open_dispute is DisputeKind.A_TO_Z
    closed = Classification(MessageKind.DISPUTE_CLOSED, "rule=ebay-case-closed")
    assert react(closed, MATCH, "x@ebay.com", BUYER) == Reactions(close_disputes=True)
    review = Classification(MessageKind.REVIEW, "rule=ebay-feedback", rating=5)
    assert react(review, MATCH, "x@ebay.com", BUYER) == Reactions(review=True, rating=5)


def test_reply_needs_an_order_and_seller_mail_changes_nothing() -> None:
    reply = Classification(MessageKind.REPLY, "no other rule matched")
    assert react(reply, MATCH, BUYER, BUYER) == Reactions(reply=True)
    assert react(reply, None, BUYER, None) == Reactions()
    seller = Classification(MessageKind.SELLER, "from=help@shop.example")
    assert react(seller, MATCH, "help@shop.example", BUYER) == Reactions()


def test_old_mail_keeps_only_its_suppressions() -> None:
    complaint = Reactions(open_dispute=DisputeKind.REFUND, reply=True, hold_buyer=BUYER)
    assert complaint.only_suppressions() == Reactions()
    bounce = react(
        Classification(MessageKind.BOUNCE_SOFT, "dsn_status=4.2.2", bounce=Bounce("4.2.2", BUYER)),
        MATCH,
        "mailer-daemon@x",
        BUYER,
    )
    assert bounce.only_suppressions() == bounce
