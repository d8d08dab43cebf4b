"""Turn the raw bytes of an inbound message into the fields the later steps need.

Pure and forgiving: mail from the wild has broken MIME, wrong or unknown charsets and
malformed headers, and some of it is written to hurt. Nothing here raises, on any bytes;
every problem becomes a line in ``InboundMessage.errors`` and the best reading found is kept,
so the message is still stored, classified as far as possible and counted. Work and memory
are bounded by :class:`ParseLimits`: a message past a limit is read cut short and says why
in ``InboundMessage.truncated``. Every pattern is linear (re2 or plain string methods), since
a backtracking regex on a stranger's text is a way to stall the worker.
"""

from __future__ import annotations

import binascii
import codecs
import encodings
import functools
import hashlib
import html
import string
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.feedparser import BytesFeedParser
from email.message import Message
from email.policy import compat32
from email.utils import getaddresses, parsedate_to_datetime
from typing import TYPE_CHECKING

import re2

MAX_TEXT_CHARS = 64 * 1024
"""Enough for any buyer's message: what readers of a raw body (delivery reports) look at."""

MAX_THREAD_IDS = 100
"""Message-IDs kept of In-Reply-To and of References (the newest): the store looks each up."""

MAX_ERRORS = 50
"""Error lines kept per message; a hostile one can have thousands."""

_ADDRESS_CHARS = 64 * 1024
"""Of the address headers, this much is read: the stdlib's parser is slow on long junk."""

_PARAMETER_CHARS = 4096
_PARAMETERS = 32
"""Content-Type and Content-Disposition are cut to this length and number of parameters:
the stdlib reads parameters in quadratic time, while parsing."""

_FEED_BYTES = 64 * 1024
"""The parser is fed in slices: given a whole message at once it holds every line twice."""

_LABEL_CHARS = 64
"""Longer charset labels are no charset (the longest real ones are about 20 characters)."""

_ENCODED_WORD = re2.compile(r"=\?([^?]*)\?([qQbB])\?(.*?)\?=")
_HUGE_CHARREF = re2.compile(r"&#[0-9]{8,};?")
"""Past U+10FFFF, or padded by someone who means harm; ``html.unescape`` raises on 4,300
digits."""
_BLOCK_ENDS = frozenset({"/p", "/div", "/tr", "/li", *(f"/h{n}" for n in range(1, 7)), "br"})
_WORD_CHARS = frozenset(string.ascii_letters + string.digits + "_")
_ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)
_FOLDING = str.maketrans({"\r": None, "\n": " ", "\t": " ", "\f": " ", "\v": " ", "\0": "\ufffd"})

# Mail labelled with a legacy charset is usually written in its superset (Outlook's GB2312
# is GBK, Shift_JIS is Windows-932, EUC-KR is Windows-949); decoding with the superset
# reads every message the label reads, and more. Keys are labels as normalised by codec_for.
_SUPERSETS = {
    "gb2312": "gb18030",
    "gbk": "gb18030",
    "x_gbk": "gb18030",
    "cp936": "gb18030",
    "big5": "big5hkscs",
    "shift_jis": "cp932",
    "sjis": "cp932",
    "x_sjis": "cp932",
    "ms_kanji": "cp932",
    "euc_kr": "cp949",
    "ks_c_5601_1987": "cp949",
    "iso_2022_jp": "iso2022_jp_ext",
    "iso_8859_1": "cp1252",
    "us_ascii": "utf-8",
    "ascii": "utf-8",
    "unknown_8bit": "utf-8",
    "x_unknown": "utf-8",
}

# Python codecs that read text mail is written in, by their codec names. Other codecs a
# label can name inflate (zlib), transform (rot13, hex, base64), raise on any input
# (undefined, idna, punycode) or turn escapes into control characters (unicode_escape).
_MAIL_CODECS = frozenset(
    {
        *("ascii", "utf-8", "utf-8-sig", "utf-7", "utf-16", "utf-16-be", "utf-16-le"),
        *("utf-32", "utf-32-be", "utf-32-le"),
        *(f"iso8859-{n}" for n in (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16)),
        *(f"cp{n}" for n in range(1250, 1259)),
        *(f"cp{n}" for n in (437, 720, 737, 775, 850, 852, 855, 856, 857, 858, 860, 861, 862)),
        *(f"cp{n}" for n in (863, 864, 865, 866, 869, 874, 1006, 1125)),
        *("cp037", "cp273", "cp424", "cp500", "cp875", "cp1026", "cp1140"),  # EBCDIC
        *("koi8-r", "koi8-t", "koi8-u", "kz1048", "ptcp154", "tis-620", "hp-roman8", "palmos"),
        *(f"mac-{n}" for n in ("arabic", "croatian", "cyrillic", "farsi", "greek", "iceland")),
        *(f"mac-{n}" for n in ("latin2", "roman", "romanian", "turkish")),
        *("big5", "big5hkscs", "cp932", "cp949", "cp950", "gb2312", "gbk", "gb18030", "hz"),
        *("euc_jp", "euc_jis_2004", "euc_jisx0213", "euc_kr", "johab"),
        *("shift_jis", "shift_jis_2004", "shift_jisx0213", "iso2022_kr"),
        *("iso2022_jp", "iso2022_jp_1", "iso2022_jp_2", "iso2022_jp_2004", "iso2022_jp_3"),
        "iso2022_jp_ext",
    }
)


@dataclass(frozen=True, slots=True)
class ParseLimits:
    """How much of one message is read. Past a limit the message is read cut short, and says
    so; the defaults read every ordinary message whole."""

    max_message_bytes: int = 25_000_000
    """Past it only the header and the first ``4 * max_text_bytes`` of the body are read."""
    max_header_bytes: int = 256 * 1024
    max_parts: int = 200
    """MIME parts, nested messages and delivery-status blocks, the message itself included."""
    max_depth: int = 20
    """Nesting of multiparts and attached messages."""
    max_text_bytes: int = 256 * 1024
    """Decoded bytes read of the text part (and of the HTML part)."""


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
    """The parsed MIME tree, for readers of structure such as delivery reports; for a message
    cut short, the part read."""
    truncated: str | None = None
    """Why only part of the message was read (``size 270000000 > max_message_bytes ...``)."""
    _named: dict[str, tuple[str, ...]] | None = field(
        default=None, init=False, repr=False, compare=False
    )
    """``headers`` by lower-cased name, made on the first look-up: the classifier asks
    for about twenty names per message."""

    def header(self, name: str) -> str | None:
        """The first header of that name (any case), decoded; ``None`` when absent."""
        found = self.headers_named(name)
        return found[0] if found else None

    def headers_named(self, name: str) -> tuple[str, ...]:
        named = self._named
        if named is None:
            named = _by_name(self.headers)
            object.__setattr__(self, "_named", named)
        return named.get(name.lower(), ())

    @property
    def thread_ids(self) -> tuple[str, ...]:
        """Message-IDs this one answers: In-Reply-To first, then References newest first."""
        seen = dict.fromkeys((*self.in_reply_to, *reversed(self.references)))
        return tuple(seen)


def codec_for(charset: str | None) -> str | None:
    """The Python codec to read a declared charset with, or ``None`` if it is no mail charset.

    The label is normalised before the lookup: Python caches every label it resolves, so
    endless spellings of ``utf-8`` from strangers must not each become an entry.
    """
    label = (charset or "utf-8").strip().strip('"')
    if len(label) > _LABEL_CHARS:
        return None
    label = encodings.normalize_encoding(label.lower()).replace(".", "_")
    label = _SUPERSETS.get(label, label)
    try:
        name = codecs.lookup(label).name
    except LookupError:
        return None
    return name if name in _MAIL_CODECS else None


def decode_bytes(
    data: bytes, charset: str | None, errors: list[str], where: str, *, final: bool = True
) -> str:
    """Decode with the declared charset's superset; fall back to UTF-8 and say so.

    ``final=False`` reads the cut-off start of a text: a character cut in two at the end is
    dropped, not reported.
    """
    codec = codec_for(charset)
    if codec is None:
        errors.append(f"{where}: unknown charset {_clipped(charset)!r}, read as UTF-8")
        return _decoded(data, "utf-8", final, "replace")
    try:
        return _decoded(data, codec, final)
    except UnicodeError:
        pass
    label = _clipped(charset or "utf-8")
    if codec != "utf-8":
        try:
            text = _decoded(data, "utf-8", final)
        except UnicodeError:
            pass
        else:
            errors.append(f"{where}: labelled {label}, but is UTF-8")
            return text
    errors.append(f"{where}: not valid {label}; unreadable bytes replaced")
    return _decoded(data, codec, final, "replace")


def _decoded(data: bytes, codec: str, final: bool, errors: str = "strict") -> str:
    if not final:
        data = _without_cut_character(data, codec)
    return data.decode(codec, errors).replace("\0", "\ufffd")  # PostgreSQL stores no NUL


def _without_cut_character(data: bytes, codec: str) -> bytes:
    """``data`` less a last character that a limit cut in two."""
    try:
        data.decode(codec)
    except UnicodeDecodeError as exc:
        if exc.end == len(data) and exc.start > len(data) - 8:
            return data[: exc.start]
    return data


def _clipped(label: str | None) -> str | None:
    return label if label is None or len(label) <= _LABEL_CHARS else label[:_LABEL_CHARS] + "..."


def decode_header_value(raw: str, errors: list[str], where: str) -> str:
    """Unfolded, RFC 2047 words decoded with charset supersets; a word that cannot be read
    stays as written, and says so.

    Read here rather than by ``email.header.decode_header``, which takes quadratic time on a
    long line of encoded words, gives up the whole header for one bad word and drops the
    space where a line was folded between a word and plain text.
    """
    value = _unfold(raw)
    if "=?" not in value:
        return value
    pieces: list[str | tuple[str, bytes]] = []
    at = 0
    for match in _ENCODED_WORD.finditer(value):
        begin, at_end = match.span()
        if begin > at:
            pieces.append(value[at:begin])
        pieces.append(_encoded_word(*match.groups()))
        if isinstance(pieces[-1], str):
            errors.append(f"{where}: malformed encoded word {_clipped(pieces[-1])!r}")
        at = at_end
    pieces.append(value[at:])
    return _unfold(_joined(pieces, errors, where))


def _encoded_word(charset: str, encoding: str, data: str) -> str | tuple[str, bytes]:
    """The word's bytes and charset; its text as written when it cannot be decoded."""
    label = charset.partition("*")[0].lower()  # RFC 2231 adds a language: utf-8*en
    if encoding in "qQ":
        return label, binascii.a2b_qp(data.encode("utf-8", "replace"), header=True)
    try:
        padded = data + "==="[: -len(data) % 4]
        return label, binascii.a2b_base64(padded.encode("ascii", "ignore"))
    except binascii.Error:
        return f"=?{charset}?{encoding}?{data}?="


def _joined(pieces: list[str | tuple[str, bytes]], errors: list[str], where: str) -> str:
    """Decode runs of words in one charset together: a character may span two words. Blank
    text between two encoded words is no text (RFC 2047)."""
    out: list[str] = []
    run: list[bytes] = []
    charset = ""
    for index, piece in enumerate(pieces):
        if isinstance(piece, str):
            if not _between_words(pieces, index):
                out.append(decode_bytes(b"".join(run), charset, errors, where) if run else "")
                run = []
                out.append(piece)
            continue
        if run and piece[0] != charset:
            out.append(decode_bytes(b"".join(run), charset, errors, where))
            run = []
        charset = piece[0]
        run.append(piece[1])
    if run:
        out.append(decode_bytes(b"".join(run), charset, errors, where))
    return "".join(out)


def _between_words(pieces: list[str | tuple[str, bytes]], index: int) -> bool:
    text = pieces[index]
    return (
        isinstance(text, str)
        and text.isspace()
        and 0 < index < len(pieces) - 1
        and not isinstance(pieces[index - 1], str)
        and not isinstance(pieces[index + 1], str)
    )


def _unfold(value: str) -> str:
    """Header lines joined, each run of blanks made one space (split and join: linear)."""
    flat = value.translate(_FOLDING)
    if "  " not in flat:  # no run to shorten: only the ends to strip (the usual case)
        return flat.strip()
    return " ".join(part for part in flat.split(" ") if part).strip()


def _raw_headers(tree: Message) -> list[tuple[str, str]]:
    pairs: list[tuple[str, str]] = []
    for name, value in tree.raw_items():
        text = value if isinstance(value, str) else str(value)
        # Raw 8-bit header bytes arrive as surrogate escapes; try UTF-8, else replace.
        if not text.isascii():
            text = text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        pairs.append((name, text))
    return pairs


def _by_name(headers: Sequence[tuple[str, str]]) -> dict[str, tuple[str, ...]]:
    grouped: dict[str, list[str]] = {}
    for name, value in headers:
        grouped.setdefault(name.lower(), []).append(value)
    return {name: tuple(values) for name, values in grouped.items()}


_REMEMBERED_ADDRESS_CHARS = 512


def address_pairs(value: str) -> list[tuple[str, str]]:
    """``email.utils.getaddresses([value])``; a short value's answer is remembered, as the
    same From is read by ``parse`` and by ``worker.origin``, and the same people write
    again and again. Raises what ``getaddresses`` raises."""
    if len(value) > _REMEMBERED_ADDRESS_CHARS:
        return getaddresses([value])
    return list(_remembered_addresses(value))


@functools.lru_cache(maxsize=1024)
def _remembered_addresses(value: str) -> tuple[tuple[str, str], ...]:
    return tuple(getaddresses([value]))


def _addresses(values: tuple[str, ...], errors: list[str], where: str) -> list[tuple[str, str]]:
    """The addresses with an ``@`` and no control character (a NUL is no address, and no
    database stores it)."""
    try:
        found = address_pairs(", ".join(values)[:_ADDRESS_CHARS])
    except RecursionError:  # email.utils reads nested comments "(((..." recursively
        errors.append(f"{where}: addresses nested too deep to read")
        return []
    pairs = ((name, addr.strip().lower()) for name, addr in found)
    return [(name, addr) for name, addr in pairs if "@" in addr and addr.isprintable()]


def _message_ids(value: str) -> list[str]:
    """Every ``<id>`` (no blank or bracket inside), as ``re.findall(r"<[^<>\\s]+>")`` would."""
    found: list[str] = []
    for piece in value.split("<")[1:]:
        inner, closed, _ = piece.partition(">")
        if closed and inner and inner.split() == [inner]:
            found.append(f"<{inner}>")
    return found


def _date(value: str | None, errors: list[str]) -> datetime | None:
    if not value:
        return None
    try:
        parsed = parsedate_to_datetime(value)
        return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
    except (TypeError, ValueError, IndexError, OverflowError):
        errors.append(f"Date: cannot read {value[:60]!r}")
        return None


def _html_to_text(markup: str) -> str:
    """Tags dropped, scripts and styles with their content, block ends made line breaks,
    entities decoded: one pass of ``str.find``, linear on any markup."""
    lower = markup.translate(_ASCII_LOWER)  # keeps every index, unlike str.lower()
    closers: dict[str, int] = {}
    out: list[str] = []
    at = 0
    while (start := markup.find("<", at)) >= 0 and (end := markup.find(">", start)) >= 0:
        out.append(markup[at:start])
        skipped = _raw_text_end(lower, start, closers)
        if skipped is not None:
            at = skipped
            continue
        tag = lower[start + 1 : end] if end - start < 12 else ""
        if "".join(tag.split()).rstrip("/") in _BLOCK_ENDS:
            out.append("\n")
        at = end + 1
    out.append(markup[at:])
    return _unescaped("".join(out))


def _raw_text_end(lower: str, start: int, closers: dict[str, int]) -> int | None:
    """Past the closing tag of a script or style opened at ``start``; ``None`` if none is.

    ``closers`` remembers where each closing tag was found: a thousand unclosed openers must
    not each search to the end.
    """
    for name in ("script", "style"):
        after = lower[start + 1 + len(name) : start + 2 + len(name)]
        if not lower.startswith(name, start + 1) or after in _WORD_CHARS:  # no <scripts>
            continue
        closer = f"</{name}>"
        found = closers.get(name, -2)
        if found != -1 and found < start:
            found = closers[name] = lower.find(closer, start)
        return None if found < 0 else found + len(closer)
    return None


def _unescaped(text: str) -> str:
    try:
        return html.unescape(text)
    except ValueError:  # a decimal reference of over 4,300 digits: too long for int()
        return html.unescape(_HUGE_CHARREF.sub(lambda _: "\ufffd", text))


def _paragraphs(text: str) -> str:
    """Each run of blank lines made one blank line."""
    lines: list[str] = []
    blank = False
    for line in text.split("\n"):
        if not line.strip():
            blank = True
            continue
        if blank and lines:
            lines.append("")
        lines.append(line)
        blank = False
    return "\n".join(lines)


def _part_text(part: Message, limit: int, errors: list[str], where: str) -> tuple[str, bool]:
    """At most ``limit`` decoded bytes of the part as text, and whether it had more."""
    try:
        payload = part.get_payload(decode=True)
        charset = part.get_content_charset()
    except Exception as exc:  # a broken transfer encoding or parameter must not stop the message
        errors.append(f"{where}: cannot decode the body ({exc})")
        return "", False
    if not isinstance(payload, bytes):
        return "", False
    cut = len(payload) > limit
    return decode_bytes(payload[:limit], charset, errors, where, final=not cut), cut


def _body_text(tree: Message, limit: int, errors: list[str]) -> tuple[str, bool]:
    """The first plain-text part; else the first HTML part as text; attachments ignored.
    Also whether that part was longer than ``limit``."""
    plain: str | None = None
    markup: str | None = None
    cut = False
    for index, part in enumerate(tree.walk()):
        where = f"part {index}"
        try:
            if part.is_multipart() or part.get_content_disposition() == "attachment":
                continue
            kind = part.get_content_type()
        except Exception as exc:  # headers the stdlib cannot read: skip the part, say so
            errors.append(f"{where}: unreadable part headers ({exc})")
            continue
        where = f"{where} ({_clipped(kind)})"
        if kind == "text/plain" and plain is None:
            plain, was_cut = _part_text(part, limit, errors, where)
        elif kind == "text/html" and markup is None:
            markup, was_cut = _part_text(part, limit, errors, where)
        else:
            continue
        cut = cut or was_cut
    text = plain if plain is not None else _html_to_text(markup or "")
    return _paragraphs(text.replace("\r\n", "\n").replace("\r", "\n")).strip(), cut


class _Cut(Exception):
    """A limit was reached while parsing; what was parsed so far is kept."""


class _Part(Message):
    """A MIME part whose parameter headers are cut short before the parser reads them."""

    def set_raw(self, name: str, value: str) -> None:
        if name.lower() in ("content-type", "content-disposition"):
            value = ";".join(value[:_PARAMETER_CHARS].split(";")[: _PARAMETERS + 1])
        super().set_raw(name, value)


if TYPE_CHECKING:
    _FeedParser = BytesFeedParser[Message]
else:
    _FeedParser = BytesFeedParser  # generic in typeshed only


class _Parser(_FeedParser):
    """The stdlib's parser, stopped at ``max_parts`` parts or ``max_depth`` levels: it
    recurses once per level, so a message nested a thousand deep would raise."""

    def __init__(self, limits: ParseLimits) -> None:
        super().__init__(_Part, policy=compat32)
        self.limits = limits
        self.parts = 0
        self.root: Message | None = None

    def _new_message(self) -> None:
        depth = len(self._msgstack)  # type: ignore[attr-defined]  # the stdlib's own state
        self.parts += 1
        if self.parts > self.limits.max_parts:
            raise _Cut(f"parts > max_parts {self.limits.max_parts}")
        if depth > self.limits.max_depth:
            raise _Cut(f"depth > max_depth {self.limits.max_depth}")
        super()._new_message()  # type: ignore[misc]  # private in typeshed
        if self.root is None:
            self.root = self._msgstack[0]  # type: ignore[attr-defined]


def _tree(data: bytes, limits: ParseLimits, cuts: list[str]) -> Message:
    parser = _Parser(limits)
    try:
        for start in range(0, len(data), _FEED_BYTES):
            parser.feed(data[start : start + _FEED_BYTES])
        return parser.close()
    except _Cut as cut:
        cuts.append(str(cut))
        return parser.root or Message()


def _readable(raw: bytes, whole: int, limits: ParseLimits, cuts: list[str]) -> bytes:
    """The bytes to parse: the header cut at ``max_header_bytes``, and for a message past
    ``max_message_bytes`` only the start of its body."""
    end = _header_end(raw)
    head_cut = end > limits.max_header_bytes
    body_cut = whole > limits.max_message_bytes and len(raw) - end > 4 * limits.max_text_bytes
    if head_cut:
        cuts.append(f"header {end} > max_header_bytes {limits.max_header_bytes}")
    if not head_cut and not body_cut:
        return raw
    head = _at_line_end(raw, limits.max_header_bytes) + b"\r\n" if head_cut else raw[:end]
    return head + raw[end : end + 4 * limits.max_text_bytes if body_cut else len(raw)]


def _header_end(raw: bytes) -> int:
    """Where the body starts: after the first blank line (any line ending), else the end."""
    found = [
        at + len(blank)
        for blank in (b"\r\n\r\n", b"\n\n", b"\r\r", b"\n\r\n")
        if (at := raw.find(blank)) >= 0
    ]
    return min(found, default=len(raw))


def _at_line_end(raw: bytes, limit: int) -> bytes:
    cut = max(raw.rfind(b"\n", 0, limit), raw.rfind(b"\r", 0, limit))
    return raw[: cut + 1] if cut >= 0 else raw[:limit] + b"\r\n"


def parse(
    raw: bytes, *, limits: ParseLimits = ParseLimits(), size: int | None = None
) -> InboundMessage:
    """Read a message from its bytes; never raises, on any bytes.

    ``size`` is the whole message's size when ``raw`` is only its start (the mailbox fetches
    the start of a message past ``max_message_bytes``).
    """
    try:
        return _read(raw, limits, len(raw) if size is None else max(size, len(raw)))
    except Exception as exc:  # a bug must cost one message its reading, never the mailbox
        return unreadable(raw, f"unreadable: {exc!r}"[:300])


def _read(raw: bytes, limits: ParseLimits, whole: int) -> InboundMessage:
    errors: list[str] = []
    cuts: list[str] = []
    if whole > limits.max_message_bytes:
        cuts.append(f"size {whole} > max_message_bytes {limits.max_message_bytes}")
    elif whole > len(raw):
        cuts.append(f"only {len(raw)} of {whole} bytes read")
    tree = _tree(_readable(raw, whole, limits, cuts), limits, cuts)
    errors.extend(dict.fromkeys(f"MIME: {type(d).__name__}" for d in _defects(tree)))
    undecoded = _raw_headers(tree)
    headers = tuple((name, decode_header_value(value, errors, name)) for name, value in undecoded)

    def all_of(*names: str, among: Sequence[tuple[str, str]] = headers) -> tuple[str, ...]:
        wanted = {n.lower() for n in names}
        return tuple(v for k, v in among if k.lower() in wanted)

    decoded = _by_name(headers)

    # Addresses from the fields as written: an encoded word is a display name whatever it
    # decodes to ("=?utf-8?q?notice=40amazon.com?=" is not notice@amazon.com).
    senders = _addresses(all_of("From", among=undecoded), errors, "From") or _addresses(
        all_of("Sender", "Return-Path", among=undecoded), errors, "Sender"
    )
    sender_name, sender = senders[0] if senders else ("", "")
    sender_name = decode_header_value(sender_name, errors, "From") if sender_name else ""
    recipients = _addresses(
        all_of("To", "Cc", "Delivered-To", "X-Original-To", "Envelope-To", among=undecoded),
        errors,
        "To",
    )
    message_ids = _message_ids(" ".join(decoded.get("message-id", ())))
    date = _date(next(iter(decoded.get("date", ())), None), errors)
    text, text_cut = _body_text(tree, limits.max_text_bytes, errors)
    if text_cut:
        cuts.append(f"text > max_text_bytes {limits.max_text_bytes}")
    message = InboundMessage(
        raw=raw,
        content_hash=hashlib.sha256(raw).hexdigest(),
        message_id=message_ids[0] if message_ids else None,
        sender=sender,
        sender_name=sender_name,
        recipients=tuple(dict.fromkeys(addr for _, addr in recipients)),
        subject=" ".join(decoded.get("subject", ())),
        date=date,
        in_reply_to=tuple(_message_ids(" ".join(decoded.get("in-reply-to", ()))))[:MAX_THREAD_IDS],
        references=tuple(_message_ids(" ".join(decoded.get("references", ()))))[-MAX_THREAD_IDS:],
        headers=headers,
        text=text,
        errors=_kept([*(f"truncated: {cut}" for cut in cuts), *errors]),
        tree=tree,
        truncated="; ".join(cuts) or None,
    )
    object.__setattr__(message, "_named", decoded)  # already made: spare the first look-up
    return message


def _kept(errors: list[str]) -> tuple[str, ...]:
    """Each error once, storable (they quote the message), at most ``MAX_ERRORS`` lines, the
    last saying how many more."""
    distinct = list(dict.fromkeys(_storable(error) for error in errors))
    if len(distinct) <= MAX_ERRORS:
        return tuple(distinct)
    return (*distinct[: MAX_ERRORS - 1], f"... and {len(distinct) - MAX_ERRORS + 1} more")


def _storable(text: str) -> str:
    """No NUL and no lone surrogate: databases refuse both in text."""
    return text.replace("\0", "\ufffd").encode("utf-8", "replace").decode("utf-8")


def _defects(tree: Message) -> list[object]:
    found: list[object] = []
    for part in tree.walk():
        found.extend(part.defects)
    return found


def unreadable(raw: bytes, error: str) -> InboundMessage:
    """The message kept whole, read as nothing but its error."""
    return InboundMessage(
        raw=raw,
        content_hash=hashlib.sha256(raw).hexdigest(),
        message_id=None,
        sender="",
        sender_name="",
        recipients=(),
        subject="",
        date=None,
        in_reply_to=(),
        references=(),
        headers=(),
        text="",
        errors=(error,),
        tree=Message(),
    )


@dataclass(frozen=True, slots=True)
class Received:
    """Where and when the mailbox received a message: its place in the IMAP checkpoint."""

    mailbox: str
    folder: str
    uidvalidity: int
    uid: int
    received_at: datetime
