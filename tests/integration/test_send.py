"""The send step against real aiosmtpd servers on loopback, misbehaving on cue."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import email.policy
import mailbox
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import make_msgid
from io import StringIO
from pathlib import Path
from typing import Any

import pytest

from tests.integration.smtp_server import (
    DROP,
    GREET,
    HANG,
    Cert,
    RecordingSleep,
    Script,
    Seen,
    closed_port,
    echoing_login,
    password_check,
    scripted_server,
    self_signed_cert,
    silent_server,
)
from worker.clock import FixedClock
from worker.config import SmtpSettings, TlsMode
from worker.send import Failed, Handover, InDoubt, Mailer, Outcome, Retry, Sent
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


async def test_bytes_go_out_as_given_with_crlf_lines() -> None:
    raw = b"Subject: bytes\n\n.a dot first\r\n..two\rlast line"
    built = message()
    async with scripted_server() as server:
        async with Mailer(settings(server.port)) as mailer:
            outcome = await mailer.send(raw, sender=SENDER, recipient=BUYER)
            again = await mailer.send(built, sender=SENDER, recipient=BUYER)
    assert isinstance(outcome, Sent)
    assert isinstance(again, Sent)
    assert server.seen.messages == [
        b"Subject: bytes\r\n\r\n.a dot first\r\n..two\r\nlast line\r\n",
        built.as_bytes(policy=email.policy.SMTP),
    ]


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


# Replies read with care ---------------------------------------------------------------------

RELAY_MISCONFIGURATION = [
    "550 Sender address rejected: not owned by user",
    "550 Sender domain does not exist",
    "550 Requested action not taken: mailbox unavailable (sender IP on blocklist)",
    "550 5.0.0 Relay access denied",
    "550-Verification failed for <service@shop.example>\r\n550-Unrouteable address\r\n"
    "550 Sender verify failed",
]


@pytest.mark.parametrize("reply", RELAY_MISCONFIGURATION)
@pytest.mark.parametrize("command", ["mail", "rcpt", "data"])
async def test_a_misconfigured_relay_suppresses_no_buyer(reply: str, command: str) -> None:
    async with scripted_server(Script(**{command: [reply]})) as server:
        async with Mailer(settings(server.port, concurrency=2)) as mailer:
            outcomes = await asyncio.gather(
                *(mailer.send(message(n), sender=SENDER, recipient=BUYER) for n in range(2))
            )
    assert [type(o) for o in outcomes] == [Failed, Sent]
    failed = outcomes[0]
    assert isinstance(failed, Failed)
    assert failed.suppress is False
    assert "\n" not in failed.reason


async def test_unknown_user_refused_at_rcpt_without_a_status_suppresses() -> None:
    reply = f"550 <{BUYER}>: Recipient address rejected: User unknown in local recipient table"
    async with scripted_server(Script(rcpt=[reply])) as server:
        outcome = await send_one(settings(server.port))
    assert isinstance(outcome, Failed)
    assert outcome.suppress is True
    assert "RCPT" in outcome.reason


async def test_unknown_user_after_the_data_suppresses_no_one() -> None:
    async with scripted_server(Script(data=["550 5.1.1 User unknown"])) as server:
        outcome = await send_one(settings(server.port))
    assert isinstance(outcome, Failed)
    assert outcome.suppress is False


async def test_refusal_of_the_data_command_is_not_in_doubt() -> None:
    script = Script(data_command=["554 5.5.1 Error: no valid recipients"])
    async with scripted_server(script) as server:
        outcome = await send_one(settings(server.port))
    assert isinstance(outcome, Failed)
    assert outcome.suppress is False
    assert server.seen.messages == []


async def test_a_long_multiline_reply_is_stored_as_one_short_line() -> None:
    reply = "550-5.7.1 " + "\r\n550-5.7.1 ".join(f"line {n}\x07 blah" * 5 for n in range(40))
    async with scripted_server(Script(rcpt=[reply + "\r\n550 5.7.1 end"])) as server:
        outcome = await send_one(settings(server.port))
    assert isinstance(outcome, Failed)
    assert "\n" not in outcome.reason
    assert "\x07" not in outcome.reason
    assert len(outcome.reason) < 700


# Credentials never leave the mailer ---------------------------------------------------------

USER, PASSWORD = "shop", "s3cret-Pa55word!"


def b64(raw: str) -> str:
    return base64.b64encode(raw.encode()).decode()


SECRET_FORMS = (PASSWORD, b64(PASSWORD), b64(f"\0{USER}\0{PASSWORD}"))


def text_fields(outcome: Outcome) -> list[str]:
    return [str(getattr(outcome, f.name)) for f in dataclasses.fields(outcome)]


async def test_a_relay_echoing_the_auth_exchange_in_its_refusal_leaks_nothing() -> None:
    authenticator = echoing_login(USER, PASSWORD, accept=None)
    async with scripted_server(authenticator=authenticator) as server:
        async with Mailer(settings(server.port, username=USER, password=PASSWORD)) as mailer:
            outcome = await mailer.send(message(), sender=SENDER, recipient=BUYER)
    echoed = " ".join(server.seen.auth)
    assert all(form in echoed for form in SECRET_FORMS[1:])  # PLAIN and LOGIN both went by
    assert isinstance(outcome, Failed)
    assert outcome.code == 535
    assert "[credentials removed]" in outcome.reason
    for value in text_fields(outcome):
        for form in SECRET_FORMS:
            assert form not in value


@pytest.mark.parametrize(
    ("script", "kind"),
    [
        (Script(mail=["530 5.7.0 Refused after {auth} with " + PASSWORD]), Failed),
        (Script(rcpt=["451 4.7.1 Later; you said {auth} " + PASSWORD]), Retry),
        (Script(data=["554 5.7.1 {auth}\r\n554 5.7.1 " + PASSWORD]), Failed),
        (Script(data=["250 2.0.0 Ok: queued as Q1 after {auth} " + PASSWORD]), Sent),
    ],
)
async def test_a_relay_echoing_the_login_in_any_reply_leaks_nothing(
    script: Script, kind: type
) -> None:
    authenticator = echoing_login(USER, PASSWORD, accept="LOGIN")
    async with scripted_server(script, authenticator=authenticator) as server:
        smtp = settings(server.port, username=USER, password=PASSWORD, attempts=1)
        async with Mailer(smtp) as mailer:
            outcome = await mailer.send(message(), sender=SENDER, recipient=BUYER)
    assert all(form in " ".join(server.seen.auth) for form in SECRET_FORMS[1:])
    assert isinstance(outcome, kind)
    for value in text_fields(outcome):
        assert "\n" not in value
        for form in SECRET_FORMS:
            assert form not in value


# What a cancelled send had handed over ------------------------------------------------------


async def cancel_when(server_seen: Seen, command: str, send: asyncio.Task[Outcome]) -> None:
    await server_seen.wait_until(lambda seen: command in seen.commands)
    send.cancel()
    with pytest.raises(asyncio.CancelledError):
        await send


@pytest.mark.parametrize(
    ("script", "hung_at", "data_started"),
    [
        (Script(rcpt=[HANG]), "RCPT", False),
        (Script(data_command=[HANG]), "DATA", False),
        (Script(data=[HANG]), "end of data", True),
    ],
)
async def test_a_cancelled_send_says_whether_the_data_had_started(
    script: Script, hung_at: str, data_started: bool
) -> None:
    progress = Handover()
    async with scripted_server(script) as server:
        async with Mailer(settings(server.port)) as mailer:
            send = asyncio.create_task(
                mailer.send(message(), sender=SENDER, recipient=BUYER, progress=progress)
            )
            await cancel_when(server.seen, hung_at, send)
    assert progress.data_started is data_started


class BlockingSleep:
    """A backoff that never ends, so a test can cancel a send while it waits to retry."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()

    async def __call__(self, seconds: float) -> None:
        self.entered.set()
        await asyncio.Event().wait()


async def test_data_refused_with_4xx_then_cancelled_in_backoff_had_not_started() -> None:
    progress = Handover()
    sleep = BlockingSleep()
    async with scripted_server(Script(data=["452 4.3.1 Queue full"])) as server:
        async with Mailer(settings(server.port), sleep=sleep) as mailer:
            send = asyncio.create_task(
                mailer.send(message(), sender=SENDER, recipient=BUYER, progress=progress)
            )
            async with asyncio.timeout(5):
                await sleep.entered.wait()
            send.cancel()
            with pytest.raises(asyncio.CancelledError):
                await send
    assert server.seen.data_commands == 1
    assert progress.data_started is False


async def test_deadline_waiting_for_354_gives_retry_not_in_doubt() -> None:
    progress = Handover()
    async with scripted_server(Script(data_command=[HANG])) as server:
        async with Mailer(settings(server.port, message_deadline_s=0.3)) as mailer:
            outcome = await mailer.send(
                message(), sender=SENDER, recipient=BUYER, progress=progress
            )
    assert isinstance(outcome, Retry)
    assert "DATA" in outcome.reason
    assert "before the message was handed over" in outcome.reason
    assert progress.data_started is False


async def test_deadline_after_the_data_is_in_doubt_and_progress_agrees() -> None:
    progress = Handover()
    async with scripted_server(Script(data=[HANG])) as server:
        async with Mailer(settings(server.port, message_deadline_s=0.3)) as mailer:
            outcome = await mailer.send(
                message(), sender=SENDER, recipient=BUYER, progress=progress
            )
    assert isinstance(outcome, InDoubt)
    assert progress.data_started is True


# The circuit breaker ------------------------------------------------------------------------


async def send_many(mailer: Mailer, count: int) -> list[Outcome]:
    return await asyncio.gather(
        *(mailer.send(message(n), sender=SENDER, recipient=BUYER) for n in range(count))
    )


def relay_down(outcomes: list[Outcome]) -> int:
    return sum(isinstance(o, Retry) and o.reason.startswith("relay down: ") for o in outcomes)


async def test_a_relay_that_never_greets_opens_the_breaker() -> None:
    timeout_s, failures, concurrency = 0.5, 3, 4
    loop = asyncio.get_running_loop()
    async with scripted_server(Script(greeting=[HANG] * 100)) as server:
        smtp = settings(
            server.port,
            timeout_s=timeout_s,
            message_deadline_s=60.0,
            concurrency=concurrency,
            attempts=3,
            breaker_failures=failures,
        )
        async with Mailer(smtp, sleep=RecordingSleep()) as mailer:
            started = loop.time()
            outcomes = await send_many(mailer, 20)
            elapsed = loop.time() - started
            down = mailer.relay_down
    assert all(isinstance(o, Retry) for o in outcomes)
    assert down is not None
    assert "no greeting within 0.5s" in down
    assert relay_down(outcomes) >= 20 - concurrency
    assert server.seen.connections <= failures + concurrency
    assert elapsed < (failures + 2) * timeout_s


async def test_a_relay_that_refuses_connections_opens_the_breaker() -> None:
    timeout_s, failures, concurrency = 0.5, 3, 4
    loop = asyncio.get_running_loop()
    smtp = settings(
        closed_port(),
        timeout_s=timeout_s,
        concurrency=concurrency,
        attempts=3,
        breaker_failures=failures,
    )
    sleep = RecordingSleep()
    async with Mailer(smtp, sleep=sleep) as mailer:
        started = loop.time()
        outcomes = await send_many(mailer, 20)
        elapsed = loop.time() - started
        down = mailer.relay_down
    assert all(isinstance(o, Retry) for o in outcomes)
    assert down is not None
    assert "SMTPConnectError" in down
    assert relay_down(outcomes) >= 20 - concurrency
    assert len(sleep.delays) < failures  # no retry once the relay is known to be down
    assert elapsed < (failures + 2) * timeout_s


async def test_a_greeting_resets_the_count_so_only_failures_in_a_row_open_it() -> None:
    busy = "421 4.3.2 Service not available, try later"
    async with scripted_server(Script(greeting=[busy, GREET, busy, busy])) as server:
        async with Mailer(settings(server.port, attempts=1, breaker_failures=2)) as mailer:
            send = lambda: mailer.send(message(), sender=SENDER, recipient=BUYER)  # noqa: E731
            assert isinstance(await send(), Retry)
            assert mailer.relay_down is None
            assert isinstance(await send(), Sent)
            await mailer.close()  # the next message needs a connection of its own
            assert isinstance(await send(), Retry)
            assert mailer.relay_down is None
            assert isinstance(await send(), Retry)
            assert mailer.relay_down is not None
            assert "421" in mailer.relay_down
            last = await send()
    assert isinstance(last, Retry)
    assert last.reason.startswith("relay down: ")
    assert server.seen.connections == 4


async def test_a_5xx_greeting_counts_towards_the_breaker() -> None:
    script = Script(greeting=["554 5.3.2 No SMTP service here"] * 10)
    async with scripted_server(script) as server:
        async with Mailer(settings(server.port, attempts=1, breaker_failures=2)) as mailer:
            outcomes = [
                await mailer.send(message(n), sender=SENDER, recipient=BUYER) for n in range(5)
            ]
    assert [type(o) for o in outcomes] == [Failed, Failed, Retry, Retry, Retry]
    assert relay_down(outcomes) == 3
    assert server.seen.connections == 2


async def test_tls_handshake_failures_count_towards_the_breaker(self_signed_cert: Cert) -> None:
    context = self_signed_cert.server_context()
    async with scripted_server(implicit_tls=context) as server:
        smtp = settings(server.port, tls=TlsMode.IMPLICIT, attempts=1, breaker_failures=2)
        async with Mailer(smtp) as mailer:
            outcomes = [
                await mailer.send(message(n), sender=SENDER, recipient=BUYER) for n in range(3)
            ]
    assert [type(o) for o in outcomes] == [Failed, Failed, Retry]
    assert relay_down(outcomes) == 1


async def test_refusals_after_the_greeting_never_open_the_breaker() -> None:
    script = Script(mail=["451 4.3.0 Later"] * 3, rcpt=["550 5.1.1 User unknown"])
    async with scripted_server(script) as server:
        async with Mailer(settings(server.port, attempts=1, breaker_failures=1)) as mailer:
            outcomes = [
                await mailer.send(message(n), sender=SENDER, recipient=BUYER) for n in range(5)
            ]
            down = mailer.relay_down
    assert down is None
    assert relay_down(outcomes) == 0
    assert isinstance(outcomes[-1], Sent)
