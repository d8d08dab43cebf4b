"""worker.mailbox against a real Dovecot on loopback: logins, fetching, IDLE, failures."""

from __future__ import annotations

import asyncio
import time
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta, timezone

import pytest

from tests.dovecot import Dovecot, User
from worker.config import ImapSettings, TlsMode
from worker.errors import MailboxError
from worker.inbound import ParseLimits, parse
from worker.mailbox import Mailbox

SEEN = b"\\Seen"


def message(n: int, subject: str = "Re: Order 305-1234567-7654321") -> bytes:
    return (
        f"Message-ID: <m{n}.reply@buyer.example>\r\n"
        "Date: Mon, 02 Mar 2026 09:15:00 +0100\r\n"
        "From: Erika Muster <erika@buyer.example>\r\n"
        "To: service@shop.example\r\n"
        f"Subject: {subject} ({n})\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        "\r\n"
        f"The kettle arrived, thank you. Message {n}.\r\n"
    ).encode()


def long_message(n: int, size: int) -> bytes:
    """A message of about ``size`` bytes: a short header and many lines of text."""
    line = f"Line of a long message {n}, written to fill it up.\r\n".encode()
    return message(n)[:-2] + line * (size // len(line))


@asynccontextmanager
async def connected(
    settings: ImapSettings, folder: str = "INBOX", max_message_bytes: int | None = None
) -> AsyncIterator[Mailbox]:
    mailbox = Mailbox(settings, max_message_bytes=max_message_bytes)
    await mailbox.connect()
    try:
        await mailbox.select(folder)
        yield mailbox
    finally:
        await mailbox.close()


async def within(seconds: float, call: Callable[[], Awaitable[object]]) -> MailboxError:
    """The MailboxError that ``call`` raises, asserting it came within ``seconds``."""
    started = time.monotonic()
    with pytest.raises(MailboxError) as caught:
        await call()
    assert time.monotonic() - started < seconds
    return caught.value


def flags(dovecot: Dovecot, user: User, folder: str = "INBOX") -> dict[int, tuple[bytes, ...]]:
    with dovecot.client(user) as client:
        client.select_folder(folder, readonly=True)
        return dict(client.get_flags(client.search("ALL")))


@pytest.mark.parametrize("tls", list(TlsMode))
async def test_logs_in_with_each_tls_mode(
    dovecot: Dovecot, mailbox_user: User, tls: TlsMode
) -> None:
    dovecot.append(mailbox_user, "INBOX", message(1))
    async with connected(dovecot.imap_settings(mailbox_user, tls=tls)) as mailbox:
        assert mailbox.supports_idle
        assert [m.raw for m in await mailbox.fetch_after(0, 10)] == [message(1)]


async def test_wrong_password_names_the_user(dovecot: Dovecot, mailbox_user: User) -> None:
    settings = dovecot.imap_settings(mailbox_user, password="wrong")
    error = await within(10, Mailbox(settings).connect)
    assert f"login refused for {mailbox_user.name}" in str(error)
    assert "WORKER_IMAP_PASSWORD" in str(error)
    assert error.where == f"imap 127.0.0.1:{dovecot.port}"


@pytest.mark.parametrize("tls", [TlsMode.IMPLICIT, TlsMode.STARTTLS])
async def test_untrusted_certificate_is_refused(
    dovecot: Dovecot, mailbox_user: User, tls: TlsMode
) -> None:
    settings = dovecot.imap_settings(mailbox_user, tls=tls, ca_file=None)
    error = await within(10, Mailbox(settings).connect)
    assert "not trusted" in str(error)


async def test_unvalidated_certificate_is_accepted_when_configured(
    dovecot: Dovecot, mailbox_user: User
) -> None:
    settings = dovecot.imap_settings(
        mailbox_user, tls=TlsMode.IMPLICIT, ca_file=None, validate_certs=False
    )
    async with connected(settings) as mailbox:
        assert await mailbox.fetch_after(0, 1) == []


async def test_fetches_in_batches_on_uid_boundaries(dovecot: Dovecot, mailbox_user: User) -> None:
    uids = [dovecot.append(mailbox_user, "INBOX", message(n)) for n in range(5)]
    async with connected(dovecot.imap_settings(mailbox_user)) as mailbox:
        batches = [await mailbox.fetch_after(last, 2) for last in (0, uids[1], uids[3], uids[4])]
    assert [[m.uid for m in batch] for batch in batches] == [uids[:2], uids[2:4], uids[4:], []]
    assert [m.raw for m in batches[1]] == [message(2), message(3)]


async def test_fetching_leaves_flags_alone(dovecot: Dovecot, mailbox_user: User) -> None:
    unread = dovecot.append(mailbox_user, "INBOX", message(1))
    read = dovecot.append(mailbox_user, "INBOX", message(2), flags=["\\Seen"])
    async with connected(dovecot.imap_settings(mailbox_user)) as mailbox:
        assert len(await mailbox.fetch_after(0, 10)) == 2
    after = flags(dovecot, mailbox_user)
    assert SEEN not in after[unread]
    assert SEEN in after[read]


async def test_internal_date_is_utc(dovecot: Dovecot, mailbox_user: User) -> None:
    tokyo = datetime(2026, 3, 2, 17, 45, 12, tzinfo=timezone(timedelta(hours=9)))
    dovecot.append(mailbox_user, "INBOX", message(1), when=tokyo)
    async with connected(dovecot.imap_settings(mailbox_user)) as mailbox:
        (fetched,) = await mailbox.fetch_after(0, 10)
    assert fetched.internal_date == tokyo
    assert fetched.internal_date.tzinfo is UTC


async def test_select_reports_the_folder(dovecot: Dovecot, mailbox_user: User) -> None:
    uid = dovecot.append(mailbox_user, "INBOX", message(1))
    async with connected(dovecot.imap_settings(mailbox_user)) as mailbox:
        status = await mailbox.select("INBOX")
    assert (status.folder, status.exists, status.uidnext) == ("INBOX", 1, uid + 1)
    assert status.uidvalidity == dovecot.uidvalidity(mailbox_user, "INBOX")


async def test_wait_for_news_wakes_on_new_mail(dovecot: Dovecot, mailbox_user: User) -> None:
    async with connected(dovecot.imap_settings(mailbox_user)) as mailbox:
        waiting = asyncio.create_task(mailbox.wait_for_news(30))
        await asyncio.to_thread(dovecot.append, mailbox_user, "INBOX", message(1))
        assert await asyncio.wait_for(waiting, 10) is True
        assert [m.raw for m in await mailbox.fetch_after(0, 10)] == [message(1)]


async def test_wait_for_news_times_out_without_news(dovecot: Dovecot, mailbox_user: User) -> None:
    async with connected(dovecot.imap_settings(mailbox_user, idle_renew_s=0.2)) as mailbox:
        started = time.monotonic()
        assert await mailbox.wait_for_news(0.5) is False
        assert 0.5 <= time.monotonic() - started < 3
        assert await mailbox.fetch_after(0, 10) == []


async def test_cancelled_wait_returns_promptly_and_connection_works(
    dovecot: Dovecot, mailbox_user: User
) -> None:
    async with connected(dovecot.imap_settings(mailbox_user)) as mailbox:
        waiting = asyncio.create_task(mailbox.wait_for_news(60))
        done, _ = await asyncio.wait([waiting], timeout=0.3)
        assert not done
        started = time.monotonic()
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert time.monotonic() - started < 1.5
        dovecot.append(mailbox_user, "INBOX", message(1))
        assert [m.raw for m in await mailbox.fetch_after(0, 10)] == [message(1)]


async def test_without_idle_wait_just_sleeps(dovecot: Dovecot, mailbox_user: User) -> None:
    async with connected(dovecot.imap_settings(mailbox_user, idle=False)) as mailbox:
        assert not mailbox.supports_idle
        assert await mailbox.wait_for_news(0.1) is False


@pytest.mark.parametrize("folder", ["Sent", "Sent Items"])
async def test_append_to_sent_marks_read_and_creates_the_folder(
    dovecot: Dovecot, mailbox_user: User, folder: str
) -> None:
    sent_at = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
    async with connected(dovecot.imap_settings(mailbox_user)) as mailbox:
        await mailbox.append(folder, message(1, "Your order has arrived"), sent_at)
        await mailbox.select(folder)
        (copy,) = await mailbox.fetch_after(0, 10)
    assert copy.raw == message(1, "Your order has arrived")
    assert copy.internal_date == sent_at
    assert SEEN in flags(dovecot, mailbox_user, folder)[copy.uid]


async def test_missing_folder_names_the_ones_there(dovecot: Dovecot, mailbox_user: User) -> None:
    async with connected(dovecot.imap_settings(mailbox_user)) as mailbox:
        error = await within(5, lambda: mailbox.select("Archive"))
        assert await mailbox.select("Sent")  # still usable
    assert "no folder 'Archive'" in str(error)
    assert error.where == f"imap 127.0.0.1:{dovecot.port} Archive"
    assert "INBOX, Sent, Trash" in str(error)


async def test_operations_fail_fast_while_dovecot_is_down_and_recover(
    private_dovecot: Dovecot,
) -> None:
    user = private_dovecot.add_user("seller", "pw")
    private_dovecot.append(user, "INBOX", message(1))
    mailbox = Mailbox(private_dovecot.imap_settings(user, timeout_s=3))
    await mailbox.connect()
    await mailbox.select("INBOX")
    private_dovecot.stop()
    assert "lost" in str(await within(2, lambda: mailbox.fetch_after(0, 10)))
    assert "not connected" in str(await within(1, lambda: mailbox.fetch_after(0, 10)))
    assert "refused" in str(await within(2, mailbox.connect))
    private_dovecot.start()
    await mailbox.connect()
    await mailbox.select("INBOX")
    assert [m.raw for m in await mailbox.fetch_after(0, 10)] == [message(1)]
    await mailbox.close()
    await mailbox.close()


@pytest.mark.parametrize("tls", [TlsMode.NONE, TlsMode.IMPLICIT])
async def test_silent_server_times_out(dovecot: Dovecot, mailbox_user: User, tls: TlsMode) -> None:
    held: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        await reader.read()

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    settings = dovecot.imap_settings(mailbox_user, tls=tls, port=port, timeout_s=0.5)
    try:
        error = await within(3, Mailbox(settings).connect)
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()
    assert "no answer within 0.5 s" in str(error)


async def test_starttls_not_offered_is_refused(dovecot: Dovecot, mailbox_user: User) -> None:
    """A scripted server that never offers STARTTLS: the password must not go out in clear."""
    received: list[bytes] = []

    async def plain_only(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] plain only\r\n")
        while line := await reader.readline():
            received.append(line)
            tag = line.split(b" ", 1)[0]
            if b"CAPABILITY" in line.upper():
                writer.write(b"* CAPABILITY IMAP4rev1 AUTH=PLAIN\r\n")
            writer.write(tag + b" OK done\r\n")
        writer.close()

    server = await asyncio.start_server(plain_only, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    settings = dovecot.imap_settings(mailbox_user, tls=TlsMode.STARTTLS, port=port)
    async with server:
        error = await within(5, Mailbox(settings).connect)
    assert "does not offer STARTTLS" in str(error)
    assert not any(b"LOGIN" in line.upper() for line in received)


async def test_not_connected_says_so(dovecot: Dovecot, mailbox_user: User) -> None:
    mailbox = Mailbox(dovecot.imap_settings(mailbox_user))
    assert "not connected" in str(await within(1, lambda: mailbox.select("INBOX")))
    await mailbox.close()


async def test_new_uidvalidity_is_reported(dovecot: Dovecot, mailbox_user: User) -> None:
    for n in range(3):
        dovecot.append(mailbox_user, "INBOX", message(n))
    settings = dovecot.imap_settings(mailbox_user)
    async with connected(settings) as mailbox:
        before = await mailbox.select("INBOX")
    dovecot.change_uidvalidity(mailbox_user, "INBOX")
    async with connected(settings) as mailbox:
        after = await mailbox.select("INBOX")
        raws = [m.raw for m in await mailbox.fetch_after(0, 10)]
    assert after.uidvalidity != before.uidvalidity
    assert sorted(raws) == sorted(message(n) for n in range(3))


async def test_mail_announced_before_the_wait_is_news(dovecot: Dovecot, mailbox_user: User) -> None:
    async with connected(dovecot.imap_settings(mailbox_user)) as mailbox:
        dovecot.append(mailbox_user, "INBOX", message(1))
        assert await mailbox.fetch_after(0, 0) == []  # a command that hears of the new mail
        assert await mailbox.wait_for_news(10) is True


async def test_a_message_past_the_limit_comes_as_its_header_and_start(
    dovecot: Dovecot, mailbox_user: User
) -> None:
    big = long_message(2, 1_000_000)
    uids = [dovecot.append(mailbox_user, "INBOX", raw) for raw in (message(1), big, message(3))]
    settings = dovecot.imap_settings(mailbox_user)
    async with connected(settings, max_message_bytes=100_000) as mailbox:
        fetched = await mailbox.fetch_after(0, 10)
    assert [m.uid for m in fetched] == uids
    first, cut, last = fetched
    assert (first.raw, first.size, first.truncated) == (message(1), len(message(1)), False)
    assert (last.raw, last.truncated) == (message(3), False)
    body_at = big.index(b"\r\n\r\n") + 4
    assert (cut.size, cut.truncated) == (len(big), True)
    assert cut.raw == big[: body_at + 50_000], "the whole header, then half the limit of text"
    read = parse(cut.raw, limits=ParseLimits(max_message_bytes=100_000), size=cut.size)
    assert (read.subject, read.sender) == (
        "Re: Order 305-1234567-7654321 (2)",
        "erika@buyer.example",
    )
    assert read.truncated == f"size {len(big)} > max_message_bytes 100000"


async def test_memory_does_not_grow_with_the_message(dovecot: Dovecot, mailbox_user: User) -> None:
    dovecot.append(mailbox_user, "INBOX", long_message(1, 8_000_000))
    async with connected(dovecot.imap_settings(mailbox_user), max_message_bytes=100_000) as mailbox:
        tracemalloc.start()
        try:
            (fetched,) = await mailbox.fetch_after(0, 10)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert fetched.truncated and fetched.size > 8_000_000
    assert peak < 1_000_000, f"fetching the start of an 8 MB message took {peak} bytes"


async def test_a_batch_of_big_messages_ends_early_and_the_rest_follow(
    dovecot: Dovecot, mailbox_user: User
) -> None:
    raws = [long_message(n, 60_000) for n in range(5)]
    uids = [dovecot.append(mailbox_user, "INBOX", raw) for raw in raws]
    async with connected(dovecot.imap_settings(mailbox_user), max_message_bytes=100_000) as mailbox:
        first = await mailbox.fetch_after(0, 10)
        rest = await mailbox.fetch_after(first[-1].uid, 10)
    assert [m.uid for m in first] == uids[:4], "twice the limit is held: 60 + 60 + 60 + 60 KB"
    assert [m.raw for m in first + rest] == raws
    assert not any(m.truncated for m in first + rest)
