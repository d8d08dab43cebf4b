"""Feedback-loop reports: the complaining recipient of one of our messages, never a guess."""

from __future__ import annotations

import pytest

from worker.domain import Bounce, MessageKind
from worker.dsn import classify_bounce
from worker.inbound import parse

COMPLAINT, POLICY = MessageKind.SPAM_COMPLAINT, MessageKind.BOUNCE_POLICY
OURS = "<w5.0011aabb@shop.example>"
ORIGINAL = (
    f"From: Kettle & Co <service@shop.example>\nTo: Kim Lee <kim.lee@buyer.example>\n"
    f"Subject: How is your kettle?\nMessage-ID: {OURS}\n\nHello Kim,\n"
)


def _arf(
    fields: str,
    *,
    original: str = ORIGINAL,
    original_type: str = "message/rfc822",
    report_type: str = "message/feedback-report",
    sender: str = "Yahoo! Mail AntiSpam Feedback <feedback@arf.mail.example>",
) -> bytes:
    return (
        f"From: {sender}\nTo: abuse@shop.example\nSubject: FW: How is your kettle?\n"
        "MIME-Version: 1.0\n"
        'Content-Type: multipart/report; report-type=feedback-report; boundary="R"\n\n'
        "--R\nContent-Type: text/plain\n\nThis is an email abuse report.\n\n"
        f"--R\nContent-Type: {report_type}\n\n{fields}\n\n"
        f"--R\nContent-Type: {original_type}\n\n{original}\n"
        "--R--\n"
    ).encode()


@pytest.mark.parametrize(
    ("raw", "kind", "recipient", "evidence"),
    [
        (_arf("Feedback-Type: abuse\nUser-Agent: Yahoo!-Mail-Feedback/1.0\nVersion: 1\n"
              "Original-Mail-From: <bounce@shop.example>\nOriginal-Rcpt-To: Kim.Lee@Buyer.example"),
         COMPLAINT, "kim.lee@buyer.example",
         "arf feedback-type=abuse recipient from Original-Rcpt-To"),
        # No Original-Rcpt-To: the original's one To is the recipient; headers only.
        (_arf("Feedback-Type: abuse\nUser-Agent: ReturnPathFBL/2.0\nVersion: 1",
              original_type="text/rfc822-headers"),
         COMPLAINT, "kim.lee@buyer.example", "recipient from the original's To"),
        (_arf("Feedback-Type: opt-out\nUser-Agent: SomeFBL/1.0\nVersion: 1\n"
              "Removal-Recipient: kim.lee@buyer.example"),
         COMPLAINT, "kim.lee@buyer.example", "arf feedback-type=opt-out recipient from Removal"),
        # A report about one message sent to several: the first is named.
        (_arf("Feedback-Type: abuse\nVersion: 1\nOriginal-Rcpt-To: kim.lee@buyer.example\n"
              "Original-Rcpt-To: ann@buyer.example"),
         COMPLAINT, "kim.lee@buyer.example", "arf feedback-type=abuse"),
        # An undisclosed or redacted recipient suppresses no one.
        (_arf("Feedback-Type: abuse\nVersion: 1",
              original=ORIGINAL.replace("Kim Lee <kim.lee@buyer.example>", "undisclosed")),
         COMPLAINT, "", "arf feedback-type=abuse (no recipient named)"),
        # RFC 6591: our authentication failed somewhere; nobody complained.
        (_arf("Feedback-Type: auth-failure\nUser-Agent: OpenDMARC-Filter/1.3.0\nVersion: 1\n"
              "Auth-Failure: dmarc\nOriginal-Rcpt-To: kim.lee@buyer.example"),
         POLICY, "kim.lee@buyer.example", "auth-failure (our side"),
        # A loop that labels its report part text/plain.
        (_arf("Feedback-Type: fraud\nVersion: 1\nOriginal-Rcpt-To: kim.lee@buyer.example",
              report_type="text/plain"),
         COMPLAINT, "kim.lee@buyer.example", "arf feedback-type=fraud"),
    ],
)  # fmt: skip
def test_arf_reports_name_the_complaining_recipient(
    raw: bytes, kind: MessageKind, recipient: str, evidence: str
) -> None:
    verdict = classify_bounce(parse(raw))
    assert verdict is not None
    assert verdict.kind is kind
    assert evidence in verdict.evidence
    assert verdict.bounce is not None
    assert verdict.bounce.recipient == recipient
    assert verdict.bounce.original_message_id == OURS
    assert verdict.bounce.diagnostic.startswith("feedback-type=")


def test_microsoft_jmrp_names_the_recipient_in_the_original() -> None:
    original = ORIGINAL.replace(
        "Subject:", "X-HmXmrOriginalRecipient: <kim.lee@outlook.example>\nSubject:"
    )
    raw = (
        "From: staff@hotmail.com\nTo: jmrp@shop.example\nSubject: complaint about message "
        'from 192.0.2.9\nContent-Type: multipart/mixed; boundary="J"\n\n'
        "--J\nContent-Type: text/plain\n\nThis is an email abuse report.\n\n"
        f"--J\nContent-Type: message/rfc822\n\n{original}\n--J--\n"
    )
    verdict = classify_bounce(parse(raw.encode()))
    assert verdict is not None
    assert (verdict.kind, verdict.evidence) == (COMPLAINT, "jmrp feedback-type=abuse")
    assert verdict.bounce == Bounce("", "kim.lee@outlook.example", OURS, "feedback-type=abuse")
    # The same shape from a buyer forwarding our mail is the buyer's message.
    buyer = raw.replace("staff@hotmail.com", "kim.lee@hotmail.com")
    assert classify_bounce(parse(buyer.encode())) is None


def test_amazon_ses_json_complaint_only_from_amazon() -> None:
    body = (
        '{"notificationType":"Complaint","complaint":{"complainedRecipients":[{"emailAddress":'
        '"Kim.Lee@buyer.example"}],"complaintFeedbackType":"abuse"},"mail":{"messageId":'
        '"0100018f-cccc-dddd-000000","commonHeaders":{"messageId":"'
        + OURS.replace('"', "")
        + '"}}}'
    )
    raw = f"From: no-reply@sns.amazonaws.com\nSubject: AWS Notification Message\n\n{body}\n"
    verdict = classify_bounce(parse(raw.encode()))
    assert verdict is not None
    assert (verdict.kind, verdict.evidence) == (COMPLAINT, "ses complaint feedback-type=abuse")
    assert verdict.bounce == Bounce("", "kim.lee@buyer.example", OURS, "feedback-type=abuse")
    stranger = raw.replace("no-reply@sns.amazonaws.com", "kim.lee@buyer.example")
    assert classify_bounce(parse(stranger.encode())) is None


def test_apple_mail_unsubscribe_is_an_unsubscribe_not_an_automatic_reply() -> None:
    raw = (
        b"From: kim.lee@icloud.example\nTo: unsubscribe@shop.example\nSubject: unsubscribe\n"
        b"Auto-Submitted: auto-replied\nX-Apple-Unsubscribe: true\n\n"
        b"Apple Mail sent this email to unsubscribe from the message.\n"
    )
    verdict = classify_bounce(parse(raw))
    assert verdict is not None
    assert (verdict.kind, verdict.evidence) == (
        MessageKind.UNSUBSCRIBE,
        "header=X-Apple-Unsubscribe: true",
    )


def test_a_report_forwarded_by_a_buyer_is_the_buyer_s_message() -> None:
    report = _arf("Feedback-Type: abuse\nOriginal-Rcpt-To: kim.lee@buyer.example")
    raw = (
        b"From: Kim Lee <kim.lee@buyer.example>\nTo: service@shop.example\n"
        b"Subject: Fwd: abuse report\n"
        b'Content-Type: multipart/mixed; boundary="F"\n\n'
        b"--F\nContent-Type: text/plain\n\nWhy did I get this?\n\n"
        b"--F\nContent-Type: message/rfc822\n\n" + report + b"\n--F--\n"
    )
    assert classify_bounce(parse(raw)) is None


@pytest.mark.parametrize(
    "raw",
    [
        _arf("Feedback-Type:\nOriginal-Rcpt-To: <>"),
        _arf("", original=""),
        _arf("Feedback-Type: abuse", original_type="text/rfc822-headers", original="\xff" * 10),
        b'From: no-reply@sns.amazonaws.com\n\n{"notificationType": ' + b"[" * 100_000,
        b'From: no-reply@sns.amazonaws.com\n\n{"notificationType":"Complaint","complaint":7}',
    ],
)
def test_broken_reports_never_raise_and_name_no_one_else(raw: bytes) -> None:
    verdict = classify_bounce(parse(raw))
    named = verdict.bounce.recipient if verdict and verdict.bounce else ""
    assert named in ("", "kim.lee@buyer.example")
