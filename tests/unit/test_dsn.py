"""Delivery-status notifications: hard only for the recipient's own failure, never a guess."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from worker.domain import Bounce, MessageKind
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
        # Yahoo's own wording for an account it does not have, given after DATA, with 554.
        ("yahoo_text", HARD, "", "carlos.ruiz_88@yahoo.com",
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


def _dsn(
    *recipient_blocks: str,
    original: str = "<w5.0011aabb@shop.example>",
    notice: str = "It did not work.",
) -> bytes:
    blocks = "\n\n".join(
        block
        if "Final-Recipient" in block
        else "Final-Recipient: rfc822; b@buyer.example\n" + block
        for block in recipient_blocks
    )
    return (
        f"{_HEAD}MIME-Version: 1.0\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\n\n'
        f"--B\nContent-Type: text/plain\n\n{notice}\n\n"
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
        # The reporting MTA's own statement (local delivery): no stage to doubt.
        ("Action: failed\nStatus: 5.0.0\nDiagnostic-Code: X-Postfix; no such user", HARD,
         "5.0.0"),
        # A relayed reply, stage unknown: filters answer this after DATA too.
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
        (550, "5.7.1 User unknown"),
        (552, "5.2.2 Mailbox full"),
        (554, "Transaction failed"),
        (552, "Requested mail action aborted: mailbox unavailable"),
        (550, "5.2.1 Mailbox disabled, does not exist"),
        (450, "4.2.1 no such user, try later"),
    ],
)
def test_a_refusal_at_rcpt_suppresses_exactly_when_the_smtp_refusal_would(
    code: int, text: str
) -> None:
    notice = f"<b@buyer.example>: host mx.buyer.example said: {code} {text} (in reply to RCPT TO)"
    fields = f"Action: failed\nDiagnostic-Code: smtp; {code} {text}"
    verdict = classify_bounce(parse(_dsn(fields, notice=notice)))
    decision = classify_reply(code, text)
    assert verdict is not None
    suppress = isinstance(decision, Failed) and decision.suppress
    assert (verdict.kind is HARD) == suppress


def test_a_5_0_0_unknown_recipient_is_hard_in_a_report_but_not_from_our_relay() -> None:
    """At send time the refusal comes from the seller's own relay, whose 5.0.0 "recipient
    rejected" is as often its own restriction as the buyer's address; a report comes from
    the buyer's side and, at RCPT, says the address does not exist."""
    text = "5.0.0 Recipient address rejected: does not exist"
    notice = f"<b@buyer.example>: host mx.buyer.example said: 550 {text} (in reply to RCPT TO)"
    verdict = classify_bounce(parse(_dsn(f"Action: failed\nDiagnostic-Code: smtp; 550 {text}",
                                         notice=notice)))  # fmt: skip
    assert verdict is not None and verdict.kind is HARD
    decision = classify_reply(550, text, stage="RCPT")
    assert isinstance(decision, Failed) and not decision.suppress


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


# The wording of real MTAs and providers (messages written here in their shapes) -------------

_SAID = "<b@buyer.example>: host mx.buyer.example[192.0.2.7] said: {} ({})"


def _report(status: str, diagnostic: str, notice: str = "It did not work.", to: str = "") -> bytes:
    recipient = f"Final-Recipient: rfc822; {to}\n" if to else ""
    fields = f"{recipient}Action: failed\nStatus: {status}\nDiagnostic-Code: smtp; {diagnostic}"
    return _dsn(fields, notice=notice)


def _prose(body: str, subject: str = "Mail delivery failed", head: str = "") -> bytes:
    return (
        f"From: Mail Delivery System <MAILER-DAEMON@mx.relay.example>\n{head}"
        f"To: service@shop.example\nSubject: {subject}\n"
        f"Content-Type: text/plain; charset=utf-8\n\n{body}\n"
    ).encode()


_UNKNOWN_USER = "550 <b@buyer.example>: User unknown"
_AT_RCPT = _SAID.format(_UNKNOWN_USER, "in reply to RCPT TO command")
_AT_DATA = _SAID.format(_UNKNOWN_USER, "in reply to end of DATA command")
_TRANSCRIPT = (
    "... while talking to mx.buyer.example.:\n>>> DATA\n<<< 550 <b@buyer.example>... User unknown"
    "\n<<< 503 5.0.0 Need RCPT (recipient)"
)


@pytest.mark.parametrize(
    ("raw", "kind", "said"),
    [
        # Postfix: the SMTP stage decides what a bare "User unknown" proves.
        (_report("5.0.0", _UNKNOWN_USER, _AT_RCPT), HARD, "hard=en:user unknown command=RCPT"),
        (_report("5.0.0", _UNKNOWN_USER, _AT_DATA), SOFT, "command=DATA (the address was"),
        (_report("5.0.0", _UNKNOWN_USER), SOFT, "reply at an unknown SMTP stage"),
        # sendmail with pipelining prints the RCPT TO answer after ">>> DATA".
        (_report("5.0.0", "550 <b@buyer.example>... User unknown", _TRANSCRIPT), HARD,
         "command=RCPT"),
        # Sender-side refusals are about us, whatever else they say.
        (_report("5.1.0", "550 5.1.0 <service@shop.example>: Sender address rejected: User "
                 "unknown in local recipient table"), POLICY, "sender=en:sender address rejected"),
        (_report("5.1.8", "553 5.1.8 <service@shop.example>... Domain of sender address "
                 "service@shop.example does not exist"), POLICY, "sender=en:domain of sender"),
        (_report("5.0.0", "550 Not accepting your mail",
                 _SAID.format("550 Not accepting your mail", "in reply to MAIL FROM command")),
         POLICY, "command=MAIL"),
        (_prose("b@buyer.example\n    SMTP error from remote mail server after RCPT TO:"
                "<b@buyer.example>:\n    550 Sender verify failed"), POLICY, "sender=en:sender"),
        (_prose("b@buyer.example\nAbsenderadresse abgelehnt"), POLICY, "sender=de:"),
        # Storage, size, rate, policy, reputation, authentication: never hard.
        (_report("5.2.2", "552 5.2.2 <b@buyer.example>: Mailbox full"), SOFT, "dsn_status=5.2.2"),
        (_report("5.1.1", "550 5.1.1 mailbox over quota"), SOFT, "soft=en:over quota"),
        (_report("5.3.4", "552 5.3.4 Message size exceeds fixed maximum message size"), SOFT,
         "soft=en:size exceeds"),
        (_report("5.0.0", "554 Service unavailable; Client host [192.0.2.1] blocked using "
                 "zen.spamhaus.org"), POLICY, "policy=en:blocked"),
        (_report("5.7.26", "550 5.7.26 Unauthenticated email is not accepted (DMARC policy)"),
         POLICY, "our side"),
        (_report("4.7.28", "421 4.7.28 Our system has detected an unusual rate"), SOFT,
         "dsn_status=4.7.28"),
        (_report("5.2.1", "550 5.2.1 The email account that you tried to reach is disabled."),
         SOFT, "soft=en:is disabled"),
        (_report("5.2.1", "550 5.2.1 <b@buyer.example>... User Unknown"), SOFT, "disagrees"),
        (_report("5.2.1", "550 5.2.1 <b@buyer.example>... User Unknown",
                 _SAID.format("550 5.2.1 User Unknown", "in reply to RCPT TO command")), HARD,
         "command=RCPT"),
        # The recipient's domain: no such domain, no route, null MX.
        (_report("5.4.4", "X-Postfix; Host or domain name not found. Name service error for "
                 "name=buyer-typo.example type=A: Host not found"), HARD, "dsn_status=5.4.4"),
        (_report("4.4.3", "X-Postfix; Host or domain name not found. Name service error for "
                 "name=buyer.example type=MX: Host not found, try again"), SOFT, "4.4.3"),
        (_report("5.1.10", "556 5.1.10 Recipient address has null MX"), HARD, "5.1.10"),
        (_report("5.0.0", "556 Domain buyer.example does not accept mail"), HARD,
         "hard=en:domain buyer.example does not"),
        (_prose("b@buyer.example\n    Unrouteable address"), HARD, "hard=en:unrouteable"),
        (_report("5.1.6", "551 5.1.6 User has moved; please try <b@new.example>"), HARD,
         "dsn_status=5.1.6"),
        # The big providers' own wording.
        (_report("5.4.1", "550 5.4.1 Recipient address rejected: Access denied. "
                 "AS(201806281) [x.prod.protection.outlook.com]"), HARD, "microsoft:"),
        (_report("5.7.1", "554 5.7.1 <b@buyer.example>: Recipient address rejected: Access "
                 "denied"), POLICY, "our side"),
        (_report("5.0.0", "554 delivery error: dd This user doesn't have a yahoo.com account "
                 "(b@yahoo.com) [0] - mta1.mail.gq1.yahoo.com", to="b@yahoo.com"), HARD,
         "yahoo:no such account"),
        (_report("5.5.0", "550 Requested action not taken: mailbox unavailable "
                 "(-2147467259:1234:-2147467259)"), HARD, "outlook.com:no such mailbox"),
        (_report("5.0.0", "550 : User unknown", to="b@ezweb.ne.jp"), SOFT, "kddi:reception"),
        (_report("5.0.0", "550 <b@ezweb.ne.jp>: User unknown", to="b@ezweb.ne.jp"), HARD,
         "kddi:no such user"),
        (_report("5.0.0", "550 : User unknown", to="b@buyer.example"), SOFT, "unknown SMTP stage"),
        # Exchange, Domino and text-only mailers, in their own words and languages.
        (_prose("Your message did not reach the following recipient(s):\n"
                "b@buyer.example on 03.06.2024 10:00\n    The recipient name is not recognized",
                "Undeliverable: hello"), HARD, "hard=en:recipient name is not recognized"),
        (_prose("Your message was not delivered to b@buyer.example because:\n"
                "  User b (b@buyer.example) not listed in Domino Directory"), HARD,
         "hard=en:not listed in domino directory"),
        (_prose("Die Nachricht konnte nicht zugestellt werden an:\nb@buyer.example\n"
                "Empfänger unbekannt", "Unzustellbar: Hallo"), HARD, "hard=de:empfänger unbekannt"),
        (_prose("Votre message n'a pas pu être remis à b@buyer.example :\nUtilisateur inconnu",
                "Non remis : bonjour"), HARD, "hard=fr:utilisateur inconnu"),
        (_prose("No se ha podido entregar el mensaje a b@buyer.example: usuario desconocido"),
         HARD, "hard=es:usuario desconocido"),
        (_prose("Impossibile consegnare a b@buyer.example: destinatario inesistente"), HARD,
         "hard=it:destinatario inesistente"),
        (_prose("b@buyer.example 宛のメールは配信できませんでした。\nそのユーザは存在しません",
                "配信不能"), HARD, "hard=ja:ユーザは存在しません"),
        (_prose("发送至 b@buyer.example 的邮件失败：收件人不存在", "系统退信"), HARD,
         "hard=zh:收件人不存在"),
        (_prose("b@buyer.example\nPostfach voll"), SOFT, "soft=de:postfach voll"),
        # Guesses are not statements.
        (_prose("The group you tried to contact (b@buyer.example) may not exist, or you may "
                "not have permission to post messages to the group."), SOFT, "mailer"),
    ],
)  # fmt: skip
def test_wordings_of_real_mtas(raw: bytes, kind: MessageKind, said: str) -> None:
    verdict = classify_bounce(parse(raw))
    assert verdict is not None
    assert (verdict.kind, said in verdict.evidence) == (kind, True), verdict.evidence


def test_an_automatic_reply_saying_the_address_is_gone_is_not_a_bounce() -> None:
    raw = (
        b"Return-Path: <>\nFrom: noreply@buyer.example\nTo: service@shop.example\n"
        b"Subject: Automatic reply: hello\nAuto-Submitted: auto-replied\n\n"
        b"This inbox b@buyer.example is no longer in use. Please write to info@buyer.example.\n"
    )
    assert classify_bounce(parse(raw)) is None


def test_a_mailer_may_attach_its_report_as_a_message() -> None:
    raw = (
        b"From: MAILER-DAEMON@mx.relay.example\nTo: service@shop.example\n"
        b"Subject: Returned mail: User unknown\n"
        b'Content-Type: multipart/mixed; boundary="F"\n\n'
        b"--F\nContent-Type: text/plain\n\nSee the attached report.\n\n"
        b"--F\nContent-Type: message/rfc822\n\n"
        + _dsn("Action: failed\nStatus: 5.1.1")
        + b"\n--F--\n"
    )
    verdict = classify_bounce(parse(raw))
    assert verdict is not None
    assert verdict.kind is HARD
    assert verdict.bounce is not None
    assert verdict.bounce.recipient == "b@buyer.example"


def test_a_report_with_a_wrong_boundary_is_read_from_its_raw_text() -> None:
    raw = _dsn("Action: failed\nStatus: 5.1.1").replace(b'boundary="B"', b'boundary="Z"')
    verdict = classify_bounce(parse(raw))
    assert verdict is not None
    assert verdict.kind is HARD
    assert verdict.bounce is not None
    assert verdict.bounce.recipient == "b@buyer.example"


def test_amazon_ses_json_bounce() -> None:
    body = (
        '{"notificationType":"Bounce","bounce":{"bounceType":"Permanent","bounceSubType":'
        '"General","bouncedRecipients":[{"emailAddress":"B@Buyer.example","action":"failed",'
        '"status":"5.1.1","diagnosticCode":"smtp; 550 5.1.1 user unknown"}]},'
        '"mail":{"messageId":"0100018f-aaaa-bbbb-000000","commonHeaders":{"to":["b@buyer.example"]}}}'
    )
    raw = f"From: no-reply@sns.amazonaws.com\nSubject: AWS Notification Message\n\n{body}\n"
    verdict = classify_bounce(parse(raw.encode()))
    assert verdict is not None
    assert (verdict.kind, verdict.evidence) == (HARD, "ses status=5.1.1")
    assert verdict.bounce == Bounce(
        "5.1.1",
        "b@buyer.example",
        "<0100018f-aaaa-bbbb-000000@email.amazonses.com>",
        "550 5.1.1 user unknown",
    )
    assert (
        classify_bounce(parse(raw.replace("sns.amazonaws.com", "buyer.example").encode())) is None
    )


@pytest.mark.parametrize(
    "bait",
    [
        "550 " + "user " * 200_000,
        "550 sender " + "a " * 500_000,
        "550 " + "<" * 1_000_000,
        "550 5." + "1." * 500_000,
        "550 " + "宛先" * 500_000,
    ],
)
def test_a_megabyte_of_regex_bait_is_read_in_linear_time(bait: str) -> None:
    message = parse(_dsn(f"Action: failed\nStatus: 5.0.0\nDiagnostic-Code: smtp; {bait}"))
    prose = parse(_prose(bait))
    started = time.perf_counter()
    verdicts = [classify_bounce(message), classify_bounce(prose)]
    assert time.perf_counter() - started < 1.0
    assert all(v is not None and v.kind is not HARD for v in verdicts)
