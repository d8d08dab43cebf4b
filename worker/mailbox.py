"""The IMAP edge: the only module that talks to the seller's mailbox.

imapclient is blocking, so every operation runs in a worker thread, one at a time per
connection (an asyncio lock), with a socket timeout so a dead network cannot hang the daemon.
Every failure leaves as :class:`MailboxError` saying where and what an operator can do.
Reconnecting and backing off is the caller's policy: :meth:`Mailbox.connect` may be called
again after any failure or :meth:`Mailbox.close`.
"""

from __future__ import annotations

import asyncio
import imaplib
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from imapclient import IMAPClient
from imapclient.exceptions import LoginError
from imapclient.tls import IMAP4_TLS

from worker.config import ImapSettings, TlsMode
from worker.errors import FolderMissing, MailboxError

T = TypeVar("T")

IDLE_SLICE_S = 0.5
"""How long one IDLE wait blocks before looking at the stop flag: bounds cancel latency."""

_NEWS = (b"EXISTS", b"RECENT")


KEPT_OF_LARGE = 1024 * 1024
"""Of a message past ``max_message_bytes``, at most this much of its header and as much of
its text is fetched (and never more than half the limit each)."""

BATCH_LIMITS = 2
"""A batch stops growing once it holds this many times ``max_message_bytes``."""


@dataclass(frozen=True, slots=True)
class FetchedMessage:
    uid: int
    raw: bytes
    internal_date: datetime
    """When the server received the message, tz-aware UTC."""
    size: int
    """The whole message's size (RFC822.SIZE), even when ``raw`` is only its start."""
    truncated: bool = False
    """``raw`` is the header and the start of the text of a message past the limit."""


@dataclass(frozen=True, slots=True)
class FolderStatus:
    folder: str
    uidvalidity: int
    uidnext: int | None
    exists: int


class Mailbox:
    """One IMAP connection to one mailbox."""

    def __init__(self, settings: ImapSettings, *, max_message_bytes: int | None = None) -> None:
        """``max_message_bytes``: a bigger message is fetched in part (its header and the
        start of its text), so no message, whatever its size, can exhaust memory."""
        if not settings.host:
            raise MailboxError("no imap.host configured", where="imap")
        self.settings = settings
        self.max_message_bytes = max_message_bytes
        self._host: str = settings.host
        self._client: Any = None
        self._folder: str | None = None
        self._idle = False
        self._lock = asyncio.Lock()

    @property
    def where(self) -> str:
        """Where errors happen: ``imap HOST:PORT`` and the selected folder, if any."""
        return self._where(self._folder)

    def _where(self, folder: str | None) -> str:
        place = f"imap {self._host}:{self.settings.effective_port}"
        return f"{place} {folder}" if folder else place

    @property
    def supports_idle(self) -> bool:
        """Whether :meth:`wait_for_news` can use IDLE (offered by the server and allowed)."""
        return self._client is not None and self._idle

    async def connect(self) -> None:
        """Open, secure and log in; a previous connection is dropped first."""
        await self.close()
        self._client = await self._call(self._open)

    async def close(self) -> None:
        """Log out; never raises, the connection is gone either way."""
        client, self._client, self._folder = self._client, None, None
        if client is None:
            return
        async with self._lock:
            await asyncio.to_thread(_logout, client)

    async def select(self, folder: str) -> FolderStatus:
        """Select read-only: reading mail must never change the seller's flags."""
        self._folder = None  # a failed SELECT leaves none selected
        status = await self._call(lambda: self._select(folder), where=self._where(folder))
        self._folder = folder
        return status

    async def fetch_after(self, last_uid: int, limit: int) -> list[FetchedMessage]:
        """Messages with UID > ``last_uid`` in the selected folder, oldest first, at most ``limit``.

        Sizes are asked first: a message past ``max_message_bytes`` comes as its header and
        the start of its text, marked ``truncated``; and the batch ends early, after at least
        one message, once it holds ``BATCH_LIMITS`` times that limit. BODY.PEEK leaves
        \\Seen alone. ``UID n:*`` also matches the highest UID when it is below n, hence the
        filter.
        """
        return await self._call(lambda: self._fetch_after(last_uid, limit))

    async def wait_for_news(self, max_wait_s: float) -> bool:
        """Wait up to ``max_wait_s`` for the server to announce new mail; True if it did.

        Uses IDLE when offered (renewed every ``idle_renew_s``), else just sleeps. On
        cancellation the IDLE is ended (DONE sent) within about a second before the
        cancellation goes on, so the connection stays usable.
        """
        self._connected()
        if not self.supports_idle:
            await asyncio.sleep(max_wait_s)
            return False
        stop = threading.Event()
        return await self._call(lambda: self._idle_until(max_wait_s, stop), stop)

    async def append(self, folder: str, raw: bytes, when: datetime) -> None:
        """Store a copy of a sent message, marked read; the folder is created when missing."""
        if when.tzinfo is None:
            raise ValueError("append needs a tz-aware datetime")
        await self._call(lambda: self._append(folder, raw, when), where=self._where(folder))

    # -- one operation at a time, off the event loop ------------------------------------------

    async def _call(
        self, work: Callable[[], T], stop: threading.Event | None = None, where: str | None = None
    ) -> T:
        """Run ``work`` in a thread under the lock; a cancelled caller waits for it to end."""
        async with self._lock:
            task = asyncio.ensure_future(asyncio.to_thread(self._guarded, work, where))
            try:
                return await asyncio.shield(task)
            except asyncio.CancelledError:
                if stop is not None:
                    stop.set()
                await asyncio.wait([task])
                raise

    def _guarded(self, work: Callable[[], T], where: str | None) -> T:
        with self._translated(where or self.where):
            return work()

    @contextmanager
    def _translated(self, where: str) -> Iterator[None]:
        try:
            yield
        except MailboxError:
            raise
        except LoginError:
            raise MailboxError(
                f"login refused for {self.settings.username}; "
                "check WORKER_IMAP_USERNAME/WORKER_IMAP_PASSWORD",
                where=where,
            ) from None
        except (imaplib.IMAP4.error, OSError, EOFError) as error:
            if isinstance(error, imaplib.IMAP4.abort | OSError | EOFError):
                self._drop()
            raise MailboxError(self._explain(error), where=where) from error

    def _explain(self, error: BaseException) -> str:
        timeout = self.settings.timeout_s
        match error:
            case ssl.SSLCertVerificationError():
                return (
                    f"the server's certificate is not trusted ({error.verify_message}); "
                    "set imap.ca_file to its CA, or fix the certificate"
                )
            case ssl.SSLError():
                return f"TLS failed ({error}); does imap.tls match the port (993 or 143)?"
            case TimeoutError():
                return f"no answer within {timeout:g} s; check imap.host, imap.port and the network"
            case ConnectionRefusedError():
                return "connection refused; is the IMAP server running, is imap.port right?"
            case socket.gaierror():
                return f"cannot resolve the host ({error}); check imap.host"
            case imaplib.IMAP4.abort() | EOFError() | ConnectionError():
                return f"connection lost ({error or 'closed by the server'})"
            case OSError():
                return f"network error ({error})"
        return f"the server refused: {error}"

    def _drop(self) -> None:
        """Forget a broken connection so the next call says so instead of hanging on it."""
        client, self._client = self._client, None
        if client is not None:
            _shutdown(client)

    def _connected(self) -> Any:
        if self._client is None:
            raise MailboxError("not connected; call connect() first", where=self.where)
        return self._client

    # -- the blocking IMAP conversations ------------------------------------------------------

    def _open(self) -> Any:
        settings = self.settings
        implicit = settings.tls is TlsMode.IMPLICIT
        client = _Client(
            self._host,
            settings.effective_port,
            ssl=implicit,
            # Made only when used: loading the system's CA certificates takes milliseconds.
            ssl_context=self._ssl_context() if implicit else None,
            timeout=settings.timeout_s,
        )
        try:
            client.normalise_times = False  # keep INTERNALDATE's zone; made UTC below
            if settings.tls is TlsMode.STARTTLS:
                self._starttls(client)
            client.login(settings.username or "", settings.password or "")
            self._idle = settings.idle and client.has_capability("IDLE")
        except BaseException:
            _shutdown(client)
            raise
        return client

    def _starttls(self, client: Any) -> None:
        if not client.has_capability("STARTTLS"):
            raise MailboxError(
                "the server does not offer STARTTLS; refusing to send the password in clear "
                "(use imap.tls: implicit on port 993)",
                where=self.where,
            )
        client.starttls(self._ssl_context())

    def _ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context()
        if self.settings.ca_file is not None:
            context.load_verify_locations(cafile=self.settings.ca_file)
        if not self.settings.validate_certs:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    def _select(self, folder: str) -> FolderStatus:
        client = self._connected()
        try:
            response = client.select_folder(folder, readonly=True)
        except imaplib.IMAP4.error:
            if client.folder_exists(folder):
                raise
            raise FolderMissing(
                f"no folder {folder!r} in this mailbox; check imap.folders "
                f"(the server has: {', '.join(_folder_names(client))})",
                where=self._where(folder),
            ) from None
        _pending_news(client)  # the counts are in the status; news is what comes after
        uidnext = response.get(b"UIDNEXT")
        return FolderStatus(
            folder=folder,
            uidvalidity=int(response[b"UIDVALIDITY"]),
            uidnext=None if uidnext is None else int(uidnext),
            exists=int(response.get(b"EXISTS", 0)),
        )

    def _fetch_after(self, last_uid: int, limit: int) -> list[FetchedMessage]:
        client = self._connected()
        client.noop()  # the server tells of mail that arrived since the last command only now
        found = client.search(["UID", f"{last_uid + 1}:*"])
        uids = sorted(uid for uid in found if uid > last_uid)[:limit]
        if not uids:
            return []
        meta = client.fetch(uids, ["RFC822.SIZE", "INTERNALDATE"])
        sizes = {uid: int(data[b"RFC822.SIZE"]) for uid, data in meta.items()}
        chosen = self._batch([uid for uid in uids if uid in sizes], sizes)
        most = self.max_message_bytes
        cut = [uid for uid in chosen if most is not None and sizes[uid] > most]
        whole = [uid for uid in chosen if uid not in cut]
        bodies = client.fetch(whole, ["BODY.PEEK[]"]) if whole else {}
        kept = self._kept_of_large()
        parts = [f"BODY.PEEK[HEADER]<0.{kept}>", f"BODY.PEEK[TEXT]<0.{kept}>"]
        starts = client.fetch(cut, parts) if cut else {}
        fetched = [_fetched(uid, meta[uid], bodies[uid]) for uid in whole if uid in bodies]
        fetched += [_fetched(uid, meta[uid], starts[uid]) for uid in cut if uid in starts]
        return sorted(fetched, key=lambda message: message.uid)  # expunged meanwhile: gone

    def _kept_of_large(self) -> int:
        return max(1, min(KEPT_OF_LARGE, (self.max_message_bytes or 0) // 2))

    def _batch(self, uids: list[int], sizes: dict[int, int]) -> list[int]:
        """The first UIDs whose fetched bytes stay within ``BATCH_LIMITS`` limits."""
        if self.max_message_bytes is None:
            return uids
        budget, held = BATCH_LIMITS * self.max_message_bytes, 0
        chosen: list[int] = []
        for uid in uids:
            if chosen and held >= budget:
                break
            chosen.append(uid)
            held += min(sizes[uid], self.max_message_bytes)
        return chosen

    def _idle_until(self, max_wait_s: float, stop: threading.Event) -> bool:
        client = self._connected()
        deadline = time.monotonic() + max_wait_s
        client.noop()
        news = _pending_news(client)
        while not news and not stop.is_set() and time.monotonic() < deadline:
            renew_at = min(deadline, time.monotonic() + self.settings.idle_renew_s)
            client.idle()
            try:
                news = _watch(client, renew_at, stop)
            finally:
                _, pending = client.idle_done()
            news = news or _announces_news(pending)
        return news

    def _append(self, folder: str, raw: bytes, when: datetime) -> None:
        client = self._connected()
        if not client.folder_exists(folder):
            client.create_folder(folder)
        client.append(folder, raw, (b"\\Seen",), msg_time=when)


class _Tls(IMAP4_TLS):  # type: ignore[misc]  # imapclient is untyped: its classes are Any
    """Implicit TLS that closes the TCP socket when the handshake fails or times out.

    imapclient's own leaves it open (a ResourceWarning, and an fd until collected).
    """

    def _create_socket(self, timeout: float | None = None) -> socket.socket:
        sock = socket.create_connection((self.host, self.port), timeout or self._timeout)
        try:
            wrapped: socket.socket = self.ssl_context.wrap_socket(sock, server_hostname=self.host)
        except BaseException:
            sock.close()
            raise
        return wrapped


class _Client(IMAPClient):  # type: ignore[misc]  # imapclient is untyped: its classes are Any
    def _create_IMAP4(self) -> Any:
        if self.ssl:
            return _Tls(self.host, self.port, self.ssl_context, self._timeout.connect)
        return super()._create_IMAP4()


def _watch(client: Any, until: float, stop: threading.Event) -> bool:
    """Look at IDLE responses in short slices, so a stop request is seen within one slice."""
    while not stop.is_set():
        remaining = until - time.monotonic()
        if remaining <= 0:
            return False
        if _announces_news(client.idle_check(timeout=min(IDLE_SLICE_S, remaining))):
            return True
    return False


def _pending_news(client: Any) -> bool:
    """Whether EXISTS came with an earlier command's answer; imaplib keeps those aside.

    Popping them also keeps imaplib's list of untagged answers from growing all day.
    """
    pending = client._imap.untagged_responses
    for unread in ("RECENT", "EXPUNGE", "FETCH"):
        pending.pop(unread, None)
    return pending.pop("EXISTS", None) is not None


def _announces_news(responses: list[Any]) -> bool:
    for response in responses:
        if isinstance(response, tuple) and len(response) >= 2 and response[1] in _NEWS:
            return True
        if isinstance(response, tuple) and response and response[0] == b"BYE":
            raise imaplib.IMAP4.abort(f"server said BYE: {response[-1]!r}")
    return False


def _folder_names(client: Any) -> list[str]:
    return sorted(str(name) for _flags, _delimiter, name in client.list_folders())


def _fetched(uid: int, meta: dict[bytes, Any], data: dict[bytes, Any]) -> FetchedMessage:
    when: datetime = meta[b"INTERNALDATE"]
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    truncated = b"BODY[]" not in data
    if truncated:
        raw = _header_and_text(bytes(data[b"BODY[HEADER]<0>"]), bytes(data[b"BODY[TEXT]<0>"]))
    else:
        raw = bytes(data[b"BODY[]"])
    return FetchedMessage(
        uid=uid,
        raw=raw,
        internal_date=when.astimezone(UTC),
        size=int(meta[b"RFC822.SIZE"]),
        truncated=truncated,
    )


def _header_and_text(header: bytes, text: bytes) -> bytes:
    """The header, cut at its last whole line if it was cut, a blank line, the text."""
    if header.endswith((b"\r\n\r\n", b"\n\n")):
        return header + text
    cut = header.rfind(b"\n")
    return header[: cut + 1] + b"\r\n" + text


def _logout(client: Any) -> None:
    try:
        client.logout()
    except Exception:  # the connection may already be gone; closing is all that is left
        _shutdown(client)


def _shutdown(client: Any) -> None:
    try:
        client.shutdown()
    except Exception:  # already closed
        return
