"""explain() and rehearse() are pure: histories, campaigns and a clock in, a story out."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime, timedelta

from tests.unit.test_plan import DAY, DELIVERED, FOLLOW_UP, POLICY, THANKS, history
from worker.domain import (
    Dispute,
    DisputeKind,
    Order,
    Review,
    Send,
    SendState,
    Suppression,
    SuppressionReason,
    ThreadEntry,
)
from worker.pauses import PAUSED, Pause, PauseScope
from worker.plan import Verdict
from worker.rehearsal import Explanation, StepStory, explain, reason_kind, rehearse

AMAZON_ONLY = replace(THANKS, name="amazon-thanks", marketplaces=frozenset({"amazon"}))
OFF = replace(THANKS, name="old-thanks", enabled=False)


def _steps(story: Explanation) -> dict[str, StepStory]:
    return {s.step: s for c in story.campaigns for s in c.steps}


def test_explain_says_sent_with_message_id_and_what_waits_for_what() -> None:
    check_in = DELIVERED + 7 * DAY
    row = Send(
        7, "1001", "review-follow-up", "check-in", SendState.SENT, check_in,
        message_id="<a@shop.example>", sent_at=check_in,
    )  # fmt: skip
    ann = history(sends={("review-follow-up", "check-in"): row})
    now = DELIVERED + 10 * DAY

    story = explain([ann], "1001", [FOLLOW_UP, THANKS], now, POLICY)

    steps = _steps(story)
    assert steps["check-in"].happened == (
        "sent at 2026-03-09 10:00 UTC with Message-ID <a@shop.example>"
    )
    request = steps["review-request"]
    assert request.verdict is Verdict.WAIT
    assert request.happened.startswith("waiting until 2026-04-06")
    assert "delivered 2026-03-02" in request.delivery
    assert steps["review-reminder"].happened == (
        "waiting for an event (awaiting_step:review-request)"
    )
    assert steps["thank-you"].happened == "waiting for an event (awaiting_review)"
    assert any("last message to this buyer" in e.text for e in story.events)


def test_explain_names_campaigns_that_do_not_apply() -> None:
    story = explain([history()], "1001", [FOLLOW_UP, AMAZON_ONLY, OFF], DELIVERED, POLICY)

    why = {c.campaign: c.why_not for c in story.campaigns if not c.applies}
    assert why == {
        "amazon-thanks": "marketplace shop not covered (only amazon)",
        "old-thanks": "campaign disabled",
    }


def test_explain_shows_the_events_that_decided() -> None:
    opened = DELIVERED + 2 * DAY
    ann = history(
        disputes=(Dispute("1001", DisputeKind.DAMAGED, opened),),
        reviews=(Review("1001", 5, DELIVERED + DAY),),
        conversation=(ThreadEntry(DELIVERED + 3 * DAY, True),),
        suppression=Suppression(
            "ann@example.com", SuppressionReason.UNSUBSCRIBE, DELIVERED + 4 * DAY
        ),
    )
    story = explain([ann], "1001", [FOLLOW_UP], DELIVERED + 5 * DAY, POLICY)

    texts = [e.text for e in story.events]
    assert "dispute opened: damaged" in texts
    assert "review 5/5 (import)" in texts
    assert "buyer's message awaiting the seller's answer" in texts
    assert "address suppressed: unsubscribe" in texts


def test_explain_tells_an_in_doubt_send_apart() -> None:
    claimed = DELIVERED + 7 * DAY
    row = Send(
        3, "1001", "review-follow-up", "check-in", SendState.IN_DOUBT, claimed,
        claimed_at=claimed,
    )  # fmt: skip
    ann = history(sends={("review-follow-up", "check-in"): row})

    story = explain([ann], "1001", [FOLLOW_UP], claimed + DAY, POLICY)

    assert _steps(story)["check-in"].happened.startswith("in_doubt since 2026-03-09")


def test_rehearsal_sends_each_step_once_and_lets_the_reminder_follow() -> None:
    calendar = rehearse([[history()]], [FOLLOW_UP], DELIVERED, 60, POLICY)

    by_step = {step: day for (day, _campaign, step), n in calendar.sent.items() if n}
    assert set(by_step) == {"check-in", "review-request", "review-reminder"}
    assert by_step["check-in"] == date(2026, 3, 9)
    assert by_step["review-request"] == date(2026, 4, 6)
    assert date(2026, 4, 16) <= by_step["review-reminder"] <= date(2026, 4, 21)
    assert sum(calendar.sent.values()) == 3
    assert calendar.orders[(date(2026, 3, 9), "review-follow-up", "check-in", "sent")] == ["1001"]


def test_rehearsal_counts_skips_by_reason_with_the_orders() -> None:
    reviewed = history(reviews=(Review("1001", 5, DELIVERED + 20 * DAY),))

    calendar = rehearse([[reviewed]], [FOLLOW_UP], DELIVERED, 60, POLICY)

    skips = {(step, reason): n for (_d, _c, step, reason), n in calendar.skipped.items()}
    assert skips == {
        ("review-request", "reviewed"): 1,
        ("review-reminder", "previous_step_not_sent:review-request"): 1,
    }
    assert sum(calendar.sent.values()) == 1  # the check-in


def test_rehearsal_holds_the_second_order_of_a_buyer_to_the_cap() -> None:
    first = history()
    second = replace(
        history(),
        order=Order(
            "1002", "shop", "ann@example.com", "Ann", ("Mug",), "en", "GB",
            delivered_at=DELIVERED + timedelta(hours=1),
        ),
    )  # fmt: skip
    capped = replace(POLICY, buyer_cap=3 * DAY)

    calendar = rehearse([[first, second]], [FOLLOW_UP], DELIVERED, 12, capped)

    days = sorted(day for (day, _c, step), n in calendar.sent.items() if step == "check-in")
    assert len(days) == 2 and days[1] - days[0] >= timedelta(days=3)


def test_rehearsal_writes_nothing_back() -> None:
    ann = history()
    rehearse([[ann]], [FOLLOW_UP], DELIVERED, 60, POLICY)
    assert ann.sends == {}


def test_reason_kind_groups_the_varying_tail() -> None:
    assert reason_kind("too_late: 3d past due (limit 2d)") == "too_late"
    assert reason_kind("suppressed:unsubscribed") == "suppressed:unsubscribed"


def test_a_batch_is_rehearsed_from_its_start_in_utc() -> None:
    start = datetime(2026, 3, 9, 0, 0, tzinfo=UTC)
    calendar = rehearse([[history()]], [FOLLOW_UP], start, 1, POLICY)
    assert calendar.end == start + DAY
    assert calendar.days() == [date(2026, 3, 9)]


def test_buyers_of_one_batch_are_rehearsed_each_on_their_own_dates() -> None:
    later = DELIVERED + 10 * DAY
    bob = replace(
        history(),
        order=Order(
            "2001", "shop", "bob@example.com", "Bob", ("Mug",), "en", "GB", delivered_at=later
        ),
    )

    calendar = rehearse([[history(), bob]], [FOLLOW_UP], DELIVERED, 20, POLICY)

    check_ins = {day: n for (day, _c, step), n in calendar.sent.items() if step == "check-in"}
    assert check_ins == {date(2026, 3, 9): 1, date(2026, 3, 19): 1}
    assert calendar.orders[(date(2026, 3, 19), "review-follow-up", "check-in", "sent")] == ["2001"]


def test_without_orders_the_calendar_keeps_counts_only() -> None:
    calendar = rehearse([[history()]], [FOLLOW_UP], DELIVERED, 60, POLICY, keep_orders=False)
    assert sum(calendar.sent.values()) == 3
    assert not calendar.orders


def test_a_pause_in_force_holds_its_campaign_in_the_calendar_and_in_explain() -> None:
    paused = (Pause(PauseScope.CAMPAIGN, "review-follow-up", "maria", "new template", DELIVERED),)

    calendar = rehearse([[history()]], [FOLLOW_UP], DELIVERED, 60, POLICY, paused=paused)

    assert sum(calendar.sent.values()) == 0
    # Each step counted once, on the day it falls due; the reminder follows a sent request,
    # so it never falls due.
    assert calendar.held == {
        (date(2026, 3, 9), "review-follow-up", "check-in"): 1,
        (date(2026, 4, 6), "review-follow-up", "review-request"): 1,
    }
    assert calendar.orders[(date(2026, 3, 9), "review-follow-up", "check-in", PAUSED)] == ["1001"]
    story = explain([history()], "1001", [FOLLOW_UP], DELIVERED + 7 * DAY, POLICY, paused)
    assert _steps(story)["check-in"].verdict is Verdict.WAIT
    assert "paused" in _steps(story)["check-in"].happened
    # Another marketplace's pause holds nothing of this shop order.
    other = (Pause(PauseScope.MARKETPLACE, "amazon", "maria", "", DELIVERED),)
    free = rehearse([[history()]], [FOLLOW_UP], DELIVERED, 60, POLICY, paused=other)
    assert sum(free.sent.values()) == 3 and not free.held
