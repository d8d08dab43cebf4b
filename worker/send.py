"""The send step: hand one rendered message to the SMTP relay and say exactly how far it got.

The caller records the outcome. The one rule that shapes everything here: once the message
data may have reached the server, it is never sent again automatically (:class:`InDoubt`), so
a buyer is never written to twice.
"""

from __future__ import annotations

import asyncio
import email.policy
import re
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from email.message import EmailMessage
from types import TracebackType

import aiosmtplib
from aiosmtplib import (
    SMTPAuthenticationError,
    SMTPConnectError,
    SMTPException,
    SMTPNotSupported,
    SMTPResponseException,
    SMTPServerDisconnected,
    SMTPTimeoutError,
)
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_random_exponential,
)

from worker.config import SmtpSettings, TlsMode


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

    aiosmtplib's ``data()`` sends DATA, waits for 354, writes the message and the final "."
    and waits for the reply in one call, so a disconnect or timeout inside it cannot tell
    which side of the "." it happened on. Assuming the server has the message is the only
    answer that cannot write to a buyer twice; an operator checks the relay's log.
    """

    reason: str


Outcome = Sent | Retry | Failed | InDoubt

_ENHANCED = re.compile(r"^\s*([245])\.(\d{1,3})\.(\d{1,3})\b")
_UNKNOWN_RECIPIENT = re.compile(
    r"no such (user|mailbox|recipient)|user unknown|unknown user|mailbox (is )?unavailable"
    r"|(user|mailbox|recipient) not found|does not exist|doesn't exist|address rejected",
    re.IGNORECASE,
)
# 5.1.10 is Microsoft 365's "RecipientNotFound": the same failure as 5.1.1.
_RECIPIENT_STATUSES = frozenset({"5.1.1", "5.1.2", "5.1.6", "5.1.10"})
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


def classify_reply(code: int, text: str) -> Retry | Failed:
    """Turn an SMTP refusal into a decision; only recipient-level 5xx suppress the address.

    A wrongly suppressed buyer never hears from the seller again, so suppression needs either
    a recipient enhanced status (5.1.1, 5.1.2, 5.1.6) or, without a specific one, a 550/551/553
    whose text says the mailbox does not exist. 5.7.x is about us, not the buyer.
    """
    reply = f"{code} {text}".strip()
    if 400 <= code < 500:
        return Retry(reply, code)
    enhanced = _ENHANCED.match(text)
    status = ".".join(enhanced.groups()) if enhanced else None
    if status is not None and status.startswith("5.7."):
        return Failed(f"{reply} ({_OUR_SIDE})", code, suppress=False)
    if status in _RECIPIENT_STATUSES:
        return Failed(reply, code, suppress=True)
    plain = status is None or status == "5.0.0"
    unknown = code in (550, 551, 553) and bool(_UNKNOWN_RECIPIENT.search(text))
    return Failed(reply, code, suppress=plain and unknown)


def relay_message_id(text: str) -> str | None:
    """The relay's own id for the message, from replies like ``Ok: queued as ABC123``."""
    for pattern in _RELAY_ID:
        match = pattern.search(text)
        if match:
            return match.group(1)
    return None


class _Transient(Exception):
    """Carries a Retry through tenacity, which retries only this."""

    def __init__(self, outcome: Retry) -> None:
        super().__init__(outcome.reason)
        self.outcome = outcome


@dataclass(slots=True)
class _Progress:
    """How far one message got; decides between Retry and InDoubt when time runs out."""

    stage: str = "connect"
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

    async def __aenter__(self) -> Mailer:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

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

    async def send(self, message: EmailMessage, *, sender: str, recipient: str) -> Outcome:
        """Deliver one message to one recipient; never raises for SMTP or network trouble."""
        bad = _address_problem(sender, "sender") or _address_problem(recipient, "recipient")
        if bad:
            return Failed(bad, None, suppress=False)
        data = message.as_bytes(policy=email.policy.SMTP)
        progress = _Progress()
        async with self._slots:
            try:
                async with asyncio.timeout(self._settings.message_deadline_s):
                    return await self._attempts(data, sender, recipient, progress)
            except TimeoutError:
                progress.discard()
                return self._deadline_outcome(progress.stage)
            except _Transient as exc:
                return exc.outcome

    def _deadline_outcome(self, stage: str) -> Retry | InDoubt:
        deadline = f"message deadline of {self._settings.message_deadline_s:g}s passed"
        if stage == "DATA":
            return InDoubt(f"{self._where} DATA: {deadline} while the message was being sent")
        return Retry(f"{self._where} {stage}: {deadline} before the message was handed over", None)

    async def _attempts(
        self, data: bytes, sender: str, recipient: str, progress: _Progress
    ) -> Outcome:
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self._settings.attempts),
            wait=wait_random_exponential(
                multiplier=self._settings.backoff_initial_s, max=self._settings.backoff_max_s
            ),
            retry=retry_if_exception_type(_Transient),
            sleep=self._sleep,
            reraise=True,
        )
        outcome: Outcome = await retrying(self._attempt, data, sender, recipient, progress)
        return outcome

    async def _attempt(
        self, data: bytes, sender: str, recipient: str, progress: _Progress
    ) -> Outcome:
        progress.stage = "connect"
        try:
            return await self._converse(data, sender, recipient, progress)
        except (SMTPException, OSError) as exc:
            progress.discard()
            outcome = self._judge(exc, progress.stage)
            if isinstance(outcome, Retry):
                progress.stage = "backoff"
                raise _Transient(outcome) from exc
            return outcome
        except BaseException:
            progress.discard()
            raise

    async def _converse(
        self, data: bytes, sender: str, recipient: str, progress: _Progress
    ) -> Sent:
        progress.conn = self._pooled() or await self._connect()
        progress.stage = "MAIL"
        await progress.conn.mail(sender)
        progress.stage = "RCPT"
        await progress.conn.rcpt(recipient)
        progress.stage = "DATA"
        reply = await progress.conn.data(data)
        self._idle.append(progress.conn)
        progress.conn = None
        return Sent(str(reply), relay_message_id(reply.message))

    def _pooled(self) -> aiosmtplib.SMTP | None:
        while self._idle:
            conn = self._idle.pop()
            if conn.is_connected:
                return conn
            conn.close()
        return None

    async def _connect(self) -> aiosmtplib.SMTP:
        """Open a connection exactly as configured: never a silent plaintext fallback."""
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
        try:
            await conn.connect()
            if s.tls is TlsMode.STARTTLS:
                await _start_tls(conn)
            if s.username:
                await conn.login(s.username, s.password or "")
        except BaseException:
            conn.close()
            raise
        return conn

    def _judge(self, exc: SMTPException | OSError, stage: str) -> Outcome:
        """Map what went wrong, and where, to an outcome."""
        where = f"{self._where} {stage}"
        if _tls_failure(exc):
            return Failed(
                f"{where}: TLS failed ({exc}); check smtp.tls, smtp.port and smtp.validate_certs",
                None,
                suppress=False,
            )
        if isinstance(exc, SMTPAuthenticationError) and exc.code >= 500:
            return Failed(
                f"{where}: {exc.code} {exc.message} (login refused; check "
                "WORKER_SMTP_USERNAME and WORKER_SMTP_PASSWORD)",
                exc.code,
                suppress=False,
            )
        if isinstance(exc, SMTPResponseException):
            return self._judge_reply(exc.code, exc.message, stage)
        if isinstance(exc, SMTPServerDisconnected | SMTPConnectError | SMTPTimeoutError | OSError):
            if stage == "DATA":
                return InDoubt(f"{where}: {_describe(exc)} while the message was being sent")
            return Retry(f"{where}: {_describe(exc)}", None)
        return Failed(f"{where}: {exc}", None, suppress=False)

    def _judge_reply(self, code: int, text: str, stage: str) -> Outcome:
        where = f"{self._where} {stage}"
        if not 400 <= code < 600:
            if stage == "DATA":
                return InDoubt(f"{where}: unexpected reply {code} {text}")
            return Failed(f"{where}: unexpected reply {code} {text}", code, suppress=False)
        outcome = classify_reply(code, text)
        outcome = replace(outcome, reason=f"{where}: {outcome.reason}")
        if isinstance(outcome, Failed) and stage not in ("RCPT", "DATA"):
            outcome = replace(outcome, suppress=False)
        return outcome


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
