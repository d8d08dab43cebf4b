"""Tie an inbound message to the order it is about, and say how.

Pure: ``wanted()`` says what to look up for a message, the store answers with
``Candidates``, and ``match()`` decides. The order of the rules is the order of confidence:
a tracking number named by an authenticated carrier's delivery notice (which is about that
parcel, whatever else it holds), our signed return path (a report about one of our sends),
our own Message-IDs (as we sent them or as a relay rewrote them), an earlier message of the
conversation, the reply token, an order number written by that order's buyer or an
authenticated marketplace, and last the buyer's address when it has exactly one recent
order. A subject alone never threads a message, and neither does a From header no one
vouched for.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from worker.domain import Classification, Match, MatchMethod, MessageKind, Order
from worker.inbound import InboundMessage

_TOKEN = re.compile(r"^[^@+]+\+([a-z0-9]{8,32})@", re.IGNORECASE)
_LOCAL_PART = re.compile(r"^<([^@<>]+)@")


@dataclass(frozen=True, slots=True)
class SendRef:
    order_id: str
    send_id: int
    recipient: str | None = None
    """The address the send went to (unknown for sends made before it was recorded)."""


@dataclass(frozen=True, slots=True)
class Wanted:
    """What the store must look up to thread one message."""

    message_ids: tuple[str, ...]
    return_path_sends: tuple[int, ...]
    """Sends whose signed return path the message was addressed to."""
    relay_ids: tuple[str, ...]
    tokens: tuple[str, ...]
    order_numbers: tuple[str, ...]
    counterpart: str
    """The buyer's side of the conversation: the sender, or for our own mail and bounces the
    recipient."""
    authenticated: bool = False
    """The sender's domain is proven: an order number it names is believed."""
    tracking_numbers: tuple[str, ...] = ()
    """Looked up only for an authenticated carrier's notice (compact, upper-case)."""


@dataclass(frozen=True, slots=True)
class Candidates:
    """The store's answers to ``Wanted``."""

    sends_by_id: Mapping[int, SendRef] = field(default_factory=dict)
    sends_by_message_id: Mapping[str, SendRef] = field(default_factory=dict)
    sends_by_relay_id: Mapping[str, SendRef] = field(default_factory=dict)
    orders_by_message_id: Mapping[str, str] = field(default_factory=dict)
    orders_by_token: Mapping[str, str] = field(default_factory=dict)
    orders_by_number: Mapping[str, Order] = field(default_factory=dict)
    orders_by_tracking: Mapping[str, Order] = field(default_factory=dict)
    """Compact, upper-case tracking number -> the first order (by id) holding it."""
    orders_of_counterpart: tuple[Order, ...] = ()


@dataclass(frozen=True, slots=True)
class Threaded:
    match: Match | None
    send: SendRef | None = None
    """The send the message answers or reports on, when threaded by one of ours."""

    @property
    def send_id(self) -> int | None:
        return self.send.send_id if self.send else None


def wanted(
    message: InboundMessage,
    verdict: Classification,
    *,
    return_path_sends: tuple[int, ...] = (),
    authenticated: bool = False,
) -> Wanted:
    """``return_path_sends`` come from :meth:`worker.return_path.Signer.sends_in`."""
    ids = list(message.thread_ids)
    if verdict.bounce and verdict.bounce.original_message_id:
        ids.insert(0, verdict.bounce.original_message_id)
    ids = list(dict.fromkeys(ids))
    return Wanted(
        message_ids=tuple(ids),
        return_path_sends=return_path_sends,
        relay_ids=_relay_ids(ids),
        tokens=tuple(t.lower() for t in reply_tokens(message.recipients)),
        order_numbers=verdict.order_numbers,
        counterpart=counterpart(message, verdict),
        authenticated=authenticated,
        tracking_numbers=verdict.tracking_numbers
        if authenticated and verdict.kind is MessageKind.DELIVERED
        else (),
    )


def _relay_ids(message_ids: list[str]) -> tuple[str, ...]:
    """Relays report their id bare (``0100...-000000``) or whole (``id@relay``)."""
    found: list[str] = []
    for message_id in message_ids:
        found.append(message_id.strip("<>"))
        if local := _LOCAL_PART.match(message_id):
            found.append(local.group(1))
    return tuple(dict.fromkeys(found))


def reply_tokens(addresses: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(m.group(1) for a in addresses if (m := _TOKEN.match(a)))


def counterpart(message: InboundMessage, verdict: Classification) -> str:
    """Whose conversation this is: for our own words or a bounce, the one we wrote to."""
    if verdict.bounce is not None:
        return verdict.bounce.recipient
    if verdict.kind is MessageKind.SELLER:
        return message.recipients[0] if message.recipients else ""
    return message.sender


def match(
    want: Wanted,
    found: Candidates,
    verdict: Classification,
    *,
    now: datetime,
    recent: timedelta,
) -> Threaded:
    """The first rule that ties the message to an order; ``Threaded(None)`` if none does.

    An authenticated carrier's notice is about the parcel it names, whatever else it holds:
    its tracking numbers are tried first (only such a notice has any)."""
    for number in want.tracking_numbers:
        if order := found.orders_by_tracking.get(number):
            return Threaded(Match(order.order_id, MatchMethod.TRACKING_NUMBER, number))
    for send_id in want.return_path_sends:
        if ref := found.sends_by_id.get(send_id):
            return Threaded(Match(ref.order_id, MatchMethod.RETURN_PATH, f"send {send_id}"), ref)
    for message_id in want.message_ids:
        if ref := found.sends_by_message_id.get(message_id):
            return Threaded(Match(ref.order_id, MatchMethod.SEND_MESSAGE_ID, message_id), ref)
    for relay_id in want.relay_ids:
        if ref := found.sends_by_relay_id.get(relay_id):
            return Threaded(Match(ref.order_id, MatchMethod.RELAY_MESSAGE_ID, relay_id), ref)
    for message_id in want.message_ids:
        if order_id := found.orders_by_message_id.get(message_id):
            return Threaded(Match(order_id, MatchMethod.CONVERSATION, message_id))
    for token in want.tokens:
        if order_id := found.orders_by_token.get(token):
            return Threaded(Match(order_id, MatchMethod.REPLY_TOKEN, token))
    trusted = want.authenticated and (verdict.relayed or verdict.marketplace is not None)
    for number in want.order_numbers:
        order = found.orders_by_number.get(number)
        if order is not None and (trusted or order.buyer_email == want.counterpart):
            how = "authenticated marketplace" if trusted else "from the order's buyer"
            return Threaded(Match(order.order_id, MatchMethod.ORDER_NUMBER, f"{number} ({how})"))
    recent_orders = [o for o in found.orders_of_counterpart if _recent(o, now, recent)]
    if want.counterpart and len(recent_orders) == 1:
        only = recent_orders[0]
        detail = f"{want.counterpart} has one order in the last {recent.days} days"
        return Threaded(Match(only.order_id, MatchMethod.BUYER_ADDRESS, detail))
    return Threaded(None)


def _recent(order: Order, now: datetime, recent: timedelta) -> bool:
    moments = [m for m in (order.delivered_at, order.shipped_at, order.ordered_at) if m]
    return bool(moments) and now - max(moments) <= recent
