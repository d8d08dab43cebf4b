"""What the worker does about a classified, threaded message, as data the store applies.

Pure, so the table of kinds and their consequences reads in one place and is tested as
one. The store applies the result in the same transaction that records the message and
advances the mailbox checkpoint: a message's consequences happen exactly once.
"""

from __future__ import annotations

from dataclasses import dataclass

from worker.domain import (
    Classification,
    DisputeKind,
    Match,
    MessageKind,
    SuppressionReason,
)


@dataclass(frozen=True, slots=True)
class Suppress:
    email: str
    reason: SuppressionReason
    detail: str


@dataclass(frozen=True, slots=True)
class Reactions:
    open_dispute: DisputeKind | None = None
    close_disputes: bool = False
    review: bool = False
    rating: int | None = None
    reply: bool = False
    suppress: tuple[Suppress, ...] = ()
    soft_bounce: str | None = None
    """Count a soft bounce for this address; enough of them in the window suppress it."""
    hold_buyer: str | None = None
    """A complaint that threads to no single order still pauses that buyer's mail: a dispute
    is opened on their latest order, for an agent to check."""

    def only_suppressions(self) -> Reactions:
        """For old mail: an unsubscribe or a bounce still counts, an old complaint does not."""
        return Reactions(suppress=self.suppress, soft_bounce=self.soft_bounce)


def react(
    verdict: Classification, matched: Match | None, sender: str, buyer: str | None
) -> Reactions:
    """``buyer`` is the matched order's buyer address, when the message was threaded."""
    kind = verdict.kind
    bounce = verdict.bounce
    if kind is MessageKind.BOUNCE_HARD and bounce is not None:
        target = bounce.recipient or buyer
        detail = f"{bounce.status or 'no status'} {bounce.diagnostic}".strip()
        return Reactions(
            suppress=(Suppress(target, SuppressionReason.HARD_BOUNCE, detail),) if target else ()
        )
    if kind is MessageKind.BOUNCE_SOFT and bounce is not None:
        return Reactions(soft_bounce=bounce.recipient or buyer)
    if kind is MessageKind.UNSUBSCRIBE:
        addresses = dict.fromkeys(a for a in (sender, buyer) if a)
        detail = f"asked by mail ({verdict.evidence})"
        return Reactions(
            suppress=tuple(Suppress(a, SuppressionReason.UNSUBSCRIBE, detail) for a in addresses),
            reply=matched is not None,
        )
    if matched is None:
        if kind in (MessageKind.COMPLAINT, MessageKind.DISPUTE_OPENED) and sender:
            return Reactions(open_dispute=verdict.dispute_kind, hold_buyer=sender)
        return Reactions()
    if kind is MessageKind.DISPUTE_OPENED:
        return Reactions(open_dispute=verdict.dispute_kind or DisputeKind.COMPLAINT)
    if kind is MessageKind.COMPLAINT:
        return Reactions(open_dispute=verdict.dispute_kind or DisputeKind.COMPLAINT, reply=True)
    if kind is MessageKind.DISPUTE_CLOSED:
        return Reactions(close_disputes=True)
    if kind is MessageKind.REVIEW:
        return Reactions(review=True, rating=verdict.rating)
    if kind is MessageKind.REPLY:
        return Reactions(reply=True)
    return Reactions()
