"""Build the MIME message for one send row from a rendered template.

Buyer names, products (through the subject), order numbers, and every other value that
reaches a header are untrusted text, and the ``email`` package never parses them: up to
CPython 3.11.9 and 3.12.4 (CVE-2024-6923) it decodes an encoded word such as
``=?utf-8?q?x=0D=0ABcc:_evil@example.com?=`` found in a value and writes the CR LF back
raw, adding headers to mail we send and sign. So compose encodes and folds each header
itself and hands it over as a :class:`_Header`, which every ``email`` policy writes out as
it is, on every Python we support:

- Text is cleaned first. Control characters (C0, DEL, C1 with NEL, and the Unicode line
  and paragraph separators) become spaces, and runs of spaces become one. ``=?`` becomes
  ``= ?``, so that what a reader decodes from our header never looks like an encoded word,
  even at a relay or mail store that parses our message and writes it out again with an
  unpatched Python. Bidi embeddings, overrides and isolates (U+202A-U+202E, U+2066-U+2069)
  are removed. They are legal text, but in a subject or a name they reverse the text that
  follows them in the buyer's mail client, so the buyer would read something the seller
  never wrote. The directional marks (LRM, RLM, ALM) stay: right-to-left names need them,
  and they reorder nothing.
- Text longer than 255 characters is cut to 254 and an ellipsis. Real subjects, names and
  order numbers are shorter, and Outlook keeps only 255 characters of a subject. Without
  the cut, 10 kB of CJK would become 40 kB of encoded words, over the header limits of
  common relays (sendmail refuses more than 32 kB of headers).
- Printable ASCII text stays as it is: atoms or one quoted string in a display name.
  Anything else is written as UTF-8 RFC 2047 encoded words of whole characters. Lines
  are folded to at most 78 octets. Only an address or a URL can make a line longer, and a
  URL over 900 octets is refused.
- Addresses must be ASCII dot-atoms (the domain is IDNA-encoded), and a display name is
  atoms, one quoted string or encoded words, so a name like ``a@b.example, c@d.example``
  is text and never a second recipient.

Every header, the MIME ones included, is such a :class:`_Header`, so the message is built
without the ``email`` header registry (which parses each value as it is set, and again as it
is written), and written out once, as it is built: :class:`ComposedMessage` carries its
bytes. Headers that are the same in every message (From, the unsubscribe headers, the
campaign and step) are built once and kept.
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets
import string
import sys
from datetime import datetime
from email import policy as email_policy
from email.errors import HeaderParseError
from email.header import decode_header, make_header
from email.message import EmailMessage, Message
from email.policy import Policy
from email.utils import format_datetime, parseaddr
from functools import cached_property, lru_cache
from typing import Self
from urllib.parse import quote

from worker.config import Settings
from worker.domain import Order, Send
from worker.errors import ConfigError, TemplateError
from worker.render import RenderedMessage

_LINE = 78
_ENCODED_WORD = 75
_ENCODED_WORD_FRAME = len("=?utf-8?q??=")
_TEXT_MAX = 255
_URL_MAX = 900
_SNIFF_LINES = 10
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_BIDI = re.compile(r"[\u202a-\u202e\u2066-\u2069]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")
_PRINTABLE = re.compile(r"[ -~]*")
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_ATOMS = re.compile(rf"{_ATEXT}(?: {_ATEXT})*")
_DOT_ATOM = re.compile(rf"{_ATEXT}(?:\.{_ATEXT})*")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_DOMAIN = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
_MESSAGE_ID = re.compile(rf"<{_DOT_ATOM.pattern}@{_DOT_ATOM.pattern}>")
_LANGUAGE = re.compile(r"[A-Za-z]{1,8}(?:-[A-Za-z0-9]{1,8})*")
_TOKEN = re.compile(r"[A-Za-z0-9]{8,32}")
_Q_SAFE = frozenset(string.ascii_letters + string.digits + "!*+-/")
_Q_BYTE = tuple(
    chr(byte) if chr(byte) in _Q_SAFE else "_" if byte == 0x20 else f"={byte:02X}"
    for byte in range(256)
)
"""Each byte as RFC 2047's Q encoding writes it in a display name."""
_URL_SAFE = "!#$%&'()*+,/:;=?@[]"
_BOUNDARY_DIGITS = len(repr(sys.maxsize - 1))
_CRLF = "\r\n"


class _Header(str):
    """A header value compose encoded and folded itself, so that no policy parses it again.

    ``Message.__setitem__`` keeps an object whose ``name`` matches as it is, and every
    ``email`` policy writes such an object with its own ``fold``. The string value is the
    unfolded ASCII wire form. A policy that re-folds plain strings (compat32) therefore
    gets back the same encoded words, never decoded text.
    """

    name: str
    words: tuple[str, ...]

    def __new__(cls, name: str, words: list[str]) -> Self:
        header = super().__new__(cls, " ".join(words))
        header.name = name
        header.words = tuple(words)
        return header

    def fold(self, *, policy: Policy) -> str:
        """Words on lines of at most 78 octets; a word too long for any line gets one alone."""
        return self._folded(policy.linesep)

    @cached_property
    def wire(self) -> bytes:
        """``fold`` with CR LF, as ASCII: what compose writes (kept, as some headers are shared)."""
        return self._folded(_CRLF).encode("ascii")

    def _folded(self, linesep: str) -> str:
        head = f"{self.name}:"
        lines = [head]
        for word in self.words:
            if len(lines[-1]) + 1 + len(word) > _LINE and lines[-1] != head:
                lines.append("")
            lines[-1] += " " + word
        return linesep.join(lines) + linesep


def _policy() -> Policy:
    # 7bit: bodies become quoted-printable/base64, whatever the relay says about 8BITMIME.
    return email_policy.SMTP.clone(cte_type="7bit")


POLICY = _policy()

_AUTO_SUBMITTED = _Header("Auto-Submitted", ["auto-generated"])
_MIME_VERSION = _Header("MIME-Version", ["1.0"])
_ONE_CLICK = _Header("List-Unsubscribe-Post", ["List-Unsubscribe=One-Click"])
_PLAIN = _Header("Content-Type", ["text/plain;", 'charset="utf-8"'])
_HTML = _Header("Content-Type", ["text/html;", 'charset="utf-8"'])
_ENCODINGS = {
    cte: _Header("Content-Transfer-Encoding", [cte])
    for cte in ("7bit", "quoted-printable", "base64")
}


class ComposedMessage(EmailMessage):
    """What :func:`compose` returns: an ordinary ``EmailMessage`` tree, and its bytes.

    compose writes the message out once, as :data:`POLICY` (and ``email.policy.SMTP``, which
    writes these parts alike) would: CR LF lines, 7-bit ASCII. ``as_bytes()``, ``bytes()``
    and :attr:`wire` return those bytes while the tree is as compose left it, so the copy for
    the Sent folder and the SMTP data cost nothing more. Any other policy, ``unixfrom``, or a
    tree changed after compose goes through the ``email`` generator as for any message.
    """

    def __init__(self, policy: Policy = POLICY) -> None:
        super().__init__(policy=policy)  # EmailMessage makes new parts as type(self)(policy=...)
        self._wire = b""
        self._state: tuple[object, ...] = ()

    @property
    def wire(self) -> bytes:
        """The message as SMTP carries it (before dot-stuffing), from the tree as it is now."""
        return self.as_bytes()

    def as_bytes(self, unixfrom: bool = False, policy: Policy | None = None) -> bytes:
        if (
            not unixfrom
            and (policy is None or policy is POLICY or policy is email_policy.SMTP)
            and _state(self) == self._state
        ):
            return self._wire
        return super().as_bytes(unixfrom, policy)

    def _freeze(self, wire: bytes) -> None:
        self._wire = wire
        self._state = _state(self)


def _state(msg: Message) -> tuple[object, ...]:
    """What a change to the tree through the ``email`` API would change (cheap to compare:
    equal tuples of the same objects compare by identity)."""
    payload = msg.get_payload()
    return (
        msg.policy,
        tuple(msg.raw_items()),
        (
            tuple(_state(p) if isinstance(p, Message) else p for p in payload)
            if isinstance(payload, list)
            else payload
        ),
        msg.get_unixfrom(),
        msg.preamble,
        msg.epilogue,
        msg.get_charset(),
        msg.get_default_type(),
    )


def compose(
    rendered: RenderedMessage,
    *,
    send: Send,
    order: Order,
    settings: Settings,
    now: datetime,
    reply_token: str | None = None,
    unsubscribe_token: str | None = None,
) -> ComposedMessage:
    """A multipart/alternative message (text, then HTML) ready for SMTP.

    ``unsubscribe_token`` fills ``{token}`` of ``unsubscribe.url`` (worker/unsubscribe.py);
    without one, such a URL is left out and the mailto form stands alone.

    The Message-ID is the one the claim gave the row (:meth:`Signer.message_id`): signed,
    so a report quoting it proves it is about this send. The result is an ``EmailMessage``
    whose bytes are already written: see :class:`ComposedMessage`.
    """
    if now.tzinfo is None:
        raise ValueError("compose needs a tz-aware 'now'")
    if not send.message_id:
        raise ValueError("compose needs a claimed send: it has no Message-ID yet")
    message_id = send.message_id
    if not _MESSAGE_ID.fullmatch(message_id) or "=?" in message_id:
        raise ValueError(f"compose needs a Message-ID like <id@domain>, not {message_id!r}")
    # Built without the header registry: every value is a _Header, encoded and folded here.
    headers = [
        _Header("Message-ID", [message_id]),
        _Header("Date", format_datetime(now).split()),
        _configured_mailbox("From", settings.sender, "from"),
    ]
    if settings.reply_to or reply_token:
        headers.append(_reply_to(settings, reply_token, order))
    headers += [
        _recipient(order),
        _unstructured("Subject", rendered.subject),
        _AUTO_SUBMITTED,
        *_unsubscribe(settings, message_id, unsubscribe_token),
        _unstructured("X-Worker-Order", order.order_id),
        _constant_text("X-Worker-Campaign", send.campaign),
        _constant_text("X-Worker-Step", send.step),
        _MIME_VERSION,
    ]
    if not rendered.html:  # a text-only template (Amazon allows nothing else)
        return _text_only(rendered, headers)
    plain = _part([_PLAIN], rendered.text)
    # The HTML part carries a MIME-Version of its own, as EmailMessage.add_alternative wrote.
    html = _part([_HTML], rendered.html, _MIME_VERSION)
    boundary = _boundary(plain, html)
    headers.append(_Header("Content-Type", ["multipart/alternative;", f'boundary="{boundary}"']))
    # The locale is advisory: a value that is no language tag leaves the header out.
    if _LANGUAGE.fullmatch(rendered.locale):
        headers.append(_Header("Content-Language", [rendered.locale]))
    msg = ComposedMessage()
    for header in headers:
        msg.set_raw(header.name, header)
    msg.set_payload([plain[0], html[0]])
    delimiter = f"\r\n--{boundary}\r\n".encode("ascii")
    msg._freeze(
        b"".join(
            [
                *(header.wire for header in headers),
                b"\r\n--",
                delimiter[4:],
                plain[1],
                delimiter,
                html[1],
                delimiter[:-2],
                b"--\r\n",
            ]
        )
    )
    return msg


def _text_only(rendered: RenderedMessage, headers: list[_Header]) -> ComposedMessage:
    """A single text/plain body: what a template without an ``html`` block is sent as."""
    cte, body = _encode_text(rendered.text)
    headers = [*headers, _PLAIN, _ENCODINGS[cte]]
    if _LANGUAGE.fullmatch(rendered.locale):
        headers.append(_Header("Content-Language", [rendered.locale]))
    msg = ComposedMessage()
    for header in headers:
        msg.set_raw(header.name, header)
    msg.set_payload(body)
    wire = [*(header.wire for header in headers), b"\r\n", body.replace("\n", _CRLF).encode()]
    msg._freeze(b"".join(wire))
    return msg


def _part(headers: list[_Header], text: str, *after: _Header) -> tuple[EmailMessage, bytes, str]:
    """One text part in UTF-8: the part, its bytes, and its encoded body (for the boundary)."""
    cte, body = _encode_text(text)
    all_headers = [*headers, _ENCODINGS[cte], *after]
    part = EmailMessage(policy=POLICY)
    for header in all_headers:
        part.set_raw(header.name, header)
    part.set_payload(body)
    # The generator writes each "\n" of the body as CR LF; the body holds no "\r".
    wire = b"".join(
        [*(h.wire for h in all_headers), b"\r\n", body.replace("\n", _CRLF).encode("ascii")]
    )
    return part, wire, body


def _encode_text(text: str) -> tuple[str, str]:
    """The transfer encoding and the encoded body, chosen as ``EmailMessage.set_content``
    chooses them for UTF-8 text under a 7-bit policy: 7bit for ASCII lines of at most 78
    octets, else the shorter of quoted-printable and base64 over the first ten lines.

    Quoted-printable is binascii's: lines of at most 76 octets (RFC 2045), trailing
    whitespace and a line holding only ``.`` encoded.
    """
    lines = text.encode("utf-8").splitlines()
    normal = b"\n".join(lines) + b"\n"
    if max((len(line) for line in lines), default=0) <= _LINE and normal.isascii():
        return "7bit", normal.decode("ascii")
    head = normal if len(lines) <= _SNIFF_LINES else b"\n".join(lines[:_SNIFF_LINES]) + b"\n"
    quoted = binascii.b2a_qp(head, istext=True)
    # As the email package compares them: base64 of the CR LF lines, quoted-printable of LF ones.
    if len(quoted) > len(binascii.b2a_base64(head.replace(b"\n", b"\r\n"))):
        embedded = b"\r\n".join(lines) + b"\r\n"
        step = _LINE // 4 * 3
        encoded = [
            binascii.b2a_base64(embedded[at : at + step]).decode("ascii")
            for at in range(0, len(embedded), step)
        ]
        return "base64", "".join(encoded)
    if head is not normal:
        quoted = binascii.b2a_qp(normal, istext=True)
    return "quoted-printable", quoted.decode("ascii")


def _boundary(*parts: tuple[EmailMessage, bytes, str]) -> str:
    """A boundary as the ``email`` generator makes them, found in no part's body."""
    while True:
        token = secrets.randbelow(sys.maxsize)
        boundary = f"{'=' * 15}{token:0{_BOUNDARY_DIGITS}d}=="
        if not any(boundary in body for _, _, body in parts):
            return boundary


def _text(value: str) -> str:
    """What a header may show of ``value``: one line, no bidi controls, no ``=?``, 255 chars."""
    text = _SURROGATE.sub("\ufffd", _BIDI.sub("", value))
    text = " ".join(_CONTROL.sub(" ", text).split()).replace("=?", "= ?")
    if len(text) > _TEXT_MAX:
        text = text[: _TEXT_MAX - 1].rstrip() + "\N{HORIZONTAL ELLIPSIS}"
    return text


def _encoded_word(text: str) -> str:
    """One UTF-8 encoded word, Q or B, whichever is shorter.

    Q keeps only the characters RFC 2047 allows in a display name, so the same word is
    safe in any header.
    """
    data = text.encode()
    q = "".join([_Q_BYTE[byte] for byte in data])
    if len(q) <= _base64_length(len(data)):
        return f"=?utf-8?q?{q}?="
    return f"=?utf-8?b?{base64.b64encode(data).decode('ascii')}?="


def _base64_length(octets: int) -> int:
    return (octets + 2) // 3 * 4


def _q_length(char: str) -> int:
    """Octets the Q encoding writes for ``char`` (as in :func:`_encoded_word`)."""
    if char in _Q_SAFE or char == " ":
        return 1
    return 3 * len(char.encode())


def _encoded_words(text: str, room: int) -> list[str]:
    """Encoded words of whole characters, each fitting ``room`` octets (and RFC 2047's 75).

    A word ends after a space when one is in its second half: decoders join adjacent encoded
    words, but Python's own display-name parser puts a space between them, which then falls
    beside a space rather than inside a word. (Each word is as long as it can be: its length
    is counted as characters are added, ``len(_encoded_word(prefix))`` without building it.)
    """
    limit = min(room, _ENCODED_WORD) - _ENCODED_WORD_FRAME
    words: list[str] = []
    widths = [_q_length(char) for char in text]  # octets in Q; a char's UTF-8 octets: 1 or q/3
    start = 0
    while start < len(text):
        end = start + 1
        q = widths[start]
        octets = 1 if q == 1 else q // 3
        while end < len(text):
            width = widths[end]
            more_q, more_octets = q + width, octets + (1 if width == 1 else width // 3)
            if min(more_q, _base64_length(more_octets)) > limit:
                break
            end, q, octets = end + 1, more_q, more_octets
        if end < len(text) and (space := text.rfind(" ", start, end)) - start >= (end - start) // 2:
            end = space + 1
        words.append(_encoded_word(text[start:end]))
        start = end
    return words


def _room(name: str) -> int:
    """The longest word that fits after ``Name: `` on the first line."""
    return _LINE - len(name) - 2


@lru_cache(maxsize=256)
def _constant_text(name: str, value: str) -> _Header:
    """:func:`_unstructured` for values few and repeated (campaign and step names)."""
    return _unstructured(name, value)


def _unstructured(name: str, value: str) -> _Header:
    text = _text(value)
    words = text.split()
    if _PRINTABLE.fullmatch(text) and all(len(word) <= _room(name) for word in words):
        return _Header(name, words)
    return _Header(name, _encoded_words(text, _room(name)))


def _phrase(name: str, display_name: str) -> list[str]:
    """A display name as atoms, one quoted string, or encoded words: never an address."""
    text = _text(display_name)
    room = _room(name)
    if not text:
        return []
    if _ATOMS.fullmatch(text) and all(len(word) <= room for word in text.split()):
        return text.split()
    if _PRINTABLE.fullmatch(text):
        quoted = '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if len(quoted) <= room:
            return [quoted]
    return _encoded_words(text, room)


def _mailbox(name: str, display_name: str, addr_spec: str) -> _Header:
    phrase = _phrase(name, display_name)
    return _Header(name, [*phrase, f"<{addr_spec}>"] if phrase else [addr_spec])


def _addr_spec(address: str) -> str | None:
    """``local@domain`` in ASCII that any header can carry, or None."""
    local, at, domain = address.rpartition("@")
    if not at or not _DOT_ATOM.fullmatch(local) or "=?" in local:
        return None
    try:
        ascii_domain = domain.encode("idna").decode("ascii")
    except UnicodeError:
        return None
    return f"{local}@{ascii_domain}" if _DOMAIN.fullmatch(ascii_domain) else None


def _configured(address: str, where: str) -> str:
    """An address from the settings; the start-up check lets through some no header can carry."""
    spec = _addr_spec(address)
    if spec is None:
        raise ConfigError(f"{address!r} is not an address like service@shop.example", where=where)
    return spec


def _operator_name(display_name: str) -> str:
    """A configured display name is header syntax: its encoded words are decoded, then cleaned."""
    try:
        return str(make_header(decode_header(display_name)))
    except (HeaderParseError, LookupError, UnicodeError):
        return display_name


@lru_cache(maxsize=64)
def _configured_mailbox(name: str, value: str, where: str) -> _Header:
    display_name, address = parseaddr(value)
    return _mailbox(name, _operator_name(display_name), _configured(address, where))


def _reply_to(settings: Settings, token: str | None, order: Order) -> _Header:
    """``reply+TOKEN@...`` threads the buyer's answer to the order even if headers are lost."""
    configured = settings.reply_to or settings.sender
    if token is None:
        return _configured_mailbox("Reply-To", configured, "reply_to")
    if not _TOKEN.fullmatch(token):
        raise TemplateError(
            f"reply token {token!r} is not 8 to 32 letters and digits",
            where=f"order {order.order_id}",
        )
    phrase, local, domain = _reply_parts(configured)
    address = f"{local}+{token}@{domain}"
    return _Header("Reply-To", [*phrase, f"<{address}>"] if phrase else [address])


@lru_cache(maxsize=64)
def _reply_parts(configured: str) -> tuple[tuple[str, ...], str, str]:
    """The configured reply address's display name (as words), local part before any
    ``+``, and domain."""
    display_name, address = parseaddr(configured)
    local, _, domain = _configured(address, "reply_to").rpartition("@")
    return tuple(_phrase("Reply-To", _operator_name(display_name))), local.split("+")[0], domain


def _recipient(order: Order) -> _Header:
    """The buyer; an address a header cannot carry is the order's problem."""
    email = order.buyer_email.strip()
    local, at, domain = email.rpartition("@")
    spec = None
    if not at or not local or not domain or _CONTROL.search(email) or " " in email:
        problem = "is not an address like buyer@example.com"
    elif not local.isascii():
        problem = "has a non-ASCII local part, which needs SMTPUTF8 (not supported)"
    else:
        spec = _addr_spec(email)
        problem = "is not a valid address (a dot-atom before the @, a domain after it)"
    if spec is None:
        raise TemplateError(f"buyer address {email!r} {problem}", where=f"order {order.order_id}")
    return _mailbox("To", order.buyer_name, spec)


def _unsubscribe(
    settings: Settings, message_id: str, token: str | None = None
) -> tuple[_Header, ...]:
    """RFC 2369 mailto, plus the RFC 8058 one-click URL when it is https.

    Each URL is one word, never RFC 2047-encoded: no mail client reads an encoded word as a
    link. Characters a URL may not hold are percent-encoded, and so is the ``?`` of ``=?``.
    A URL holding ``{token}`` is left out when no token was given (no key to sign it).
    """
    # settings.reply_address, read from the same settings within the kept function.
    mailto = settings.unsubscribe.mailto or ""
    replies = "" if mailto else settings.reply_to or settings.sender
    url = settings.unsubscribe.url
    if url and "{token}" in url:
        if token is None:
            url = None
        else:
            url = url.replace("{token}", quote(token, safe=""))
            return _unsubscribe_headers(mailto or parseaddr(replies)[1], url, message_id)
    if url and "{message_id}" in url:
        return _unsubscribe_headers(mailto or parseaddr(replies)[1], url, message_id)
    return _same_unsubscribe_headers(mailto, replies, url)


@lru_cache(maxsize=64)
def _same_unsubscribe_headers(mailto: str, replies: str, url: str | None) -> tuple[_Header, ...]:
    """The headers for a URL without ``{message_id}``: the same for every message, kept."""
    return _unsubscribe_headers(mailto or parseaddr(replies)[1], url, None)


def _unsubscribe_headers(
    mailto: str, url: str | None, message_id: str | None
) -> tuple[_Header, ...]:
    targets = [f"<mailto:{_configured(mailto, 'unsubscribe')}?subject=unsubscribe>"]
    if url:
        if message_id is not None:
            url = url.replace("{message_id}", quote(message_id.strip("<>"), safe=""))
        url = quote(_CONTROL.sub("", url), safe=_URL_SAFE).replace("=?", "=%3F")
        if len(url) > _URL_MAX:
            raise ConfigError(
                f"the URL is {len(url)} characters, more than a header line can carry",
                where="unsubscribe.url",
            )
        targets.append(f"<{url}>")
    header = _Header("List-Unsubscribe", [*(f"{target}," for target in targets[:-1]), targets[-1]])
    if url and url.lower().startswith("https://"):
        return (header, _ONE_CLICK)
    return (header,)
