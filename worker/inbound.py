"""Turn the raw bytes of an inbound message into the fields the later steps need.

Pure and forgiving: mail from the wild has broken MIME, wrong or unknown charsets and
malformed headers. Nothing here raises on bad input; every problem becomes a line in
``InboundMessage.errors`` and the best reading found is kept, so the message is still
stored, classified as far as possible and counted.
"""

from __future__ import annotations

import codecs
import hashlib
import html
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email import message_from_bytes
from email import policy as email_policy
from email.header import decode_header
from email.message import Message
from email.utils import getaddresses, parsedate_to_datetime

MAX_TEXT_CHARS = 64 * 1024
"""Enough for any buyer's message; a 20 MB attachment mislabelled as text is not read whole."""

_MSGID = re.compile(r"<[^<>\s]+>")
_TAG = re.compile(r"<[^>]*>")
_BLOCK_END = re.compile(r"</(p|div|tr|li|h\d)>|<br\s*/?>", re.IGNORECASE)
_SCRIPT = re.compile(r"<(script|style)\b.*?</\1>", re.IGNORECASE | re.DOTALL)
_SPACES = re.compile(r"[ \t\r\f\v]+")
_BLANK_LINES = re.compile(r"\n\s*\n+")

# Mail labelled with a legacy charset is usually written in its superset (Outlook's GB2312
# is GBK, Shift_JIS is Windows-932, EUC-KR is Windows-949); decoding with the superset
# reads every message the label reads, and more.
_SUPERSETS = {
    "gb2312": "gb18030",
    "gbk": "gb18030",
    "x-gbk": "gb18030",
    "cp936": "gb18030",
    "big5": "big5hkscs",
    "shift_jis": "cp932",
    "shift-jis": "cp932",
    "sjis": "cp932",
    "x-sjis": "cp932",
    "ms_kanji": "cp932",
    "euc-kr": "cp949",
    "ks_c_5601-1987": "cp949",
    "iso-2022-jp": "iso2022_jp_ext",
    "iso-8859-1": "cp1252",
    "us-ascii": "utf-8",
    "ascii": "utf-8",
    "unknown-8bit": "utf-8",
    "x-unknown": "utf-8",
}


@dataclass(frozen=True, slots=True, eq=False)
class InboundMessage:
    """One message as read: addresses lower-cased, headers and text decoded to ``str``."""

    raw: bytes
    content_hash: str
    message_id: str | None
    sender: str
    sender_name: str
    recipients: tuple[str, ...]
    subject: str
    date: datetime | None
    in_reply_to: tuple[str, ...]
    references: tuple[str, ...]
    headers: tuple[tuple[str, str], ...]
    text: str
    errors: tuple[str, ...]
    tree: Message = field(repr=False)
    """The parsed MIME tree, for readers of structure such as delivery reports."""

    def header(self, name: str) -> str | None:
        """The first header of that name (any case), decoded; ``None`` when absent."""
        wanted = name.lower()
        return next((v for k, v in self.headers if k.lower() == wanted), None)

    def headers_named(self, name: str) -> tuple[str, ...]:
        wanted = name.lower()
        return tuple(v for k, v in self.headers if k.lower() == wanted)

    @property
    def thread_ids(self) -> tuple[str, ...]:
        """Message-IDs this one answers: In-Reply-To first, then References newest first."""
        seen = dict.fromkeys((*self.in_reply_to, *reversed(self.references)))
        return tuple(seen)


def codec_for(charset: str | None) -> str | None:
    """The Python codec to read a declared charset with, or ``None`` if unknown."""
    label = (charset or "utf-8").strip().strip('"').lower()
    label = _SUPERSETS.get(label, label)
    try:
        return codecs.lookup(label).name
    except LookupError:
        return None


def decode_bytes(data: bytes, charset: str | None, errors: list[str], where: str) -> str:
    """Decode with the declared charset's superset; fall back to UTF-8 and say so."""
    codec = codec_for(charset)
    if codec is None:
        errors.append(f"{where}: unknown charset {charset!r}, read as UTF-8")
        return data.decode("utf-8", errors="replace")
    try:
        return data.decode(codec)
    except UnicodeDecodeError:
        pass
    if codec != "utf-8":
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            pass
        else:
            errors.append(f"{where}: labelled {charset}, but is UTF-8")
            return text
    errors.append(f"{where}: not valid {charset or 'utf-8'}; unreadable bytes replaced")
    return data.decode(codec, errors="replace")


def decode_header_value(raw: str, errors: list[str], where: str) -> str:
    """RFC 2047 words decoded with charset supersets; undecodable bytes replaced, not fatal."""
    try:
        pieces = decode_header(raw)
    except Exception as exc:  # the stdlib raises several kinds on malformed encoded words
        errors.append(f"{where}: malformed encoded word ({exc})")
        return _unfold(raw)
    out: list[str] = []
    for chunk, charset in pieces:
        if isinstance(chunk, str):
            out.append(chunk)
        elif charset is None:  # the unencoded text between encoded words
            out.append(chunk.decode("raw-unicode-escape", errors="replace"))
        else:
            out.append(decode_bytes(chunk, charset, errors, where))
    return _unfold("".join(out))


def _unfold(value: str) -> str:
    return _SPACES.sub(" ", value.replace("\r", "").replace("\n", " ")).strip()


def _raw_headers(tree: Message) -> list[tuple[str, str]]:
    pairs: list[tuple[str, str]] = []
    for name, value in tree.raw_items():
        text = value if isinstance(value, str) else str(value)
        # Raw 8-bit header bytes arrive as surrogate escapes; try UTF-8, else replace.
        if any("\udc80" <= c <= "\udcff" for c in text):
            text = text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        pairs.append((name, text))
    return pairs


def _addresses(values: tuple[str, ...]) -> list[tuple[str, str]]:
    return [
        (name, addr.strip().lower()) for name, addr in getaddresses(list(values)) if "@" in addr
    ]


def _date(value: str | None, errors: list[str]) -> datetime | None:
    if not value:
        return None
    try:
        parsed = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        errors.append(f"Date: cannot read {value[:60]!r}")
        return None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def _html_to_text(markup: str) -> str:
    text = _BLOCK_END.sub("\n", _SCRIPT.sub("", markup))
    return html.unescape(_TAG.sub("", text))


def _part_text(part: Message, errors: list[str], where: str) -> str:
    try:
        payload = part.get_payload(decode=True)
    except Exception as exc:  # a broken transfer encoding must not stop the message
        errors.append(f"{where}: cannot decode the body ({exc})")
        return ""
    if not isinstance(payload, bytes):
        return ""
    return decode_bytes(payload[: MAX_TEXT_CHARS * 4], part.get_content_charset(), errors, where)


def _body_text(tree: Message, errors: list[str]) -> str:
    """The first plain-text part; else the first HTML part as text; attachments ignored."""
    plain: str | None = None
    markup: str | None = None
    for index, part in enumerate(tree.walk()):
        if part.is_multipart() or part.get_content_disposition() == "attachment":
            continue
        kind = part.get_content_type()
        where = f"part {index} ({kind})"
        if kind == "text/plain" and plain is None:
            plain = _part_text(part, errors, where)
        elif kind == "text/html" and markup is None:
            markup = _part_text(part, errors, where)
    text = plain if plain is not None else _html_to_text(markup or "")
    text = _BLANK_LINES.sub("\n\n", text.replace("\r\n", "\n").replace("\r", "\n"))
    return text.strip()[:MAX_TEXT_CHARS]


def parse(raw: bytes) -> InboundMessage:
    """Read a message from its bytes; never raises on bad mail."""
    errors: list[str] = []
    tree = message_from_bytes(raw, policy=email_policy.compat32)
    errors.extend(f"MIME: {type(d).__name__}" for d in _defects(tree))
    headers = tuple(
        (name, decode_header_value(value, errors, name)) for name, value in _raw_headers(tree)
    )

    def all_of(*names: str) -> tuple[str, ...]:
        wanted = {n.lower() for n in names}
        return tuple(v for k, v in headers if k.lower() in wanted)

    senders = _addresses(all_of("From")) or _addresses(all_of("Sender", "Return-Path"))
    sender_name, sender = senders[0] if senders else ("", "")
    recipients = _addresses(all_of("To", "Cc", "Delivered-To", "X-Original-To", "Envelope-To"))
    message_ids = _MSGID.findall(" ".join(all_of("Message-ID")))
    return InboundMessage(
        raw=raw,
        content_hash=hashlib.sha256(raw).hexdigest(),
        message_id=message_ids[0] if message_ids else None,
        sender=sender,
        sender_name=sender_name,
        recipients=tuple(dict.fromkeys(addr for _, addr in recipients)),
        subject=" ".join(all_of("Subject")),
        date=_date(next(iter(all_of("Date")), None), errors),
        in_reply_to=tuple(_MSGID.findall(" ".join(all_of("In-Reply-To")))),
        references=tuple(_MSGID.findall(" ".join(all_of("References")))),
        headers=headers,
        text=_body_text(tree, errors),
        errors=tuple(dict.fromkeys(errors)),
        tree=tree,
    )


def _defects(tree: Message) -> list[object]:
    found: list[object] = []
    for part in tree.walk():
        found.extend(part.defects)
    return found


@dataclass(frozen=True, slots=True)
class Received:
    """Where and when the mailbox received a message: its place in the IMAP checkpoint."""

    mailbox: str
    folder: str
    uidvalidity: int
    uid: int
    received_at: datetime
