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
    CLAIM_THREAT = "claim_threat"
    """The buyer threatens an A-to-z claim, a PayPal or eBay case, or a chargeback."""
    COMPLAINT = "complaint"


class Intent(StrEnum):
    """What a buyer's own words want (``worker.intent``), in the seller's terms.

    The complaint intents pause every campaign for the buyer (they open a dispute of the
    same kind); ``unsubscribe`` suppresses the address; the rest are tags that tell an agent
    which mail to answer first."""

    NOT_RECEIVED = "not_received"
    DAMAGED = "damaged"
    NOT_AS_DESCRIBED = "not_as_described"
    WRONG_ITEM = "wrong_item"
    REFUND = "refund"
    RETURN = "return"
    CANCEL = "cancel"
    """Cancel an order already shipped (before shipping it is ``cancel_before_shipping``)."""
    CLAIM_THREAT = "claim_threat"
    UNSUBSCRIBE = "unsubscribe"
    WHERE_IS_MY_ORDER = "where_is_my_order"
    """A question before the delivery estimate; after it, with no delivery, ``not_received``."""
    ADDRESS_CHANGE = "address_change"
    CANCEL_BEFORE_SHIPPING = "cancel_before_shipping"
    USAGE_QUESTION = "usage_question"
    INVOICE_REQUEST = "invoice_request"
    THANKS = "thanks"
    OTHER = "other"

    @property
    def dispute_kind(self) -> DisputeKind | None:
        """The dispute a complaint intent opens; ``None`` for the others."""
        return COMPLAINT_INTENTS.get(self)


COMPLAINT_INTENTS: dict[Intent, DisputeKind] = {
    Intent.NOT_RECEIVED: DisputeKind.NOT_RECEIVED,
    Intent.DAMAGED: DisputeKind.DAMAGED,
    Intent.NOT_AS_DESCRIBED: DisputeKind.NOT_AS_DESCRIBED,
    Intent.WRONG_ITEM: DisputeKind.WRONG_ITEM,
    Intent.REFUND: DisputeKind.REFUND,
    Intent.RETURN: DisputeKind.RETURN,
    Intent.CANCEL: DisputeKind.CANCEL,
    Intent.CLAIM_THREAT: DisputeKind.CLAIM_THREAT,
}


class SuppressionReason(StrEnum):
    """Why an address must never be written to again, whatever a campaign says."""

    UNSUBSCRIBE = "unsubscribe"
    HARD_BOUNCE = "hard_bounce"
    SOFT_BOUNCES = "soft_bounces"
    SPAM_COMPLAINT = "spam_complaint"
    """The recipient marked one of our messages as spam (an ARF feedback-loop report)."""
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
    site: str | None = None
    """The marketplace site the order was placed on, as a host name (``ebay.de``,
    ``amazon.co.jp``), when the export says it."""
    carrier: str | None = None
    """Who carries the parcel, as the export or shipments file names it (``DHL``, ``usps``)."""
    tracking_number: str | None = None
    shipping_service: str | None = None
    """The carrier's service or the marketplace's shipping option (``Standard``, ``Economy``)."""
    expected_delivery_at: datetime | None = None
    """The marketplace's own estimated (latest) delivery date, where its export has one."""
    delivery_event_at: datetime | None = None
    """When a delivery event (``worker import shipments``, a carrier's mail) said it arrived;
    it outranks every other source of the delivery time."""
    shipment_status: str | None = None
    """The parcel's last known status: shipped, in_transit, out_for_delivery, delivered,
    exception or returned."""
    shipment_status_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Dispute:
    order_id: str
    kind: DisputeKind
    opened_at: datetime
    closed_at: datetime | None = None
    source: str = "import"
    needs_review: bool = False
    """Opened on a reading the intent reader was not sure of: it pauses the buyer like any
    dispute, and waits in ``worker disputes list --needs-review`` for an agent."""
    dismissed: bool = False
    """An agent said it was no complaint: the buyer's mail resumes at once, with no cool-down."""

    def open_at(self, moment: datetime) -> bool:
        """Effective from its own timestamps: not open before it was opened."""
        return self.opened_at <= moment and (self.closed_at is None or moment < self.closed_at)


@dataclass(frozen=True, slots=True)
class Review:
    order_id: str
    rating: int | None
    """1 to 5; ``None`` when a notification said a review was posted but not its stars."""
    reviewed_at: datetime
    source: str = "import"


@dataclass(frozen=True, slots=True)
class Reply:
    """The buyer wrote back about an order (recorded by an agent or, later, the mailbox)."""

    order_id: str
    replied_at: datetime
    source: str = "manual"


@dataclass(frozen=True, slots=True)
class ThreadEntry:
    """One message of a conversation between the buyer and the seller: who spoke, and when.
    The worker's own campaign mail is no entry: it answers nothing."""

    at: datetime
    from_buyer: bool


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


class StepKind(StrEnum):
    """What a step's message is to the buyer: it sets the step's rank when several of one
    buyer's steps are due together, and whether it waits for the seller's answer."""

    SHIPPING_NOTICE = "shipping_notice"
    CHECK_IN = "check_in"
    REVIEW_REQUEST = "review_request"
    REVIEW_REMINDER = "review_reminder"
    REVIEW_THANKS = "review_thanks"
    OTHER = "other"

    @property
    def asks_for_review(self) -> bool:
        return self in (StepKind.REVIEW_REQUEST, StepKind.REVIEW_REMINDER)

    @property
    def rank(self) -> int:
        """Lower goes first: a buyer hears "it shipped" and "does it work?" before "review it"."""
        return list(StepKind).index(self)


@dataclass(frozen=True, slots=True)
class CampaignStep:
    id: str
    trigger: Trigger
    delay_min: timedelta
    delay_max: timedelta
    template: str
    unless: frozenset[Condition] = frozenset()
    max_lateness: timedelta = timedelta(days=3)
    kind: StepKind = StepKind.OTHER
    hold_while_awaiting_answer: bool = True
    """Wait while the buyer's last message to the seller is unanswered (reason
    ``awaiting_answer``): the seller has the last word before asking for a review."""
    buyer_cap: timedelta | None = None
    """At most one message to the buyer within this span, counting every campaign and order;
    None: the ``buyer_cap`` setting."""
    latest: timedelta | None = None
    """Never sent later than this after the step's ``after`` moment, whatever held it (a
    dispute, the buyer cap, an unanswered message, a pause): a marketplace's window, such as
    Amazon's 30 days after delivery, which ``max_lateness`` alone cannot promise since it counts
    from the moved due time. None: no such bound."""
    holdout: float = 0.0
    """The share of orders (0 to 0.5) that never get this step, to measure what it adds:
    a stable sample (:func:`worker.plan.held_out`), recorded ``skipped`` with reason
    ``holdout``."""


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


# Inbound mail (classified by worker.classify, threaded by worker.thread) -----------------


class MessageKind(StrEnum):
    """What an inbound message is; ``worker.classify`` decides in this order of precedence."""

    SELLER = "seller"
    """Written from one of the seller's own addresses: an agent's answer or a sent copy."""
    BOUNCE_HARD = "bounce_hard"
    """The recipient's own permanent failure (5.1.1, 5.1.2, 5.1.6, 550 no such user)."""
    BOUNCE_SOFT = "bounce_soft"
    """A temporary or unclear failure (4.x.x, mailbox full): counted per address."""
    BOUNCE_POLICY = "bounce_policy"
    """5.7.x: refused for policy, reputation or authentication; our side's problem."""
    SPAM_COMPLAINT = "spam_complaint"
    """An ARF (RFC 5965) feedback-loop report: a recipient marked our message as spam."""
    AUTO_REPLY = "auto_reply"
    """Out-of-office and other automatic answers: recorded, never a buyer's reply."""
    DELIVERED = "delivered"
    """A carrier says a parcel was delivered: sets the delivery event of the order holding
    its tracking number, when the carrier's From domain is authenticated."""
    BULK = "bulk"
    """Mailing-list and bulk mail (newsletters, notifications) that no buyer wrote by hand:
    stored, never a buyer's reply, never a complaint."""
    UNSUBSCRIBE = "unsubscribe"
    """The buyer asked for no more mail."""
    DISPUTE_OPENED = "dispute_opened"
    """A marketplace says a claim, case or dispute was opened."""
    DISPUTE_CLOSED = "dispute_closed"
    """A marketplace says a claim, case or dispute was closed."""
    REVIEW = "review"
    """A marketplace or review service says the buyer left a review or feedback."""
    COMPLAINT = "complaint"
    """The buyer's own words say something went wrong: opens a dispute."""
    REPLY = "reply"
    """Any other buyer message, including those a marketplace relays."""
    QUARANTINED = "quarantined"
    """Could not be read within the limits (time, size, structure): stored raw with the
    error, acts on nothing, and the mailbox reads on."""


BUYER_KINDS = frozenset({MessageKind.UNSUBSCRIBE, MessageKind.COMPLAINT, MessageKind.REPLY})
"""Kinds that are the buyer's own words and wait for the seller's answer."""


@dataclass(frozen=True, slots=True)
class Bounce:
    """What a report says about one recipient of one of our messages: a delivery-status
    notification's failed recipient, or the complaining recipient of an ARF report."""

    status: str
    """Enhanced status code such as ``5.1.1``; empty when only prose was found."""
    recipient: str
    """The original recipient, lower-cased; empty when the report does not name one."""
    original_message_id: str | None = None
    """The failed message's Message-ID (``<...>``), to find the send that caused it."""
    diagnostic: str = ""
    """The remote server's own words, on one line."""


@dataclass(frozen=True, slots=True)
class Classification:
    """The verdict on one inbound message and the evidence for it."""

    kind: MessageKind
    evidence: str
    """Why, in a form an operator can check: ``dsn_status=5.1.1``,
    ``header=Auto-Submitted: auto-replied``, ``keyword=de:nicht angekommen``,
    ``rule=amazon-a-to-z-claim``."""
    dispute_kind: DisputeKind | None = None
    rating: int | None = None
    bounce: Bounce | None = None
    marketplace: str | None = None
    relayed: bool = False
    """Sent by a known marketplace relay on the buyer's behalf, not by the buyer."""
    order_numbers: tuple[str, ...] = ()
    """Order numbers found in the subject or body, in order of appearance."""
    carrier: str | None = None
    """For a carrier's notice: the carrier id (``worker.tracking``) whose sender it matched."""
    tracking_numbers: tuple[str, ...] = ()
    """For a carrier's notice: what may be tracking numbers in it, compact and upper-case."""
    intent: Intent | None = None
    """For the buyer's own words: what they want (``worker.intent``)."""
    confidence: float | None = None
    """How sure the intent reader is of ``intent``, 0 to 1."""
    needs_review: bool = False
    """A complaint read with low confidence: the dispute it opens waits for an agent."""


class MatchMethod(StrEnum):
    """How an inbound message was tied to an order; recorded with the message."""

    RETURN_PATH = "return_path"
    """A report came back to the signed return path (VERP) of one of our sends."""
    SEND_MESSAGE_ID = "send_message_id"
    """In-Reply-To, References or a bounce named a Message-ID of one of our sends."""
    RELAY_MESSAGE_ID = "relay_message_id"
    """...or the id the relay reported in its 250 reply for one of our sends."""
    CONVERSATION = "conversation"
    """...or the Message-ID of an earlier message already threaded to the order."""
    REPLY_TOKEN = "reply_token"
    """The message was addressed to ``reply+TOKEN@...`` that we set as Reply-To."""
    ORDER_NUMBER = "order_number"
    """An order number in the subject or body, from the order's buyer or a marketplace relay."""
    TRACKING_NUMBER = "tracking_number"
    """An authenticated carrier's notice names the tracking number the order holds."""
    BUYER_ADDRESS = "buyer_address"
    """The sender is the buyer of exactly one recent order."""
    MANUAL = "manual"
    """An agent filed it with ``worker inbox assign``."""


@dataclass(frozen=True, slots=True)
class Match:
    order_id: str
    method: MatchMethod
    detail: str = ""
