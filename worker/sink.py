"""A local SMTP sink for rehearsals: catches everything the worker sends, writes it to a Maildir.

Operators point ``smtp.host``/``smtp.port`` at it to see real messages without reaching a
buyer, and can rehearse refusals (reject rules), throttling (``fail_rate``) and the in-doubt
case (``drop_after_data``: the connection closes after the final "." with no reply).
"""

from __future__ import annotations

import asyncio
import ipaddress
import mailbox
import random
import re
import sys
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.parser import BytesParser
from email.policy import default as default_policy
from fnmatch import fnmatchcase
from pathlib import Path
from types import TracebackType
from typing import Any, TextIO

from aiosmtpd.smtp import SMTP, Envelope, Session

from worker.clock import Clock, SystemClock

_RULE = re.compile(r"^(?P<pattern>[^=\s][^=]*)=(?P<code>[45]\d\d)(?:\s+(?P<text>.*))?$")
_WILDCARD_HOSTS = {"", "0.0.0.0", "::"}
_PROBE_TIMEOUT_S = 5.0


@dataclass(frozen=True, slots=True)
class RejectRule:
    """Refuse recipients matching ``pattern`` (fnmatch, lower case) with ``code`` and ``text``."""

    pattern: str
    code: int
    text: str

    @classmethod
    def parse(cls, spec: str) -> RejectRule:
        """``bad*@example.com=550 5.1.1 User unknown`` -> a rule."""
        match = _RULE.match(spec.strip())
        if match is None:
            raise ValueError(
                f"reject rule {spec!r} is not PATTERN=CODE TEXT with a 4xx or 5xx code, "
                "like 'bad*@example.com=550 5.1.1 User unknown'"
            )
        text = (match["text"] or "").strip() or "Recipient rejected by the sink"
        return cls(match["pattern"].strip().lower(), int(match["code"]), text)

    def matches(self, recipient: str) -> bool:
        return fnmatchcase(recipient.lower(), self.pattern)


@dataclass(frozen=True, slots=True)
class SinkOptions:
    host: str = "127.0.0.1"
    port: int = 8025
    maildir: Path = Path("var/sink")
    reject: tuple[RejectRule, ...] = ()
    fail_rate: float = 0.0
    fail_code: int = 451
    fail_text: str = "4.3.0 Try again later (fault injected)"
    seed: int | None = None
    drop_after_data: str | None = None
    """fnmatch on the recipient: close the connection after the final "." without replying."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.fail_rate <= 1.0:
            raise ValueError(f"fail_rate must be between 0 and 1, not {self.fail_rate}")
        if not 400 <= self.fail_code < 600:
            raise ValueError(f"fail_code must be a 4xx or 5xx SMTP code, not {self.fail_code}")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be between 0 and 65535, not {self.port}")


@dataclass(slots=True)
class _Handler:
    """aiosmtpd hooks: each returns the SMTP status line to send."""

    sink: Sink
    rng: random.Random = field(default_factory=random.Random)

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: Any
    ) -> str:
        for rule in self.sink.options.reject:
            if rule.matches(address):
                return f"{rule.code} {rule.text}"
        opts = self.sink.options
        if opts.fail_rate and self.rng.random() < opts.fail_rate:
            return f"{opts.fail_code} {opts.fail_text}"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        pattern = self.sink.options.drop_after_data
        drop = bool(pattern) and any(
            fnmatchcase(r.lower(), (pattern or "").lower()) for r in envelope.rcpt_tos
        )
        key = await self.sink.deliver(envelope, dropped=drop)
        if drop and server.transport is not None:
            server.transport.close()
            return ""
        return f"250 2.0.0 Ok: queued as {key}"


class Sink:
    """An aiosmtpd server on the running loop (no thread), so tests and ``serve`` share it."""

    def __init__(
        self, options: SinkOptions, *, out: TextIO | None = None, clock: Clock | None = None
    ) -> None:
        self.options = options
        self.port = options.port
        self.received: list[EmailMessage] = []
        self._out = out
        self._clock = clock or SystemClock()
        self._handler = _Handler(self, random.Random(options.seed))
        self._arrived = asyncio.Condition()
        self._server: asyncio.Server | None = None
        self._maildir: mailbox.Maildir | None = None

    async def __aenter__(self) -> Sink:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        """Bind, then prove the server greets before returning, so callers can send at once."""
        self._maildir = await asyncio.to_thread(_open_maildir, self.options.maildir)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: SMTP(self._handler, hostname="worker-sink", enable_SMTPUTF8=True, loop=loop),
            self.options.host,
            self.options.port,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        await self._probe()
        if not _is_loopback(self.options.host):
            self._print(
                f"warning: the sink listens on {self.options.host}:{self.port}, reachable "
                "from other machines; it accepts mail from anyone",
                self._out or sys.stderr,
            )

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    # The brief fixes this signature; a plain timeout argument reads best in tests.
    async def wait_for(self, count: int, timeout: float) -> None:  # noqa: ASYNC109
        """Until at least ``count`` messages arrived; TimeoutError says how many did."""
        try:
            async with asyncio.timeout(timeout), self._arrived:
                await self._arrived.wait_for(lambda: len(self.received) >= count)
        except TimeoutError:
            raise TimeoutError(
                f"the sink received {len(self.received)} of {count} messages in {timeout:g}s"
            ) from None

    async def deliver(self, envelope: Envelope, *, dropped: bool = False) -> str:
        """Store in the Maildir, print the summary line, wake waiters; returns the Maildir key."""
        assert self._maildir is not None, "deliver() before start()"
        content: bytes = envelope.original_content or b""
        to = ",".join(envelope.rcpt_tos)
        stored = f"Return-Path: <{envelope.mail_from}>\r\nDelivered-To: {to}\r\n".encode() + content
        key = await asyncio.to_thread(self._maildir.add, stored)
        parser = BytesParser(_class=EmailMessage, policy=default_policy)
        message = parser.parsebytes(content.replace(b"\r\n", b"\n"))
        summary = self._summary(envelope, message, len(content))
        self._print(summary + (" reply=none (connection dropped)" if dropped else ""), self._out)
        async with self._arrived:
            self.received.append(message)
            self._arrived.notify_all()
        return key

    def _summary(self, envelope: Envelope, message: EmailMessage, size: int) -> str:
        subject = " ".join(str(message.get("subject", "")).split())
        return (
            f"{self._clock.now().isoformat(timespec='seconds')} from={envelope.mail_from} "
            f"to={','.join(envelope.rcpt_tos)} subject={subject} "
            f"message-id={message.get('message-id', '')} bytes={size}"
        )

    async def _probe(self) -> None:
        host = "127.0.0.1" if self.options.host in _WILDCARD_HOSTS else self.options.host
        async with asyncio.timeout(_PROBE_TIMEOUT_S):
            reader, writer = await asyncio.open_connection(host, self.port)
            try:
                greeting = await reader.readline()
                writer.write(b"QUIT\r\n")
                await reader.readline()
            finally:
                writer.close()
                await writer.wait_closed()
        if not greeting.startswith(b"220"):
            raise RuntimeError(f"the sink on {host}:{self.port} greeted with {greeting!r}")

    @staticmethod
    def _print(line: str, out: TextIO | None) -> None:
        if out is not None:
            print(line, file=out, flush=True)


async def serve(options: SinkOptions, stop: asyncio.Event, out: TextIO) -> None:
    """Run the sink until ``stop`` is set (the ``worker sink`` command)."""
    async with Sink(options, out=out) as sink:
        print(
            f"sink listening on {options.host}:{sink.port}, writing to {options.maildir}",
            file=out,
            flush=True,
        )
        await stop.wait()


def _open_maildir(path: Path) -> mailbox.Maildir:
    for folder in ("tmp", "new", "cur"):  # also completes a folder an operator made empty
        (path / folder).mkdir(parents=True, exist_ok=True)
    return mailbox.Maildir(path, create=False)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
