"""One-click unsubscribe tokens (RFC 8058): which order a link is for, signed.

A token is base64url of a version byte, an HMAC-SHA256 and the order id. The HMAC covers
the order id AND the buyer's address, so the token carries no address (a link in a proxy's
log names no one), yet proves it was made for that order's buyer: the endpoint looks the
order up, takes its address from the store and checks the HMAC against it. Changing the
order id (to reach another buyer) changes the address the HMAC must cover; the secret is
needed to make a new one. Comparison is constant-time (:func:`hmac.compare_digest`).

The key is read from the environment by the caller (:func:`secret_from`) and never written
anywhere: not in a log, an error, the database or a message.

Pure: bytes in, bytes out.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass, field

VERSION = 1
MAC_BYTES = 32
MAX_ORDER_ID_BYTES = 256
"""The store's 64-character order id in UTF-8, at most: a longer token is refused unread."""
MAX_TOKEN_CHARS = (1 + MAC_BYTES + MAX_ORDER_ID_BYTES) * 4 // 3 + 4
MIN_SECRET_BYTES = 16
_DOMAIN = b"worker one-click unsubscribe v1\x00"
"""Keeps these MACs apart from any other use of the same key."""
_TOKEN_ALPHABET = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


class SecretMissing(Exception):
    """The variable named by ``unsubscribe.secret_env`` is unset or too short (never shown)."""


def secret_from(environ: Mapping[str, str], name: str) -> bytes:
    """The key from the variable ``name``; the message names the variable, never its value."""
    value = environ.get(name, "")
    if not value:
        raise SecretMissing(f"the environment variable {name} is not set")
    data = value.encode("utf-8")
    if len(data) < MIN_SECRET_BYTES:
        raise SecretMissing(
            f"the environment variable {name} holds fewer than {MIN_SECRET_BYTES} bytes; "
            "use a long random value (e.g. `openssl rand -hex 32`)"
        )
    return data


@dataclass(frozen=True, slots=True)
class OneClick:
    """Signs and checks tokens with one key."""

    secret: bytes = field(repr=False)

    def token(self, order_id: str, address: str) -> str:
        """The token for ``order_id`` whose buyer is ``address``."""
        order = order_id.encode("utf-8")
        if not order or len(order) > MAX_ORDER_ID_BYTES:
            raise ValueError(f"an order id of 1 to {MAX_ORDER_ID_BYTES} bytes is needed")
        raw = bytes([VERSION]) + self._mac(order, address) + order
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")

    def valid(self, token: str, address: str) -> bool:
        """``token`` was made by this key for the order it names and for ``address``."""
        read = read_token(token)
        if read is None:
            return False
        order, mac = read
        return hmac.compare_digest(mac, self._mac(order.encode("utf-8"), address))

    def _mac(self, order: bytes, address: str) -> bytes:
        who = address.strip().lower().encode("utf-8")
        message = _DOMAIN + len(order).to_bytes(2, "big") + order + who
        return hmac.new(self.secret, message, hashlib.sha256).digest()


def read_token(token: str) -> tuple[str, bytes] | None:
    """The order id a token names and its MAC, unchecked; None for anything malformed."""
    if not 0 < len(token) <= MAX_TOKEN_CHARS or not set(token) <= _TOKEN_ALPHABET:
        return None
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (binascii.Error, ValueError):
        return None
    if base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii") != token:
        return None  # one token per payload: no spare bits to alter
    if len(raw) < 2 + MAC_BYTES or raw[0] != VERSION:
        return None
    mac, order = raw[1 : 1 + MAC_BYTES], raw[1 + MAC_BYTES :]
    if len(order) > MAX_ORDER_ID_BYTES:
        return None
    try:
        order_id = order.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if not order_id.isprintable():
        return None
    return order_id, mac
