"""Signed return paths and Message-IDs: a report proves it is about one of our sends.

A bounce or a spam complaint suppresses a buyer for good, so it must not be something a
stranger can write. Each send goes out with the envelope sender ``local+bSEND-MAC@domain``
(VERP) and a Message-ID ``<wSEND.MAC@domain>``, both carrying an HMAC of the send's
identity under a key the worker keeps. A report that carries either can be tied to the send
it is about; one that carries neither suppresses no one.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import secrets
from dataclasses import dataclass
from email.utils import parseaddr
from pathlib import Path

from worker.config import Settings
from worker.domain import Send
from worker.errors import ConfigError

_TOKEN = re.compile(r"^[^@+\s]+\+b(\d{1,18})-([a-z2-7]{16})@", re.IGNORECASE)
_MAC_CHARS = 16
_MESSAGE_ID_MAC_CHARS = 20


@dataclass(frozen=True, slots=True)
class Signer:
    """Makes and checks the tokens; the key never leaves this object."""

    key: bytes

    def __repr__(self) -> str:
        return "Signer(key=<hidden>)"

    @classmethod
    def ephemeral(cls) -> Signer:
        """A key for one process: for tests and tools that verify nothing across restarts."""
        return cls(secrets.token_bytes(32))

    def _mac(self, purpose: str, text: str, chars: int) -> str:
        digest = hmac.new(self.key, f"{purpose}|{text}".encode(), hashlib.sha256).digest()
        return base64.b32encode(digest).decode("ascii").lower()[:chars]

    def return_path(self, send_id: int, base_address: str) -> str:
        local, _, domain = base_address.rpartition("@")
        return f"{local}+b{send_id}-{self._mac('return-path', str(send_id), _MAC_CHARS)}@{domain}"

    def message_id(self, send: Send, domain: str) -> str:
        """Stable for the row (a retry reuses it), unguessable without the key."""
        key = f"{send.id}|{send.order_id}|{send.campaign}|{send.step}"
        return f"<w{send.id}.{self._mac('message-id', key, _MESSAGE_ID_MAC_CHARS)}@{domain}>"

    def sends_in(self, addresses: tuple[str, ...]) -> tuple[int, ...]:
        """Send ids whose valid return-path token one of ``addresses`` carries."""
        found: dict[int, None] = {}
        for address in addresses:
            match = _TOKEN.match(address)
            if match is None:
                continue
            send_id, mac = int(match.group(1)), match.group(2).lower()
            expected = self._mac("return-path", str(send_id), _MAC_CHARS)
            if hmac.compare_digest(mac, expected):
                found[send_id] = None
        return tuple(found)


def return_path_base(settings: Settings) -> str:
    """Where bounces go: ``bounces.address``, else the reply address the worker reads."""
    return settings.bounces.address or parseaddr(settings.reply_to or settings.sender)[1]


def load_signer(settings: Settings) -> Signer:
    """The key from WORKER_BOUNCES_SECRET, else from ``bounces.secret_file`` (made if absent).

    A lost key only means that reports about earlier sends suppress no one; a leaked key lets
    a stranger write reports that do, so the file is created readable by its owner alone.
    """
    if settings.bounces.secret:
        return Signer(settings.bounces.secret.encode())
    path = settings.bounces.secret_file
    try:
        return Signer(_read_or_create(path))
    except OSError as exc:
        raise ConfigError(
            f"cannot read or create the return-path key ({exc.strerror}); "
            "set WORKER_BOUNCES_SECRET or bounces.secret_file",
            where=str(path),
        ) from exc


def _read_or_create(path: Path) -> bytes:
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process made it first: read theirs
            pass
        else:
            with os.fdopen(fd, "w") as out:
                out.write(secrets.token_hex(32) + "\n")
    key = path.read_text(encoding="ascii").strip()
    if len(key) < 32:
        raise OSError(0, "the key file holds fewer than 32 characters")
    return key.encode()
