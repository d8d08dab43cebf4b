"""The send step against real aiosmtpd servers on loopback, misbehaving on cue."""

from __future__ import annotations

import asyncio
import email.policy
import mailbox
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import make_msgid
from io import StringIO
from pathlib import Path
from typing import Any

from tests.integration.smtp_server import (
    DROP,
    HANG,
    Cert,
    RecordingSleep,
    Script,
    closed_port,
    password_check,
    scripted_server,
    self_signed_cert,
    silent_server,
)
from worker.clock import FixedClock
from worker.config import SmtpSettings, TlsMode
from worker.send import Failed, InDoubt, Mailer, Retry, Sent
from worker.sink import Sink, SinkOptions

__all__ = ["self_signed_cert"]  # a fixture: imported so pytest finds it

SENDER = "service@shop.example"
BUYER = "buyer@example.com"


def settings(port: int, **overrides: Any) -> SmtpSettings:
    values: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": port,
        "timeout_s": 5.0,
        "message_deadline_s": 10.0,
        "concurrency": 1,
        "attempts": 3,
        "backoff_initial_s": 0.5,
        "backoff_max_s": 4.0,
        "helo_name": "worker.test",
    }
    return SmtpSettings(**(values | overrides))


def message(n: int = 1) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = f"Shop <{SENDER}>"
    msg["To"] = BUYER
    msg["Subject"] = f"Bestellung {n}: ist alles gut angekommen? Grüße"
    msg["Message-ID"] = make_msgid(domain="shop.example")
    msg.set_content("Hallo,\n.\n.a line that starts with a dot\nDanke!\n")
    return msg


async def send_one(smtp: SmtpSettings, sleep: RecordingSleep | None = None, n: int = 1) -> Any:
    async with Mailer(smtp, sleep=sleep or RecordingSleep()) as mailer:
        return await mailer.send(message(n), sender=SENDER, recipient=BUYER)


async def test_message_is_delivered_through_the_sink_intact(tmp_path: Path) -> None:
    out = StringIO()
    clock = FixedClock(datetime(2025, 3, 1, 9, 30, tzinfo=UTC))
    options = SinkOptions(port=0, maildir=tmp_path / "sink")
    sent = message()
    async with Sink(options, out=out, clock=clock) as sink:
        async with Mailer(settings(sink.port)) as mailer:
            outcome = await mailer.send(sent, sender=SENDER, recipient=BUYER)

    assert isinstance(outcome, Sent)
    assert outcome.reply.startswith("250 2.0.0 Ok: queued as ")
    [got] = sink.received
    for header in ("From", "To", "Subject", "Message-ID"):
        assert got[header] == sent[header]
    assert got.get_content() == sent.get_content()
    [key] = mailbox.Maildir(tmp_path / "sink").keys()
    assert outcome.relay_message_id == key
    stored = mailbox.Maildir(tmp_path / "sink")[key]
    assert stored["Message-ID"] == sent["Message-ID"]
    assert stored["Return-Path"] == f"<{SENDER}>"
    size = len(sent.as_bytes(policy=email.policy.SMTP))
    assert out.getvalue() == (
        f"2025-03-01T09:30:00+00:00 from={SENDER} to={BUYER} subject={sent['Subject']} "
        f"message-id={sent['Message-ID']} bytes={size}\n"
    )


async def test_message_goes_out_with_crlf_line_endings() -> None:
    async with scripted_server() as server:
        assert isinstance(await send_one(settings(server.port)), Sent)
    [data] = server.seen.messages
    assert b"\r\n" in data
    assert b"\n" not in data.replace(b"\r\n", b"")


async def test_one_connection_carries_many_messages_when_concurrency_is_one() -> None:
    async with scripted_server() as server:
        async with Mailer(settings(server.port)) as mailer:
            outcomes = await asyncio.gather(
                *(mailer.send(message(n), sender=SENDER, recipient=BUYER) for n in range(6))
            )
            again = await mailer.send(message(7), sender=SENDER, recipient=BUYER)
        await server.seen.wait_until(lambda seen: seen.open_now == 0)
    assert all(isinstance(o, Sent) for o in [*outcomes, again])
    assert server.seen.connections == 1
    assert len(server.seen.messages) == 7


async def test_no_more_than_concurrency_sessions_at_once() -> None:
    async with scripted_server(Script(overlap_data=3)) as server:
        async with Mailer(settings(server.port, concurrency=3)) as mailer:
            outcomes = await asyncio.gather(
                *(mailer.send(message(n), sender=SENDER, recipient=BUYER) for n in range(12))
            )
    assert all(isinstance(o, Sent) for o in outcomes)
    assert server.seen.max_open <= 3
    assert server.seen.max_in_data == 3  # bounded, yet really parallel
    assert server.seen.connections == 3


async def test_transient_rcpt_refusal_is_retried_with_jittered_backoff() -> None:
    sleep = RecordingSleep()
    script = Script(rcpt=["451 4.3.0 Try again later", "451 4.3.0 Try again later"])
    async with scripted_server(script) as server:
        outcome = await send_one(settings(server.port, attempts=3), sleep)
    assert isinstance(outcome, Sent)
    assert len(server.seen.messages) == 1
    assert len(sleep.delays) == 2
    assert 0 <= sleep.delays[0] <= 0.5
    assert 0 <= sleep.delays[1] <= 1.0


async def test_attempts_exhausted_gives_retry_with_the_last_reply() -> None:
    sleep = RecordingSleep()
    script = Script(rcpt=["450 4.2.1 Mailbox busy"] * 3)
    async with scripted_server(script) as server:
        outcome = await send_one(settings(server.port, attempts=3), sleep)
    assert isinstance(outcome, Retry)
    assert outcome.code == 450
    assert "450 4.2.1 Mailbox busy" in outcome.reason
    assert "RCPT" in outcome.reason
    assert len(sleep.delays) == 2
    assert server.seen.data_commands == 0


async def test_4xx_after_the_final_dot_is_retried() -> None:
    sleep = RecordingSleep()
    async with scripted_server(Script(data=["452 4.3.1 Queue full"])) as server:
        outcome = await send_one(settings(server.port), sleep)
    assert isinstance(outcome, Sent)
    assert server.seen.data_commands == 2
    assert len(sleep.delays) == 1


async def test_unknown_user_fails_and_suppresses() -> None:
    sleep = RecordingSleep()
    async with scripted_server(Script(rcpt=["550 5.1.1 User unknown"])) as server:
        outcome = await send_one(settings(server.port), sleep)
    assert outcome == Failed(outcome.reason, 550, suppress=True)
    assert "550 5.1.1 User unknown" in outcome.reason
    assert sleep.delays == []


async def test_policy_refusal_fails_without_suppressing() -> None:
    script = Script(rcpt=["550 5.7.1 Message rejected due to sender reputation"])
    async with scripted_server(script) as server:
        outcome = await send_one(settings(server.port))
    assert isinstance(outcome, Failed)
    assert outcome.suppress is False
    assert "our side" in outcome.reason


async def test_sender_refusal_never_suppresses_the_buyer() -> None:
    async with scripted_server(Script(mail=["553 5.1.1 Sender address unknown"])) as server:
        outcome = await send_one(settings(server.port))
    assert isinstance(outcome, Failed)
    assert outcome.suppress is False


async def test_dropped_connection_after_the_final_dot_is_in_doubt_and_not_retried(
    tmp_path: Path,
) -> None:
    sleep = RecordingSleep()
    out = StringIO()
    options = SinkOptions(port=0, maildir=tmp_path / "sink", drop_after_data="buyer@*")
    async with Sink(options, out=out) as sink:
        outcome = await send_one(settings(sink.port, attempts=4), sleep)
    assert isinstance(outcome, InDoubt)
    assert "DATA" in outcome.reason
    assert len(sink.received) == 1
    assert sleep.delays == []
    assert out.getvalue().count("\n") == 1


async def test_drop_during_data_in_a_scripted_server_saw_one_data() -> None:
    async with scripted_server(Script(data=[DROP])) as server:
        outcome = await send_one(settings(server.port))
    assert isinstance(outcome, InDoubt)
    assert server.seen.data_commands == 1


async def test_connection_refused_is_retried_then_gives_retry() -> None:
    sleep = RecordingSleep()
    outcome = await send_one(settings(closed_port(), attempts=2), sleep)
    assert isinstance(outcome, Retry)
    assert outcome.code is None
    assert "connect" in outcome.reason
    assert len(sleep.delays) == 1


async def test_deadline_before_greeting_gives_retry_within_the_deadline() -> None:
    loop = asyncio.get_running_loop()
    async with silent_server() as port:
        started = loop.time()
        outcome = await send_one(settings(port, timeout_s=30.0, message_deadline_s=0.3))
        elapsed = loop.time() - started
    assert isinstance(outcome, Retry)
    assert "deadline" in outcome.reason
    assert elapsed < 2.0


async def test_command_timeout_before_data_gives_retry() -> None:
    sleep = RecordingSleep()
    async with silent_server() as port:
        outcome = await send_one(settings(port, timeout_s=0.2, attempts=2), sleep)
    assert isinstance(outcome, Retry)
    assert len(sleep.delays) == 1


async def test_deadline_while_waiting_for_the_data_reply_gives_in_doubt() -> None:
    loop = asyncio.get_running_loop()
    async with scripted_server(Script(data=[HANG])) as server:
        started = loop.time()
        outcome = await send_one(settings(server.port, message_deadline_s=0.3))
        elapsed = loop.time() - started
    assert isinstance(outcome, InDoubt)
    assert server.seen.data_commands == 1
    assert elapsed < 2.0


async def test_starttls_required_but_not_offered_fails_without_plaintext() -> None:
    async with scripted_server() as server:
        outcome = await send_one(settings(server.port, tls=TlsMode.STARTTLS))
    assert isinstance(outcome, Failed)
    assert "STARTTLS" in outcome.reason
    assert outcome.suppress is False
    assert server.seen.recipients == []


async def test_starttls_with_self_signed_cert(self_signed_cert: Cert) -> None:
    context = self_signed_cert.server_context()
    async with scripted_server(starttls=context) as server:
        smtp = settings(server.port, tls=TlsMode.STARTTLS, validate_certs=False)
        outcome = await send_one(smtp)
    assert isinstance(outcome, Sent)
    assert len(server.seen.messages) == 1


async def test_implicit_tls_with_self_signed_cert(self_signed_cert: Cert) -> None:
    context = self_signed_cert.server_context()
    async with scripted_server(implicit_tls=context) as server:
        smtp = settings(server.port, tls=TlsMode.IMPLICIT, validate_certs=False)
        outcome = await send_one(smtp)
    assert isinstance(outcome, Sent)


async def test_untrusted_certificate_fails_for_good(self_signed_cert: Cert) -> None:
    sleep = RecordingSleep()
    context = self_signed_cert.server_context()
    async with scripted_server(implicit_tls=context) as server:
        outcome = await send_one(settings(server.port, tls=TlsMode.IMPLICIT), sleep)
    assert isinstance(outcome, Failed)
    assert "validate_certs" in outcome.reason
    assert sleep.delays == []


async def test_login_with_the_right_password_sends() -> None:
    async with scripted_server(authenticator=password_check("shop", "s3cret")) as server:
        outcome = await send_one(settings(server.port, username="shop", password="s3cret"))
    assert isinstance(outcome, Sent)


async def test_refused_login_fails_and_names_the_settings() -> None:
    sleep = RecordingSleep()
    async with scripted_server(authenticator=password_check("shop", "s3cret")) as server:
        smtp = settings(server.port, username="shop", password="wrong")
        outcome = await send_one(smtp, sleep)
    assert isinstance(outcome, Failed)
    assert outcome.code == 535
    assert outcome.suppress is False
    assert "WORKER_SMTP_PASSWORD" in outcome.reason
    assert sleep.delays == []


async def test_closing_the_mailer_quits_pooled_connections() -> None:
    async with scripted_server() as server:
        assert isinstance(await send_one(settings(server.port)), Sent)
        await server.seen.wait_until(lambda seen: seen.open_now == 0)
    assert server.seen.connections == 1


async def test_an_address_with_a_line_break_fails_before_any_connection() -> None:
    async with scripted_server() as server:
        async with Mailer(settings(server.port)) as mailer:
            outcome = await mailer.send(message(), sender=SENDER, recipient="a@b\r\nRCPT TO:<x@y>")
    assert isinstance(outcome, Failed)
    assert server.seen.connections == 0
