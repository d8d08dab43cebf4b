"""Read feedback-loop reports: a recipient of one of our messages marked it as spam.

A complaint suppresses the complaining recipient, so the report must say who that was:
``Removal-Recipient``, ``Original-Rcpt-To`` or the returned original's ``To``. ARF (RFC 5965)
is read from its structure; the shapes big senders meet instead are read too: Amazon SES's
JSON notifications, Microsoft's JMRP and AOL's old reports (the original attached to a plain
message), and Apple Mail's one-click unsubscribe. An authentication-failure report (RFC 6591)
is about our setup, not a complaint, and suppresses no one.

The report structure read here (the report's own parts, never an attached message's, and the
returned original's headers) is shared with :mod:`worker.dsn`. Pure; never raises on bad
mail; every regex is linear-time and reads a capped text.
"""

from __future__ import annotations

import json
from email.message import Message
from email.parser import BytesHeaderParser
from email.policy import compat32
from typing import Any

import re2

from worker.domain import Bounce, Classification, MessageKind
from worker.inbound import InboundMessage

MAX_FIELD_CHARS = 4096
"""A header or report field is read this far: enough for any real one."""
MAX_PART_BYTES = 64 * 1024
"""A report part or JSON body is read this far."""
MAX_PARTS, MAX_DEPTH = 200, 20
"""A report's own parts read, and their nesting: real reports have three or four."""

ADDRESS = re2.compile(r"[\w.+'=-]+@[\w-]+(?:\.[\w-]+)+")
MSGID = re2.compile(r"<[^<>\s]+>")
_FIELD = re2.compile(r"^([A-Za-z][\w-]*)\s*:\s*(.*)$")
_FOLD = re2.compile(r"\r?\n[ \t]+")

ORIGINAL_TYPES = frozenset(
    {
        "message/rfc822",
        "message/global",
        "text/rfc822-headers",
        "text/rfc822-header",
        "message/global-headers",
    }
)
_REPORT_TYPES = frozenset({"message/feedback-report"})
_NOT_COMPLAINTS = {
    "auth-failure": "our side: an authentication failure report, no one complained",
    "not-spam": "a recipient said it is not spam: no one complained",
}
_PLAIN_REPORTERS = {
    "staff@hotmail.com": ("jmrp", "x-hmxmroriginalrecipient"),
    "scomp@aol.net": ("aol-scomp", ""),
}
"""Feedback loops that attach the original to a plain message instead of an ARF report,
and the original's header that names the complaining recipient."""
_AMAZON = ("amazonaws.com", "amazonses.com")

Parts = tuple[tuple[str, Message], ...]
"""A message's own parts and their content types (``own_parts``), read once per message."""


def read_feedback(message: InboundMessage, parts: Parts) -> Classification | None:
    """A complaint (or opt-out) about one of our messages; ``None`` when it is not one.
    ``parts`` are the message's :func:`own_parts`."""
    report = _arf_fields(message.tree, parts)
    if report is not None:
        return _arf(message, parts, report)
    return _ses_complaint(message) or _plain_report(message, parts) or _apple_unsubscribe(message)


# The report's structure, shared with worker.dsn -------------------------------------------


def own_parts(tree: Message) -> Parts:
    """The message's parts with their content types, not descending into attached messages
    (a forwarded report is the forwarder's message, not a report to us)."""
    found: list[tuple[str, Message]] = []
    _collect(tree, found, 0)
    return tuple(found)


def _collect(part: Message, found: list[tuple[str, Message]], depth: int) -> None:
    kind = part.get_content_type()
    found.append((kind, part))
    if kind.startswith("message/") or not part.is_multipart() or depth >= MAX_DEPTH:
        return
    payload = part.get_payload()
    for sub in payload if isinstance(payload, list) else ():
        if isinstance(sub, Message) and len(found) < MAX_PARTS:
            _collect(sub, found, depth + 1)


def _clean(value: str) -> str:
    """A header value on at most ``MAX_FIELD_CHARS``; raw 8-bit bytes come through the stdlib
    as surrogate escapes."""
    return value[:MAX_FIELD_CHARS].encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def loose_fields(text: str) -> list[tuple[str, str]]:
    """``Name: value`` lines of a report block, unfolded; other lines are skipped."""
    found: list[tuple[str, str]] = []
    for line in _FOLD.sub(" ", text[:MAX_PART_BYTES]).splitlines():
        match = _FIELD.match(line.strip())
        if match:
            found.append((match.group(1).lower(), _clean(match.group(2)).strip()))
    return found


def block_fields(block: Message) -> list[tuple[str, str]]:
    """The fields of one report block: its headers, then lines after a garbage line (which
    the stdlib turns into a body)."""
    fields = [(name.strip().lower(), _clean(str(value)).strip()) for name, value in block.items()]
    rest = block.get_payload()
    return fields + (loose_fields(rest) if isinstance(rest, str) else [])


def attached_headers(parts: Parts) -> Message | None:
    """The headers of the returned or reported original, when the report attaches one."""
    return next((_headers_of(part) for kind, part in parts if kind in ORIGINAL_TYPES), None)


def _headers_of(part: Message) -> Message:
    payload = part.get_payload()
    if isinstance(payload, list) and payload and isinstance(payload[0], Message):
        return payload[0]
    data = part.get_payload(decode=True)
    raw = data[:MAX_PART_BYTES] if isinstance(data, bytes) else b""
    return BytesHeaderParser(policy=compat32).parsebytes(raw)


def header_value(headers: Message, name: str) -> str:
    return _clean(str(headers.get(name, "")))


def addresses_in(text: str) -> list[str]:
    return [found.group(0).lower() for found in ADDRESS.finditer(text[:MAX_FIELD_CHARS])]


def ses_notification(message: InboundMessage) -> dict[str, Any] | None:
    """Amazon SES's JSON notification (by e-mail through SNS), only from Amazon."""
    domain = message.sender.rpartition("@")[2]
    if not domain.endswith(_AMAZON) or not message.text.lstrip().startswith("{"):
        return None
    body = _json_object(message.text.lstrip()[:MAX_PART_BYTES])
    if body is not None and isinstance(body.get("Message"), str):
        body = _json_object(body["Message"])
    return body if body is not None and "notificationType" in body else None


def _json_object(text: str) -> dict[str, Any] | None:
    try:
        value, _ = json.JSONDecoder(strict=False).raw_decode(text)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def ses_original_id(body: dict[str, Any]) -> str | None:
    """The original's Message-ID, else the one SES gave it (``<id@email.amazonses.com>``)."""
    mail = body.get("mail")
    if not isinstance(mail, dict):
        return None
    common = mail.get("commonHeaders")
    found = MSGID.search(str(common.get("messageId", ""))) if isinstance(common, dict) else None
    if found:
        return found.group(0)
    ses_id = str(mail.get("messageId", ""))
    return f"<{ses_id}@email.amazonses.com>" if ses_id and "@" not in ses_id else None


# ARF ----------------------------------------------------------------------------------------


def _arf_fields(tree: Message, parts: Parts) -> list[tuple[str, str]] | None:
    """The feedback-report fields: from the ``message/feedback-report`` part, else from a
    mislabelled part of a ``report-type=feedback-report`` report that starts with them."""
    found = next((part for kind, part in parts if kind in _REPORT_TYPES), None)
    if found is not None:
        return _part_fields(found)
    if tree.get_content_type() != "multipart/report":
        return None
    report_type = str(tree.get_param("report-type", "", header="content-type") or "").lower()
    for kind, part in parts[1:] if report_type == "feedback-report" else ():
        fields = _part_fields(part) if kind == "text/plain" else []
        if fields and fields[0][0] == "feedback-type":
            return fields
    return None


def _part_fields(part: Message) -> list[tuple[str, str]]:
    payload = part.get_payload()
    if isinstance(payload, list):
        return [f for block in payload if isinstance(block, Message) for f in block_fields(block)]
    data = part.get_payload(decode=True)
    raw = data[:MAX_PART_BYTES] if isinstance(data, bytes) else b""
    return loose_fields(raw.decode("utf-8", "replace"))


def _arf(message: InboundMessage, parts: Parts, fields: list[tuple[str, str]]) -> Classification:
    values = dict(reversed(fields))
    feedback_type = ((values.get("feedback-type") or "").split() or ["abuse"])[0].lower()[:40]
    original = attached_headers(parts)
    recipient, where = _complainant(fields, original)
    message_id = _original_id(message, original)
    bounce = Bounce("", recipient, message_id, f"feedback-type={feedback_type}")
    evidence = f"arf feedback-type={feedback_type}"
    if feedback_type in _NOT_COMPLAINTS:
        return Classification(
            MessageKind.BOUNCE_POLICY,
            f"{evidence} ({_NOT_COMPLAINTS[feedback_type]})",
            bounce=bounce,
        )
    evidence += f" recipient from {where}" if recipient else " (no recipient named)"
    return Classification(MessageKind.SPAM_COMPLAINT, evidence, bounce=bounce)


def _complainant(fields: list[tuple[str, str]], original: Message | None) -> tuple[str, str]:
    """The recipient who complained, and which field said so. Several ``Original-Rcpt-To``
    (a report about one message sent to many) name the first."""
    for name in ("removal-recipient", "original-rcpt-to"):
        for field, value in fields:
            found = addresses_in(value) if field == name else []
            if found:
                return found[0], name.title()
    if original is not None:
        to = addresses_in(header_value(original, "To"))
        if len(to) == 1:
            return to[0], "the original's To"
    return "", ""


def _original_id(message: InboundMessage, original: Message | None) -> str | None:
    found = MSGID.search(header_value(original, "Message-ID")) if original is not None else None
    return found.group(0) if found else next(iter(message.thread_ids), None)


# The other shapes ---------------------------------------------------------------------------


def _ses_complaint(message: InboundMessage) -> Classification | None:
    body = ses_notification(message)
    complaint = body.get("complaint") if body else None
    if body is None or body.get("notificationType") != "Complaint":
        return None
    details = complaint if isinstance(complaint, dict) else {}
    listed = details.get("complainedRecipients")
    rows = listed if isinstance(listed, list) else []
    named = [str(row.get("emailAddress", "")) for row in rows if isinstance(row, dict)]
    recipient = next((a for text in named for a in addresses_in(text)), "")
    feedback_type = str(details.get("complaintFeedbackType") or "abuse")[:40].lower()
    bounce = Bounce("", recipient, ses_original_id(body), f"feedback-type={feedback_type}")
    evidence = f"ses complaint feedback-type={feedback_type}"
    return Classification(MessageKind.SPAM_COMPLAINT, evidence, bounce=bounce)


def _plain_report(message: InboundMessage, parts: Parts) -> Classification | None:
    """JMRP and AOL's old reports: a plain message from the loop with the original attached."""
    reporter = _PLAIN_REPORTERS.get(message.sender)
    original = attached_headers(parts) if reporter is not None else None
    if reporter is None or original is None:
        return None
    source, field = reporter
    named = addresses_in(header_value(original, field)) if field else []
    to = addresses_in(header_value(original, "To"))
    recipient = named[0] if named else (to[0] if len(to) == 1 else "")
    bounce = Bounce("", recipient, _original_id(message, original), "feedback-type=abuse")
    return Classification(
        MessageKind.SPAM_COMPLAINT, f"{source} feedback-type=abuse", bounce=bounce
    )


def _apple_unsubscribe(message: InboundMessage) -> Classification | None:
    """Apple Mail's "Unsubscribe" button mails the List-Unsubscribe address, marked
    ``Auto-Submitted``: without this it would pass for an automatic reply."""
    if not any(v.strip().lower() == "true" for v in message.headers_named("X-Apple-Unsubscribe")):
        return None
    return Classification(MessageKind.UNSUBSCRIBE, "header=X-Apple-Unsubscribe: true")
