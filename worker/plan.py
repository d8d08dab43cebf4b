"""Which campaign step is due for which order, and why every other one is not.

A pure function of (order histories, campaigns, now, policy): no I/O, no wall clock, so the
daemon, the ``worker plan`` dry run and the tests all get the same answer for the same data.
Every event counts from its own timestamp: a dispute opened on 3 March is not open on 1 March,
a review dated in the future has not happened yet.

A bug tripped by one order's data stays with that order: its steps wait with reason
``plan_error: <type>: <message>`` and every other order is planned as usual (see :func:`plan`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import traceback
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta
from enum import StrEnum
from zoneinfo import ZoneInfo

from worker.delivery import Delivery, TransitTable, delivery_of
from worker.domain import (
    TERMINAL_STATES,
    Campaign,
    CampaignStep,
    Condition,
    Customer,
    Dispute,
    Order,
    Reply,
    Review,
    Send,
    SendState,
    Suppression,
    ThreadEntry,
    TriggerEvent,
)
from worker.localtime import in_window, next_open, zone_for
from worker.pauses import PAUSED, Pause, holding

_FOREVER = datetime.max.replace(tzinfo=ZoneInfo("UTC"))
HOLDOUT = "holdout"
"""The skip reason of a step held out of its campaign (``holdout:`` in the campaign file)."""


class Verdict(StrEnum):
    DUE = "due"
    """Send now: the row is (or will be) scheduled and may be claimed."""
    WAIT = "wait"
    """Not yet; ``at`` says when to look again (None: waits for an event)."""
    SKIP = "skip"
    """Never: recorded as a ``skipped`` send row with the reason."""
    DONE = "done"
    """A terminal send row already exists."""


@dataclass(frozen=True, slots=True)
class Policy:
    """Rules no campaign file can change."""

    dispute_cooldown: timedelta = timedelta(days=3)
    default_zone: ZoneInfo = field(default_factory=lambda: ZoneInfo("UTC"))
    buyer_cap: timedelta = timedelta(days=3)
    """At most one message per buyer within this span, across campaigns and orders, for
    steps that do not set their own (:attr:`CampaignStep.buyer_cap`); 0: no cap."""
    transit: TransitTable = field(default_factory=TransitTable)
    """Transit times for estimating a delivery the data does not state (worker/delivery.py)."""


@dataclass(frozen=True, slots=True)
class OrderHistory:
    """Everything the planner may know about one order, as stored."""

    order: Order
    customer: Customer
    disputes: tuple[Dispute, ...] = ()
    """Every dispute of this buyer, on any order: one open case pauses all their mail."""
    reviews: tuple[Review, ...] = ()
    replies: tuple[Reply, ...] = ()
    sends: Mapping[tuple[str, str], Send] = field(default_factory=dict)
    suppression: Suppression | None = None
    conversation: tuple[ThreadEntry, ...] = ()
    """The buyer's messages to the seller and the seller's answers, on any of the buyer's
    orders: while the last word is the buyer's, review steps wait."""
    buyer_last_sent: datetime | None = None
    """When a message of any campaign last went (or began to go) to this buyer, on any order:
    what the per-buyer cap counts from when a send is claimed."""


@dataclass(frozen=True, slots=True)
class Decision:
    order_id: str
    campaign: str
    step: str
    verdict: Verdict
    reason: str
    at: datetime | None = None
    """DUE: the effective due time; WAIT: when to look again; SKIP/DONE: when it was due."""
    send_id: int | None = None
    state: SendState | None = None
    """The stored row's state, when there is a row."""
    delivery: Delivery | None = None
    """Delivered-triggered steps: the delivery time counted from and its source, so
    ``worker plan`` can say whether it is an event or an estimate."""


@dataclass(frozen=True, slots=True)
class PlanFailure:
    """An exception raised while planning one order's campaign, as text to log."""

    order_id: str
    campaign: str
    step: str
    """The step being planned when it was raised; its later steps wait with it."""
    error: str
    """``Type: message``, the same text as the decisions' ``plan_error:`` reason."""
    where: str
    """The innermost frame, ``path:line in function``: where to look for the bug."""


@dataclass(frozen=True, slots=True)
class Plan:
    decisions: tuple[Decision, ...]
    now: datetime
    failures: tuple[PlanFailure, ...] = ()
    """Orders whose planning raised; their steps are among ``waiting`` as ``plan_error``."""

    def _with(self, verdict: Verdict) -> list[Decision]:
        return [d for d in self.decisions if d.verdict is verdict]

    @property
    def due(self) -> list[Decision]:
        return self._with(Verdict.DUE)

    @property
    def waiting(self) -> list[Decision]:
        return self._with(Verdict.WAIT)

    @property
    def skipped(self) -> list[Decision]:
        return self._with(Verdict.SKIP)

    def next_wakeup(self) -> datetime | None:
        """The earliest future moment at which some waiting step may become due."""
        times = [d.at for d in self.waiting if d.at is not None and d.at > self.now]
        return min(times, default=None)


def stable_delay(step: CampaignStep, order_id: str, campaign: str) -> timedelta:
    """A point inside ``delay_min..delay_max`` that is the same on every run for this order."""
    span = step.delay_max - step.delay_min
    if not span:
        return step.delay_min
    digest = hashlib.sha256(f"{order_id}|{campaign}|{step.id}".encode()).digest()
    fraction = int.from_bytes(digest[:8], "big") / 2**64
    minutes = int(span.total_seconds() // 60 * fraction)
    return step.delay_min + timedelta(minutes=minutes)


def held_out(campaign: str, step: CampaignStep, order_id: str) -> bool:
    """Is this order in the step's hold-out sample? A hash of (campaign, step, order) with a
    salt of its own, so the same orders are held out on every pass and every worker in any
    order, independently of :func:`stable_delay`; raising the share only adds orders."""
    if step.holdout <= 0:
        return False
    digest = hashlib.sha256(f"holdout|{campaign}|{step.id}|{order_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < step.holdout


def plan(
    histories: Iterable[OrderHistory],
    campaigns: Sequence[Campaign],
    now: datetime,
    policy: Policy,
    paused: Sequence[Pause] = (),
) -> Plan:
    """Decide every (order, campaign, step) at ``now``.

    If planning a step raises, that step and the later ones of the campaign (they may follow
    it) get WAIT ``plan_error: ...`` with no ``at``, and :attr:`Plan.failures` says where.
    Waiting, not skipping: a skip is recorded for good, and once the bug or the data is fixed
    the step must still go out; so it is retried every pass and never reaches a buyer while
    it fails. Earlier steps, the order's other campaigns and all other orders are unaffected.

    ``paused``: the operator's pauses in force; a due step they hold waits (``paused``, no
    ``at``: resuming wakes its buyer), before pacing, so it holds no other step back.
    """
    _require_aware(now)
    active = [c for c in campaigns if c.enabled]
    decisions: list[Decision] = []
    failures: list[PlanFailure] = []
    planned = list(histories)
    for history in planned:
        for campaign in active:
            _plan_contained(history, campaign, now, policy, decisions, failures)
    if paused:
        marketplace = {h.order.order_id: h.order.marketplace for h in planned}
        decisions = [
            dataclasses.replace(d, verdict=Verdict.WAIT, reason=PAUSED, at=None)
            if d.verdict is Verdict.DUE and holding(paused, marketplace[d.order_id], d.campaign)
            else d
            for d in decisions
        ]
    if any(d.verdict is Verdict.DUE for d in decisions):
        decisions = _pace(decisions, planned, active, now, policy)
    return Plan(tuple(decisions), now, tuple(failures))


def _pace(
    decisions: list[Decision],
    histories: Sequence[OrderHistory],
    campaigns: Sequence[Campaign],
    now: datetime,
    policy: Policy,
) -> list[Decision]:
    """One buyer, one message at a time: of a buyer's due steps, the first in priority order
    goes out and the others wait (reason ``buyer_cap``) until the cap since the last message
    has passed; their ``max_lateness`` still counts from when they were due.

    Priority: the step's kind (shipping notice, check-in, review request, reminder, thanks),
    then the older order, then names: stable from pass to pass, so a held step keeps its
    place. Every order of a buyer is planned in the same batch, so the buyer is seen whole.
    """
    steps = {(c.name, s.id): s for c in campaigns for s in c.steps}
    windows = {c.name: c.send_window for c in campaigns}
    history_of = {h.order.order_id: h for h in histories}
    order_of = {order_id: h.order for order_id, h in history_of.items()}
    last: dict[str, datetime] = {}
    for history in histories:
        for moment in _sent_times(history):
            buyer = history.order.buyer_email
            if buyer not in last or moment > last[buyer]:
                last[buyer] = moment

    def priority(index: int) -> tuple[object, ...]:
        decision = decisions[index]
        order = order_of[decision.order_id]
        placed = order.ordered_at or order.shipped_at or _FOREVER
        kind = steps[(decision.campaign, decision.step)].kind
        return (order.buyer_email, kind.rank, placed, order.order_id, decision.campaign)

    due = [i for i, d in enumerate(decisions) if d.verdict is Verdict.DUE]
    paced = list(decisions)
    for index in sorted(due, key=priority):
        decision = decisions[index]
        step = steps[(decision.campaign, decision.step)]
        buyer = order_of[decision.order_id].buyer_email
        cap = step.buyer_cap if step.buyer_cap is not None else policy.buyer_cap
        previous = last.get(buyer)
        if cap and previous is not None and now < previous + cap:
            history = history_of[decision.order_id]
            zone = zone_for(
                history.customer.country or history.order.country,
                history.customer.timezone,
                policy.default_zone,
            )
            allowed = next_open(previous + cap, windows[decision.campaign], zone)
            paced[index] = dataclasses.replace(
                decision, verdict=Verdict.WAIT, reason="buyer_cap", at=allowed
            )
        else:
            last[buyer] = max(now, previous) if previous is not None else now
    return paced


def _sent_times(history: OrderHistory) -> Iterator[datetime]:
    """When this buyer was last written to: sent messages, and claimed ones that may have
    gone (sending, in doubt), from their claim."""
    if history.buyer_last_sent is not None:
        yield history.buyer_last_sent
    for send in history.sends.values():
        if send.state is SendState.SENT and send.sent_at is not None:
            yield send.sent_at
        elif send.state in (SendState.SENDING, SendState.IN_DOUBT) and send.claimed_at:
            yield send.claimed_at


def _plan_contained(
    history: OrderHistory,
    campaign: Campaign,
    now: datetime,
    policy: Policy,
    decisions: list[Decision],
    failures: list[PlanFailure],
) -> None:
    """Append the campaign's decisions for one order; an exception stays with this order."""
    order_id = history.order.order_id
    steps = campaign.steps
    done = 0
    try:
        if history.order.marketplace not in campaign.marketplaces:
            return
        earlier: dict[str, Decision] = {}
        for step in steps:
            decision = _plan_step(history, campaign, step, earlier, now, policy)
            earlier[step.id] = decision
            decisions.append(decision)
            done += 1
    except Exception as exc:
        error = _error_text(exc)
        failing = steps[done].id if done < len(steps) else ""
        failures.append(PlanFailure(order_id, campaign.name, failing, error, _where(exc)))
        decisions.extend(
            Decision(order_id, campaign.name, step.id, Verdict.WAIT, f"plan_error: {error}")
            for step in steps[done:]
        )


def _error_text(exc: Exception, limit: int = 160) -> str:
    first_line = next(iter(str(exc).strip().splitlines()), "")
    message = first_line if len(first_line) <= limit else first_line[: limit - 3] + "..."
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def _where(exc: Exception) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return "?"
    frame = frames[-1]
    return f"{frame.filename}:{frame.lineno} in {frame.name}"


def _require_aware(now: datetime) -> None:
    """A naive ``now`` is the caller's bug, not one order's: refuse it before any order."""
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError(f"now={now!r} is naive; pass a tz-aware UTC datetime")


def _plan_step(
    history: OrderHistory,
    campaign: Campaign,
    step: CampaignStep,
    earlier: Mapping[str, Decision],
    now: datetime,
    policy: Policy,
) -> Decision:
    order = history.order
    row = history.sends.get((campaign.name, step.id))
    delivery = (
        delivery_of(order, history.customer.country, policy.transit)
        if step.trigger.event is TriggerEvent.DELIVERED and step.trigger.step is None
        else None
    )

    def decide(verdict: Verdict, reason: str, at: datetime | None = None) -> Decision:
        row_id, state = (None, None) if row is None else (row.id, row.state)
        return Decision(
            order.order_id, campaign.name, step.id, verdict, reason, at, row_id, state, delivery
        )

    if row is not None and row.state in TERMINAL_STATES:
        reason = row.state.value + (f": {row.reason}" if row.reason else "")
        return decide(Verdict.DONE, reason, row.sent_at or row.due_at)
    if row is not None and row.state is SendState.SENDING:
        return decide(Verdict.WAIT, "in_flight", None)

    if (request := _held_out_before(step, earlier)) is not None:
        # No reminder without its request: the order stays in the sample it was held out in.
        would_be = request + stable_delay(step, order.order_id, campaign.name)
        return decide(Verdict.SKIP, HOLDOUT, would_be)
    anchor = _anchor(history, step, earlier, now, delivery)
    if isinstance(anchor, Decision):
        return decide(anchor.verdict, anchor.reason, anchor.at)
    nominal = anchor + stable_delay(step, order.order_id, campaign.name)

    if (condition := _unless_holds(history, step, now)) is not None:
        return decide(Verdict.SKIP, condition.value, nominal)
    if history.suppression is not None and history.suppression.created_at <= now:
        return decide(Verdict.SKIP, f"suppressed:{history.suppression.reason.value}", nominal)
    if step.latest is not None and now - anchor > step.latest:
        since = step.trigger.event.value if step.trigger.event else f"step {step.trigger.step}"
        late = f"too_late: {_compact(now - anchor)} after {since} (latest {_compact(step.latest)})"
        return decide(Verdict.SKIP, late, nominal)

    zone = zone_for(
        history.customer.country or order.country, history.customer.timezone, policy.default_zone
    )
    blocks = _dispute_blocks(history.disputes, now, policy.dispute_cooldown)
    unanswered = _answer_blocks(history, step, now)
    eligible = _first_allowed(nominal, sorted(blocks + unanswered), campaign, zone)

    if (block := _block_at(now, blocks)) is not None:
        reason = "dispute_open" if block[1] is _FOREVER else "dispute_cooldown"
        return decide(Verdict.WAIT, reason, None if block[1] is _FOREVER else block[1])
    if _block_at(now, unanswered) is not None:
        return decide(Verdict.WAIT, "awaiting_answer", None)
    if eligible > now:
        return decide(Verdict.WAIT, "not_due" if nominal > now else "outside_send_window", eligible)
    if now - eligible > step.max_lateness:
        late_by, limit = _compact(now - eligible), _compact(step.max_lateness)
        return decide(Verdict.SKIP, f"too_late: {late_by} past due (limit {limit})", eligible)
    if not in_window(now, campaign.send_window, zone):
        return decide(
            Verdict.WAIT, "outside_send_window", next_open(now, campaign.send_window, zone)
        )
    if row is not None and row.not_before is not None and row.not_before > now:
        return decide(Verdict.WAIT, f"retry_later: {row.reason}", row.not_before)
    if held_out(campaign.name, step, order.order_id):
        return decide(Verdict.SKIP, HOLDOUT, eligible)
    return decide(Verdict.DUE, "due", eligible)


def _held_out_before(step: CampaignStep, earlier: Mapping[str, Decision]) -> datetime | None:
    """When the step this one follows would have gone, if that step was held out."""
    if step.trigger.step is None:
        return None
    before = earlier[step.trigger.step]
    if before.reason not in (HOLDOUT, f"{SendState.SKIPPED.value}: {HOLDOUT}"):
        return None
    return before.at


def _anchor(
    history: OrderHistory,
    step: CampaignStep,
    earlier: Mapping[str, Decision],
    now: datetime,
    delivery: Delivery | None,
) -> datetime | Decision:
    """The moment the step's delay counts from, or why there is none yet. A delivered
    trigger counts from ``delivery`` (an event, the feed, the marketplace's estimate or
    ours); each pass computes it afresh, so when a real event replaces an estimate the
    unsent steps move with it."""
    trigger = step.trigger
    order = history.order
    if trigger.step is not None:
        before = earlier[trigger.step]
        if before.state is SendState.SENT:
            return before.at or now
        if before.verdict in (Verdict.DONE, Verdict.SKIP):
            return _pending(Verdict.SKIP, f"previous_step_not_sent:{trigger.step}")
        return _pending(Verdict.WAIT, f"awaiting_step:{trigger.step}")
    if trigger.event is TriggerEvent.REVIEWED:
        matching = [
            r for r in history.reviews if _rating_matches(r.rating, step) and r.reviewed_at <= now
        ]
        if not matching:
            return _pending(Verdict.WAIT, "awaiting_review")
        return min(r.reviewed_at for r in matching)
    moment = order.shipped_at
    if trigger.event is TriggerEvent.DELIVERED:
        if delivery is not None and (reason := delivery.skip_reason) is not None:
            return _pending(Verdict.SKIP, reason)
        if delivery is not None and (reason := delivery.wait_reason) is not None:
            return _pending(Verdict.WAIT, reason)
        moment = None if delivery is None else delivery.at
    if moment is None or moment > now:
        return _pending(Verdict.WAIT, f"awaiting_{trigger.event}", moment)
    return moment


def _pending(verdict: Verdict, reason: str, at: datetime | None = None) -> Decision:
    return Decision("", "", "", verdict, reason, at)


def _rating_matches(rating: int | None, step: CampaignStep) -> bool:
    if rating is None:  # stars unknown: only a step that asks for no particular rating
        return step.trigger.min_rating is None and step.trigger.max_rating is None
    low = step.trigger.min_rating or 1
    high = step.trigger.max_rating or 5
    return low <= rating <= high


def _unless_holds(history: OrderHistory, step: CampaignStep, now: datetime) -> Condition | None:
    happened = {
        Condition.REVIEWED: any(r.reviewed_at <= now for r in history.reviews),
        Condition.REPLIED: any(r.replied_at <= now for r in history.replies),
    }
    return next((c for c in sorted(step.unless) if happened[c]), None)


def _dispute_blocks(
    disputes: Iterable[Dispute], now: datetime, cooldown: timedelta
) -> list[tuple[datetime, datetime]]:
    """Intervals in which nothing may go out: open disputes plus the cool-down after each.
    A dismissed one (an agent found no complaint) blocks only while it was open: the buyer
    was never angry, so their mail resumes at once."""
    blocks = []
    for dispute in disputes:
        if dispute.opened_at > now:
            continue  # not known yet at ``now``
        closed = (
            dispute.closed_at
            if dispute.closed_at is not None and dispute.closed_at <= now
            else None
        )
        if closed is None:
            blocks.append((dispute.opened_at, _FOREVER))
        else:
            blocks.append((dispute.opened_at, closed if dispute.dismissed else closed + cooldown))
    return sorted(blocks)


def _answer_blocks(
    history: OrderHistory, step: CampaignStep, now: datetime
) -> list[tuple[datetime, datetime]]:
    """For a step that waits for the seller's answer: the spans in which the buyer's message
    was unanswered, from the buyer's first unanswered message to the seller's next one (the
    rule of ``worker inbox --awaiting``). A span ended by an answer moves the step after it,
    as a closed dispute does, so a request delayed by a question is not then too late."""
    if not step.hold_while_awaiting_answer:
        return []
    blocks: list[tuple[datetime, datetime]] = []
    since: datetime | None = None
    for entry in sorted(history.conversation, key=lambda e: e.at):
        if entry.at > now:
            break  # not known yet at ``now``
        if entry.from_buyer and since is None:
            since = entry.at
        elif not entry.from_buyer and since is not None:
            blocks.append((since, entry.at))
            since = None
    if since is not None:
        blocks.append((since, _FOREVER))
    return blocks


def _block_at(
    moment: datetime, blocks: Sequence[tuple[datetime, datetime]]
) -> tuple[datetime, datetime] | None:
    covering = [b for b in blocks if b[0] <= moment < b[1]]
    return max(covering, key=lambda b: b[1], default=None)


def _first_allowed(
    moment: datetime,
    blocks: Sequence[tuple[datetime, datetime]],
    campaign: Campaign,
    zone: ZoneInfo,
) -> datetime:
    """The first instant at or after ``moment`` outside every block and inside the send window.

    One round reaches the window, one more per block passed, and a last one returns.
    """
    for _ in range(len(blocks) + 2):
        block = _block_at(moment, blocks)
        if block is not None:
            if block[1] is _FOREVER:
                return _FOREVER
            moment = block[1]
        opened = next_open(moment, campaign.send_window, zone)
        if opened == moment and block is None:
            return moment
        moment = opened
    raise RuntimeError(f"no send time found past {len(blocks)} dispute blocks from {moment}")


def _compact(delta: timedelta) -> str:
    """``3d``, ``51d23h``, ``5h``: what an operator reads in ``worker sends``."""
    hours = int(delta.total_seconds() // 3600)
    days, hours = divmod(hours, 24)
    return (f"{days}d" if days else "") + (f"{hours}h" if hours or not days else "")


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a due send must not go out after all; ``final``: skip it, else only hold it."""

    reason: str
    final: bool


def refusal(
    history: OrderHistory, step: CampaignStep, now: datetime, policy: Policy
) -> Refusal | None:
    """The planner's protections, asked again at the moment a send is claimed: a dispute,
    suppression, review or reply recorded while the pass ran stops the send.

    If asking raises, the send is held (not final) with reason ``plan_error: ...``, as
    :func:`plan` does: the claim of every other send goes on, and this one is retried.
    """
    try:
        return _refusal(history, step, now, policy)
    except Exception as exc:
        return Refusal(f"plan_error: {_error_text(exc)}", final=False)


def _refusal(
    history: OrderHistory, step: CampaignStep, now: datetime, policy: Policy
) -> Refusal | None:
    if (condition := _unless_holds(history, step, now)) is not None:
        return Refusal(condition.value, final=True)
    if history.suppression is not None and history.suppression.created_at <= now:
        return Refusal(f"suppressed:{history.suppression.reason.value}", final=True)
    blocks = _dispute_blocks(history.disputes, now, policy.dispute_cooldown)
    if (block := _block_at(now, blocks)) is not None:
        return Refusal("dispute_open" if block[1] is _FOREVER else "dispute_cooldown", final=False)
    if _block_at(now, _answer_blocks(history, step, now)) is not None:
        return Refusal("awaiting_answer", final=False)
    cap = step.buyer_cap if step.buyer_cap is not None else policy.buyer_cap
    last = history.buyer_last_sent
    if cap and last is not None and now < last + cap:
        return Refusal("buyer_cap", final=False)
    return None


# Which buyers a pass must plan ------------------------------------------------------------


def next_looks(
    histories: Iterable[OrderHistory], decisions: Iterable[Decision], now: datetime
) -> dict[str, datetime | None]:
    """For each buyer of ``histories``, the next moment at which planning them may answer
    differently if nothing is written meanwhile; None: only a new event can change anything
    (every write of one wakes the buyer, see worker/migrations/versions/0005_scale.py).

    A due step looks again from when it was due: if its send is not taken this pass, the
    next pass must see it, whatever that pass's clock says. A step that failed to plan
    (``plan_error``) looks again at ``now``, to retry it. Events dated in the future (a review
    stamped ahead of the clock) count from their own time.
    """
    buyer_of: dict[str, str] = {}
    looks: dict[str, datetime | None] = {}

    def look(buyer: str, moment: datetime | None) -> None:
        known = looks.get(buyer)
        if moment is not None and moment < _FOREVER and (known is None or moment < known):
            looks[buyer] = moment

    for history in histories:
        buyer = history.order.buyer_email
        buyer_of[history.order.order_id] = buyer
        looks.setdefault(buyer, None)
        for moment in _event_times(history):
            if moment > now:
                look(buyer, moment)
    for decision in decisions:
        if (buyer_of_order := buyer_of.get(decision.order_id)) is None:
            continue
        buyer = buyer_of_order
        if decision.verdict is Verdict.DUE:
            look(buyer, min(decision.at or now, now))
        elif decision.reason.startswith("plan_error"):
            look(buyer, now)
        elif decision.verdict is Verdict.WAIT:
            look(buyer, decision.at)
    return looks


def _event_times(history: OrderHistory) -> Iterator[datetime]:
    order = history.order
    dates = (order.shipped_at, order.delivered_at, order.expected_delivery_at)
    yield from (m for m in (*dates, order.delivery_event_at) if m is not None)
    for dispute in history.disputes:
        yield dispute.opened_at
        if dispute.closed_at is not None:
            yield dispute.closed_at
    yield from (review.reviewed_at for review in history.reviews)
    yield from (reply.replied_at for reply in history.replies)
    yield from (entry.at for entry in history.conversation)
    if history.suppression is not None:
        yield history.suppression.created_at


def plan_inputs_digest(campaigns: Sequence[Campaign], policy: Policy) -> str:
    """A fingerprint of everything besides the histories and the clock that the planner's
    answer depends on: when it changes, every buyer is planned again once. The same files
    and settings give the same digest in every process (sets are sorted, not hashed)."""
    canonical = json.dumps(
        [_canonical(c) for c in sorted(campaigns, key=lambda c: c.name)] + [_canonical(policy)],
        sort_keys=True,
        ensure_ascii=True,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def _canonical(value: object) -> object:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            f.name: _canonical(getattr(value, f.name))
            for f in dataclasses.fields(value)
            if f.compare and f.name != "source"
        }
    if isinstance(value, StrEnum):
        return value.value
    if isinstance(value, frozenset | set):
        return sorted((_canonical(v) for v in value), key=repr)
    if isinstance(value, tuple | list):
        return [_canonical(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, ZoneInfo):
        return value.key
    if isinstance(value, datetime | time):
        return value.isoformat()
    return value
