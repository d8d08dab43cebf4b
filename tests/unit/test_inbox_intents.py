"""What `worker inbox --urgent` puts first and what `--intent` accepts: pure functions of
the rows and the words typed."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime, timedelta

import pytest

from worker.cli import _intents, urgent_first
from worker.domain import COMPLAINT_INTENTS, Intent, MessageKind
from worker.store import InboundRow

T0 = datetime(2026, 3, 10, 9, 0, tzinfo=UTC)


def _row(row_id: int, intent: Intent | None, hours: int) -> InboundRow:
    return InboundRow(
        id=row_id,
        received_at=T0 + timedelta(hours=hours),
        folder="INBOX",
        uid=row_id,
        sender="ann@example.com",
        subject="",
        kind=MessageKind.REPLY,
        evidence="",
        order_id="SHOP-1",
        match_method="buyer_address",
        match_detail="",
        parse_errors=(),
        intent=intent,
        confidence=0.9,
    )


def test_complaints_then_the_parcel_questions_then_the_rest_newest_first_within():
    rows = [
        _row(1, Intent.THANKS, 9),
        _row(2, Intent.CANCEL_BEFORE_SHIPPING, 8),
        _row(3, Intent.ADDRESS_CHANGE, 7),
        _row(4, Intent.WHERE_IS_MY_ORDER, 6),
        _row(5, Intent.DAMAGED, 1),
        _row(6, Intent.CLAIM_THREAT, 2),
        _row(7, None, 10),
        _row(8, Intent.WHERE_IS_MY_ORDER, 11),
        _row(9, Intent.USAGE_QUESTION, 3),
    ]
    assert [r.id for r in urgent_first(rows)] == [6, 5, 8, 4, 3, 2, 7, 1, 9]


@pytest.mark.parametrize("intent", list(COMPLAINT_INTENTS))
def test_every_complaint_intent_comes_before_where_is_my_order(intent: Intent):
    rows = [_row(1, Intent.WHERE_IS_MY_ORDER, 5), _row(2, intent, 0)]
    assert [r.id for r in urgent_first(rows)] == [2, 1]


def test_intent_names_are_checked_and_a_comma_list_is_several():
    assert _intents("where_is_my_order") == [Intent.WHERE_IS_MY_ORDER]
    assert _intents(" damaged, not_received ,") == [Intent.DAMAGED, Intent.NOT_RECEIVED]
    with pytest.raises(argparse.ArgumentTypeError, match="'angry' is not an intent; one of: "):
        _intents("angry")
    with pytest.raises(argparse.ArgumentTypeError, match=r"'x␛\[2J' is not an intent"):
        _intents("x\x1b[2J")
    with pytest.raises(argparse.ArgumentTypeError, match="no intent named"):
        _intents(",")
