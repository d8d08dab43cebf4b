"""The planner counts delivered-triggered steps from the best delivery time an order has, and
follows it when a real event replaces an estimate."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from tests.unit.test_plan import FOLLOW_UP, sent
from worker.delivery import Delivery, TransitTable
from worker.domain import Campaign, CampaignStep, Customer, Order, Trigger, TriggerEvent
from worker.plan import (
    Decision,
    OrderHistory,
    Policy,
    Verdict,
    next_looks,
    plan,
    plan_inputs_digest,
)

SHIPPED = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)  # a Monday
DAY = timedelta(days=1)
POLICY = Policy(transit=TransitTable(ship_from="CN", routes=(("CN->DE", 12 * DAY),)))
ESTIMATE = SHIPPED + 12 * DAY


def history(**order_changes: object) -> OrderHistory:
    order = Order("1001", "shop", "ann@example.com", "Ann", ("Kettle",), "de", shipped_at=SHIPPED)
    order = replace(order, **order_changes)  # type: ignore[arg-type]
    return OrderHistory(order=order, customer=Customer("ann@example.com", "Ann", "de", "DE"))


def decide(h: OrderHistory, now: datetime, policy: Policy = POLICY) -> dict[str, Decision]:
    return {d.step: d for d in plan([h], [FOLLOW_UP], now, policy).decisions}


def test_a_shipped_order_without_a_delivery_date_is_planned_from_the_estimate():
    steps = decide(history(), SHIPPED + DAY)
    check_in = steps["check-in"]
    assert check_in.verdict is Verdict.WAIT and check_in.reason == "awaiting_delivered"
    assert check_in.at == ESTIMATE  # look again once it is (estimated) delivered
    assert check_in.delivery == Delivery(ESTIMATE, "estimated", "CN->DE post, 12d", 12 * DAY)

    due = decide(history(), ESTIMATE + 7 * DAY)["check-in"]
    assert (due.verdict, due.at) == (Verdict.DUE, ESTIMATE + 7 * DAY)
    request = decide(history(), ESTIMATE + 35 * DAY)["review-request"]
    assert (request.verdict, request.at) == (Verdict.DUE, ESTIMATE + 35 * DAY)


def test_the_customers_country_is_used_when_the_order_has_none():
    h = history()
    far = replace(h, customer=replace(h.customer, country="US"))
    assert decide(far, SHIPPED)["check-in"].delivery == Delivery(
        SHIPPED + 14 * DAY, "estimated", "CN->US post, 14d", 14 * DAY
    )


def test_an_unsent_step_moves_when_a_delivery_event_replaces_the_estimate():
    early = SHIPPED + 6 * DAY
    now = early + 7 * DAY  # the estimate says the check-in is not due for six more days
    assert decide(history(), now)["check-in"].verdict is Verdict.WAIT

    moved = decide(history(delivery_event_at=early), now)["check-in"]
    assert (moved.verdict, moved.at) == (Verdict.DUE, early + 7 * DAY)
    assert moved.delivery == Delivery(early, "event")

    late = ESTIMATE + 5 * DAY
    held = decide(history(delivery_event_at=late), ESTIMATE + 7 * DAY)["check-in"]
    assert (held.verdict, held.reason, held.at) == (Verdict.WAIT, "not_due", late + 7 * DAY)


def test_a_step_sent_on_the_estimate_is_not_sent_again_and_the_next_ones_follow_the_event():
    sent_at = ESTIMATE + 7 * DAY
    late = ESTIMATE + 3 * DAY  # the real delivery, after the check-in went out
    h = replace(history(delivery_event_at=late), sends=sent("check-in", sent_at))
    steps = decide(h, late + 7 * DAY)
    assert (steps["check-in"].verdict, steps["check-in"].reason) == (Verdict.DONE, "sent")
    request = steps["review-request"]
    assert (request.verdict, request.at) == (Verdict.WAIT, late + 35 * DAY)


def test_a_returned_parcel_skips_the_delivered_steps():
    steps = decide(history(shipment_status="returned"), ESTIMATE + 40 * DAY)
    assert (steps["check-in"].verdict, steps["check-in"].reason) == (
        Verdict.SKIP,
        "parcel_returned",
    )
    assert steps["review-request"].reason == "parcel_returned"
    assert steps["review-reminder"].reason == "previous_step_not_sent:review-request"


def test_a_parcel_exception_waits_for_news():
    got = decide(history(shipment_status="exception"), ESTIMATE + 40 * DAY)["check-in"]
    assert (got.verdict, got.reason, got.at) == (
        Verdict.WAIT,
        "awaiting_delivered: parcel exception",
        None,
    )


def test_nothing_shipped_waits_as_before():
    got = decide(history(shipped_at=None), SHIPPED + 40 * DAY)["check-in"]
    assert (got.verdict, got.reason, got.at, got.delivery) == (
        Verdict.WAIT,
        "awaiting_delivered",
        None,
        None,
    )


def test_only_delivered_triggered_steps_carry_the_delivery():
    shipped = Campaign(
        name="shipping-notice",
        marketplaces=frozenset({"shop"}),
        steps=(CampaignStep("notice", Trigger(event=TriggerEvent.SHIPPED), DAY, DAY, "notice"),),
    )
    decided = plan([history()], [FOLLOW_UP, shipped], SHIPPED + DAY, POLICY).decisions
    carrying = {d.step for d in decided if d.delivery is not None}
    assert carrying == {"check-in", "review-request"}


def test_a_buyer_is_looked_at_again_when_the_estimate_falls_due():
    h = history()
    decided = plan([h], [FOLLOW_UP], SHIPPED + DAY, POLICY)
    assert next_looks([h], decided.decisions, SHIPPED + DAY) == {"ann@example.com": ESTIMATE}


def test_changing_the_transit_table_changes_the_plan_inputs():
    longer = Policy(transit=replace(POLICY.transit, routes=(("CN->DE", 20 * DAY),)))
    assert plan_inputs_digest([FOLLOW_UP], POLICY) != plan_inputs_digest([FOLLOW_UP], longer)
    assert plan_inputs_digest([FOLLOW_UP], POLICY) == plan_inputs_digest([FOLLOW_UP], POLICY)
