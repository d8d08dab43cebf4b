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
"""

from __future__ import annotations

import base64
import re
import string
from datetime import datetime
from email import policy as email_policy
from email.errors import HeaderParseError
from email.header import decode_header, make_header
from email.message import EmailMessage
from email.policy import Policy
from email.utils import format_datetime, parseaddr
from typing import Self
from urllib.parse import quote

from worker.config import Settings
from worker.domain import Order, Send
from worker.errors import ConfigError, TemplateError
from worker.render import RenderedMessage

_LINE = 78
_ENCODED_WORD = 75
_TEXT_MAX = 255
_URL_MAX = 900
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
_URL_SAFE = "!#$%&'()*+,/:;=?@[]"


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
        head = f"{self.name}:"
        lines = [head]
        for word in self.words:
            if len(lines[-1]) + 1 + len(word) > _LINE and lines[-1] != head:
                lines.append("")
            lines[-1] += " " + word
        return policy.linesep.join(lines) + policy.linesep


def _policy() -> Policy:
    # 7bit: bodies become quoted-printable/base64, whatever the relay says about 8BITMIME.
    return email_policy.SMTP.clone(cte_type="7bit")


POLICY = _policy()


def compose(
    rendered: RenderedMessage,
    *,
    send: Send,
    order: Order,
    settings: Settings,
    now: datetime,
    reply_token: str | None = None,
) -> EmailMessage:
    """A multipart/alternative message (text, then HTML) ready for SMTP.

    The Message-ID is the one the claim gave the row (:meth:`Signer.message_id`): signed,
    so a report quoting it proves it is about this send.
    """
    if now.tzinfo is None:
        raise ValueError("compose needs a tz-aware 'now'")
    if not send.message_id:
        raise ValueError("compose needs a claimed send: it has no Message-ID yet")
    message_id = send.message_id
    if not _MESSAGE_ID.fullmatch(message_id) or "=?" in message_id:
        raise ValueError(f"compose needs a Message-ID like <id@domain>, not {message_id!r}")
    msg = EmailMessage(policy=POLICY)
    msg["Message-ID"] = _Header("Message-ID", [message_id])
    msg["Date"] = format_datetime(now)
    msg["From"] = _configured_mailbox("From", settings.sender, "from")
    if settings.reply_to or reply_token:
        msg["Reply-To"] = _reply_to(settings, reply_token, order)
    msg["To"] = _recipient(order)
    msg["Subject"] = _unstructured("Subject", rendered.subject)
    msg["Auto-Submitted"] = "auto-generated"
    _add_unsubscribe(msg, settings, message_id)
    msg["X-Worker-Order"] = _unstructured("X-Worker-Order", order.order_id)
    msg["X-Worker-Campaign"] = _unstructured("X-Worker-Campaign", send.campaign)
    msg["X-Worker-Step"] = _unstructured("X-Worker-Step", send.step)
    msg.set_content(rendered.text, subtype="plain", charset="utf-8")
    msg.add_alternative(rendered.html, subtype="html", charset="utf-8")
    # After the parts: making the message multipart moves Content-* headers into the first part.
    # The locale is advisory: a value that is no language tag leaves the header out.
    if _LANGUAGE.fullmatch(rendered.locale):
        msg["Content-Language"] = _Header("Content-Language", [rendered.locale])
    return msg


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
    q = "".join(
        chr(byte) if chr(byte) in _Q_SAFE else "_" if byte == 0x20 else f"={byte:02X}"
        for byte in data
    )
    b = base64.b64encode(data).decode("ascii")
    return f"=?utf-8?q?{q}?=" if len(q) <= len(b) else f"=?utf-8?b?{b}?="


def _encoded_words(text: str, room: int) -> list[str]:
    """Encoded words of whole characters, each fitting ``room`` octets (and RFC 2047's 75).

    A word ends after a space when one is in its second half: decoders join adjacent encoded
    words, but Python's own display-name parser puts a space between them, which then falls
    beside a space rather than inside a word.
    """
    limit = min(room, _ENCODED_WORD)
    words: list[str] = []
    while text:
        end = 1
        while end < len(text) and len(_encoded_word(text[: end + 1])) <= limit:
            end += 1
        if end < len(text) and (space := text.rfind(" ", 0, end)) >= end // 2:
            end = space + 1
        words.append(_encoded_word(text[:end]))
        text = text[end:]
    return words


def _room(name: str) -> int:
    """The longest word that fits after ``Name: `` on the first line."""
    return _LINE - len(name) - 2


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
    display_name, address = parseaddr(configured)
    local, _, domain = _configured(address, "reply_to").rpartition("@")
    return _mailbox(
        "Reply-To", _operator_name(display_name), f"{local.split('+')[0]}+{token}@{domain}"
    )


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


def _add_unsubscribe(msg: EmailMessage, settings: Settings, message_id: str) -> None:
    """RFC 2369 mailto, plus the RFC 8058 one-click URL when it is https.

    Each URL is one word, never RFC 2047-encoded: no mail client reads an encoded word as a
    link. Characters a URL may not hold are percent-encoded, and so is the ``?`` of ``=?``.
    """
    mailto = _configured(settings.unsubscribe.mailto or settings.reply_address, "unsubscribe")
    targets = [f"<mailto:{mailto}?subject=unsubscribe>"]
    url = settings.unsubscribe.url
    if url:
        url = url.replace("{message_id}", quote(message_id.strip("<>"), safe=""))
        url = quote(_CONTROL.sub("", url), safe=_URL_SAFE).replace("=?", "=%3F")
        if len(url) > _URL_MAX:
            raise ConfigError(
                f"the URL is {len(url)} characters, more than a header line can carry",
                where="unsubscribe.url",
            )
        targets.append(f"<{url}>")
    msg["List-Unsubscribe"] = _Header(
        "List-Unsubscribe", [*(f"{target}," for target in targets[:-1]), targets[-1]]
    )
    if url and url.lower().startswith("https://"):
        msg["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
