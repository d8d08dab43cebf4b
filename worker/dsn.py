"""Read delivery-status notifications: who failed, why, and which of our sends caused it.

A hard bounce suppresses the buyer for good, and a wrongly suppressed buyer never hears from
the seller again, so only the recipient's own permanent failure is hard. The rule is the one
the SMTP conversation uses (:func:`worker.send.classify_reply`), applied to the report's
status and the remote server's words; anything unclear is soft. Pure; never raises on bad mail.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, replace
from email.message import Message
from email.parser import BytesHeaderParser
from email.policy import compat32

from worker.domain import Bounce, Classification, MessageKind
from worker.inbound import InboundMessage, decode_bytes
from worker.send import Failed, classify_reply

MAX_DIAGNOSTIC_CHARS = 300

_STATUS = re.compile(r"(?<![\d.])([245]\.\d{1,3}\.\d{1,3})(?!\.?\d)")
_FAILED_STATUS = re.compile(r"(?<![\d.])([45]\.\d{1,3}\.\d{1,3})(?!\.?\d)")
_LEADING_CODE = re.compile(r"^\s*([245]\d\d)(?=[\s:-]|$)")
_TEXT_CODE = re.compile(r"(?<![\w.#-])([45][0-5]\d)(?=[ :-]|$)", re.MULTILINE)
_DIAGNOSTIC_TYPE = re.compile(r"^\s*[\w-]+\s*;\s*")
_MSGID = re.compile(r"<[^<>\s]+>")
_QUOTED_MSGID = re.compile(r"^[ \t>]*Message-ID:\s*(<[^<>\s]+>)", re.IGNORECASE | re.MULTILINE)
_ADDRESS = re.compile(r"[\w.+'=-]+@[\w-]+(?:\.[\w-]+)+")
_FIELD = re.compile(r"^([A-Za-z][\w-]*)\s*:\s*(.*)$")

_MAILER = re.compile(
    r"mailer-?daemon|mail-daemon|postmaster@|mail delivery (?:subsystem|system|service)"
    r"|mail administrator|系统退信|退信服务",
    re.IGNORECASE,
)
_BOUNCE_SUBJECT = re.compile(
    r"^\s*(?:undeliver|undelivered mail|unzustellbar|non remis|non recapitabile"
    r"|no se puede entregar|mail delivery failed|delivery status notification"
    r"|delivery (?:failure|notification)|failure notice|returned mail|delayed mail"
    r"|warning: (?:could not send|message .* delayed)|mail system error|message not delivered"
    r"|nondeliverable|系统退信|退信|配信不能|配送不能)",
    re.IGNORECASE,
)
_DELAY_SUBJECT = re.compile(
    r"delay|still being retried|warning: could not send|verzögert|retardé|ritardat|retrasad"
    r"|遅延|延迟",
    re.IGNORECASE,
)
# Where a text bounce stops talking and starts quoting the original (Exim, qmail, Yahoo,
# Gmail and Office 365 text parts, Chinese providers).
_COPY_MARKER = re.compile(
    r"^[ \t-]*(?:below this line is a copy of the message|this is a copy of the message"
    r"|original message|original message headers|原始邮件|原邮件)",
    re.IGNORECASE | re.MULTILINE,
)

_SUCCESS_ACTIONS = frozenset({"delivered", "relayed", "expanded"})
_NO_CODE = 554
"""Stands in for a missing SMTP code: a generic permanent failure, so the enhanced status
decides and the "plain 550 says no such user" rule can never be met by prose alone."""
_NOT_FOUND_STATUSES = frozenset({"5.1.10"})
"""Office 365's RecipientNotFound ("550 5.1.10 RESOLVER.ADR.RecipientNotFound"): the
recipient's own address does not exist, so hard like 5.1.1, although not in RFC 3463."""
_OUR_SIDE = "our side: policy/reputation/authentication refusal, not the buyer's address"


@dataclass(frozen=True, slots=True)
class _Failure:
    """One failed (or delayed) recipient as read, before judging it."""

    bounce: Bounce
    action: str
    code: int | None


@dataclass(frozen=True, slots=True)
class _Verdict:
    failure: _Failure
    kind: MessageKind
    evidence: str


def read_bounce(message: InboundMessage) -> Bounce | None:
    """None when the message is not a delivery failure report (or delay warning)."""
    verdict = _judge(message)
    return verdict.failure.bounce if verdict else None


def classify_bounce(message: InboundMessage) -> Classification | None:
    """kind BOUNCE_HARD / BOUNCE_SOFT / BOUNCE_POLICY with evidence, bounce=..., else None."""
    verdict = _judge(message)
    if verdict is None:
        return None
    return Classification(verdict.kind, verdict.evidence, bounce=verdict.failure.bounce)


def _judge(message: InboundMessage) -> _Verdict | None:
    """Several failed recipients in one report: the first hard one speaks for it, else the
    first, so a report never hides the one failure that must suppress."""
    found = _failures(message)
    if found is None:
        return None
    source, failures = found
    original = _original_message_id(message)
    verdicts = [
        _verdict(source, replace(f, bounce=replace(f.bounce, original_message_id=original)))
        for f in failures
    ]
    hard = [v for v in verdicts if v.kind is MessageKind.BOUNCE_HARD]
    return (hard or verdicts)[0]


# Reading: RFC 3464 structure first, then the non-standard text shapes ---------------------


def _failures(message: InboundMessage) -> tuple[str, list[_Failure]] | None:
    blocks = _status_blocks(message.tree)
    if blocks is not None:
        entries = [_entry(fields) for fields in blocks if _is_recipient_block(fields)]
        failing = [e for e in entries if e is not None]
        if failing:
            return "dsn", [_fill_from_text(message, f) for f in failing]
        if entries:  # every recipient delivered or relayed: a success notice
            return None
    return _text_failure(message, structural=blocks is not None)


def _own_parts(part: Message) -> Iterator[Message]:
    """The message's parts, not descending into attached messages (a forwarded bounce is
    the forwarder's message, not a report to us)."""
    yield part
    if part.get_content_maintype() == "message" or not part.is_multipart():
        return
    payload = part.get_payload()
    for sub in payload if isinstance(payload, list) else ():
        if isinstance(sub, Message):
            yield from _own_parts(sub)


def _status_blocks(tree: Message) -> list[dict[str, str]] | None:
    for part in _own_parts(tree):
        if part.get_content_type() in ("message/delivery-status", "message/global-delivery-status"):
            return _blocks_of(part)
    return None


def _blocks_of(part: Message) -> list[dict[str, str]]:
    payload = part.get_payload()
    if isinstance(payload, list):
        return [_fields(block) for block in payload if isinstance(block, Message)]
    data = part.get_payload(decode=True)
    text = decode_bytes(data, "utf-8", [], "delivery-status") if isinstance(data, bytes) else ""
    return [_loose_fields(chunk) for chunk in re.split(r"\r?\n[ \t]*\r?\n", text)]


def _fields(block: Message) -> dict[str, str]:
    """Header fields of one block; lines after a garbage line (which the stdlib turns into a
    body) are still read."""
    rest = block.get_payload()
    fields = _loose_fields(rest) if isinstance(rest, str) else {}
    for name, value in reversed(block.items()):
        fields[name.strip().lower()] = _clean(str(value))
    return fields


def _loose_fields(text: str) -> dict[str, str]:
    unfolded = re.sub(r"\r?\n[ \t]+", " ", text)
    fields: dict[str, str] = {}
    for line in unfolded.splitlines():
        match = _FIELD.match(line.strip())
        if match:
            fields.setdefault(match.group(1).lower(), _clean(match.group(2)))
    return fields


def _clean(value: str) -> str:
    """Raw 8-bit bytes come through the stdlib as surrogate escapes."""
    return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _is_recipient_block(fields: dict[str, str]) -> bool:
    return any(k in fields for k in ("final-recipient", "original-recipient", "action", "status"))


def _entry(fields: dict[str, str]) -> _Failure | None:
    """The failure one recipient block reports; ``None`` when it reports a delivery."""
    action = fields.get("action", "").strip().lower()
    diagnostic, code = _diagnostic(fields.get("diagnostic-code", ""))
    status = _status(fields.get("status", ""), diagnostic)
    if action in _SUCCESS_ACTIONS or status.startswith("2."):
        return None
    recipient = _recipient(fields.get("original-recipient")) or _recipient(
        fields.get("final-recipient")
    )
    return _Failure(Bounce(status, recipient, diagnostic=diagnostic), action, code)


def _status(field: str, diagnostic: str) -> str:
    """The Status field, unless it is missing or only says "failed" (x.0.0) and the server's
    words carry a more specific code."""
    match = _STATUS.search(field)
    status = match.group(1) if match else ""
    if status and not status.endswith(".0.0"):
        return status
    specific = _FAILED_STATUS.search(diagnostic)
    return specific.group(1) if specific and not specific.group(1).endswith(".0.0") else status


def _recipient(field: str | None) -> str:
    """``rfc822; <Buyer@Example>`` -> ``buyer@example``; other address types are ignored."""
    if not field:
        return ""
    kind, _, address = field.partition(";")
    if not address or kind.strip().lower() not in ("rfc822", "utf-8"):
        return ""
    found = _ADDRESS.search(address)
    return found.group(0).lower() if found else ""


def _diagnostic(field: str) -> tuple[str, int | None]:
    """The server's words on one line without the repeated ``550-5.1.1`` continuation
    prefixes, and the SMTP code they start with."""
    text = _DIAGNOSTIC_TYPE.sub("", field, count=1)
    match = _LEADING_CODE.match(text)
    code = int(match.group(1)) if match else None
    lines = text.splitlines() or [""]
    if code is not None:
        prefix = re.compile(rf"^\s*{code}[ -](?:\d\.\d{{1,3}}\.\d{{1,3}}\s+)?")
        lines = lines[:1] + [prefix.sub("", line) for line in lines[1:]]
    return _one_line(" ".join(lines)), code


def _one_line(text: str) -> str:
    return " ".join(text.split())[:MAX_DIAGNOSTIC_CHARS]


def _fill_from_text(message: InboundMessage, failure: _Failure) -> _Failure:
    """A report that names no recipient or gives no words: take them from the prose, for
    the operator to read; the verdict still rests on the report's own status and code."""
    bounce = failure.bounce
    human = _human_part(message.text)
    recipient = bounce.recipient or next(
        iter(_failed_recipients(message)), _named_recipient(message, human)
    )
    diagnostic = bounce.diagnostic or _failure_line(human)[0]
    return replace(failure, bounce=replace(bounce, recipient=recipient, diagnostic=diagnostic))


def _text_failure(
    message: InboundMessage, *, structural: bool
) -> tuple[str, list[_Failure]] | None:
    """Exim's X-Failed-Recipients, qmail, Yahoo, Chinese providers and reports too broken
    to read: a mailer's prose, believed only from a mailer."""
    failed = _failed_recipients(message)
    human = _human_part(message.text)
    diagnostic, status, code = _failure_line(human)
    signal = bool(status or code or _BOUNCE_SUBJECT.search(message.subject))
    if not (failed or structural or (signal and _from_mailer(message))):
        return None
    recipient = failed[0] if failed else _named_recipient(message, human)
    action = "delayed" if _DELAY_SUBJECT.search(message.subject) else "failed"
    failure = _Failure(Bounce(status, recipient, diagnostic=diagnostic), action, code)
    return _text_source(message, human, failed), [failure]


def _text_source(message: InboundMessage, human: str, failed: list[str]) -> str:
    if failed:
        return "x-failed-recipients"
    return "qmail" if "qmail-send program" in human.lower() else "mailer"


def _failed_recipients(message: InboundMessage) -> list[str]:
    header = " ".join(message.headers_named("X-Failed-Recipients"))
    return [found.group(0).lower() for found in _ADDRESS.finditer(header)]


def _from_mailer(message: InboundMessage) -> bool:
    """MAILER-DAEMON, postmaster, "Mail Delivery Subsystem", or the null sender ``<>``."""
    if any(path.strip() == "<>" for path in message.headers_named("Return-Path")):
        return True
    who = " ".join((message.sender, message.sender_name, *message.headers_named("From")))
    return bool(_MAILER.search(who))


def _human_part(text: str) -> str:
    marker = _COPY_MARKER.search(text)
    return text[: marker.start()] if marker else text


def _failure_line(human: str) -> tuple[str, str, int | None]:
    """The first line giving an enhanced status (else an SMTP code): (line, status, code)."""
    lines = [line.strip() for line in human.splitlines()]
    for pattern in (_FAILED_STATUS, _TEXT_CODE):
        line = next((line for line in lines if pattern.search(line)), None)
        if line is not None:
            status = _FAILED_STATUS.search(line)
            code = _TEXT_CODE.search(line)
            return (
                _one_line(line),
                status.group(1) if status else "",
                int(code.group(1)) if code else None,
            )
    return "", "", None


def _named_recipient(message: InboundMessage, human: str) -> str:
    """The first address the mailer's prose names that is neither us nor a mailer."""
    ours = {message.sender, *message.recipients}
    for found in _ADDRESS.finditer(human):
        address = found.group(0).lower()
        if address not in ours and not _MAILER.search(address):
            return address
    return ""


def _original_message_id(message: InboundMessage) -> str | None:
    """From the returned message or its headers, else a quoted copy, else the threading
    headers: SES and some relays rewrite it, so the threader also tries relay ids."""
    for part in _own_parts(message.tree):
        if part.get_content_type() in _ORIGINAL_TYPES:
            found = _MSGID.search(_clean(str(_headers_of(part).get("Message-ID", ""))))
            if found:
                return found.group(0)
    marker = _COPY_MARKER.search(message.text)
    quoted = _QUOTED_MSGID.search(message.text, marker.start() if marker else 0)
    if quoted:
        return quoted.group(1)
    return next(iter(message.thread_ids), None)


_ORIGINAL_TYPES = frozenset(
    {"message/rfc822", "message/global", "text/rfc822-headers", "message/global-headers"}
)


def _headers_of(part: Message) -> Message:
    payload = part.get_payload()
    if isinstance(payload, list) and payload and isinstance(payload[0], Message):
        return payload[0]
    data = part.get_payload(decode=True)
    return BytesHeaderParser(policy=compat32).parsebytes(data if isinstance(data, bytes) else b"")


# Judging: the same rule as the SMTP conversation --------------------------------------------


def _verdict(source: str, failure: _Failure) -> _Verdict:
    kind = _kind(failure)
    return _Verdict(failure, kind, _evidence(source, failure, kind))


def _kind(failure: _Failure) -> MessageKind:
    status, code = failure.bounce.status, failure.code
    temporary = status.startswith("4.") or (not status and code is not None and code < 500)
    if failure.action == "delayed" or temporary:
        return MessageKind.BOUNCE_SOFT
    if status.startswith("5.7."):
        return MessageKind.BOUNCE_POLICY
    if status in _NOT_FOUND_STATUSES:
        return MessageKind.BOUNCE_HARD
    if not status and code is None:  # no status, no code: unclear, so never suppress
        return MessageKind.BOUNCE_SOFT
    # A plain 554 such as Yahoo's "554 delivery error: dd This user doesn't have a yahoo.com
    # account" is soft here, exactly as classify_reply leaves it unsuppressed at SMTP time.
    decision = classify_reply(code or _NO_CODE, f"{status} {failure.bounce.diagnostic}".strip())
    suppress = isinstance(decision, Failed) and decision.suppress
    return MessageKind.BOUNCE_HARD if suppress else MessageKind.BOUNCE_SOFT


def _evidence(source: str, failure: _Failure, kind: MessageKind) -> str:
    status = failure.bounce.status
    if source == "dsn":
        words = [f"dsn_status={status or 'none'}"]
    else:
        words = [source, f"status={status}"] if status else [source]
    if failure.action == "delayed":
        words.append("action=delayed")
    if (not status or status.endswith(".0.0")) and failure.bounce.diagnostic:
        words.append(f"text={failure.bounce.diagnostic[:80]}")
    if kind is MessageKind.BOUNCE_POLICY:
        words.append(f"({_OUR_SIDE})")
    return " ".join(words)
