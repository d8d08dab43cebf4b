"""The seller's nouns as plain, immutable values.

Pure steps (plan, render) take and return these; the store converts rows to and from them.
All datetimes are tz-aware UTC.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, time, timedelta
from enum import StrEnum

MARKETPLACES = frozenset({"amazon", "ebay", "aliexpress", "shop"})


class DisputeKind(StrEnum):
    """Why a buyer is unhappy; any open one pauses every campaign for that buyer."""

    NOT_RECEIVED = "not_received"
    NOT_AS_DESCRIBED = "not_as_described"
    DAMAGED = "damaged"
    WRONG_ITEM = "wrong_item"
    RETURN = "return"
    REFUND = "refund"
    CANCEL = "cancel"
    CHARGEBACK = "chargeback"
    A_TO_Z = "a_to_z"
    EBAY_CASE = "ebay_case"
    ALIEXPRESS_DISPUTE = "aliexpress_dispute"
    COMPLAINT = "complaint"


class SuppressionReason(StrEnum):
    """Why an address must never be written to again, whatever a campaign says."""

    UNSUBSCRIBE = "unsubscribe"
    HARD_BOUNCE = "hard_bounce"
    SOFT_BOUNCES = "soft_bounces"
    MANUAL = "manual"


class SendState(StrEnum):
    """Where one (order, campaign, step) message stands. Only ``scheduled`` may be claimed."""

    SCHEDULED = "scheduled"
    """Due or waiting for a retry (``not_before``); the row exists before any SMTP talk."""
    SENDING = "sending"
    """Claimed by a worker, which committed the claim before opening the SMTP conversation."""
    SENT = "sent"
    """The server answered 250 to the message data. Terminal."""
    SKIPPED = "skipped"
    """Decided not to send, for good (``reason`` says why). Terminal."""
    FAILED = "failed"
    """The server refused the message for good, or retries ran out. Terminal."""
    IN_DOUBT = "in_doubt"
    """The message data may have reached the server but no 250 was recorded. Terminal:
    re-sending could write to the buyer twice, so an operator decides."""


TERMINAL_STATES = frozenset(
    {SendState.SENT, SendState.SKIPPED, SendState.FAILED, SendState.IN_DOUBT}
)


@dataclass(frozen=True, slots=True)
class Customer:
    """A buyer, keyed by the normalised e-mail address."""

    email: str
    name: str = ""
    locale: str | None = None
    country: str | None = None
    timezone: str | None = None


@dataclass(frozen=True, slots=True)
class Order:
    order_id: str
    marketplace: str
    buyer_email: str
    buyer_name: str = ""
    products: tuple[str, ...] = ()
    locale: str | None = None
    country: str | None = None
    ordered_at: datetime | None = None
    shipped_at: datetime | None = None
    delivered_at: datetime | None = None
    review_url: str | None = None
    timezone: str | None = None
    """IANA zone of the buyer when the feed knows it; else the country decides."""


@dataclass(frozen=True, slots=True)
class Dispute:
    order_id: str
    kind: DisputeKind
    opened_at: datetime
    closed_at: datetime | None = None
    source: str = "import"

    def open_at(self, moment: datetime) -> bool:
        """Effective from its own timestamps: not open before it was opened."""
        return self.opened_at <= moment and (self.closed_at is None or moment < self.closed_at)


@dataclass(frozen=True, slots=True)
class Review:
    order_id: str
    rating: int
    reviewed_at: datetime
    source: str = "import"


@dataclass(frozen=True, slots=True)
class Reply:
    """The buyer wrote back about an order (recorded by an agent or, later, the mailbox)."""

    order_id: str
    replied_at: datetime
    source: str = "manual"


@dataclass(frozen=True, slots=True)
class Suppression:
    email: str
    reason: SuppressionReason
    created_at: datetime
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Send:
    """One row per (order, campaign, step): the record that makes sending exactly-once."""

    id: int
    order_id: str
    campaign: str
    step: str
    state: SendState
    due_at: datetime
    reason: str = ""
    message_id: str | None = None
    attempts: int = 0
    not_before: datetime | None = None
    claimed_at: datetime | None = None
    sent_at: datetime | None = None


# Campaign definitions (loaded from YAML by worker.campaign) -------------------------------


class TriggerEvent(StrEnum):
    DELIVERED = "delivered"
    SHIPPED = "shipped"
    REVIEWED = "reviewed"


class Condition(StrEnum):
    """``unless`` conditions: the step is skipped for good if one holds when it is due."""

    REVIEWED = "reviewed"
    REPLIED = "replied"


@dataclass(frozen=True, slots=True)
class Trigger:
    """What a step waits for: an order event, or an earlier step of the same campaign being sent."""

    event: TriggerEvent | None = None
    step: str | None = None
    min_rating: int | None = None
    max_rating: int | None = None


@dataclass(frozen=True, slots=True)
class SendWindow:
    """Hours and weekdays, in the buyer's local time, when mail may go out."""

    start: time
    end: time
    days: frozenset[int] = frozenset(range(7))  # 0 = Monday


@dataclass(frozen=True, slots=True)
class CampaignStep:
    id: str
    trigger: Trigger
    delay_min: timedelta
    delay_max: timedelta
    template: str
    unless: frozenset[Condition] = frozenset()
    max_lateness: timedelta = timedelta(days=3)


@dataclass(frozen=True, slots=True)
class Campaign:
    name: str
    steps: tuple[CampaignStep, ...]
    marketplaces: frozenset[str] = MARKETPLACES
    send_window: SendWindow | None = None
    source: str = ""
    enabled: bool = True
    step_lines: dict[str, int] = field(default_factory=dict, compare=False, hash=False)

    def step(self, step_id: str) -> CampaignStep:
        return next(s for s in self.steps if s.id == step_id)
