"""The planner and an agent's word on a dispute: a dismissed one resumes the buyer's mail at
once, with no cool-down; a confirmed one (or one still awaiting review) blocks as any other."""

from __future__ import annotations

from dataclasses import replace

from tests.unit.test_plan import DAY, DELIVERED, FOLLOW_UP, POLICY, decision, history
from worker.domain import Dispute, DisputeKind
from worker.plan import Refusal, Verdict, refusal

OPENED = DELIVERED + 2 * DAY
DISMISSED_AT = DELIVERED + 8 * DAY
UNSURE = Dispute("1001", DisputeKind.DAMAGED, OPENED, source="mailbox", needs_review=True)


def test_a_dispute_awaiting_review_pauses_the_buyer_like_any_other():
    got = decision(history(disputes=(UNSURE,)), DELIVERED + 7 * DAY, "check-in")
    assert (got.verdict, got.reason, got.at) == (Verdict.WAIT, "dispute_open", None)


def test_a_dismissed_dispute_resumes_the_buyers_mail_at_once():
    dismissed = replace(UNSURE, closed_at=DISMISSED_AT, needs_review=False, dismissed=True)
    got = decision(history(disputes=(dismissed,)), DISMISSED_AT, "check-in")
    assert (got.verdict, got.reason, got.at) == (Verdict.DUE, "due", DISMISSED_AT)
    assert refusal(history(disputes=(dismissed,)), FOLLOW_UP.step("check-in"), DISMISSED_AT,
                   POLICY) is None  # fmt: skip


def test_a_dismissed_dispute_still_blocked_while_it_was_open():
    dismissed = replace(UNSURE, closed_at=DISMISSED_AT, dismissed=True)
    got = decision(history(disputes=(dismissed,)), DELIVERED + 7 * DAY, "check-in")
    assert got.reason == "dispute_open", "its close lies after now: open at now"


def test_a_confirmed_dispute_closed_later_keeps_the_cool_down():
    confirmed = replace(UNSURE, closed_at=DISMISSED_AT, needs_review=False)
    h = history(disputes=(confirmed,))
    got = decision(h, DISMISSED_AT + DAY, "check-in")
    assert (got.verdict, got.reason, got.at) == (
        Verdict.WAIT,
        "dispute_cooldown",
        DISMISSED_AT + POLICY.dispute_cooldown,
    )
    held = refusal(h, FOLLOW_UP.step("check-in"), DISMISSED_AT + DAY, POLICY)
    assert held == Refusal("dispute_cooldown", final=False)


def test_a_confirmed_open_dispute_keeps_blocking():
    confirmed = replace(UNSURE, needs_review=False)
    got = decision(history(disputes=(confirmed,)), DELIVERED + 30 * DAY, "check-in")
    assert (got.verdict, got.reason) == (Verdict.WAIT, "dispute_open")
    held = refusal(history(disputes=(confirmed,)), FOLLOW_UP.step("check-in"),
                   DELIVERED + 30 * DAY, POLICY)  # fmt: skip
    assert held == Refusal("dispute_open", final=False)


def test_a_dismissed_dispute_leaves_another_open_one_blocking():
    dismissed = replace(UNSURE, closed_at=DISMISSED_AT, dismissed=True)
    other = Dispute("999", DisputeKind.NOT_RECEIVED, DELIVERED + 5 * DAY)
    got = decision(history(disputes=(dismissed, other)), DISMISSED_AT, "check-in")
    assert got.reason == "dispute_open"
