"""The intent reader's mechanics: what a reading does, the order's stage, the subject, the
buyer's words in replies, the shipped model's integrity. How well it reads real mail is
measured on the development set (tests/unit/test_intent_set.py, bench/intents.py)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from tests.messages import read_as
from worker.classify import classify, own_words
from worker.delivery import Delivery
from worker.domain import COMPLAINT_INTENTS, Classification, DisputeKind, Intent, MessageKind, Order
from worker.errors import ModelError
from worker.inbound import parse
from worker.intent import (
    PAUSE_FROM,
    SURE_FROM,
    UNSUBSCRIBE_FROM,
    IntentReader,
    IntentReading,
    OrderStage,
    at_stage,
    stage_of,
)
from worker.intent_model import MODEL_INTENTS, IntentModel, features, prepared, shipped_model
from worker.rules import MailRules, load_rules

ROOT = Path(__file__).resolve().parents[2]
NOW = datetime(2026, 3, 20, 12, tzinfo=UTC)


@pytest.fixture(scope="module")
def rules() -> MailRules:
    return load_rules(ROOT / "config" / "mail-rules.yaml")


def _model_saying(probabilities: dict[Intent, float], knows: str = "some words") -> IntentModel:
    """A model whose bias alone gives these probabilities, for any text; it knows (with
    zero weights) the features of ``knows``, as if it had learnt that language."""
    intents = MODEL_INTENTS
    p = np.array([probabilities.get(i, 0.0) for i in intents]) + 1e-9
    p /= p.sum()
    rows = features(knows)
    return IntentModel(
        intents,
        rows,
        np.zeros((len(rows), len(intents)), dtype=np.float32),
        np.log(p).astype(np.float32),
        "",
    )


def _reading(probabilities: dict[Intent, float], words: str = "some words") -> IntentReading:
    return IntentReader(_model_saying(probabilities)).read("", words)


def test_a_sure_complaint_pauses_with_its_kind() -> None:
    reading = _reading({Intent.DAMAGED: 0.9, Intent.THANKS: 0.1})
    assert (reading.intent, reading.needs_review) == (Intent.DAMAGED, False)
    assert reading.confidence == pytest.approx(0.9, abs=1e-3)
    assert reading.evidence.startswith("intent=damaged p=0.90")


def test_a_possible_complaint_pauses_and_waits_for_an_agent() -> None:
    """Complaint intents together reach PAUSE_FROM though no single one leads: the safe
    side is a dispute marked needs_review, of the likeliest complaint kind."""
    half = (PAUSE_FROM + SURE_FROM) / 2
    reading = _reading(
        {Intent.DAMAGED: half * 0.6, Intent.NOT_AS_DESCRIBED: half * 0.4, Intent.THANKS: 1 - half}
    )
    assert (reading.intent, reading.needs_review) == (Intent.DAMAGED, True)
    assert reading.confidence == pytest.approx(half, abs=1e-3)


def test_below_the_pause_line_it_is_the_likeliest_ordinary_intent() -> None:
    reading = _reading({Intent.DAMAGED: PAUSE_FROM - 0.05, Intent.USAGE_QUESTION: 0.7})
    assert reading.intent is Intent.USAGE_QUESTION
    assert not reading.needs_review


def test_an_unsure_unsubscribe_suppresses_no_one() -> None:
    unsure = UNSUBSCRIBE_FROM - 0.05
    reading = _reading({Intent.UNSUBSCRIBE: unsure, Intent.OTHER: 1 - unsure})
    assert reading.intent is Intent.OTHER
    sure = _reading({Intent.UNSUBSCRIBE: UNSUBSCRIBE_FROM + 0.05, Intent.OTHER: 0.3})
    assert sure.intent is Intent.UNSUBSCRIBE


def test_no_words_is_no_reading() -> None:
    reading = _reading({Intent.DAMAGED: 1.0}, words=" \n ")
    assert (reading.intent, reading.confidence) == (Intent.OTHER, 0.0)


def test_words_of_a_language_it_never_learnt_are_no_reading() -> None:
    """Its priors are no reading of Korean: nothing pauses on a guess."""
    reader = IntentReader(_model_saying({Intent.DAMAGED: 1.0}, knows="the lamp is broken"))
    assert reader.read("", "the lamp is broken").intent is Intent.DAMAGED
    unknown = reader.read("the lamp is broken", "부재중입니다. 3월 23일에 돌아옵니다.")
    assert (unknown.intent, unknown.confidence) == (Intent.OTHER, 0.0)
    assert "does not know" in unknown.evidence


def test_the_subject_is_read_only_where_the_words_do_not_decide() -> None:
    model = shipped_model()
    reader = IntentReader(model)
    assert "from=words" in reader.read("Broken lamp", "Thank you so much, all perfect!").evidence
    assert reader.read("My lamp arrived broken", "").evidence.find("from=subject") >= 0


def _order(**changes: object) -> Order:
    order = Order(
        order_id="A-1",
        marketplace="shop",
        buyer_email="b@example.com",
        buyer_name="B",
        ordered_at=NOW - timedelta(days=20),
    )
    return dataclasses.replace(order, **changes)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("order", "delivery", "stage"),
    [
        (_order(), None, OrderStage.NOT_SHIPPED),
        (
            _order(shipped_at=NOW - timedelta(days=3)),
            Delivery(NOW + timedelta(days=4), "estimated"),
            OrderStage.IN_TRANSIT,
        ),
        (
            _order(shipped_at=NOW - timedelta(days=20)),
            Delivery(NOW - timedelta(days=6), "estimated"),
            OrderStage.OVERDUE,
        ),
        (
            _order(shipped_at=NOW - timedelta(days=9), delivery_event_at=NOW - timedelta(days=1)),
            Delivery(NOW - timedelta(days=1), "event"),
            OrderStage.DELIVERED,
        ),
        (
            _order(shipped_at=NOW - timedelta(days=9), shipment_status="exception"),
            Delivery(None, "exception"),
            OrderStage.UNKNOWN,
        ),
    ],
)
def test_stage_of_an_order(order: Order, delivery: Delivery | None, stage: OrderStage) -> None:
    assert stage_of(order, delivery, NOW) is stage


@pytest.mark.parametrize(
    ("intent", "stage", "turned", "kind"),
    [
        (
            Intent.WHERE_IS_MY_ORDER,
            OrderStage.IN_TRANSIT,
            Intent.WHERE_IS_MY_ORDER,
            MessageKind.REPLY,
        ),
        (Intent.WHERE_IS_MY_ORDER, OrderStage.UNKNOWN, Intent.WHERE_IS_MY_ORDER, MessageKind.REPLY),
        (Intent.WHERE_IS_MY_ORDER, OrderStage.OVERDUE, Intent.NOT_RECEIVED, MessageKind.COMPLAINT),
        (
            Intent.WHERE_IS_MY_ORDER,
            OrderStage.DELIVERED,
            Intent.NOT_RECEIVED,
            MessageKind.COMPLAINT,
        ),
        (Intent.NOT_RECEIVED, OrderStage.IN_TRANSIT, Intent.WHERE_IS_MY_ORDER, MessageKind.REPLY),
        (Intent.NOT_RECEIVED, OrderStage.OVERDUE, Intent.NOT_RECEIVED, MessageKind.COMPLAINT),
        (Intent.CANCEL, OrderStage.NOT_SHIPPED, Intent.CANCEL_BEFORE_SHIPPING, MessageKind.REPLY),
        (Intent.CANCEL, OrderStage.IN_TRANSIT, Intent.CANCEL, MessageKind.COMPLAINT),
        (Intent.CANCEL, OrderStage.DELIVERED, Intent.RETURN, MessageKind.COMPLAINT),
        (Intent.CANCEL, OrderStage.UNKNOWN, Intent.CANCEL, MessageKind.COMPLAINT),
        (Intent.DAMAGED, OrderStage.IN_TRANSIT, Intent.DAMAGED, MessageKind.COMPLAINT),
    ],
)
def test_the_stage_turns_what_the_words_mean(
    intent: Intent, stage: OrderStage, turned: Intent, kind: MessageKind
) -> None:
    verdict = at_stage(read_as(intent), stage)
    assert (verdict.intent, verdict.kind, verdict.dispute_kind) == (
        turned,
        kind,
        turned.dispute_kind,
    )
    if turned is not intent:
        assert f"stage={stage.value}->{turned.value}" in verdict.evidence


def test_the_stage_leaves_other_kinds_alone() -> None:
    bounce = Classification(MessageKind.BOUNCE_HARD, "dsn_status=5.1.1", intent=Intent.CANCEL)
    assert at_stage(bounce, OrderStage.NOT_SHIPPED) is bounce


def test_complaint_intents_open_disputes_of_their_kind() -> None:
    assert {i.dispute_kind for i in COMPLAINT_INTENTS} == {
        DisputeKind.NOT_RECEIVED,
        DisputeKind.DAMAGED,
        DisputeKind.NOT_AS_DESCRIBED,
        DisputeKind.WRONG_ITEM,
        DisputeKind.REFUND,
        DisputeKind.RETURN,
        DisputeKind.CANCEL,
        DisputeKind.CLAIM_THREAT,
    }
    assert all(i.dispute_kind is None for i in Intent if i not in COMPLAINT_INTENTS)


def test_the_model_reads_accents_widths_and_digits_alike() -> None:
    assert prepared("Reçu, MERCI") == prepared("recu, merci")
    assert prepared("ＰａｙＰａｌ １２３") == prepared("paypal 999")
    assert prepared("ば") == "ば"  # kana keep their voicing marks
    assert np.array_equal(features("Grüße"), features("GRUSSE"))  # ß folds to ss


def test_a_broken_model_file_is_a_clear_error() -> None:
    with pytest.raises(ModelError, match="cannot be read"):
        IntentModel.load(b"not a model")


def test_the_shipped_model_round_trips() -> None:
    model = shipped_model()
    again = IntentModel.load(model.save())
    text = "The mug arrived in pieces"
    assert np.allclose(model.probabilities(text), again.probabilities(text))
    assert again.intents == MODEL_INTENTS


BOTTOM = (
    "On Mon, 2 Mar 2026 at 09:30, Lumen Home <service@lumen-home.example> wrote:\n"
    "> Has everything arrived in good order?\n"
    "> If anything is wrong, just tell us.\n"
    "\n"
    "No. The lamp came with a cracked shade.\n"
    "Mary\n"
)
INLINE = (
    "Am Mo., 2. März 2026 um 09:30 Uhr schrieb Lumen Home <service@lumen-home.example>:\n"
    "> Ist alles in gutem Zustand angekommen?\n"
    "\n"
    "Leider nein, der Deckel fehlt.\n"
    "\n"
    "> Funktioniert es so, wie Sie es sich vorgestellt haben?\n"
    "\n"
    "Nein.\n"
)
WEBDE = (
    "Danke, alles bestens!\n\n"
    "Gesendet: Montag, 02. März 2026 um 09:30 Uhr\n"
    'Von: "Lumen Home" <service@lumen-home.example>\n'
    "Betreff: Ist alles gut angekommen?\n\n"
    "Ist alles in gutem Zustand angekommen? Falls etwas kaputt ist, sagen Sie es uns.\n"
)
FORWARD = (
    "See below.\n\n"
    "---------- Forwarded message ---------\n"
    "From: Someone <x@example.com>\n\n"
    "> quoted\n"
    "their words, not the buyer's\n"
)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        (BOTTOM, "No. The lamp came with a cracked shade.\nMary"),
        (INLINE, "Leider nein, der Deckel fehlt.\n\n\nNein."),
        (WEBDE, "Danke, alles bestens!"),
        (FORWARD, "See below."),
    ],
)
def test_the_buyer_words_above_below_and_between_quotes(
    text: str, words: str, rules: MailRules
) -> None:
    assert own_words(text, rules) == words


def test_a_bottom_posted_complaint_pauses(rules: MailRules) -> None:
    raw = (
        "From: Mary <mary@example.com>\r\nTo: service@lumen-home.example\r\n"
        "Subject: Re: How is your order?\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
        + BOTTOM.replace("\n", "\r\n")
    ).encode()
    verdict = classify(parse(raw), rules, seller_addresses=frozenset())
    assert (verdict.kind, verdict.intent) == (MessageKind.COMPLAINT, Intent.DAMAGED)


def test_a_reply_subject_is_ours_and_not_read(rules: MailRules) -> None:
    """Our check-in's subject asks whether anything arrived damaged: coming back as
    "Re: ..." it says nothing about the buyer."""
    raw = (
        b"From: Mary <mary@example.com>\r\nTo: service@lumen-home.example\r\n"
        b"Subject: Re: Arrived damaged or not as described?\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n\r\nok\r\n"
    )
    verdict = classify(parse(raw), rules, seller_addresses=frozenset())
    assert verdict.kind is MessageKind.REPLY
    assert "from=subject" not in verdict.evidence


def test_a_subject_alone_is_too_thin_for_the_stage_to_make_a_complaint() -> None:
    """ "Question about order #1051" with no words is read as where-is-my-order, but asks
    nothing about the parcel: after delivery it stays a question."""
    reading = IntentReader(_model_saying({Intent.WHERE_IS_MY_ORDER: 0.9}, knows="question"))
    said = reading.read("Question", "")
    verdict = read_as(Intent.WHERE_IS_MY_ORDER, said.confidence)
    verdict = dataclasses.replace(verdict, evidence=said.evidence)
    assert "from=subject" in said.evidence
    assert at_stage(verdict, OrderStage.DELIVERED).intent is Intent.WHERE_IS_MY_ORDER
    written = IntentReader(_model_saying({Intent.WHERE_IS_MY_ORDER: 0.9}, knows="where is it"))
    worded = dataclasses.replace(verdict, evidence=written.read("", "where is it").evidence)
    assert at_stage(worded, OrderStage.DELIVERED).intent is Intent.NOT_RECEIVED
