"""What a buyer's own words want, and what that may do: pause, suppress, or only tag.

A complaint found here is what keeps a review request from an angry buyer, so the reading
errs to the safe side: a message the model reads as possibly a complaint pauses the buyer
and opens a dispute marked ``needs_review``, for an agent to confirm or dismiss; only a sure
reading opens a plain one. An unsubscribe needs a sure reading, since it cannot be undone by
the buyer's next order.

The same words mean different things as the order moves on: "where is my parcel?" before
the delivery estimate is a question, after it with no delivery a complaint; "please cancel"
before shipping is a request, after delivery a return. ``at_stage`` applies the order's
stage once the message is threaded to it.

Pure: the reading depends only on the words, the model's weights and the stage.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Protocol

import numpy as np

from worker.delivery import Delivery
from worker.domain import COMPLAINT_INTENTS, Classification, Intent, MessageKind, Order
from worker.intent_model import IntentModel, shipped_model

PAUSE_FROM = 0.30
"""The model's summed probability of the complaint intents from which review mail pauses."""
SURE_FROM = 0.70
"""Below this, a complaint's dispute waits for an agent (``needs_review``)."""
UNSUBSCRIBE_FROM = 0.60
"""An unsubscribe suppresses the address for ever: only a sure reading does."""
SUBJECT_BELOW = 0.50
"""When the body's likeliest intent is less sure than this, the subject is read with it, if
the subject alone is at least this sure of something."""
MIN_CHARS = 2
MIN_KNOWN = 0.3
"""Below this share of known features the words are in a language the model never learnt
(the seven it reads are listed in docs/mail-rules.md): no reading rather than a guess."""
"""Fewer characters of the buyer's own are no words to read ("." or "ok" alone is not)."""


class OrderStage(StrEnum):
    """Where an order stands when a message about it arrives."""

    UNKNOWN = "unknown"
    """No order matched, or it has no shipping data."""
    NOT_SHIPPED = "not_shipped"
    IN_TRANSIT = "in_transit"
    """Shipped, and the delivery estimate has not passed."""
    OVERDUE = "overdue"
    """The delivery estimate has passed and nothing says it arrived."""
    DELIVERED = "delivered"


@dataclass(frozen=True, slots=True)
class IntentReading:
    intent: Intent
    confidence: float
    """For a complaint: how likely any complaint is; else how likely ``intent`` is."""
    evidence: str
    needs_review: bool = False


class ReadsIntent(Protocol):
    """Anything that reads a buyer's intent: the shipped model, or a remote backend with it."""

    def read(self, subject: str, words: str) -> IntentReading: ...


@dataclass(frozen=True, slots=True)
class IntentReader:
    """Reads buyer mail with a model; ``shipped()`` is the one in the package."""

    model: IntentModel

    @classmethod
    def shipped(cls) -> IntentReader:
        return cls(shipped_model())

    def read(self, subject: str, words: str) -> IntentReading:
        """The buyer's intent from their own words, and from the subject (without reply
        prefixes) where the words are missing or do not decide."""
        text, subject = words.strip(), subject.strip()
        read_from = "words"
        if len(text) < MIN_CHARS:
            text, read_from = subject, "subject"
        if len(text) < MIN_CHARS:
            return IntentReading(Intent.OTHER, 0.0, "intent=other: no words of the buyer's")
        probabilities, known = self.model.read(text)
        if known < MIN_KNOWN:
            return IntentReading(
                Intent.OTHER, 0.0, f"intent=other: words the model does not know ({known:.0%})"
            )
        if read_from == "words" and probabilities.max() < SUBJECT_BELOW and subject:
            # Only a subject that says something on its own ("Broken lamp", not "Hi") helps.
            if self.model.probabilities(subject).max() >= SUBJECT_BELOW:
                text, read_from = f"{subject}\n{text}", "subject+words"
                probabilities = self.model.probabilities(text)
        return self._decide(text, probabilities, read_from)

    def _decide(self, text: str, probabilities: np.ndarray, read_from: str) -> IntentReading:
        intents = self.model.intents
        complaint_columns = [n for n, i in enumerate(intents) if i in COMPLAINT_INTENTS]
        complaint = float(probabilities[complaint_columns].sum())
        if complaint >= PAUSE_FROM:
            column = max(complaint_columns, key=lambda n: probabilities[n])
            return self._reading(text, intents[column], complaint, read_from, complaint < SURE_FROM)
        others = [n for n in range(len(intents)) if n not in complaint_columns]
        column = max(others, key=lambda n: probabilities[n])
        intent = intents[column]
        if intent is Intent.UNSUBSCRIBE and probabilities[column] < UNSUBSCRIBE_FROM:
            column = max(
                (n for n in others if intents[n] is not Intent.UNSUBSCRIBE),
                key=lambda n: probabilities[n],
            )
            intent = intents[column]
        return self._reading(text, intent, float(probabilities[column]), read_from, False)

    def _reading(
        self, text: str, intent: Intent, confidence: float, read_from: str, unsure: bool
    ) -> IntentReading:
        said = ", ".join(f"'{w}'" for w in self.model.strongest(text, intent))
        evidence = f"intent={intent.value} p={confidence:.2f} from={read_from}"
        if said:
            evidence += f" words={said}"
        return IntentReading(intent, round(confidence, 3), evidence[:200], unsure)


def stage_of(order: Order, delivery: Delivery | None, at: datetime) -> OrderStage:
    """The order's stage at ``at`` from its shipping data and delivery time
    (``worker.delivery.delivery_of``)."""
    if order.delivery_event_at is not None or order.delivered_at is not None:
        return OrderStage.DELIVERED
    if order.shipment_status == "delivered":
        return OrderStage.DELIVERED
    if order.shipped_at is None and order.shipment_status is None:
        return OrderStage.NOT_SHIPPED
    if delivery is None or delivery.at is None:
        return OrderStage.UNKNOWN
    return OrderStage.OVERDUE if at > delivery.at else OrderStage.IN_TRANSIT


SUBJECT_ONLY = "from=subject "
"""In a reading's evidence: read from the subject alone, the buyer having written no words."""
STAGED = frozenset({Intent.WHERE_IS_MY_ORDER, Intent.NOT_RECEIVED, Intent.CANCEL})
"""The intents whose meaning depends on the order's stage."""


def at_stage(verdict: Classification, stage: OrderStage) -> Classification:
    """The verdict with the order's stage applied to a stage-dependent intent."""
    intent = verdict.intent
    if verdict.kind not in (MessageKind.REPLY, MessageKind.COMPLAINT) or intent is None:
        return verdict
    turned: Intent | None = None
    words = SUBJECT_ONLY not in f"{verdict.evidence} "
    if intent is Intent.WHERE_IS_MY_ORDER and stage in (OrderStage.OVERDUE, OrderStage.DELIVERED):
        # "Question about order #1051" alone asks nothing about where the parcel is.
        turned = Intent.NOT_RECEIVED if words else None
    elif intent is Intent.NOT_RECEIVED and stage in (OrderStage.NOT_SHIPPED, OrderStage.IN_TRANSIT):
        turned = Intent.WHERE_IS_MY_ORDER  # nothing can be missing before it is due
    elif intent is Intent.CANCEL and stage is OrderStage.NOT_SHIPPED:
        turned = Intent.CANCEL_BEFORE_SHIPPING
    elif intent is Intent.CANCEL and stage is OrderStage.DELIVERED:
        turned = Intent.RETURN
    if turned is None:
        return verdict
    evidence = f"{verdict.evidence} stage={stage.value}->{turned.value}"
    kind = turned.dispute_kind
    if kind is None:
        return dataclasses.replace(
            verdict,
            kind=MessageKind.REPLY,
            evidence=evidence,
            intent=turned,
            dispute_kind=None,
            needs_review=False,
        )
    return dataclasses.replace(
        verdict, kind=MessageKind.COMPLAINT, evidence=evidence, intent=turned, dispute_kind=kind
    )
