"""How SMTP replies become decisions: retry, fail, and whether to suppress the buyer."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker.config import SmtpSettings
from worker.send import Failed, Mailer, Retry, Stage, _wire, classify_reply, relay_message_id

EXIM_SENDER_VERIFY = (
    "Verification failed for <service@shop.example>\nUnrouteable address\nSender verify failed"
)


@pytest.mark.parametrize(
    ("code", "text"),
    [
        (550, "5.1.1 User unknown"),
        (550, "5.1.2 Bad destination system address"),
        (553, "5.1.6 Mailbox has moved"),
        (550, "5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP lookup"),
        (550, "5.1.1 <buyer@example.com>: Recipient address rejected: User unknown in local"),
        (
            550,
            "5.1.1 The email account that you tried to reach does not exist. Please try\n"
            "5.1.1 double-checking the recipient's email address for typos or unnecessary\n"
            "5.1.1 spaces. https://support.google.com/mail/?p=NoSuchUser a1si1 - gsmtp",
        ),
        (550, "<buyer@example.com>: Recipient address rejected: User unknown in local recipient"),
        (550, "No such user here"),
        (550, "No such user"),
        (551, "User not local; please try <forward@example.org>, user unknown"),
        (550, "User not found"),
        (550, "Mailbox does not exist"),
        (553, "Recipient address rejected: unknown user"),
    ],
)
def test_the_recipients_own_unknown_address_at_rcpt_suppresses(code: int, text: str) -> None:
    outcome = classify_reply(code, text, stage="RCPT")
    assert outcome == Failed(outcome.reason, code, suppress=True)


@pytest.mark.parametrize(
    ("code", "text"),
    [
        # One relay misconfiguration must not suppress every buyer of the pass.
        (550, "Sender address rejected: not owned by user"),
        (550, "Sender domain does not exist"),
        (550, "Requested action not taken: mailbox unavailable (sender IP on blocklist)"),
        (550, "5.0.0 Relay access denied"),
        (550, EXIM_SENDER_VERIFY),
        (550, "5.1.1 User unknown; client host [192.0.2.7] blocked using zen.spamhaus.org"),
        (550, "No such user (policy: authentication required)"),
        (554, "5.7.1 <buyer@example.com>: Relay access denied"),
        (550, "5.7.1 Service unavailable; client host blocked"),
        (554, "5.7.1 Message rejected as spam"),
        (550, "5.7.1 User unknown"),
        # Unspecific statuses and RFC 5321's stock text prove nothing about the address.
        (550, "5.0.0 Recipient address rejected: does not exist"),
        (550, "5.0.0 User unknown"),
        (550, "Requested action not taken: mailbox unavailable"),
        (553, "Requested action not taken: mailbox unavailable"),
        (552, "Requested action not taken: mailbox unavailable"),
        (550, "5.2.1 Mailbox disabled, does not exist"),
        (552, "5.2.2 Mailbox full"),
        (554, "Transaction failed"),
        (550, "Address rejected"),
    ],
)
def test_refusals_that_prove_nothing_about_the_recipient_suppress_no_one(
    code: int, text: str
) -> None:
    outcome = classify_reply(code, text, stage="RCPT")
    assert outcome == Failed(outcome.reason, code, suppress=False)


@pytest.mark.parametrize("stage", ["connect", "MAIL", "DATA"])
@pytest.mark.parametrize(
    "text", ["5.1.1 User unknown", "No such user", "5.1.10 RESOLVER.ADR.RecipientNotFound"]
)
def test_unknown_user_words_away_from_rcpt_suppress_no_one(stage: Stage, text: str) -> None:
    outcome = classify_reply(550, text, stage=stage)
    assert outcome == Failed(outcome.reason, 550, suppress=False)


def test_a_refusal_of_mail_from_is_our_side() -> None:
    outcome = classify_reply(553, "5.1.8 Sender address unknown", stage="MAIL")
    assert isinstance(outcome, Failed)
    assert "our side" in outcome.reason


def test_unknown_user_after_the_data_says_it_proves_nothing() -> None:
    outcome = classify_reply(550, "5.1.1 User unknown", stage="DATA")
    assert isinstance(outcome, Failed)
    assert "no proof" in outcome.reason


def test_without_a_stage_a_reply_is_read_as_the_answer_to_rcpt() -> None:
    """Kept for two-argument callers (the bounce tests compare with a refusal at RCPT)."""
    assert classify_reply(550, "5.1.1 User unknown") == classify_reply(
        550, "5.1.1 User unknown", stage="RCPT"
    )


@pytest.mark.parametrize(
    ("code", "text"),
    [
        (421, "4.7.0 Too many connections, closing"),
        (450, "4.2.1 Mailbox busy"),
        (451, "4.3.0 Try again later"),
        (452, "4.5.3 Too many recipients"),
        (454, "4.7.0 Temporary authentication failure"),
        (450, "4.1.1 no such user, try later"),
    ],
)
@pytest.mark.parametrize("stage", ["connect", "MAIL", "RCPT", "DATA"])
def test_4xx_is_retried(code: int, text: str, stage: Stage) -> None:
    assert classify_reply(code, text, stage=stage) == Retry(f"{code} {text}", code)


def test_policy_refusal_says_it_is_our_side_problem() -> None:
    outcome = classify_reply(550, "5.7.26 Unauthenticated email is not accepted (DMARC)")
    assert isinstance(outcome, Failed)
    assert "our side" in outcome.reason
    assert "550 5.7.26 Unauthenticated email is not accepted (DMARC)" in outcome.reason


def test_reply_text_is_one_short_clean_line() -> None:
    text = "5.7.1 first line\nsecond\x1b[31m line\x00\u202e" + " padding" * 200
    outcome = classify_reply(554, text)
    assert "\n" not in outcome.reason
    assert "\x1b" not in outcome.reason
    assert "\x00" not in outcome.reason
    assert "\u202e" not in outcome.reason
    assert "554 5.7.1 first line second[31m line padding" in outcome.reason
    reply = outcome.reason.partition(" (")[0]
    assert len(reply) <= 4 + 300


@pytest.mark.parametrize(
    "echo",
    [
        "AUTH PLAIN AHNob3AAczNjcmV0",
        "auth plain AHNob3AAczNjcmV0",
        "AUTH LOGIN c2hvcA==",
        "334 UGFzc3dvcmQ6 czNjcmV0",
    ],
)
def test_an_echoed_auth_exchange_is_removed(echo: str) -> None:
    outcome = classify_reply(535, f"5.7.8 Error: {echo} failed")
    assert "[credentials removed]" in outcome.reason
    for secret in ("AHNob3AAczNjcmV0", "czNjcmV0", "c2hvcA=="):
        assert secret not in outcome.reason


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


# What DATA carries, and the waits between attempts --------------------------------------------


def wire_by_definition(data: bytes) -> bytes:
    """CRLF lines, a dot at the start of any line doubled, then the final ".", by regex."""
    lines = re.sub(rb"\r\n|\r|\n", b"\r\n", data)
    if not lines.endswith(b"\r\n"):
        lines += b"\r\n"
    return re.sub(rb"(?m)^\.", b"..", lines) + b".\r\n"


PIECES = st.sampled_from([b"\r", b"\n", b"\r\n", b"\n\r", b".", b"..", b"a", b" ", b".\r\n"])


@given(st.binary(max_size=300) | st.lists(PIECES, max_size=40).map(b"".join))
def test_the_data_is_crlf_lines_with_dots_doubled(data: bytes) -> None:
    assert _wire(data) == wire_by_definition(data)


@pytest.mark.parametrize(
    ("data", "wire"),
    [
        (b"", b"\r\n.\r\n"),
        (b".", b"..\r\n.\r\n"),
        (b"a\n.\r\n.b\r.\n", b"a\r\n..\r\n..b\r\n..\r\n.\r\n"),
        (b"a\r\r\nb", b"a\r\n\r\nb\r\n.\r\n"),
    ],
)
def test_the_data_examples(data: bytes, wire: bytes) -> None:
    assert _wire(data) == wire


def test_the_wait_after_each_attempt_is_random_up_to_a_doubling_ceiling() -> None:
    mailer = Mailer(SmtpSettings(backoff_initial_s=0.5, backoff_max_s=3.0))
    for attempt, ceiling in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 3.0), (20, 3.0)]:
        waits = [mailer._backoff(attempt) for _ in range(300)]
        assert all(0 <= wait <= ceiling for wait in waits)
        assert max(waits) > ceiling * 0.8  # jittered over the whole range
    none = Mailer(SmtpSettings(backoff_initial_s=0.0))
    assert none._backoff(3) == 0.0
