"""How SMTP replies become decisions: retry, fail, and whether to suppress the buyer."""

from __future__ import annotations

import pytest

from worker.send import Failed, Retry, classify_reply, relay_message_id


@pytest.mark.parametrize(
    ("code", "text", "suppress"),
    [
        (550, "5.1.1 User unknown", True),
        (550, "5.1.2 Bad destination system address", True),
        (553, "5.1.6 Mailbox has moved", True),
        (550, "No such user here", True),
        (551, "User not local; please try <forward@example.org>, user unknown", True),
        (553, "Requested action not taken: mailbox unavailable", True),
        (550, "5.0.0 Recipient address rejected: does not exist", True),
        (550, "5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP lookup", True),
        (550, "User not found", True),
        (550, "5.7.1 Service unavailable; client host blocked", False),
        (554, "5.7.1 Message rejected as spam", False),
        (550, "5.7.1 User unknown", False),
        (552, "5.2.2 Mailbox full", False),
        (554, "Transaction failed", False),
        (552, "Requested mail action aborted: mailbox unavailable", False),
        (550, "5.2.1 Mailbox disabled, does not exist", False),
    ],
)
def test_5xx_fails_and_suppresses_only_for_recipient_level_refusals(
    code: int, text: str, suppress: bool
) -> None:
    outcome = classify_reply(code, text)
    assert outcome == Failed(outcome.reason, code, suppress)
    assert f"{code} {text}" in outcome.reason


@pytest.mark.parametrize(
    ("code", "text"),
    [
        (421, "4.7.0 Too many connections, closing"),
        (450, "4.2.1 Mailbox busy"),
        (451, "4.3.0 Try again later"),
        (452, "4.5.3 Too many recipients"),
        (454, "4.7.0 Temporary authentication failure"),
    ],
)
def test_4xx_is_retried(code: int, text: str) -> None:
    assert classify_reply(code, text) == Retry(f"{code} {text}", code)


def test_policy_refusal_says_it_is_our_side_problem() -> None:
    outcome = classify_reply(550, "5.7.26 Unauthenticated email is not accepted (DMARC)")
    assert isinstance(outcome, Failed)
    assert "our side" in outcome.reason
    assert "550 5.7.26 Unauthenticated email is not accepted (DMARC)" in outcome.reason


@pytest.mark.parametrize(
    ("text", "relay_id"),
    [
        ("Ok: queued as ABC123", "ABC123"),
        ("2.0.0 Ok: queued as 4Vx1Yz0Q2Fz9", "4Vx1Yz0Q2Fz9"),
        (
            "2.0.0 Ok <0100018e3b1f-0a1b2c3d-4e5f@email.amazonses.com>",
            "0100018e3b1f-0a1b2c3d-4e5f@email.amazonses.com",
        ),
        ("OK id=1rAbCd-000123-EF", "1rAbCd-000123-EF"),
        (
            "Ok 0100018c2f6a1b2c-5d6e7f80-1a2b-4c3d-9e8f-0a1b2c3d4e5f-000000",
            "0100018c2f6a1b2c-5d6e7f80-1a2b-4c3d-9e8f-0a1b2c3d4e5f-000000",
        ),
        ("2.0.0 OK", None),
        ("", None),
    ],
)
def test_relay_message_id_is_read_from_the_final_reply(text: str, relay_id: str | None) -> None:
    assert relay_message_id(text) == relay_id
