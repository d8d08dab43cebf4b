"""A step's hold-out: a stable sample of orders that never get it, recorded as skipped
``holdout``, taking the reminder of a held-out request with it; and the pauses' scopes."""

from __future__ import annotations

import math
import random
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from worker.campaign import load_campaign
from worker.domain import Campaign, Customer, Order, Send, SendState
from worker.errors import CampaignError
from worker.pauses import PAUSED, Pause, PauseScope, scope_of
from worker.plan import HOLDOUT, OrderHistory, Policy, Verdict, held_out, plan

DELIVERED = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)  # a Monday
DAY = timedelta(days=1)
POLICY = Policy(buyer_cap=timedelta(0))
REQUEST_DUE = DELIVERED + 35 * DAY


def _campaign(tmp_path: Path, holdout: str = "10%") -> Campaign:
    path = tmp_path / "follow-up.yaml"
    path.write_text(
        "name: follow-up\n"
        "steps:\n"
        "  - id: review-request\n"
        "    after: {event: delivered, delay: 35d}\n"
        "    template: review_request\n"
        f"    holdout: {holdout}\n"
        "    max_lateness: 10d\n"
        "  - id: review-reminder\n"
        "    after: {step: review-request, delay: 10d}\n"
        "    template: review_reminder\n"
        "    max_lateness: 10d\n"
    )
    return load_campaign(path)


def _histories(count: int) -> list[OrderHistory]:
    return [
        OrderHistory(
            Order(
                f"ORD-{n}", "shop", f"b{n}@example.com", "B", ("Kettle",), delivered_at=DELIVERED
            ),
            Customer(f"b{n}@example.com"),
        )
        for n in range(count)
    ]


def _held(decided_histories: list[OrderHistory], campaign: Campaign) -> set[str]:
    decided = plan(decided_histories, [campaign], REQUEST_DUE, POLICY)
    return {
        d.order_id
        for d in decided.decisions
        if d.step == "review-request" and d.verdict is Verdict.SKIP and d.reason == HOLDOUT
    }


def test_the_holdout_share_is_read_from_the_campaign_file(tmp_path: Path) -> None:
    campaign = _campaign(tmp_path, "12.5%")
    assert campaign.step("review-request").holdout == 0.125
    assert campaign.step("review-reminder").holdout == 0


@pytest.mark.parametrize("written", ["60%", "10", "-5%", "100%", "ten percent", "50.5%"])
def test_a_holdout_outside_0_to_50_percent_names_the_file_and_line(
    tmp_path: Path, written: str
) -> None:
    with pytest.raises(CampaignError) as caught:
        _campaign(tmp_path, f'"{written}"')
    assert caught.value.where == f"{tmp_path / 'follow-up.yaml'}:6"
    assert "steps[0].holdout" in str(caught.value) and "0% to 50%" in str(caught.value)


def test_about_ten_percent_of_2000_orders_are_held_out(tmp_path: Path) -> None:
    campaign = _campaign(tmp_path)
    held = _held(_histories(2000), campaign)
    mean, spread = 2000 * 0.1, math.sqrt(2000 * 0.1 * 0.9)  # binomial: 200 +- 13.4
    assert mean - 4 * spread <= len(held) <= mean + 4 * spread


def test_the_same_orders_are_held_out_on_every_pass_in_any_order(tmp_path: Path) -> None:
    campaign = _campaign(tmp_path)
    histories = _histories(500)
    first = _held(histories, campaign)
    shuffled = histories[:]
    random.Random(7).shuffle(shuffled)
    halves = _held(shuffled[:250], campaign) | _held(shuffled[250:], campaign)
    assert first == _held(shuffled, campaign) == halves
    assert first == {
        h.order.order_id
        for h in histories
        if held_out("follow-up", campaign.step("review-request"), h.order.order_id)
    }


def test_a_larger_share_keeps_the_orders_a_smaller_one_held_out(tmp_path: Path) -> None:
    histories = _histories(500)
    assert _held(histories, _campaign(tmp_path, "5%")) <= _held(
        histories, _campaign(tmp_path, "20%")
    )


def test_no_reminder_follows_a_held_out_request(tmp_path: Path) -> None:
    campaign = _campaign(tmp_path, "50%")
    histories = _histories(40)
    [order_id, *_] = sorted(_held(histories, campaign))
    history = next(h for h in histories if h.order.order_id == order_id)
    skipped = Send(
        1, order_id, "follow-up", "review-request", SendState.SKIPPED, REQUEST_DUE, reason=HOLDOUT
    )
    stored = replace(history, sends={("follow-up", "review-request"): skipped})
    # In the pass that holds the request out, and in every later one.
    for h, now in ((history, REQUEST_DUE), (stored, REQUEST_DUE + 20 * DAY)):
        decided = plan([h], [campaign], now, POLICY)
        reminder = next(d for d in decided.decisions if d.step == "review-reminder")
        assert (reminder.verdict, reminder.reason) == (Verdict.SKIP, HOLDOUT)
        assert reminder.at == REQUEST_DUE + 10 * DAY, "when it would have gone"


def test_an_order_not_held_out_gets_the_request(tmp_path: Path) -> None:
    campaign = _campaign(tmp_path)
    histories = _histories(40)
    free = sorted({h.order.order_id for h in histories} - _held(histories, campaign))
    decided = plan(histories, [campaign], REQUEST_DUE, POLICY)
    due = {d.order_id for d in decided.due if d.step == "review-request"}
    assert due == set(free)


def _pause(scope: PauseScope, target: str = "") -> Pause:
    return Pause(scope, target, "ops", "", DELIVERED)


@pytest.mark.parametrize(
    ("pause", "held"),
    [
        (_pause(PauseScope.EVERYTHING), {"ORD-0", "ORD-1"}),
        (_pause(PauseScope.MARKETPLACE, "ebay"), {"ORD-1"}),
        (_pause(PauseScope.CAMPAIGN, "follow-up"), {"ORD-0", "ORD-1"}),
        (_pause(PauseScope.CAMPAIGN, "other"), set()),
    ],
)
def test_a_pause_holds_the_due_steps_of_its_scope_as_waiting(
    tmp_path: Path, pause: Pause, held: set[str]
) -> None:
    campaign = _campaign(tmp_path, "0%")
    shop, ebay = _histories(2)
    ebay = replace(ebay, order=replace(ebay.order, marketplace="ebay"))
    decided = plan([shop, ebay], [campaign], REQUEST_DUE, POLICY, [pause])
    waiting = {d.order_id for d in decided.waiting if d.reason == PAUSED}
    assert waiting == held
    assert all(d.at is None for d in decided.waiting if d.reason == PAUSED)
    assert {d.order_id for d in decided.due} == {"ORD-0", "ORD-1"} - held


@pytest.mark.parametrize(
    ("marketplace", "campaign", "message"),
    [
        ("amazon", "x", "not both"),
        ("etsy", None, "not a marketplace"),
        (None, "Bad Name\x1b", "not a campaign name"),
    ],
)
def test_a_pause_scope_is_checked(
    marketplace: str | None, campaign: str | None, message: str
) -> None:
    with pytest.raises(ValueError, match=message) as caught:
        scope_of(marketplace, campaign)
    assert "\x1b" not in str(caught.value)
