"""The operators' test sink: stores what arrives, refuses and fails on cue."""

from __future__ import annotations

import asyncio
import mailbox
import random
import socket
from email.message import EmailMessage
from io import StringIO
from pathlib import Path

import aiosmtplib
import pytest

from tests.integration.smtp_server import RecordingSleep, closed_port
from worker.config import SmtpSettings
from worker.send import Failed, Mailer, Retry, Sent
from worker.sink import RejectRule, Sink, SinkOptions, serve

SENDER = "service@shop.example"


def message(subject: str = "Hello") -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = SENDER
    msg["To"] = "buyer@example.com"
    msg["Subject"] = subject
    msg.set_content("Body\n")
    return msg


def smtp(port: int, attempts: int = 1) -> SmtpSettings:
    return SmtpSettings(host="127.0.0.1", port=port, attempts=attempts, timeout_s=5.0)


def test_reject_rule_is_parsed_from_the_command_line_form() -> None:
    rule = RejectRule.parse("Bad*@Example.com=550 5.1.1 User unknown")
    assert rule == RejectRule("bad*@example.com", 550, "5.1.1 User unknown")
    assert rule.matches("BAD-one@example.COM")
    assert not rule.matches("good@example.com")


def test_reject_rule_without_text_gets_a_default() -> None:
    assert RejectRule.parse("*@blocked.example=451").text


@pytest.mark.parametrize(
    "spec", ["", "bad@example.com", "=550 User unknown", "bad@x=250 Ok", "bad@x=55 x", "bad@x=abc"]
)
def test_bad_reject_rule_says_what_is_expected(spec: str) -> None:
    with pytest.raises(ValueError, match="PATTERN=CODE TEXT"):
        RejectRule.parse(spec)


@pytest.mark.parametrize(
    ("field", "value"), [("fail_rate", 1.5), ("fail_rate", -0.1), ("fail_code", 250)]
)
def test_bad_sink_options_are_refused(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=field):
        SinkOptions(**{field: value})  # type: ignore[arg-type]


async def test_messages_arrive_in_order_into_a_new_maildir(tmp_path: Path) -> None:
    maildir = tmp_path / "deep" / "sink"
    async with Sink(SinkOptions(port=0, maildir=maildir)) as sink:
        async with Mailer(smtp(sink.port)) as mailer:
            for n in range(3):
                outcome = await mailer.send(
                    message(f"n{n}"), sender=SENDER, recipient="buyer@example.com"
                )
                assert isinstance(outcome, Sent)
        await sink.wait_for(3, timeout=5)
    assert [m["Subject"] for m in sink.received] == ["n0", "n1", "n2"]
    assert len(mailbox.Maildir(maildir)) == 3


async def test_reject_rules_refuse_matching_recipients(tmp_path: Path) -> None:
    rule = RejectRule.parse("bad*@example.com=550 5.1.1 User unknown")
    options = SinkOptions(port=0, maildir=tmp_path, reject=(rule,))
    async with Sink(options) as sink, Mailer(smtp(sink.port)) as mailer:
        refused = await mailer.send(message(), sender=SENDER, recipient="Bad1@example.com")
        accepted = await mailer.send(message(), sender=SENDER, recipient="good@example.com")
    assert isinstance(refused, Failed)
    assert refused.suppress is True
    assert "550 5.1.1 User unknown" in refused.reason
    assert isinstance(accepted, Sent)
    assert len(sink.received) == 1


async def test_fail_rate_follows_the_seed(tmp_path: Path) -> None:
    options = SinkOptions(port=0, maildir=tmp_path, fail_rate=0.5, seed=7)
    rng = random.Random(7)
    expected = [rng.random() < 0.5 for _ in range(20)]
    codes: list[int] = []
    async with Sink(options) as sink:
        async with aiosmtplib.SMTP(hostname="127.0.0.1", port=sink.port, start_tls=False) as client:
            await client.mail(SENDER)
            for n in range(20):
                try:
                    codes.append((await client.rcpt(f"buyer{n}@example.com")).code)
                except aiosmtplib.SMTPRecipientRefused as exc:
                    codes.append(exc.code)
                    assert exc.message == options.fail_text
    assert codes == [451 if fails else 250 for fails in expected]
    assert 250 in codes and 451 in codes


async def test_fail_rate_one_makes_the_mailer_retry_later(tmp_path: Path) -> None:
    options = SinkOptions(port=0, maildir=tmp_path, fail_rate=1.0)
    async with Sink(options) as sink:
        async with Mailer(smtp(sink.port, attempts=2), sleep=RecordingSleep()) as mailer:
            outcome = await mailer.send(message(), sender=SENDER, recipient="b@example.com")
    assert isinstance(outcome, Retry)
    assert outcome.code == 451


async def test_wait_for_says_how_many_arrived(tmp_path: Path) -> None:
    async with Sink(SinkOptions(port=0, maildir=tmp_path)) as sink:
        with pytest.raises(TimeoutError, match="0 of 1"):
            await sink.wait_for(1, timeout=0.05)


async def test_listening_beyond_loopback_prints_a_warning(tmp_path: Path) -> None:
    out = StringIO()
    async with Sink(SinkOptions(host="0.0.0.0", port=0, maildir=tmp_path), out=out):
        pass
    assert out.getvalue().startswith("warning: the sink listens on 0.0.0.0:")


async def test_loopback_prints_no_warning(tmp_path: Path) -> None:
    out = StringIO()
    async with Sink(SinkOptions(port=0, maildir=tmp_path), out=out):
        pass
    assert out.getvalue() == ""


async def test_serve_runs_until_stopped_and_releases_the_port(tmp_path: Path) -> None:
    out = StringIO()
    port = closed_port()
    stop = asyncio.Event()
    stop.set()
    await serve(SinkOptions(port=port, maildir=tmp_path / "m"), stop, out)
    assert out.getvalue() == f"sink listening on 127.0.0.1:{port}, writing to {tmp_path / 'm'}\n"
    with socket.socket() as again:
        again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as a restarted sink would
        again.bind(("127.0.0.1", port))
