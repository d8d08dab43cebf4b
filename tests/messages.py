"""Plain buyer and seller mail for the mailbox tests, as a mail client would write it, and
the verdicts the intent reader gives buyers' words."""

from __future__ import annotations

from worker.domain import Classification, Intent, MessageKind


def plain_mail(
    sender: str,
    subject: str,
    body: str,
    *,
    message_id: str,
    in_reply_to: str | None = None,
    to: str = "Kettle & Co service <help@shop.example>",
    date: str = "Mon, 06 Apr 2026 09:00:00 +0000",
) -> bytes:
    """One text/plain message; ``in_reply_to`` also goes into References, as clients do."""
    lines = [
        f"From: {sender}",
        f"To: {to}",
        f"Subject: {subject}",
        f"Message-ID: {message_id}",
        f"Date: {date}",
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=utf-8",
    ]
    if in_reply_to:
        lines += [f"In-Reply-To: {in_reply_to}", f"References: {in_reply_to}"]
    return ("\r\n".join(lines) + "\r\n\r\n" + body.replace("\n", "\r\n") + "\r\n").encode()


def read_as(
    intent: Intent, confidence: float | None = None, *, needs_review: bool = False
) -> Classification:
    """The verdict the intent reader gives a buyer's words it reads as ``intent``: a
    complaint for the complaint intents, a reply for the others."""
    kind = intent.dispute_kind
    return Classification(
        MessageKind.COMPLAINT if kind else MessageKind.REPLY,
        f"intent={intent.value}",
        dispute_kind=kind,
        intent=intent,
        confidence=confidence,
        needs_review=needs_review,
    )
