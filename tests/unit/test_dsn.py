"""Delivery-status notifications: hard only for the recipient's own failure, never a guess."""

from __future__ import annotations

from pathlib import Path

import pytest

from worker.domain import MessageKind
from worker.dsn import classify_bounce, read_bounce
from worker.inbound import parse
from worker.send import Failed, classify_reply

BOUNCES = Path(__file__).resolve().parent.parent / "fixtures" / "mail" / "bounces"
HARD, SOFT, POLICY = MessageKind.BOUNCE_HARD, MessageKind.BOUNCE_SOFT, MessageKind.BOUNCE_POLICY
SES_ID = "<0100018faba3c2aa-0b1c2d3e-4f5a-6b7c-8d9e-0f1a2b3c4d5e-000000@email.amazonses.com>"


def _fixture(name: str) -> bytes:
    return (BOUNCES / f"{name}.eml").read_bytes()


@pytest.mark.parametrize(
    ("name", "kind", "status", "recipient", "original", "evidence"),
    [
        ("postfix_5_1_1", HARD, "5.1.1", "m.keller@buyer.example",
         "<w17.1a2b3c4d@shop.example>", "dsn_status=5.1.1"),
        ("exim_x_failed_recipients", HARD, "5.1.1", "sophie.martin@buyer.example",
         "<w23.9f8e7d6c@shop.example>", "x-failed-recipients status=5.1.1"),
        ("sendmail_5_1_2", HARD, "5.1.2", "luca.bianchi@buyer-typo.example",
         "<w31.0c1d2e3f@shop.example>", "dsn_status=5.1.2"),
        ("gmail_5_1_1", HARD, "5.1.1", "jenny.tan1987@gmail.com",
         "<w42.5a6b7c8d@shop.example>", "dsn_status=5.1.1"),
        ("office365_5_1_10", HARD, "5.1.10", "p.novak@contoso-buyer.example",
         "<w55.abcdef01@shop.example>", "dsn_status=5.1.10"),
        ("exchange_5_7_1", POLICY, "5.7.1", "anna.schmidt@retail-buyer.example",
         "<w61.77aa88bb@shop.example>", "dsn_status=5.7.1 (our side"),
        # Plain 554 without an enhanced status: not the "550/551/553 no such user" rule.
        ("yahoo_text", SOFT, "", "carlos.ruiz_88@yahoo.com",
         "<w70.c3d4e5f6@shop.example>", "mailer text=Remote host said: 554 delivery error"),
        ("qmail_text", HARD, "5.1.1", "k.weber@hosting-buyer.example",
         "<w74.0a0b0c0d@shop.example>", "qmail status=5.1.1"),
        ("amazon_ses_dsn", HARD, "5.1.1", "olivia.brown@buyer.example",
         SES_ID, "dsn_status=5.1.1"),
        ("mailbox_full_4_2_2", SOFT, "4.2.2", "hiro.tanaka@buyer.example",
         "<w80.4e5f6071@shop.example>", "dsn_status=4.2.2"),
        ("greylisted_4_7_1", SOFT, "4.7.1", "giulia.romano@buyer.example",
         "<w88.b1c2d3e4@shop.example>", "dsn_status=4.7.1 action=delayed"),
        ("plain_550_no_such_user", HARD, "5.0.0", "jp.durand@old-isp.example",
         "<w93.deadbeef@shop.example>", "dsn_status=5.0.0 text=550 No such user here"),
        ("dmarc_5_7_26", POLICY, "5.7.26", "emily.clarke@gmail.com",
         "<w97.13579bdf@shop.example>", "dsn_status=5.7.26 (our side"),
        # A plain 550 "User not found": the recipient's own failure, as at SMTP time.
        ("gb2312_bounce", HARD, "", "wang.fang@buyer.example",
         "<w104.2468ace0@shop.example>", "mailer text=远程服务器返回：550 User not found"),
        ("broken_report", SOFT, "", "d.rossi@legacy-isp.example",
         "<w110.feedface@shop.example>", "dsn_status=none"),
    ],
)  # fmt: skip
def test_fixture_bounces_are_read_and_judged(
    name: str, kind: MessageKind, status: str, recipient: str, original: str, evidence: str
) -> None:
    verdict = classify_bounce(parse(_fixture(name)))
    assert verdict is not None
    assert verdict.kind is kind
    assert verdict.evidence.startswith(evidence)
    assert verdict.bounce is not None
    assert (verdict.bounce.status, verdict.bounce.recipient) == (status, recipient)
    assert verdict.bounce.original_message_id == original


def test_a_human_saying_undeliverable_is_not_a_bounce() -> None:
    message = parse(_fixture("human_undeliverable"))
    assert classify_bounce(message) is None
    assert read_bounce(message) is None


def test_policy_evidence_says_it_is_our_side() -> None:
    verdict = classify_bounce(parse(_fixture("dmarc_5_7_26")))
    assert verdict is not None
    assert "our side" in verdict.evidence
    assert "not the buyer's address" in verdict.evidence


def test_read_bounce_gives_the_diagnostic_on_one_line_without_continuation_codes() -> None:
    bounce = read_bounce(parse(_fixture("gmail_5_1_1")))
    assert bounce is not None
    assert "\n" not in bounce.diagnostic
    assert bounce.diagnostic.startswith("550-5.1.1 The email account that you tried to reach")
    assert "550-5.1.1 double-checking" not in bounce.diagnostic
    assert "for typos or unnecessary spaces" in bounce.diagnostic


def test_gb2312_bounce_prose_is_decoded() -> None:
    message = parse(_fixture("gb2312_bounce"))
    assert message.subject == "系统退信"
    bounce = read_bounce(message)
    assert bounce is not None
    assert "550 User not found" in bounce.diagnostic


def test_diagnostic_is_trimmed() -> None:
    bounce = read_bounce(parse(_dsn("Status: 5.1.1\nDiagnostic-Code: smtp; 550 " + "x" * 900)))
    assert bounce is not None
    assert len(bounce.diagnostic) == 300


# Edge cases from byte literals ----------------------------------------------------------

_HEAD = (
    "From: MAILER-DAEMON@mail.shop.example (Mail Delivery System)\n"
    "To: service@shop.example\n"
    "Subject: Undelivered Mail Returned to Sender\n"
    "Message-ID: <bounce.1@mail.shop.example>\n"
    "Date: Mon, 03 Jun 2024 10:00:00 +0000\n"
)


def _dsn(*recipient_blocks: str, original: str = "<w5.0011aabb@shop.example>") -> bytes:
    blocks = "\n\n".join(
        block
        if "Final-Recipient" in block
        else "Final-Recipient: rfc822; b@buyer.example\n" + block
        for block in recipient_blocks
    )
    return (
        f"{_HEAD}MIME-Version: 1.0\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\n\n'
        "--B\nContent-Type: text/plain\n\nIt did not work.\n\n"
        "--B\nContent-Type: message/delivery-status\n\n"
        f"Reporting-MTA: dns; mail.shop.example\n\n{blocks}\n\n"
        "--B\nContent-Type: text/rfc822-headers\n\n"
        f"Message-ID: {original}\nSubject: hello\n\n"
        "--B--\n"
    ).encode()


@pytest.mark.parametrize(
    ("fields", "kind", "status"),
    [
        ("Action: failed\nStatus: 5.1.6\nDiagnostic-Code: smtp; 551 5.1.6 moved", HARD, "5.1.6"),
        ("Action: failed\nStatus: 5.0.0\nDiagnostic-Code: smtp; 550 5.1.1 user unknown", HARD,
         "5.1.1"),
        ("Action: failed\nStatus: 5.2.2\nDiagnostic-Code: smtp; 552 5.2.2 Mailbox full", SOFT,
         "5.2.2"),
        ("Action: failed\nStatus: 5.7.1\nDiagnostic-Code: smtp; 550 5.7.1 User unknown", POLICY,
         "5.7.1"),
        ("Action: failed\nStatus: 4.4.7\nDiagnostic-Code: X-Postfix; delivery time expired", SOFT,
         "4.4.7"),
        ("Action: delayed\nStatus: 5.1.1", SOFT, "5.1.1"),
        ("Action: failed\nStatus: 5.0.0\nDiagnostic-Code: X-Postfix; no such user", SOFT,
         "5.0.0"),
        ("Action: failed\nStatus: 5.0.0\nDiagnostic-Code: smtp; 554 no such user", SOFT,
         "5.0.0"),
        ("Action: failed", SOFT, ""),
    ],
)  # fmt: skip
def test_status_and_words_decide_the_kind(fields: str, kind: MessageKind, status: str) -> None:
    verdict = classify_bounce(parse(_dsn(fields)))
    assert verdict is not None
    assert verdict.kind is kind
    assert verdict.bounce is not None
    assert (verdict.bounce.status, verdict.bounce.recipient) == (status, "b@buyer.example")
    assert verdict.bounce.original_message_id == "<w5.0011aabb@shop.example>"


@pytest.mark.parametrize(
    ("code", "text"),
    [
        (550, "5.1.1 User unknown"),
        (553, "5.1.6 Mailbox has moved"),
        (550, "No such user here"),
        (551, "User not local; please try <forward@example.org>, user unknown"),
        (550, "5.0.0 Recipient address rejected: does not exist"),
        (550, "5.7.1 User unknown"),
        (552, "5.2.2 Mailbox full"),
        (554, "Transaction failed"),
        (552, "Requested mail action aborted: mailbox unavailable"),
        (550, "5.2.1 Mailbox disabled, does not exist"),
        (450, "4.2.1 no such user, try later"),
    ],
)
def test_a_report_suppresses_exactly_when_the_smtp_refusal_would(code: int, text: str) -> None:
    verdict = classify_bounce(parse(_dsn(f"Action: failed\nDiagnostic-Code: smtp; {code} {text}")))
    decision = classify_reply(code, text)
    assert verdict is not None
    suppress = isinstance(decision, Failed) and decision.suppress
    assert (verdict.kind is HARD) == suppress


def test_several_recipients_report_the_first_hard_one() -> None:
    raw = _dsn(
        "Final-Recipient: rfc822; full@buyer.example\nAction: failed\nStatus: 5.2.2",
        "Final-Recipient: rfc822; gone@buyer.example\nAction: failed\nStatus: 5.1.1",
        "Final-Recipient: rfc822; also-gone@buyer.example\nAction: failed\nStatus: 5.1.1",
    )
    verdict = classify_bounce(parse(raw))
    assert verdict is not None
    assert verdict.kind is HARD
    assert verdict.bounce is not None
    assert verdict.bounce.recipient == "gone@buyer.example"


def test_several_soft_recipients_report_the_first() -> None:
    raw = _dsn(
        "Final-Recipient: rfc822; first@buyer.example\nAction: failed\nStatus: 5.2.2",
        "Final-Recipient: rfc822; second@buyer.example\nAction: delayed\nStatus: 4.2.2",
    )
    bounce = read_bounce(parse(raw))
    assert bounce is not None
    assert bounce.recipient == "first@buyer.example"


def test_delivered_recipients_are_skipped_and_a_success_notice_is_none() -> None:
    mixed = _dsn(
        "Final-Recipient: rfc822; ok@buyer.example\nAction: delivered\nStatus: 2.0.0",
        "Final-Recipient: rfc822; gone@buyer.example\nAction: failed\nStatus: 5.1.1",
    )
    bounce = read_bounce(parse(mixed))
    assert bounce is not None
    assert bounce.recipient == "gone@buyer.example"
    assert read_bounce(parse(_dsn("Action: relayed\nStatus: 2.0.0"))) is None


def test_original_recipient_is_preferred_and_lower_cased() -> None:
    raw = _dsn(
        "Final-Recipient: rfc822; mailbox17@internal.buyer.example\n"
        "Original-Recipient: rfc822; <Kim.Lee@Buyer.example>\nAction: failed\nStatus: 5.1.1"
    )
    bounce = read_bounce(parse(raw))
    assert bounce is not None
    assert bounce.recipient == "kim.lee@buyer.example"


def test_garbage_fields_before_the_status_are_skipped() -> None:
    raw = _dsn("Action: failed\nthis is not a field\nStatus: 5.1.1")
    verdict = classify_bounce(parse(raw))
    assert verdict is not None
    assert verdict.kind is HARD


def test_read_receipts_are_not_bounces() -> None:
    raw = (
        b"From: Kim Lee <kim.lee@buyer.example>\nTo: service@shop.example\n"
        b"Subject: Read: How is your kettle?\nMessage-ID: <mdn1@buyer.example>\n"
        b'Content-Type: multipart/report; report-type=disposition-notification; boundary="M"\n\n'
        b"--M\nContent-Type: text/plain\n\nYour message was read.\n\n"
        b"--M\nContent-Type: message/disposition-notification\n\n"
        b"Final-Recipient: rfc822; kim.lee@buyer.example\n"
        b"Original-Message-ID: <w5.0011aabb@shop.example>\n"
        b"Disposition: manual-action/MDN-sent-manually; displayed\n\n--M--\n"
    )
    assert classify_bounce(parse(raw)) is None


def test_a_bounce_forwarded_by_a_buyer_is_the_buyer_s_message() -> None:
    raw = (
        b"From: Kim Lee <kim.lee@buyer.example>\nTo: service@shop.example\n"
        b"Subject: Fwd: Undelivered Mail Returned to Sender\nMessage-ID: <fwd1@buyer.example>\n"
        b'Content-Type: multipart/mixed; boundary="F"\n\n'
        b"--F\nContent-Type: text/plain\n\nMy old address no longer works, use this one.\n\n"
        b"--F\nContent-Type: message/rfc822\n\n"
        + _dsn("Action: failed\nStatus: 5.1.1")
        + b"\n--F--\n"
    )
    assert classify_bounce(parse(raw)) is None


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"From: postmaster@buyer.example\nSubject: Hello\n\nWe moved offices, all is well.\n",
         None),
        (b"From: Kim <kim@buyer.example>\nSubject: Undeliverable\n\n550 5.1.1 no such user\n",
         None),
        (b"From: MAILER-DAEMON@mx.buyer.example\nSubject: Undeliverable: hi\n\nSorry.\n",
         (SOFT, "")),
        (b"From: someone@relay.example\nX-Failed-Recipients: Kim@Buyer.example\n"
         b"Subject: Mail delivery failed\n\nA message could not be delivered.\n",
         (SOFT, "kim@buyer.example")),
        (b"Return-Path: <>\nFrom: relay@mx.buyer.example\nSubject: Returned mail\n\n"
         b"<kim@buyer.example>:\n550 5.7.1 Message rejected as spam\n",
         (POLICY, "kim@buyer.example")),
    ],
)  # fmt: skip
def test_prose_is_believed_only_from_a_mailer(
    raw: bytes, expected: tuple[MessageKind, str] | None
) -> None:
    verdict = classify_bounce(parse(raw))
    got = (verdict.kind, verdict.bounce.recipient) if verdict and verdict.bounce else None
    assert got == expected


def test_exim_delay_warning_is_soft_even_with_a_recipient_status() -> None:
    raw = (
        b"From: Mail Delivery System <Mailer-Daemon@relay.shop.example>\n"
        b"To: service@shop.example\n"
        b"Subject: Warning: message 1s7EJR-0004Pb-3a delayed 24 hours\n\n"
        b"  kim@buyer.example\n    550 5.1.1 mailbox unavailable, retrying\n"
    )
    verdict = classify_bounce(parse(raw))
    assert verdict is not None
    assert verdict.kind is SOFT
    assert "action=delayed" in verdict.evidence


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\xff\xfe\x00garbage",
        b'Content-Type: multipart/report; report-type=delivery-status; boundary="X"\n\n--X\n',
        b'From: MAILER-DAEMON@x.example\nContent-Type: multipart/report; boundary="X"\n\n'
        b"--X\nContent-Type: message/delivery-status\nContent-Transfer-Encoding: base64\n\n"
        b"!!!not base64!!!\n--X--\n",
        b'From: MAILER-DAEMON@x.example\nContent-Type: multipart/report; boundary="X"\n\n'
        b"--X\nContent-Type: message/delivery-status\n\nFinal-Recipient: rfc822\n"
        b"Status: 5.\nAction:\n\n--X\nContent-Type: message/rfc822\n\n--X--\n",
        b"From: =?GB2312?B?z7XNs83L0MU=?= <postmaster@cn.example>\n"
        b"Subject: =?ISO-2022-JP?B?GyRCR1s/LklURz0bKEI=?=\n"
        b"Content-Type: text/plain; charset=x-nonsense\n\n\xb2\xbb\xb4\xe6\xd4\xda 550\n",
    ],
)
def test_broken_messages_never_raise(raw: bytes) -> None:
    message = parse(raw)
    verdict = classify_bounce(message)
    assert verdict is None or verdict.kind in (HARD, SOFT, POLICY)
    assert verdict is None or verdict.kind is not HARD
