"""What the worker does about a classified, threaded message, as data the store applies.

Pure, so the table of kinds and their consequences reads in one place and is tested as
one. The store applies the result in the same transaction that records the message and
advances the mailbox checkpoint: a message's consequences happen exactly once.

What a message may do depends on what it proves (docs/mail-rules.md, "What each kind of
message may do"):

- Relaxing a protection (closing a dispute, recording a review) needs the marketplace's
  authenticated From domain (:class:`worker.origin.Origin`).
- Suppressing an address for a bounce or a spam complaint needs the report to be tied to
  one of our sends (our signed return path or our unguessable Message-ID), and to name the
  address that send went to.
- Tightening (a complaint, a claim opened) and marking a conversation replied act on the
  sender's own orders, or on an order whose mail the sender provably holds (our
  Message-ID or reply token), or for an authenticated marketplace.
- An unsubscribe suppresses the sender's own address.
- A carrier's delivery notice sets a delivery event only with the carrier's authenticated
  From domain, on the order holding the tracking number it names: a forged one would send
  the buyer's mail early.

Anything a message asked for but may not do is ``withheld``, with the reason, for agents.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime

from worker.domain import (
    Classification,
    DisputeKind,
    Match,
    MatchMethod,
    MessageKind,
    SuppressionReason,
)
from worker.origin import Origin

_PROOF_OF_RECEIPT = frozenset(
    {
        MatchMethod.RETURN_PATH,
        MatchMethod.SEND_MESSAGE_ID,
        MatchMethod.RELAY_MESSAGE_ID,
        MatchMethod.REPLY_TOKEN,
        MatchMethod.MANUAL,
    }
)
"""Ways of threading that only someone holding our mail (or an agent) can meet."""


@dataclass(frozen=True, slots=True)
class Suppress:
    email: str
    reason: SuppressionReason
    detail: str


@dataclass(frozen=True, slots=True)
class CloseDisputes:
    """Close the open disputes of this kind that this marketplace opened (or exported)."""

    kind: DisputeKind
    marketplace: str


@dataclass(frozen=True, slots=True)
class Delivered:
    """A carrier's delivery of the parcel with this number (compact, upper-case), at ``at``."""

    tracking_number: str
    at: datetime


@dataclass(frozen=True, slots=True)
class Reactions:
    open_dispute: DisputeKind | None = None
    dispute_source: str = "mailbox"
    needs_review: bool = False
    """The dispute opens marked for an agent to confirm or dismiss (a low-confidence reading)."""
    close_disputes: CloseDisputes | None = None
    review: bool = False
    rating: int | None = None
    reply: bool = False
    suppress: tuple[Suppress, ...] = ()
    soft_bounce: str | None = None
    """Count a soft bounce for this address; enough of them in the window suppress it."""
    hold_buyer: str | None = None
    """A complaint that threads to none of the sender's orders still pauses the sender's
    mail: a dispute is opened on their latest order, for an agent to check."""
    delivered: Delivered | None = None
    """Set the delivery event of the orders holding this tracking number."""
    withheld: str = ""
    """What the message asked for and may not do, and why."""

    def only_suppressions(self) -> Reactions:
        """For old mail: an unsubscribe or a bounce still counts, an old complaint does not."""
        return Reactions(
            suppress=self.suppress, soft_bounce=self.soft_bounce, withheld=self.withheld
        )


@dataclass(frozen=True, slots=True)
class Standing:
    """What a message has proven about itself; decides what it may do."""

    sender: str
    origin: Origin
    buyer: str | None = None
    """The matched order's buyer address, when the message was threaded."""
    sent_to: str | None = None
    """For a report tied to one of our sends: the address that send went to."""
    written_at: datetime | None = None
    """When the message says it was written (its Date), never after it arrived."""

    def speaks_for(self, matched: Match | None) -> bool:
        """The sender may tighten or mark replied the matched order."""
        if matched is None:
            return False
        return (
            self.sender == self.buyer
            or matched.method in _PROOF_OF_RECEIPT
            or self.origin.vouches_for(self.sender)
        )


def react(verdict: Classification, matched: Match | None, standing: Standing) -> Reactions:
    kind = verdict.kind
    if kind in (MessageKind.BOUNCE_HARD, MessageKind.BOUNCE_SOFT, MessageKind.SPAM_COMPLAINT):
        return _report(verdict, standing)
    if kind is MessageKind.UNSUBSCRIBE:
        return _unsubscribe(verdict, matched, standing)
    if kind in (MessageKind.DISPUTE_CLOSED, MessageKind.REVIEW):
        return _relaxing(verdict, matched, standing)
    if kind in (MessageKind.COMPLAINT, MessageKind.DISPUTE_OPENED):
        return _tightening(verdict, matched, standing)
    if kind is MessageKind.DELIVERED:
        return _delivered(verdict, matched, standing)
    if kind is MessageKind.REPLY and matched is not None:
        if standing.speaks_for(matched):
            return Reactions(reply=True)
        return Reactions(withheld=_not_theirs(standing, "marking the order replied"))
    return Reactions()


def _report(verdict: Classification, standing: Standing) -> Reactions:
    bounce = verdict.bounce
    named = bounce.recipient if bounce else ""
    if standing.sent_to is None:
        return Reactions(
            withheld="suppresses no one: not tied to one of our sends "
            "(no return-path token or Message-ID of ours)"
        )
    if named and named != standing.sent_to:
        return Reactions(
            withheld=f"suppresses no one: names {named}, but our send went to {standing.sent_to}"
        )
    target = standing.sent_to
    if verdict.kind is MessageKind.BOUNCE_SOFT:
        return Reactions(soft_bounce=target)
    detail = f"{bounce.status or 'no status'} {bounce.diagnostic}".strip() if bounce else ""
    reason = (
        SuppressionReason.SPAM_COMPLAINT
        if verdict.kind is MessageKind.SPAM_COMPLAINT
        else SuppressionReason.HARD_BOUNCE
    )
    return Reactions(suppress=(Suppress(target, reason, detail or verdict.evidence),))


def _unsubscribe(verdict: Classification, matched: Match | None, standing: Standing) -> Reactions:
    if not standing.sender:
        return Reactions(withheld="unsubscribe without a sender address: suppresses no one")
    detail = f"asked by mail ({verdict.evidence})"
    own = Suppress(standing.sender, SuppressionReason.UNSUBSCRIBE, detail)
    reactions = Reactions(suppress=(own,), reply=standing.speaks_for(matched))
    if standing.buyer and standing.buyer != standing.sender:
        note = f"the order's buyer {standing.buyer} stays subscribed: only they can unsubscribe"
        return replace(reactions, withheld=note)
    return reactions


def _relaxing(verdict: Classification, matched: Match | None, standing: Standing) -> Reactions:
    what = "closing a dispute" if verdict.kind is MessageKind.DISPUTE_CLOSED else "a review"
    if not standing.origin.vouches_for(standing.sender):
        return Reactions(
            withheld=f"{what} withheld: not authenticated as {_domain(standing.sender)} "
            f"({standing.origin.evidence})"
        )
    if matched is None:
        return Reactions(withheld=f"{what} withheld: no order matched")
    if verdict.kind is MessageKind.REVIEW:
        return Reactions(review=True, rating=verdict.rating)
    if verdict.dispute_kind is None or verdict.marketplace is None:
        return Reactions(withheld=f"{what} withheld: the rule names no dispute kind")
    return Reactions(close_disputes=CloseDisputes(verdict.dispute_kind, verdict.marketplace))


def _tightening(verdict: Classification, matched: Match | None, standing: Standing) -> Reactions:
    kind = verdict.dispute_kind or DisputeKind.COMPLAINT
    is_complaint = verdict.kind is MessageKind.COMPLAINT
    if standing.speaks_for(matched):
        notice = not is_complaint and standing.origin.vouches_for(standing.sender)
        source = f"marketplace:{verdict.marketplace}" if notice else "mailbox"
        return Reactions(
            open_dispute=kind,
            dispute_source=source,
            needs_review=verdict.needs_review,
            reply=is_complaint,
        )
    if not standing.sender:
        return Reactions(withheld="a complaint without a sender address: acts on no order")
    withheld = _not_theirs(standing, "opening a dispute") if matched is not None else ""
    return Reactions(
        open_dispute=kind,
        needs_review=verdict.needs_review,
        hold_buyer=standing.sender,
        withheld=withheld,
    )


def _delivered(verdict: Classification, matched: Match | None, standing: Standing) -> Reactions:
    """Only the authenticated carrier, naming a tracking number an order holds; the time is
    the message's own (a carrier writes the day it delivers)."""
    if not standing.origin.vouches_for(standing.sender):
        return Reactions(
            withheld=f"delivery withheld: not authenticated as {_domain(standing.sender)} "
            f"({standing.origin.evidence})"
        )
    if matched is None or matched.method is not MatchMethod.TRACKING_NUMBER:
        named = ", ".join(verdict.tracking_numbers[:3]) or "none"
        return Reactions(
            withheld=f"delivery withheld: no order holds a tracking number it names ({named})"
        )
    if standing.written_at is None:
        return Reactions(withheld="delivery withheld: the message has no time")
    return Reactions(delivered=Delivered(matched.detail, standing.written_at))


def _not_theirs(standing: Standing, what: str) -> str:
    return (
        f"{what} on the matched order withheld: {standing.sender or 'the sender'} is not its "
        "buyer and shows no mail of ours"
    )


def _domain(address: str) -> str:
    return address.rpartition("@")[2] or "the sender"
