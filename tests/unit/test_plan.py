"""The planner is pure: each case is data in, decisions out, on tz-aware instants."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, time, timedelta

import pytest

from worker.domain import (
    Campaign,
    CampaignStep,
    Condition,
    Customer,
    Dispute,
    DisputeKind,
    Order,
    Reply,
    Review,
    Send,
    SendState,
    SendWindow,
    Suppression,
    SuppressionReason,
    Trigger,
    TriggerEvent,
)
from worker.plan import OrderHistory, Policy, Refusal, Verdict, plan, refusal, stable_delay

DELIVERED = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)  # a Monday
DAY = timedelta(days=1)

FOLLOW_UP = Campaign(
    name="review-follow-up",
    marketplaces=frozenset({"ebay", "aliexpress", "shop"}),
    steps=(
        CampaignStep(
            "check-in", Trigger(event=TriggerEvent.DELIVERED), 7 * DAY, 7 * DAY, "check_in"
        ),
        CampaignStep(
            "review-request",
            Trigger(event=TriggerEvent.DELIVERED),
            35 * DAY,
            35 * DAY,
            "review_request",
            frozenset({Condition.REVIEWED}),
        ),
        CampaignStep(
            "review-reminder",
            Trigger(step="review-request"),
            10 * DAY,
            15 * DAY,
            "review_reminder",
            frozenset({Condition.REVIEWED}),
            5 * DAY,
        ),
    ),
)
THANKS = Campaign(
    name="review-thanks",
    marketplaces=frozenset({"ebay", "aliexpress", "shop"}),
    steps=(
        CampaignStep(
            "thank-you",
            Trigger(event=TriggerEvent.REVIEWED, min_rating=4, max_rating=5),
            timedelta(hours=2),
            timedelta(hours=2),
            "review_thanks",
        ),
    ),
)
# No per-buyer cap here: these tests plan one step at a time (tests/unit/test_pacing.py
# plans several of one buyer's steps against the cap).
POLICY = Policy(dispute_cooldown=3 * DAY, buyer_cap=timedelta(0))


def history(**changes: object) -> OrderHistory:
    order = Order(
        "1001", "shop", "ann@example.com", "Ann", ("Kettle",), "en", "GB", delivered_at=DELIVERED
    )
    base = OrderHistory(order=order, customer=Customer("ann@example.com", "Ann", "en", "GB"))
    return replace(base, **changes)  # type: ignore[arg-type]


def sent(
    step: str, at: datetime, campaign: str = "review-follow-up"
) -> dict[tuple[str, str], Send]:
    return {(campaign, step): Send(1, "1001", campaign, step, SendState.SENT, at, sent_at=at)}


def decision(h: OrderHistory, now: datetime, step: str, campaign: Campaign = FOLLOW_UP):
    decided = plan([h], [campaign], now, POLICY)
    return next(d for d in decided.decisions if d.step == step)


@pytest.mark.parametrize(
    ("now", "step", "verdict", "reason"),
    [
        (DELIVERED + 6 * DAY, "check-in", Verdict.WAIT, "not_due"),
        (DELIVERED + 7 * DAY, "check-in", Verdict.DUE, "due"),
        (DELIVERED + 7 * DAY + timedelta(hours=71), "check-in", Verdict.DUE, "due"),
        (DELIVERED + 10 * DAY + timedelta(hours=1), "check-in", Verdict.SKIP, "too_late"),
        (DELIVERED + 34 * DAY, "review-request", Verdict.WAIT, "not_due"),
        (DELIVERED + 35 * DAY, "review-request", Verdict.DUE, "due"),
        (DELIVERED + 36 * DAY, "review-reminder", Verdict.WAIT, "awaiting_step"),
        (DELIVERED + 60 * DAY, "review-reminder", Verdict.SKIP, "previous_step_not_sent"),
    ],
)
def test_steps_fall_due_on_their_day_and_not_after_their_lateness(now, step, verdict, reason):
    got = decision(history(), now, step)
    assert (got.verdict, got.reason.split(":")[0]) == (verdict, reason)


def test_delivery_in_the_future_is_not_a_delivery_yet():
    h = history(order=replace(history().order, delivered_at=DELIVERED + 30 * DAY))
    got = decision(h, DELIVERED + 10 * DAY, "check-in")
    assert got.verdict is Verdict.WAIT and got.reason == "awaiting_delivered"
    assert got.at == DELIVERED + 30 * DAY  # look again when it is delivered


def test_order_without_delivery_date_waits_for_the_event():
    h = history(order=replace(history().order, delivered_at=None))
    got = decision(h, DELIVERED + 40 * DAY, "review-request")
    assert (got.verdict, got.reason, got.at) == (Verdict.WAIT, "awaiting_delivered", None)


def test_reminder_falls_at_a_stable_point_10_to_15_days_after_the_request():
    request_sent = DELIVERED + 35 * DAY
    h = history(sends=sent("review-request", request_sent))
    offset = stable_delay(FOLLOW_UP.step("review-reminder"), "1001", "review-follow-up")
    assert 10 * DAY <= offset <= 15 * DAY
    assert offset == stable_delay(FOLLOW_UP.step("review-reminder"), "1001", "review-follow-up")
    before = decision(h, request_sent + offset - timedelta(minutes=1), "review-reminder")
    at = decision(h, request_sent + offset, "review-reminder")
    assert before.verdict is Verdict.WAIT and before.at == request_sent + offset
    assert at.verdict is Verdict.DUE


def test_range_points_spread_across_orders():
    step = FOLLOW_UP.step("review-reminder")
    offsets = {stable_delay(step, str(n), "review-follow-up") for n in range(200)}
    assert min(offsets) < 11 * DAY and max(offsets) > 14 * DAY


def test_a_review_skips_request_and_reminder_for_good():
    h = history(reviews=(Review("1001", 2, DELIVERED + 20 * DAY),))
    got = decision(h, DELIVERED + 35 * DAY, "review-request")
    assert (got.verdict, got.reason) == (Verdict.SKIP, "reviewed")


def test_a_review_dated_after_now_has_not_happened_yet():
    h = history(reviews=(Review("1001", 5, DELIVERED + 40 * DAY),))
    assert decision(h, DELIVERED + 35 * DAY, "review-request").verdict is Verdict.DUE


def test_reply_condition():
    step = replace(FOLLOW_UP.step("review-request"), unless=frozenset({Condition.REPLIED}))
    campaign = replace(FOLLOW_UP, steps=(step,))
    h = history(replies=(Reply("1001", DELIVERED + 3 * DAY),))
    got = decision(h, DELIVERED + 35 * DAY, "review-request", campaign)
    assert (got.verdict, got.reason) == (Verdict.SKIP, "replied")


def test_reminder_is_skipped_when_the_request_was_skipped():
    skipped = {
        ("review-follow-up", "review-request"): Send(
            1,
            "1001",
            "review-follow-up",
            "review-request",
            SendState.SKIPPED,
            DELIVERED,
            reason="too_late",
        )
    }
    got = decision(history(sends=skipped), DELIVERED + 60 * DAY, "review-reminder")
    assert got.verdict is Verdict.SKIP and got.reason.startswith("previous_step_not_sent")


def test_open_dispute_on_another_order_of_the_buyer_pauses_everything():
    dispute = Dispute("999", DisputeKind.NOT_RECEIVED, DELIVERED + DAY)
    got = decision(history(disputes=(dispute,)), DELIVERED + 7 * DAY, "check-in")
    assert (got.verdict, got.reason, got.at) == (Verdict.WAIT, "dispute_open", None)


def test_dispute_opened_after_now_does_not_count_yet():
    dispute = Dispute("1001", DisputeKind.DAMAGED, DELIVERED + 9 * DAY)
    assert (
        decision(history(disputes=(dispute,)), DELIVERED + 7 * DAY, "check-in").verdict
        is Verdict.DUE
    )


def test_closed_dispute_resumes_after_cooldown_with_lateness_counted_from_then():
    closed = DELIVERED + 20 * DAY
    dispute = Dispute("1001", DisputeKind.DAMAGED, DELIVERED + 2 * DAY, closed)
    h = history(disputes=(dispute,))
    during = decision(h, closed + DAY, "check-in")
    assert (during.verdict, during.reason, during.at) == (
        Verdict.WAIT,
        "dispute_cooldown",
        closed + 3 * DAY,
    )
    resumed = decision(h, closed + 3 * DAY + DAY, "check-in")
    assert resumed.verdict is Verdict.DUE and resumed.at == closed + 3 * DAY
    too_late = decision(h, closed + 3 * DAY + 3 * DAY + timedelta(hours=1), "check-in")
    assert too_late.verdict is Verdict.SKIP and too_late.reason.startswith("too_late")


def test_dispute_close_recorded_in_the_future_still_counts_as_open_now():
    dispute = Dispute("1001", DisputeKind.DAMAGED, DELIVERED, DELIVERED + 30 * DAY)
    got = decision(history(disputes=(dispute,)), DELIVERED + 7 * DAY, "check-in")
    assert got.reason == "dispute_open"


@pytest.mark.parametrize("reason", list(SuppressionReason))
def test_suppressed_address_is_skipped_whatever_the_campaign(reason):
    h = history(suppression=Suppression("ann@example.com", reason, DELIVERED))
    got = decision(h, DELIVERED + 7 * DAY, "check-in")
    assert (got.verdict, got.reason) == (Verdict.SKIP, f"suppressed:{reason.value}")


def test_marketplace_outside_the_campaign_gets_no_decisions():
    h = history(order=replace(history().order, marketplace="amazon"))
    assert plan([h], [FOLLOW_UP], DELIVERED + 7 * DAY, POLICY).decisions == ()


def test_disabled_campaign_plans_nothing():
    assert (
        plan(
            [history()], [replace(FOLLOW_UP, enabled=False)], DELIVERED + 7 * DAY, POLICY
        ).decisions
        == ()
    )


def test_terminal_rows_are_done_and_sending_rows_are_in_flight():
    rows = sent("check-in", DELIVERED + 7 * DAY)
    rows[("review-follow-up", "review-request")] = Send(
        2, "1001", "review-follow-up", "review-request", SendState.SENDING, DELIVERED
    )
    decided = {
        d.step: d
        for d in plan([history(sends=rows)], [FOLLOW_UP], DELIVERED + 36 * DAY, POLICY).decisions
    }
    assert decided["check-in"].verdict is Verdict.DONE
    assert (decided["review-request"].verdict, decided["review-request"].reason) == (
        Verdict.WAIT,
        "in_flight",
    )


def test_retry_row_waits_until_not_before():
    row = Send(
        2,
        "1001",
        "review-follow-up",
        "check-in",
        SendState.SCHEDULED,
        DELIVERED + 7 * DAY,
        reason="451 busy",
        attempts=1,
        not_before=DELIVERED + 7 * DAY + timedelta(minutes=15),
    )
    got = decision(
        history(sends={("review-follow-up", "check-in"): row}),
        DELIVERED + 7 * DAY + timedelta(minutes=5),
        "check-in",
    )
    assert (
        got.verdict is Verdict.WAIT
        and got.reason.startswith("retry_later")
        and got.at == row.not_before
    )


# Send windows in the buyer's local time ---------------------------------------------------

WEEKDAYS = SendWindow(time(9), time(18), frozenset(range(5)))
WINDOWED = replace(FOLLOW_UP, send_window=WEEKDAYS)


@pytest.mark.parametrize(
    ("country", "delivered", "now", "verdict", "at"),
    [
        # Tokyo: due Monday 01:00 UTC = 10:00 JST, inside the window.
        (
            "JP",
            datetime(2026, 3, 2, 1, 0, tzinfo=UTC),
            datetime(2026, 3, 9, 1, 0, tzinfo=UTC),
            Verdict.DUE,
            None,
        ),
        # Tokyo: due at 10:00 UTC = 19:00 JST, after hours: next day 09:00 JST = 00:00 UTC.
        (
            "JP",
            datetime(2026, 3, 2, 10, 0, tzinfo=UTC),
            datetime(2026, 3, 9, 10, 0, tzinfo=UTC),
            Verdict.WAIT,
            datetime(2026, 3, 10, 0, 0, tzinfo=UTC),
        ),
        # New York: due Saturday -> Monday 09:00 EDT (13:00 UTC; DST began 8 March 2026).
        (
            "US",
            datetime(2026, 3, 7, 15, 0, tzinfo=UTC),
            datetime(2026, 3, 14, 15, 0, tzinfo=UTC),
            Verdict.WAIT,
            datetime(2026, 3, 16, 13, 0, tzinfo=UTC),
        ),
        # Germany: due Friday 17:30 CET (16:30 UTC), inside.
        (
            "DE",
            datetime(2026, 3, 6, 16, 30, tzinfo=UTC),
            datetime(2026, 3, 13, 16, 30, tzinfo=UTC),
            Verdict.DUE,
            None,
        ),
    ],
)
def test_send_window_is_the_buyers_local_time(country, delivered, now, verdict, at):
    order = replace(history().order, country=country, delivered_at=delivered)
    h = history(order=order, customer=Customer("ann@example.com", "Ann", "en", country))
    got = decision(h, now, "check-in", WINDOWED)
    assert got.verdict is verdict
    if at is not None:
        assert got.at == at and got.reason == "outside_send_window"


def test_late_worker_outside_the_window_waits_then_still_sends_within_lateness():
    # Due Friday 10:00 in London; the worker was down until Saturday: it waits for Monday.
    delivered = datetime(2026, 3, 6, 10, 0, tzinfo=UTC) - 7 * DAY
    h = history(order=replace(history().order, delivered_at=delivered))
    saturday = datetime(2026, 3, 7, 12, 0, tzinfo=UTC)
    got = decision(h, saturday, "check-in", WINDOWED)
    assert (got.verdict, got.reason, got.at) == (
        Verdict.WAIT,
        "outside_send_window",
        datetime(2026, 3, 9, 9, 0, tzinfo=UTC),
    )
    monday = datetime(2026, 3, 9, 9, 0, tzinfo=UTC)
    assert decision(h, monday, "check-in", WINDOWED).verdict is Verdict.DUE


def test_a_week_late_worker_does_not_blast_stale_mail():
    h = history()
    decided = plan([h], [FOLLOW_UP], DELIVERED + 17 * DAY, POLICY)
    check_in = next(d for d in decided.decisions if d.step == "check-in")
    assert check_in.verdict is Verdict.SKIP and check_in.reason.startswith("too_late")


# Thank-you on a good review -------------------------------------------------------------


@pytest.mark.parametrize(
    ("rating", "verdict"),
    [(5, Verdict.DUE), (4, Verdict.DUE), (3, Verdict.WAIT), (1, Verdict.WAIT)],
)
def test_thanks_only_for_four_or_five_stars(rating, verdict):
    reviewed = DELIVERED + 10 * DAY
    h = history(reviews=(Review("1001", rating, reviewed),))
    got = decision(h, reviewed + timedelta(hours=3), "thank-you", THANKS)
    assert got.verdict is verdict


def test_next_wakeup_is_the_earliest_future_due_time():
    decided = plan([history()], [FOLLOW_UP], DELIVERED + DAY, POLICY)
    assert decided.next_wakeup() == DELIVERED + 7 * DAY


# One order's fault stays with that order ------------------------------------------------


def test_window_inside_the_missing_hour_waits_for_its_next_real_opening():
    # Sunday 02:00-02:30 in Berlin does not exist on 2026-03-29; it opens a week later.
    gap_window = SendWindow(time(2), time(2, 30), frozenset({6}))
    campaign = replace(FOLLOW_UP, send_window=gap_window)
    delivered = datetime(2026, 3, 20, 12, tzinfo=UTC)  # check-in due Friday 27 March
    order = replace(history().order, country="DE", delivered_at=delivered)
    h = history(order=order, customer=Customer("ann@example.com", "Ann", "de", "DE"))
    got = decision(h, datetime(2026, 3, 27, 12, tzinfo=UTC), "check-in", campaign)
    assert (got.verdict, got.reason) == (Verdict.WAIT, "outside_send_window")
    assert got.at == datetime(2026, 4, 5, 0, tzinfo=UTC)  # 02:00 CEST on Sunday 5 April


def test_an_order_whose_planning_raises_waits_and_the_others_are_planned():
    # A naive timestamp, as a corrupt row would give: comparing it with ``now`` raises.
    broken_review = Review("1002", 5, datetime(2026, 3, 5, 12))  # noqa: DTZ001
    broken = history(order=replace(history().order, order_id="1002"), reviews=(broken_review,))
    now = DELIVERED + 7 * DAY
    decided = plan([broken, history()], [FOLLOW_UP], now, POLICY)

    errors = [d for d in decided.decisions if d.order_id == "1002"]
    assert [d.step for d in errors] == ["check-in", "review-request", "review-reminder"]
    assert {(d.verdict, d.at) for d in errors} == {(Verdict.WAIT, None)}
    assert {d.reason for d in errors} == {
        "plan_error: TypeError: can't compare offset-naive and offset-aware datetimes"
    }
    assert [(d.order_id, d.step) for d in decided.due] == [("1001", "check-in")]
    (failure,) = decided.failures
    assert (failure.order_id, failure.campaign, failure.step) == (
        "1002",
        "review-follow-up",
        "check-in",
    )
    assert failure.error == errors[0].reason.removeprefix("plan_error: ")
    assert "plan.py:" in failure.where
    assert decided.next_wakeup() == DELIVERED + 35 * DAY  # the healthy order's next step


def test_a_failing_step_keeps_the_earlier_steps_and_the_other_campaigns():
    broken_step = replace(FOLLOW_UP.step("review-request"), trigger=Trigger(step="no-such-step"))
    campaign = replace(
        FOLLOW_UP,
        steps=(FOLLOW_UP.step("check-in"), broken_step, FOLLOW_UP.step("review-reminder")),
    )
    reviewed = DELIVERED + 6 * DAY
    h = history(reviews=(Review("1001", 5, reviewed),))
    decided = plan([h], [campaign, THANKS], DELIVERED + 7 * DAY, POLICY)

    by_step = {d.step: d for d in decided.decisions}
    assert by_step["check-in"].verdict is Verdict.DUE
    assert by_step["review-request"].reason == "plan_error: KeyError: 'no-such-step'"
    assert by_step["review-reminder"].reason == "plan_error: KeyError: 'no-such-step'"
    assert by_step["thank-you"].verdict is Verdict.DUE
    assert [f.step for f in decided.failures] == ["review-request"]


def test_a_failing_policy_object_is_contained_per_order():
    class Exploding:
        def __getattr__(self, name: str) -> object:
            raise RuntimeError(f"policy.{name} is broken\nsecond line is not shown")

    decided = plan([history()], [FOLLOW_UP], DELIVERED + 7 * DAY, Exploding())  # type: ignore[arg-type]
    assert {d.reason for d in decided.decisions} == {
        "plan_error: RuntimeError: policy.transit is broken"
    }
    assert decided.due == [] and decided.skipped == []
    assert len(decided.waiting) == 3


def test_a_naive_now_is_refused_before_any_order():
    with pytest.raises(ValueError, match="naive"):
        plan([history()], [FOLLOW_UP], datetime(2026, 3, 9, 10), POLICY)  # noqa: DTZ001


def test_refusal_at_claim_holds_the_send_when_asking_raises():
    broken_review = Review("1001", 5, datetime(2026, 3, 5, 12))  # noqa: DTZ001
    h = history(reviews=(broken_review,))
    step = FOLLOW_UP.step("check-in")
    got = refusal(h, step, DELIVERED + 7 * DAY, POLICY)
    assert got == Refusal(
        "plan_error: TypeError: can't compare offset-naive and offset-aware datetimes",
        final=False,
    )
    assert refusal(history(), step, DELIVERED + 7 * DAY, POLICY) is None
