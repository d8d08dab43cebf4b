"""See and rehearse: one order's story (``worker explain``) and a calendar of what the daemon
will send day by day (``worker plan --from DATE --days N``).

Both are pure functions over stored histories, campaigns and a clock passed in: they run the
real planner (worker/plan.py), so what they say is what the daemon decides. The calendar steps
a simulated clock through the window and treats every due step as sent at that instant, in
memory only, so reminders, buyer caps and triggers on earlier steps follow as they will.
"""

from __future__ import annotations

import dataclasses
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

from worker.domain import Campaign, Send, SendState
from worker.pauses import PAUSED, Pause
from worker.plan import Decision, OrderHistory, Policy, Verdict, next_looks, plan

# explain ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Event:
    """Something stored about the order or its buyer that a decision may depend on."""

    at: datetime | None
    text: str


@dataclass(frozen=True, slots=True)
class StepStory:
    campaign: str
    step: str
    verdict: Verdict
    reason: str
    due_at: datetime | None
    """When it is or was due (the stored row's due time once there is one)."""
    happened: str
    """Sent / waiting / skipped / failed / in doubt, in an operator's words."""
    send: Send | None = None
    delivery: str = ""
    """For delivered-triggered steps: the delivery counted from and its source."""


@dataclass(frozen=True, slots=True)
class CampaignStory:
    campaign: str
    applies: bool
    why_not: str = ""
    """For a campaign that does not apply: disabled, or the marketplace is not covered."""
    steps: tuple[StepStory, ...] = ()


@dataclass(frozen=True, slots=True)
class Explanation:
    order_id: str
    marketplace: str
    buyer: str
    now: datetime
    campaigns: tuple[CampaignStory, ...]
    events: tuple[Event, ...]


def _when(moment: datetime | None) -> str:
    if moment is None or moment.year >= 9999:
        return "-"
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def _happened(decision: Decision, row: Send | None) -> str:
    """What became of the step, from the stored row first, else from the decision."""
    if row is not None and row.state is SendState.SENT:
        return f"sent at {_when(row.sent_at)} with Message-ID {row.message_id or '?'}"
    if row is not None and row.state is SendState.SKIPPED:
        return f"skipped: {row.reason}"
    if row is not None and row.state is SendState.FAILED:
        return f"failed: {row.reason}"
    if row is not None and row.state is SendState.IN_DOUBT:
        return (
            f"in_doubt since {_when(row.claimed_at)}: the relay may have taken it; "
            "check its log, then `worker sends resolve`"
        )
    if decision.verdict is Verdict.DUE:
        return "due now: the next pass sends it"
    if decision.verdict is Verdict.SKIP:
        return f"will be skipped: {decision.reason}"
    if decision.verdict is Verdict.WAIT and decision.at is not None and decision.at.year < 9999:
        return f"waiting until {_when(decision.at)} ({decision.reason})"
    if decision.verdict is Verdict.WAIT:
        return f"waiting for an event ({decision.reason})"
    return decision.reason


def _events(histories: Sequence[OrderHistory], target: OrderHistory, now: datetime) -> list[Event]:
    """The facts the planner weighed for ``target``: its own dates, and the buyer's disputes,
    reviews, replies, conversation, suppression and last message (they span orders)."""
    order = target.order
    events: list[Event] = []
    if order.ordered_at is not None:
        events.append(Event(order.ordered_at, "ordered"))
    if order.shipped_at is not None:
        events.append(Event(order.shipped_at, "shipped"))
    if order.delivered_at is not None:
        events.append(Event(order.delivered_at, "delivered (as the order data says)"))
    if order.expected_delivery_at is not None:
        events.append(Event(order.expected_delivery_at, "the marketplace expects delivery"))
    for dispute in target.disputes:
        on = "" if dispute.order_id == order.order_id else f" (order {dispute.order_id})"
        events.append(Event(dispute.opened_at, f"dispute opened: {dispute.kind}{on}"))
        if dispute.closed_at is not None:
            how = "dismissed" if dispute.dismissed else "closed"
            events.append(Event(dispute.closed_at, f"dispute {how}{on}"))
    for review in target.reviews:
        stars = "?" if review.rating is None else str(review.rating)
        events.append(Event(review.reviewed_at, f"review {stars}/5 ({review.source})"))
    for reply in target.replies:
        events.append(Event(reply.replied_at, f"buyer replied ({reply.source})"))
    last_buyer: datetime | None = None
    for entry in sorted(target.conversation, key=lambda e: e.at):
        if entry.at > now:
            break
        last_buyer = entry.at if entry.from_buyer else None
    if last_buyer is not None:
        events.append(Event(last_buyer, "buyer's message awaiting the seller's answer"))
    if target.suppression is not None:
        why = target.suppression.reason.value
        events.append(Event(target.suppression.created_at, f"address suppressed: {why}"))
    last = max(
        (
            s.sent_at
            for h in histories
            for s in h.sends.values()
            if s.state is SendState.SENT and s.sent_at is not None
        ),
        default=target.buyer_last_sent,
    )
    if last is not None:
        events.append(Event(last, "last message to this buyer (the buyer cap counts from it)"))
    events.sort(key=lambda e: (e.at is None, e.at or now))
    return events


def explain(
    histories: Sequence[OrderHistory],
    order_id: str,
    campaigns: Sequence[Campaign],
    now: datetime,
    policy: Policy,
    paused: Sequence[Pause] = (),
) -> Explanation:
    """The story of one order at ``now``. ``histories``: every order of its buyer, as the
    daemon plans them together (buyer caps and disputes span orders); ``paused``: the pauses
    in force, which hold a due step as they would in the daemon."""
    target = next(h for h in histories if h.order.order_id == order_id)
    decided = {
        (d.campaign, d.step): d
        for d in plan(histories, campaigns, now, policy, paused).decisions
        if d.order_id == order_id
    }
    stories: list[CampaignStory] = []
    for campaign in campaigns:
        if not campaign.enabled:
            stories.append(CampaignStory(campaign.name, False, "campaign disabled"))
            continue
        if target.order.marketplace not in campaign.marketplaces:
            covered = ", ".join(sorted(campaign.marketplaces))
            why = f"marketplace {target.order.marketplace} not covered (only {covered})"
            stories.append(CampaignStory(campaign.name, False, why))
            continue
        steps = []
        for step in campaign.steps:
            decision = decided[(campaign.name, step.id)]
            row = target.sends.get((campaign.name, step.id))
            due = row.due_at if row is not None else decision.at
            delivery = decision.delivery.describe() if decision.delivery is not None else ""
            steps.append(
                StepStory(
                    campaign.name,
                    step.id,
                    decision.verdict,
                    decision.reason,
                    due,
                    _happened(decision, row),
                    row,
                    delivery,
                )
            )
        stories.append(CampaignStory(campaign.name, True, steps=tuple(steps)))
    return Explanation(
        order_id,
        target.order.marketplace,
        target.order.buyer_email,
        now,
        tuple(stories),
        tuple(_events(histories, target, now)),
    )


# calendar --------------------------------------------------------------------------------

STEP = timedelta(hours=1)
"""The simulated clock's tick: a due step goes out at the first tick at or after it is due,
as it would under a daemon that wakes at least hourly (it wakes earlier when something is
due, so on a real clock sends come at most this much sooner)."""


@dataclass(slots=True)
class Calendar:
    """What the rehearsed window holds, per UTC day and campaign step."""

    start: datetime
    end: datetime
    sent: Counter[tuple[date, str, str]] = field(default_factory=Counter)
    """(day, campaign, step) -> messages that would go out."""
    skipped: Counter[tuple[date, str, str, str]] = field(default_factory=Counter)
    """(day, campaign, step, reason) -> steps that would be skipped for good."""
    held: Counter[tuple[date, str, str]] = field(default_factory=Counter)
    """(day, campaign, step) -> steps falling due that day under a pause in force: they wait
    until ``worker resume`` (the rehearsal never resumes), counted once each."""
    paused: tuple[Pause, ...] = ()
    """The pauses in force, held for the whole window as the daemon would hold them."""
    orders: dict[tuple[date, str, str, str], list[str]] = field(
        default_factory=lambda: defaultdict(list)
    )
    """The order ids behind each count; the key's reason is ``sent`` for sends."""

    def days(self) -> list[date]:
        keys = {k[0] for k in self.sent} | {k[0] for k in self.skipped} | {k[0] for k in self.held}
        return sorted(keys)


def reason_kind(reason: str) -> str:
    """``too_late: 3d past due (limit 2d)`` -> ``too_late``: the counts group by kind; the
    ids (--orders) and ``worker explain`` say the rest."""
    return reason.split(": ", 1)[0]


def rehearse(
    batches: Iterable[Sequence[OrderHistory]],
    campaigns: Sequence[Campaign],
    start: datetime,
    days: int,
    policy: Policy,
    tick: timedelta = STEP,
    *,
    keep_orders: bool = True,
    paused: Sequence[Pause] = (),
) -> Calendar:
    """Step a clock from ``start`` through ``days`` days by ``tick`` and plan at each instant
    a buyer may change; every due step is taken as sent then, every skip as recorded then.

    ``batches``: whole buyers at a time (they are planned independently, as the daemon does),
    so memory follows one batch, not the store. Nothing is written anywhere.
    ``keep_orders``: keep the order ids behind each count (``--orders``); off, memory
    follows the number of days and steps, not of orders.
    """
    end = start + timedelta(days=days)
    calendar = Calendar(start, end, paused=tuple(paused))
    for batch in batches:
        _rehearse_batch(list(batch), campaigns, calendar, policy, tick, keep_orders)
    return calendar


def _rehearse_batch(
    batch: list[OrderHistory],
    campaigns: Sequence[Campaign],
    calendar: Calendar,
    policy: Policy,
    tick: timedelta,
    keep_orders: bool,
) -> None:
    """As the daemon does: each buyer is planned again only when their next look has come
    (:func:`worker.plan.next_looks`), so a quiet buyer costs one plan, not one per tick."""
    buyers: dict[str, list[OrderHistory]] = defaultdict(list)
    for history in batch:
        buyers[history.order.buyer_email].append(history)
    looks: dict[str, datetime] = dict.fromkeys(buyers, calendar.start)
    held: set[tuple[str, str, str]] = set()
    synthetic = -1
    while looks:
        ticks = -(-(min(looks.values()) - calendar.start) // tick)  # the first tick at or after
        now = calendar.start + max(ticks, 0) * tick
        if now >= calendar.end:
            return
        due = [buyer for buyer, moment in looks.items() if moment <= now]
        histories = [h for buyer in due for h in buyers[buyer]]
        result = plan(histories, campaigns, now, policy, calendar.paused)
        changed: dict[str, dict[tuple[str, str], Send]] = {}
        by_order = {h.order.order_id: h for h in histories}
        sent_to: set[str] = set()
        for decision in result.decisions:
            if decision.reason == PAUSED:
                key3 = (decision.order_id, decision.campaign, decision.step)
                if key3 not in held:
                    held.add(key3)
                    calendar.held[(now.date(), decision.campaign, decision.step)] += 1
                    if keep_orders:
                        place = (now.date(), decision.campaign, decision.step, PAUSED)
                        calendar.orders[place].append(decision.order_id)
                continue
            if decision.verdict not in (Verdict.DUE, Verdict.SKIP):
                continue
            order = by_order[decision.order_id]
            sends = changed.setdefault(decision.order_id, dict(order.sends))
            key = (decision.campaign, decision.step)
            day = now.date()
            if decision.verdict is Verdict.DUE:
                sends[key] = Send(
                    synthetic, decision.order_id, *key, SendState.SENT,
                    decision.at or now, sent_at=now,
                )  # fmt: skip
                calendar.sent[(day, *key)] += 1
                what = "sent"
                sent_to.add(order.order.buyer_email)
            else:
                sends[key] = Send(
                    synthetic, decision.order_id, *key, SendState.SKIPPED,
                    decision.at or now, reason=decision.reason,
                )  # fmt: skip
                what = reason_kind(decision.reason)
                calendar.skipped[(day, *key, what)] += 1
            if keep_orders:
                calendar.orders[(day, *key, what)].append(decision.order_id)
            synthetic -= 1
        if changed:
            histories = _with_sends(histories, changed, sent_to, now)
            for buyer in due:
                buyers[buyer] = []
            for history in histories:
                buyers[history.order.buyer_email].append(history)
        next_of = next_looks(histories, result.decisions, now)
        for buyer in due:
            upcoming = next_of.get(buyer)
            if buyer in sent_to or (upcoming is not None and upcoming <= now):
                looks[buyer] = now + tick  # a sent step may start the next: look again
            elif upcoming is None:
                del looks[buyer]  # only a new event could change anything: none will come
            else:
                looks[buyer] = upcoming


def _with_sends(
    histories: list[OrderHistory],
    changed: dict[str, dict[tuple[str, str], Send]],
    written: set[str],
    now: datetime,
) -> list[OrderHistory]:
    """The batch with the rehearsed rows, and each buyer's last message moved to ``now``
    where one was taken as sent (the per-buyer cap counts from it, across orders)."""
    out = []
    for history in histories:
        sends = changed.get(history.order.order_id, history.sends)
        last = history.buyer_last_sent
        if history.order.buyer_email in written:
            last = now if last is None else max(last, now)
        out.append(dataclasses.replace(history, sends=sends, buyer_last_sent=last))
    return out
