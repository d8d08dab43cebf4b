"""A scripted aiosmtpd server on 127.0.0.1 port 0 for SMTP client tests.

Each test scripts the server's misbehaviour (replies per command, dropped connections, a
server that never answers) and reads what the server saw (connections, concurrent sessions,
DATA commands). No mock ever stands in for the SMTP conversation.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import shutil
import socket
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, Session

from tests.certificates import make_self_signed

DROP = "drop"
"""Scripted reply: close the connection instead of answering."""
HANG = "hang"
"""Scripted reply: never answer (until the client goes away)."""
GREET = "greet"
"""Scripted greeting: the normal 220, then the conversation."""


@dataclass
class Seen:
    """What the server observed, for assertions."""

    connections: int = 0
    open_now: int = 0
    max_open: int = 0
    data_commands: int = 0
    in_data: int = 0
    max_in_data: int = 0
    overlapped: bool = False
    messages: list[bytes] = field(default_factory=list)
    recipients: list[str] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)
    """MAIL, RCPT, DATA (the command) and "end of data", as each arrives."""
    auth: list[str] = field(default_factory=list)
    """The AUTH exchange as it went over the wire: the client's lines and the challenges."""
    _changed: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    def changed(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_until(self, condition: Callable[[Seen], bool], timeout_s: float = 5.0) -> None:
        """Until ``condition`` holds for what the server saw; TimeoutError after ``timeout_s``."""
        async with asyncio.timeout(timeout_s):
            while not condition(self):
                await self._changed.wait()


@dataclass
class Script:
    """Replies to play, per command, in order; once a list is used up the server accepts."""

    greeting: list[str] = field(default_factory=list)
    """Per connection: GREET, HANG, DROP or a reply to send instead of 220 (then hang up)."""
    mail: list[str] = field(default_factory=list)
    rcpt: list[str] = field(default_factory=list)
    data_command: list[str] = field(default_factory=list)
    """Replies to the DATA command itself, instead of 354 (HANG: never say 354)."""
    data: list[str] = field(default_factory=list)
    """Replies after the message's final ".". Any reply may quote the AUTH exchange as
    ``{auth}``."""
    overlap_data: int = 0
    """Hold each message in DATA until this many sessions are in DATA at once (then let all
    go), so a test can see real parallelism; gives up after 5 s if the client never gets there."""


class _Handler:
    def __init__(self, script: Script, seen: Seen) -> None:
        self.script = script
        self.seen = seen

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: Any
    ) -> str:
        self.seen.commands.append("MAIL")
        self.seen.changed()
        reply = await _play(server, self.script.mail, self.seen)
        if reply is None:
            envelope.mail_from = address
            return "250 OK"
        return reply

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: Any
    ) -> str:
        self.seen.commands.append("RCPT")
        self.seen.changed()
        reply = await _play(server, self.script.rcpt, self.seen)
        if reply is None:
            envelope.rcpt_tos.append(address)
            self.seen.recipients.append(address)
            return "250 OK"
        return reply

    async def _overlap(self) -> None:
        wanted = self.script.overlap_data
        if not wanted or self.seen.overlapped:
            return
        with contextlib.suppress(TimeoutError):
            await self.seen.wait_until(
                lambda seen: seen.overlapped or seen.in_data >= wanted, timeout_s=5.0
            )
        self.seen.overlapped = True  # the last to arrive releases the others
        self.seen.changed()

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.seen.commands.append("end of data")
        self.seen.in_data += 1
        self.seen.max_in_data = max(self.seen.max_in_data, self.seen.in_data)
        self.seen.changed()
        try:
            await self._overlap()
            reply = await _play(server, self.script.data, self.seen)
        finally:
            self.seen.in_data -= 1
        if reply is None:
            self.seen.messages.append(envelope.original_content or b"")
            return f"250 2.0.0 Ok: queued as M{len(self.seen.messages)}"
        return reply


async def _play(server: SMTP, replies: list[str], seen: Seen) -> str | None:
    if not replies:
        return None
    reply = replies.pop(0)
    if reply == DROP:
        assert server.transport is not None
        server.transport.close()
        return ""
    if reply == HANG:
        await asyncio.Event().wait()  # cancelled by aiosmtpd when the client disconnects
    return reply.replace("{auth}", " ".join(seen.auth))


class _CountingSMTP(SMTP):
    seen: Seen
    script: Script

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        first = self.transport is None  # STARTTLS calls this again on the same session
        super().connection_made(transport)
        if first:
            self.seen.connections += 1
            self.seen.open_now += 1
            self.seen.max_open = max(self.seen.max_open, self.seen.open_now)
            self.seen.changed()

    def connection_lost(self, error: Exception | None) -> None:
        super().connection_lost(error)
        self.seen.open_now -= 1
        self.seen.changed()

    async def _handle_client(self) -> None:
        greeting = self.script.greeting.pop(0) if self.script.greeting else GREET
        if greeting == GREET:
            await super()._handle_client()
            return
        if greeting == HANG:
            await asyncio.Event().wait()  # cancelled by aiosmtpd when the client disconnects
        if greeting != DROP:
            await self.push(greeting)
        assert self.transport is not None
        self.transport.close()

    async def smtp_DATA(self, arg: str) -> None:
        self.seen.data_commands += 1
        self.seen.commands.append("DATA")
        self.seen.changed()
        reply = await _play(self, self.script.data_command, self.seen)
        if reply is not None:
            if reply:
                await self.push(reply)
            return
        await super().smtp_DATA(arg)

    async def smtp_AUTH(self, arg: str) -> None:
        self.seen.auth.append(f"AUTH {arg}")
        await super().smtp_AUTH(arg)

    async def challenge_auth(
        self, challenge: str | bytes, encode_to_b64: bool = True, log_client_response: bool = False
    ) -> Any:
        raw = challenge.encode() if isinstance(challenge, str) else challenge
        self.seen.auth.append("334 " + (base64.b64encode(raw) if encode_to_b64 else raw).decode())
        answer = await super().challenge_auth(challenge, encode_to_b64, log_client_response)
        if isinstance(answer, bytes):
            self.seen.auth.append(base64.b64encode(answer).decode())
        return answer


@dataclass
class ScriptedServer:
    port: int
    seen: Seen
    script: Script


@asynccontextmanager
async def scripted_server(
    script: Script | None = None,
    *,
    starttls: ssl.SSLContext | None = None,
    implicit_tls: ssl.SSLContext | None = None,
    authenticator: Callable[..., AuthResult] | None = None,
) -> AsyncIterator[ScriptedServer]:
    """Serve on 127.0.0.1, a free port; STARTTLS offered only when ``starttls`` is given."""
    script = script or Script()
    seen = Seen()
    handler = _Handler(script, seen)
    loop = asyncio.get_running_loop()
    sessions: list[_CountingSMTP] = []

    def factory() -> SMTP:
        smtp = _CountingSMTP(
            handler,
            hostname="scripted.test",
            enable_SMTPUTF8=True,
            tls_context=starttls,
            authenticator=authenticator,
            auth_require_tls=False,
            loop=loop,
        )
        smtp.seen = seen
        smtp.script = script
        sessions.append(smtp)
        return smtp

    server = await loop.create_server(factory, "127.0.0.1", 0, ssl=implicit_tls)
    try:
        yield ScriptedServer(server.sockets[0].getsockname()[1], seen, script)
    finally:
        server.close()
        for session in sessions:  # hung sessions too, before the test's loop goes away
            if session.transport is not None:
                session.transport.close()
        await seen.wait_until(lambda now: now.open_now == 0)
        await server.wait_closed()


@asynccontextmanager
async def silent_server() -> AsyncIterator[int]:
    """Accepts connections and never says a word: a relay that hangs before its greeting."""
    writers: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        await reader.read()

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        for writer in writers:
            writer.close()
        server.close()
        await server.wait_closed()


def closed_port() -> int:
    """A port on 127.0.0.1 that nobody listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def password_check(username: str, password: str) -> Callable[..., AuthResult]:
    """An aiosmtpd authenticator accepting exactly one LOGIN/PLAIN pair."""

    def check(server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth: Any) -> Any:
        ok = auth.login == username.encode() and auth.password == password.encode()
        return AuthResult(success=ok, handled=False)  # aiosmtpd then replies 535

    return check


def echoing_login(username: str, password: str, accept: str | None) -> Callable[..., AuthResult]:
    """An authenticator for a relay that quotes the whole AUTH exchange, and the password it
    got, in its refusal; it accepts the right pair only by mechanism ``accept``."""

    def check(server: Any, session: Session, envelope: Envelope, mechanism: str, auth: Any) -> Any:
        ok = auth.login == username.encode() and auth.password == password.encode()
        if ok and mechanism == accept:
            return AuthResult(success=True)
        said = " ".join(server.seen.auth)
        got = auth.password.decode(errors="replace")
        return AuthResult(
            success=False, handled=False, message=f"535 5.7.8 {said} password {got} refused"
        )

    return check


@dataclass(frozen=True)
class Cert:
    cert: Path
    key: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert, self.key)
        return context


@pytest.fixture(scope="session")
def self_signed_cert(tmp_path_factory: pytest.TempPathFactory) -> Cert:
    """A throwaway self-signed certificate for 127.0.0.1, made with the openssl command."""
    if shutil.which("openssl") is None:
        message = "the openssl command makes the test certificate (apt-get install openssl)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    folder = tmp_path_factory.mktemp("tls")
    cert = Cert(folder / "cert.pem", folder / "key.pem")
    make_self_signed(cert.cert, cert.key)
    return cert


class RecordingSleep:
    """Injected in place of asyncio.sleep: records backoff delays and returns at once."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
