"""The send step: hand one rendered message to the SMTP relay and say exactly how far it got.

The caller records the outcome. The one rule that shapes everything here: once the message
data may have reached the server, it is never sent again automatically (:class:`InDoubt`), so
a buyer is never written to twice.

Every text that leaves this module (reasons, replies) is one line, at most a few hundred
characters, with control characters and anything that looks like the login removed: the
daemon stores and logs it, and relays have been seen echoing the AUTH exchange.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import email.policy
import random
import re
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from email.message import EmailMessage
from types import TracebackType
from typing import Literal

import aiosmtplib
from aiosmtplib import (
    SMTPAuthenticationError,
    SMTPConnectError,
    SMTPConnectTimeoutError,
    SMTPDataError,
    SMTPException,
    SMTPNotSupported,
    SMTPResponseException,
    SMTPServerDisconnected,
    SMTPStatus,
    SMTPTimeoutError,
)

from worker.config import SmtpSettings, TlsMode

Stage = Literal["connect", "MAIL", "RCPT", "DATA", "backoff"]
"""Where a conversation is: connect covers the greeting, STARTTLS and AUTH; DATA runs from
the DATA command to the reply to the final "."."""


@dataclass(frozen=True, slots=True)
class Sent:
    """The server answered 250 to the final "."; the message is the relay's responsibility."""

    reply: str
    relay_message_id: str | None


@dataclass(frozen=True, slots=True)
class Retry:
    """Transient trouble before the data was handed over: safe to try again later."""

    reason: str
    code: int | None


@dataclass(frozen=True, slots=True)
class Failed:
    """Refused for good. ``suppress`` only when the refusal is about the recipient's address."""

    reason: str
    code: int | None
    suppress: bool


@dataclass(frozen=True, slots=True)
class InDoubt:
    """The data may have reached the server without a 250 seen: never retry automatically.

    Once the message data has begun to go out, a disconnect or timeout cannot tell which side
    of the final "." it happened on. Assuming the server has the message is the only answer
    that cannot write to a buyer twice; an operator checks the relay's log.
    """

    reason: str


Outcome = Sent | Retry | Failed | InDoubt


@dataclass(slots=True)
class Handover:
    """Whether the server may hold the message; read it when :meth:`Mailer.send` is cancelled.

    ``data_started`` turns True the moment the message data begins to go out (after the
    server's 354) and back to False if the server then refuses the data with a 4xx/5xx. While
    False the server cannot have the message and the send can simply be scheduled again;
    while True it may have it, and the send is in doubt.
    """

    data_started: bool = False


_ENHANCED = re.compile(r"^\s*([245])\.(\d{1,3})\.(\d{1,3})\b")
# 5.1.10 is Microsoft 365's "RecipientNotFound": the same failure as 5.1.1.
_RECIPIENT_STATUSES = frozenset({"5.1.1", "5.1.2", "5.1.6", "5.1.10"})
_RECIPIENT_UNKNOWN = re.compile(
    r"\bno\s+such\s+(?:user|mailbox|recipient|account|addressee)\b"
    r"|\b(?:user|recipient|mailbox|account|addressee)\s+(?:is\s+)?unknown\b"
    r"|\bunknown\s+(?:user|recipient|mailbox|account|addressee)\b"
    r"|\b(?:user|recipient|mailbox|account|addressee)(?:\s+address)?\s+(?:was\s+)?not\s+found\b"
    r"|\b(?:user|recipient|mailbox|account|addressee)\b[^.;,]{0,40}?"
    r"\b(?:does\s+not|doesn't)\s+exist\b",
    re.IGNORECASE,
)
"""Words naming the recipient, user or mailbox as unknown. ("mailbox unavailable" is RFC
5321's stock text for any 550, policy refusals included, so it is not among them.)"""
_ABOUT_US = re.compile(
    r"\bsender|\b(?:mail|envelope)\s+from\b|\brelay|\bip\b|\bclient\s+host\b|\be?helo\b"
    r"|\bpolic(?:y|ies)\b|\bblock\s*-?\s*list|\bblack\s*-?\s*list|\bblocked\b|\b(?:rbl|dnsbl)\b"
    r"|spamhaus|spam|authenticat|\bauth\b|credential|\b(?:spf|dkim|dmarc)\b|reputation"
    r"|\bverif(?:y|ied|ication)\b|callout|\bdenied\b|not\s+(?:permitted|allowed|authori[sz]ed)"
    r"|reverse\s+dns|\bptr\b|rate\s+limit|throttl|\btls\b|virus|malware|phishing|\bcontent\b"
    r"|\bbanned\b|\bprohibited\b|\b\d{1,3}(?:\.\d{1,3}){3}\b",
    re.IGNORECASE,
)
"""Words about our sender, relay, IP, policy or login: the refusal is not the buyer's."""
_RELAY_ID = (
    re.compile(r"queued as\s+([^\s<>]+)", re.IGNORECASE),
    re.compile(r"<([^<>\s]+)>"),
    re.compile(r"\bid=([^\s<>]+)", re.IGNORECASE),
    # Amazon SES: "250 Ok 0100018c2f6a1b2c-5d6e...-000000"; its Message-ID uses this id.
    re.compile(r"^(?:2\.0\.0\s+)?Ok\s+([0-9a-f]{16}-[0-9a-f-]+-0{6})\s*$", re.IGNORECASE),
)
_OUR_SIDE = (
    "refused for policy, reputation or authentication reasons: a problem on our side "
    "(sender domain, SPF/DKIM/DMARC, IP reputation or relay permission), not the buyer's address"
)
_UNPROVEN = "no proof that the buyer's address is bad: nobody is suppressed"

_REPLY_CHARS = 300
_REASON_CHARS = 1000
_READ_CHARS = 8192
_REMOVED = "[credentials removed]"
_INVISIBLE = re.compile(
    "[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2060-\u206f\ufeff\ud800-\udfff]"
)
_AUTH_ECHO = re.compile(
    r"\bAUTH\s+(?:PLAIN|LOGIN|CRAM-MD5|DIGEST-MD5|XOAUTH2?|OAUTHBEARER|NTLM|GSSAPI|SCRAM-[\w-]+)"
    r"(?:\s+[A-Za-z0-9+/]+={0,2}(?![\w+/=]))?"
    r"|\b334[ -]\S*(?:\s+[A-Za-z0-9+/]{4,}={0,2}(?![\w+/=]))?",
    re.IGNORECASE,
)
"""An echoed AUTH command with its initial response, or a 334 challenge with the answer."""
_BASE64_TOKEN = re.compile(r"[A-Za-z0-9+/]{4,}={0,2}")


def classify_reply(code: int, text: str, *, stage: Stage = "RCPT") -> Retry | Failed:
    """Turn an SMTP refusal at ``stage`` into a decision; only the recipient's own 5xx suppress.

    A wrongly suppressed buyer never hears from the seller again, and one misconfigured relay
    would suppress every buyer of a pass, so suppression needs a refusal of RCPT TO that
    proves the address is unknown: a recipient enhanced status (5.1.1, 5.1.2, 5.1.6, 5.1.10),
    or, without any enhanced status, a 550/551/553 whose words name the user or mailbox as
    unknown. Words about the sender, relay, IP, policy, spam or login, a 5.7.x, a refusal of
    MAIL FROM or of the data, and an unspecific 5.0.0 suppress no one. The default stage
    keeps two-argument callers (the bounce tests) reading a reply to RCPT TO.
    """
    reply = f"{code} {_tidy(text)}".strip()
    if 400 <= code < 500:
        return Retry(reply, code)
    words = " ".join(text[:_READ_CHARS].split())
    enhanced = _ENHANCED.match(words)
    status = ".".join(enhanced.groups()) if enhanced else None
    if stage in ("connect", "MAIL") or (status or "").startswith("5.7.") or _ABOUT_US.search(words):
        return Failed(f"{reply} ({_OUR_SIDE})", code, suppress=False)
    unknown = code in (550, 551, 553) and bool(_RECIPIENT_UNKNOWN.search(words))
    if stage == "RCPT" and (status in _RECIPIENT_STATUSES or (status is None and unknown)):
        return Failed(reply, code, suppress=True)
    if unknown or status in _RECIPIENT_STATUSES:
        return Failed(f"{reply} ({_UNPROVEN})", code, suppress=False)
    return Failed(reply, code, suppress=False)


def relay_message_id(text: str) -> str | None:
    """The relay's own id for the message, from replies like ``Ok: queued as ABC123``."""
    for pattern in _RELAY_ID:
        match = pattern.search(text)
        if match:
            return match.group(1)
    return None


class _Secrets:
    """The configured login in every form a relay might echo back, to keep it out of reasons."""

    def __init__(self, username: str | None, password: str | None) -> None:
        self._password = (password or "").encode()
        forms: set[str] = set()
        if password:
            user = (username or "").encode()
            forms |= {password, " ".join(password.split())}
            for raw in (self._password, b"\0" + user + b"\0" + self._password):
                forms.add(base64.b64encode(raw).decode())
        self._forms = sorted((f for f in forms if f), key=len, reverse=True)

    def redact(self, text: str) -> str:
        if not self._password:
            return text
        for form in self._forms:
            text = text.replace(form, _REMOVED)
        return _BASE64_TOKEN.sub(self._token, text)

    def _token(self, match: re.Match[str]) -> str:
        """A blob that decodes, at any alignment, to bytes holding the password."""
        token = match.group(0)
        for start in range(4):
            chunk = token[start:]
            chunk = chunk[: len(chunk) - len(chunk) % 4]
            try:
                decoded = base64.b64decode(chunk)
            except (binascii.Error, ValueError):
                continue
            if self._password in decoded:
                return _REMOVED
        return token


def _tidy(text: str, limit: int = _REPLY_CHARS, secrets: _Secrets | None = None) -> str:
    """One line, no control or invisible characters, no credentials, at most ``limit``."""
    flat = " ".join(_INVISIBLE.sub("", " ".join(text[:_READ_CHARS].split())).split())
    if secrets is not None:
        flat = secrets.redact(flat)
    flat = _AUTH_ECHO.sub(_REMOVED, flat)
    return flat if len(flat) <= limit else flat[: limit - 1].rstrip() + "…"


class _Transient(Exception):
    """Carries a Retry out of an attempt: the one failure worth another attempt."""

    def __init__(self, outcome: Retry) -> None:
        super().__init__(outcome.reason)
        self.outcome = outcome


@dataclass(slots=True)
class _Progress:
    """How far one message got; decides between Retry and InDoubt when time runs out."""

    handover: Handover = field(default_factory=Handover)
    stage: Stage = "connect"
    connecting: bool = False
    conn: aiosmtplib.SMTP | None = None

    def discard(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


class Mailer:
    """Sends messages over a small pool of reused SMTP connections.

    At most ``concurrency`` conversations run at once; a slot is held across a message's
    retries so a throttling server sees less traffic, and the per-message deadline starts
    once the slot is granted so queueing does not eat it.

    A circuit breaker spares a dead relay's deadlines: after ``breaker_failures`` connection
    or greeting failures in a row, :attr:`relay_down` says why and every send returns a
    :class:`Retry` at once without connecting; a relay that greets again closes it.
    """

    def __init__(
        self,
        settings: SmtpSettings,
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._settings = settings
        self._sleep = sleep
        self._slots = asyncio.Semaphore(settings.concurrency)
        self._idle: list[aiosmtplib.SMTP] = []
        self._where = f"smtp {settings.host}:{settings.port}"
        self._secrets = _Secrets(settings.username, settings.password)
        self._failures = 0
        self._down: str | None = None

    async def __aenter__(self) -> Mailer:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def relay_down(self) -> str | None:
        """Why the relay is taken as down (sends return Retry at once), or None."""
        return self._down

    async def close(self) -> None:
        """Say QUIT on every pooled connection; a server that does not answer is just dropped."""
        idle, self._idle = self._idle, []
        for conn in idle:
            try:
                async with asyncio.timeout(self._settings.timeout_s):
                    await conn.quit()
            except (SMTPException, OSError):
                pass
            finally:
                conn.close()

    async def send(
        self,
        message: EmailMessage | bytes,
        *,
        sender: str,
        recipient: str,
        progress: Handover | None = None,
    ) -> Outcome:
        """Deliver one message to one recipient; never raises for SMTP or network trouble.

        ``message`` is an ``EmailMessage`` (written out with ``email.policy.SMTP``; the one
        :func:`~worker.compose.compose` returns has its bytes ready) or the message's bytes
        as they are to arrive (any line ends; they go out as CR LF). ``progress``, when
        given, tells a caller whose await was cancelled whether the message data had begun
        to go out (see :class:`Handover`).
        """
        state = _Progress(progress if progress is not None else Handover())
        state.handover.data_started = False
        bad = _address_problem(sender, "sender") or _address_problem(recipient, "recipient")
        if bad:
            return self._scrub(Failed(bad, None, suppress=False))
        if self._down is not None:
            return self._scrub(self._down_outcome())
        raw = message if isinstance(message, bytes) else message.as_bytes(policy=email.policy.SMTP)
        payload = _wire(raw)
        async with self._slots:
            if self._down is not None:
                return self._scrub(self._down_outcome())
            try:
                async with asyncio.timeout(self._settings.message_deadline_s):
                    outcome = await self._attempts(payload, sender, recipient, state)
            except TimeoutError:
                state.discard()
                if state.connecting:
                    self._connect_failed("no greeting before the message deadline")
                outcome = self._deadline_outcome(state)
            except _Transient as exc:
                outcome = exc.outcome
        return self._scrub(outcome)

    def _down_outcome(self) -> Retry:
        return Retry(f"relay down: {self._down}", None)

    def _connect_failed(self, why: str) -> None:
        self._failures += 1
        if self._failures >= self._settings.breaker_failures:
            self._down = self._clean(
                f"{self._where}: {self._failures} connection attempts in a row failed "
                f"(the last: {why})"
            )

    def _deadline_outcome(self, progress: _Progress) -> Retry | InDoubt:
        deadline = f"message deadline of {self._settings.message_deadline_s:g}s passed"
        if progress.handover.data_started:
            return InDoubt(f"{self._where} DATA: {deadline} while the message was being sent")
        return Retry(
            f"{self._where} {progress.stage}: {deadline} before the message was handed over",
            None,
        )

    def _retry_worth_it(self, exc: BaseException) -> bool:
        return isinstance(exc, _Transient) and self._down is None

    async def _attempts(
        self, payload: bytes, sender: str, recipient: str, progress: _Progress
    ) -> Outcome:
        """Up to ``attempts`` attempts while they end in a Retry and the relay is not taken as
        down, with a random wait between them up to an exponential ceiling (what tenacity's
        ``stop_after_attempt`` and ``wait_random_exponential`` do, without their per-message
        set-up); the last Retry is raised."""
        attempt = 1
        while True:
            try:
                return await self._attempt(payload, sender, recipient, progress)
            except _Transient as exc:
                if attempt >= self._settings.attempts or not self._retry_worth_it(exc):
                    raise
            await self._sleep(self._backoff(attempt))
            attempt += 1

    def _backoff(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (from 1): at random up to
        ``backoff_initial_s`` doubled each attempt, at most ``backoff_max_s``."""
        s = self._settings
        ceiling = s.backoff_initial_s * 2.0 ** min(attempt - 1, 64)
        return random.uniform(0, max(0.0, min(ceiling, s.backoff_max_s)))

    async def _attempt(
        self, payload: bytes, sender: str, recipient: str, progress: _Progress
    ) -> Outcome:
        progress.stage = "connect"
        try:
            return await self._converse(payload, sender, recipient, progress)
        except (SMTPException, OSError) as exc:
            progress.discard()
            progress.connecting = False  # a failed connection was counted where it failed
            outcome = self._judge(exc, progress)
            if isinstance(outcome, Retry):
                progress.stage = "backoff"
                raise _Transient(outcome) from exc
            return outcome
        except BaseException:
            progress.discard()
            raise

    async def _converse(
        self, payload: bytes, sender: str, recipient: str, progress: _Progress
    ) -> Sent:
        progress.conn = self._pooled() or await self._connect(progress)
        progress.stage = "MAIL"
        await progress.conn.mail(sender)
        progress.stage = "RCPT"
        await progress.conn.rcpt(recipient)
        progress.stage = "DATA"
        reply = await self._data(progress.conn, payload, progress.handover)
        self._idle.append(progress.conn)
        progress.conn = None
        text = self._clean(reply.message)
        return Sent(f"{reply.code} {text}", relay_message_id(text))

    async def _data(
        self, conn: aiosmtplib.SMTP, payload: bytes, handover: Handover
    ) -> aiosmtplib.SMTPResponse:
        """DATA in two steps, so ``handover`` can mark the moment the message starts to go out
        (aiosmtplib's ``data()`` does both in one call)."""
        start = await conn.execute_command(b"DATA")
        if start.code != SMTPStatus.start_input:
            raise SMTPDataError(start.code, start.message)
        if conn.protocol is None:
            raise SMTPServerDisconnected("Connection lost")
        handover.data_started = True
        conn.protocol.write(payload)
        reply = await conn.protocol.read_response(timeout=self._settings.timeout_s)
        if reply.code != SMTPStatus.completed:
            if 400 <= reply.code < 600:
                handover.data_started = False  # refused: the server does not keep it
            raise SMTPDataError(reply.code, reply.message)
        return reply

    def _pooled(self) -> aiosmtplib.SMTP | None:
        while self._idle:
            conn = self._idle.pop()
            if conn.is_connected:
                return conn
            conn.close()
        return None

    async def _connect(self, progress: _Progress) -> aiosmtplib.SMTP:
        """Open a connection exactly as configured: never a silent plaintext fallback.

        The greeting (and TLS) must arrive within ``timeout_s`` as a whole; failing that, or
        TLS, or a 4xx/5xx greeting, counts towards the circuit breaker.
        """
        s = self._settings
        conn = aiosmtplib.SMTP(
            hostname=s.host,
            port=s.port,
            timeout=s.timeout_s,
            use_tls=s.tls is TlsMode.IMPLICIT,
            start_tls=False,
            validate_certs=s.validate_certs,
            local_hostname=s.helo_name,
        )
        progress.connecting = True
        try:
            async with asyncio.timeout(s.timeout_s):
                await conn.connect()
                if s.tls is TlsMode.STARTTLS:
                    await _start_tls(conn)
        except TimeoutError as exc:
            conn.close()
            timeout = SMTPConnectTimeoutError(f"no greeting within {s.timeout_s:g}s")
            self._connect_failed(_describe(timeout))
            raise timeout from exc
        except SMTPNotSupported:
            conn.close()
            raise
        except (SMTPException, OSError) as exc:
            conn.close()
            self._connect_failed(_describe(exc))
            raise
        except BaseException:
            conn.close()
            raise
        progress.connecting = False
        self._failures = 0
        self._down = None
        try:
            if s.username:
                await conn.login(s.username, s.password or "")
        except BaseException:
            conn.close()
            raise
        return conn

    def _judge(self, exc: SMTPException | OSError, progress: _Progress) -> Outcome:
        """Map what went wrong, and where, to an outcome."""
        where = f"{self._where} {progress.stage}"
        if _tls_failure(exc):
            return Failed(
                f"{where}: TLS failed ({self._clean(str(exc))}); check smtp.tls, smtp.port and "
                "smtp.validate_certs",
                None,
                suppress=False,
            )
        if isinstance(exc, SMTPAuthenticationError) and exc.code >= 500:
            return Failed(
                f"{where}: {exc.code} {self._clean(exc.message)} (login refused; check "
                "WORKER_SMTP_USERNAME and WORKER_SMTP_PASSWORD)",
                exc.code,
                suppress=False,
            )
        if isinstance(exc, SMTPResponseException):
            return self._judge_reply(exc.code, exc.message, progress)
        if isinstance(exc, SMTPServerDisconnected | SMTPConnectError | SMTPTimeoutError | OSError):
            described = self._clean(_describe(exc))
            if progress.handover.data_started:
                return InDoubt(f"{where}: {described} while the message was being sent")
            return Retry(f"{where}: {described}", None)
        return Failed(f"{where}: {self._clean(str(exc))}", None, suppress=False)

    def _judge_reply(self, code: int, text: str, progress: _Progress) -> Outcome:
        where = f"{self._where} {progress.stage}"
        if not 400 <= code < 600:
            text = self._clean(text)
            if progress.handover.data_started:
                return InDoubt(f"{where}: unexpected reply {code} {text}")
            return Failed(f"{where}: unexpected reply {code} {text}", code, suppress=False)
        # Whole (not cut) so no word is missed and no credential is cut in half unrecognised.
        outcome = classify_reply(code, self._clean(text, _READ_CHARS), stage=progress.stage)
        return replace(outcome, reason=f"{where}: {outcome.reason}")

    def _clean(self, text: str, limit: int = _REPLY_CHARS) -> str:
        return _tidy(text, limit, self._secrets)

    def _scrub(self, outcome: Outcome) -> Outcome:
        """The last look at what leaves the mailer: one line, bounded, no credentials."""
        if isinstance(outcome, Sent):
            return replace(outcome, reply=self._clean(outcome.reply))
        return replace(outcome, reason=self._clean(outcome.reason, _REASON_CHARS))


def _wire(data: bytes) -> bytes:
    """The message as DATA carries it: CRLF lines, leading dots doubled, the final ".".

    A CR LF, a lone CR and a lone LF each end one line (in that order of precedence, as the
    regular expression ``\\r\\n|\\r|\\n`` reads them); then every line but the first starts
    right after a CR LF, where a dot is doubled.
    """
    lines = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")
    if not lines.endswith(b"\r\n"):
        lines += b"\r\n"
    if lines.startswith(b"."):
        lines = b"." + lines
    return lines.replace(b"\r\n.", b"\r\n..") + b".\r\n"


async def _start_tls(conn: aiosmtplib.SMTP) -> None:
    await conn.ehlo()
    if not conn.supports_extension("starttls"):
        raise SMTPNotSupported(
            "the server does not offer STARTTLS; not sending in plaintext (smtp.tls is starttls)"
        )
    await conn.starttls()


def _tls_failure(exc: BaseException) -> bool:
    """TLS handshake and certificate errors are configuration problems, not transient ones."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLError | ssl.CertificateError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _address_problem(address: str, role: str) -> str | None:
    if not address.isascii() or not address.isprintable() or "@" not in address:
        return f"{role} address {address!r} cannot be used in an SMTP envelope (ASCII only)"
    return None
