"""What each kind of message makes the worker do, and what it must prove first."""

from __future__ import annotations

import pytest

from worker.domain import (
    Bounce,
    Classification,
    DisputeKind,
    Match,
    MatchMethod,
    MessageKind,
    SuppressionReason,
)
from worker.origin import Origin
from worker.react import CloseDisputes, Reactions, Standing, react

OURS = Match("1001", MatchMethod.SEND_MESSAGE_ID)
BY_NUMBER = Match("1001", MatchMethod.ORDER_NUMBER)
BUYER = "mia@buyer.example"
STRANGER = "eve@attacker.example"
NOBODY = Origin("", None, "no Authentication-Results from mx.shop.example")


def _origin(address: str) -> Origin:
    return Origin(address, address.rpartition("@")[2], "dmarc=pass")


def _standing(sender: str, *, verified: bool = False, sent_to: str | None = None) -> Standing:
    origin = _origin(sender) if verified else Origin(sender, None, "dmarc=fail")
    return Standing(sender, origin, buyer=BUYER, sent_to=sent_to)


def _bounce(kind: MessageKind, recipient: str, status: str = "5.1.1") -> Classification:
    return Classification(kind, f"dsn_status={status}", bounce=Bounce(status, recipient))


def test_a_hard_bounce_tied_to_our_send_suppresses_its_recipient() -> None:
    done = react(
        _bounce(MessageKind.BOUNCE_HARD, BUYER),
        OURS,
        _standing("mailer-daemon@mx.example", sent_to=BUYER),
    )
    assert [(s.email, s.reason) for s in done.suppress] == [(BUYER, SuppressionReason.HARD_BOUNCE)]
    assert not done.withheld


def test_a_report_without_our_token_or_message_id_suppresses_no_one() -> None:
    done = react(_bounce(MessageKind.BOUNCE_HARD, BUYER), None, _standing(STRANGER))
    assert done.suppress == () and done.soft_bounce is None
    assert "not tied to one of our sends" in done.withheld


def test_a_tied_report_that_names_someone_else_suppresses_no_one() -> None:
    done = react(
        _bounce(MessageKind.BOUNCE_HARD, "ceo@seller.example"),
        OURS,
        _standing(STRANGER, sent_to=BUYER),
    )
    assert done.suppress == ()
    assert "ceo@seller.example" in done.withheld


def test_a_tied_report_that_names_no_one_speaks_for_our_recipient() -> None:
    done = react(_bounce(MessageKind.BOUNCE_HARD, ""), OURS, _standing(STRANGER, sent_to=BUYER))
    assert [s.email for s in done.suppress] == [BUYER]


def test_spam_complaint_tied_to_our_send_suppresses_with_its_own_reason() -> None:
    verdict = Classification(
        MessageKind.SPAM_COMPLAINT, "arf feedback-type=abuse", bounce=Bounce("", BUYER)
    )
    done = react(verdict, OURS, _standing("fbl@isp.example", sent_to=BUYER))
    assert [(s.email, s.reason) for s in done.suppress] == [
        (BUYER, SuppressionReason.SPAM_COMPLAINT)
    ]


def test_soft_bounces_count_only_when_tied_and_policy_bounces_never_act() -> None:
    soft = _bounce(MessageKind.BOUNCE_SOFT, BUYER, "4.2.2")
    assert react(soft, OURS, _standing("m@x", sent_to=BUYER)) == Reactions(soft_bounce=BUYER)
    assert react(soft, None, _standing("m@x")).soft_bounce is None
    policy = _bounce(MessageKind.BOUNCE_POLICY, BUYER, "5.7.1")
    assert react(policy, OURS, _standing("m@x", sent_to=BUYER)) == Reactions()


def test_auto_reply_and_bulk_are_recorded_only() -> None:
    for kind in (MessageKind.AUTO_REPLY, MessageKind.BULK, MessageKind.QUARANTINED):
        assert react(Classification(kind, "x"), OURS, _standing(BUYER)) == Reactions()


def test_unsubscribe_suppresses_the_sender_only() -> None:
    verdict = Classification(MessageKind.UNSUBSCRIBE, "keyword=de:abmelden")
    done = react(verdict, BY_NUMBER, _standing(STRANGER))
    assert [(s.email, s.reason) for s in done.suppress] == [
        (STRANGER, SuppressionReason.UNSUBSCRIBE)
    ]
    assert not done.reply
    assert BUYER in done.withheld
    own = react(verdict, BY_NUMBER, _standing(BUYER))
    assert [s.email for s in own.suppress] == [BUYER] and own.reply and not own.withheld


def test_complaint_from_the_buyer_opens_a_dispute_and_counts_as_a_reply() -> None:
    verdict = Classification(
        MessageKind.COMPLAINT, "keyword=en:not arrived", dispute_kind=DisputeKind.NOT_RECEIVED
    )
    assert react(verdict, BY_NUMBER, _standing(BUYER)) == Reactions(
        open_dispute=DisputeKind.NOT_RECEIVED, reply=True
    )


def test_a_strangers_complaint_holds_only_the_strangers_own_orders() -> None:
    verdict = Classification(
        MessageKind.COMPLAINT, "keyword=en:refund", dispute_kind=DisputeKind.REFUND
    )
    done = react(verdict, BY_NUMBER, _standing(STRANGER))
    assert done.hold_buyer == STRANGER and done.open_dispute is DisputeKind.REFUND
    assert not done.reply and "not its buyer" in done.withheld
    # Someone holding our message about the order (a forwarded copy) may pause it.
    assert react(verdict, OURS, _standing(STRANGER)).hold_buyer is None


def test_unthreaded_complaint_still_holds_the_buyer() -> None:
    verdict = Classification(
        MessageKind.COMPLAINT, "keyword=en:refund", dispute_kind=DisputeKind.REFUND
    )
    assert react(verdict, None, Standing(BUYER, NOBODY)) == Reactions(
        open_dispute=DisputeKind.REFUND, hold_buyer=BUYER
    )


def test_an_authenticated_claim_opened_is_the_marketplaces_own() -> None:
    opened = Classification(
        MessageKind.DISPUTE_OPENED,
        "rule=amazon-a-to-z-claim",
        dispute_kind=DisputeKind.A_TO_Z,
        marketplace="amazon",
    )
    done = react(opened, BY_NUMBER, _standing("atoz@amazon.com", verified=True))
    assert done.open_dispute is DisputeKind.A_TO_Z
    assert done.dispute_source == "marketplace:amazon"
    forged = react(opened, BY_NUMBER, _standing("atoz@amazon.com"))
    assert forged.hold_buyer == "atoz@amazon.com"  # acts on no buyer's order


@pytest.mark.parametrize(
    "verdict",
    [
        Classification(
            MessageKind.DISPUTE_CLOSED,
            "rule=ebay-case-closed",
            dispute_kind=DisputeKind.EBAY_CASE,
            marketplace="ebay",
        ),
        Classification(MessageKind.REVIEW, "rule=ebay-feedback", rating=5, marketplace="ebay"),
    ],
    ids=["closing", "review"],
)
def test_relaxing_notices_act_only_when_authenticated(verdict: Classification) -> None:
    forged = react(verdict, BY_NUMBER, _standing("cases@ebay.com"))
    assert forged == Reactions(withheld=forged.withheld)
    assert "not authenticated as ebay.com" in forged.withheld
    real = react(verdict, BY_NUMBER, _standing("cases@ebay.com", verified=True))
    if verdict.kind is MessageKind.REVIEW:
        assert real == Reactions(review=True, rating=5)
    else:
        assert real == Reactions(close_disputes=CloseDisputes(DisputeKind.EBAY_CASE, "ebay"))


def test_a_verified_domain_vouches_only_for_itself() -> None:
    verdict = Classification(MessageKind.REVIEW, "rule=ebay-feedback", rating=5, marketplace="ebay")
    other = Standing("x@ebay.com", _origin("x@attacker.example"), buyer=BUYER)
    assert react(verdict, BY_NUMBER, other).review is False


def test_reply_marks_the_order_only_for_its_buyer_or_a_holder_of_our_mail() -> None:
    reply = Classification(MessageKind.REPLY, "rule=default")
    assert react(reply, BY_NUMBER, _standing(BUYER)) == Reactions(reply=True)
    assert react(reply, OURS, _standing(STRANGER)) == Reactions(reply=True)
    assert react(reply, BY_NUMBER, _standing(STRANGER)).reply is False
    assert react(reply, None, _standing(BUYER)) == Reactions()
    seller = Classification(MessageKind.SELLER, "from=help@shop.example")
    assert react(seller, OURS, _standing("help@shop.example")) == Reactions()


def test_old_mail_keeps_only_its_suppressions() -> None:
    complaint = Reactions(open_dispute=DisputeKind.REFUND, reply=True, hold_buyer=BUYER)
    assert complaint.only_suppressions() == Reactions()
    soft = _bounce(MessageKind.BOUNCE_SOFT, BUYER, "4.2.2")
    bounce = react(soft, OURS, _standing("mailer-daemon@x", sent_to=BUYER))
    assert bounce.only_suppressions() == bounce
