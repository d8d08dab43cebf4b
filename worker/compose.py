"""Build the MIME message for one send row from a rendered template.

Buyer names, order numbers and subjects are untrusted: they reach headers only after line
breaks and control characters are turned into spaces, and addresses only through
``email.headerregistry.Address``, so no feed row can add a header such as ``Bcc``.
"""

from __future__ import annotations

import re
import string
from datetime import datetime
from email import policy as email_policy
from email.errors import HeaderParseError
from email.headerregistry import Address, BaseHeader, HeaderRegistry, UniqueUnstructuredHeader
from email.message import EmailMessage
from email.policy import Policy
from email.utils import format_datetime, parseaddr
from urllib.parse import quote

from worker.config import Settings
from worker.domain import Order, Send
from worker.errors import TemplateError
from worker.render import RenderedMessage

_CONTROL = re.compile(r"[\x00-\x1f\x7f\x85\u2028\u2029]")


# typeshed types max_count as Literal[1] in one base and int | None in the other; both are 1.
class _UrlListHeader(UniqueUnstructuredHeader, BaseHeader):  # type: ignore[misc]
    """RFC 2369 ``<url>, <url>``: folded between URLs, never RFC 2047-encoded.

    The default folding encodes a long URL as ``=?utf-8?q?...?=``, which no mail client
    reads as a link; line length is not worth a broken unsubscribe button.
    """

    def fold(self, *, policy: Policy) -> str:
        return f"{self.name}: " + f",{policy.linesep} ".join(str(self).split(", ")) + policy.linesep


def _policy() -> Policy:
    headers = HeaderRegistry()
    headers.map_to_type("list-unsubscribe", _UrlListHeader)
    # 7bit: bodies become quoted-printable/base64, whatever the relay says about 8BITMIME.
    return email_policy.SMTP.clone(cte_type="7bit", header_factory=headers)


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
    msg = EmailMessage(policy=POLICY)
    msg["Message-ID"] = message_id
    msg["Date"] = format_datetime(now)
    msg["From"] = settings.sender
    if settings.reply_to or reply_token:
        msg["Reply-To"] = _reply_to(settings, reply_token)
    msg["To"] = _recipient(order)
    msg["Subject"] = _header_text(rendered.subject)
    msg["Auto-Submitted"] = "auto-generated"
    _add_unsubscribe(msg, settings, message_id)
    msg["X-Worker-Order"] = _header_text(order.order_id)
    msg["X-Worker-Campaign"] = _header_text(send.campaign)
    msg["X-Worker-Step"] = _header_text(send.step)
    msg.set_content(rendered.text, subtype="plain", charset="utf-8")
    msg.add_alternative(rendered.html, subtype="html", charset="utf-8")
    # After the parts: making the message multipart moves Content-* headers into the first part.
    msg["Content-Language"] = _header_text(rendered.locale)
    return msg


def _reply_to(settings: Settings, token: str | None) -> str | Address:
    """``reply+TOKEN@...`` threads the buyer's answer to the order even if headers are lost."""
    if token is None:
        return settings.reply_to or settings.sender
    name, address = parseaddr(settings.reply_to or settings.sender)
    local, _, domain = address.rpartition("@")
    return Address(name, local.split("+")[0] + "+" + token, domain)


def _header_text(value: str) -> str:
    """Line breaks and control characters become spaces; runs of spaces become one."""
    return " ".join(_CONTROL.sub(" ", value).split())


def _recipient(order: Order) -> Address:
    """The buyer as an Address; an address a header cannot carry is the order's problem."""
    email = order.buyer_email.strip()
    local, at, domain = email.rpartition("@")
    problem = None
    if not at or not local or not domain or _CONTROL.search(email) or " " in email:
        problem = "is not an address like buyer@example.com"
    elif not local.isascii():
        problem = "has a non-ASCII local part, which needs SMTPUTF8 (not supported)"
    if problem is None:
        try:
            ascii_domain = domain.encode("idna").decode("ascii")
            return Address(_header_text(order.buyer_name), addr_spec=f"{local}@{ascii_domain}")
        except (UnicodeError, ValueError, HeaderParseError, IndexError) as exc:
            problem = f"is not a valid address ({exc})"
    raise TemplateError(f"buyer address {email!r} {problem}", where=f"order {order.order_id}")


def _add_unsubscribe(msg: EmailMessage, settings: Settings, message_id: str) -> None:
    """RFC 2369 mailto, plus the RFC 8058 one-click URL when it is https."""
    mailto = settings.unsubscribe.mailto or settings.reply_address
    targets = [f"<mailto:{mailto}?subject=unsubscribe>"]
    url = settings.unsubscribe.url
    if url:
        url = url.replace("{message_id}", quote(message_id.strip("<>"), safe=""))
        targets.append(f"<{quote(_header_text(url), safe=string.punctuation)}>")
    msg["List-Unsubscribe"] = ", ".join(targets)
    if url and url.lower().startswith("https://"):
        msg["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
