"""One reader per mailbox: the lease row (worker/store_leases.py), on both databases, and the
readers that hold it against a real Dovecot: two workers never read one mailbox at once, and
two workers with two mailboxes split them and read each message once."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import pytest
import structlog

from tests.conftest import ROOT, settings_for
from tests.dovecot import Dovecot, User
from tests.postgres import Postgres
from worker.clock import Clock, FixedClock, SystemClock
from worker.config import Settings
from worker.daemon import Daemon, load_checked_campaigns
from worker.ingest import Ingest
from worker.render import Renderer
from worker.rules import load_rules
from worker.store import Store

NOW = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
MINUTE = timedelta(minutes=1)
SETTLE_S = 60.0
"""The most any wait below may take on a loaded 2-core machine."""


def test_a_lease_is_held_until_it_expires_or_is_released(store: Store) -> None:
    assert store.take_mailbox("help@shop", "w1", NOW, NOW + MINUTE) == "w1"
    assert store.take_mailbox("help@shop", "w2", NOW + MINUTE / 2, NOW + 2 * MINUTE) == "w1"

    # renewing keeps it; a renewal is also what keeps the others out longer
    assert store.take_mailbox("help@shop", "w1", NOW + MINUTE / 2, NOW + 2 * MINUTE) == "w1"
    assert store.take_mailbox("help@shop", "w2", NOW + MINUTE, NOW + 3 * MINUTE) == "w1"

    # a holder that stops renewing (killed) loses it when it expires
    assert store.take_mailbox("help@shop", "w2", NOW + 2 * MINUTE, NOW + 3 * MINUTE) == "w2"
    assert store.take_mailbox("help@shop", "w1", NOW + 2 * MINUTE, NOW + 3 * MINUTE) == "w2"

    # a release frees it at once, and keeps when the mailbox was last read
    store.mailbox_read("help@shop", "w2", NOW + 2 * MINUTE)
    store.mailbox_read("help@shop", "w1", NOW + 9 * MINUTE)  # not its holder: ignored
    store.release_mailbox("help@shop", "w2", NOW + 2 * MINUTE)
    assert store.take_mailbox("help@shop", "w1", NOW + 2 * MINUTE, NOW + 3 * MINUTE) == "w1"
    lease = store.mailbox_lease("help@shop")
    assert lease == ("w1", NOW + 3 * MINUTE, NOW + 2 * MINUTE)

    # leases are per mailbox
    assert store.take_mailbox("sales@shop", "w2", NOW + 2 * MINUTE, NOW + 3 * MINUTE) == "w2"


def test_workers_that_beat_lately_are_the_live_ones(store: Store) -> None:
    store.worker_alive("w1", NOW)
    store.worker_alive("w2", NOW + MINUTE)
    assert store.live_workers(NOW) == 2
    assert store.live_workers(NOW + MINUTE / 2) == 1
    store.worker_gone("w2")
    assert store.live_workers(NOW) == 1
    store.worker_alive("w3", NOW + timedelta(days=2))  # w1 is forgotten
    assert store.live_workers(NOW - MINUTE) == 1


# Against Dovecot ----------------------------------------------------------------------------


@pytest.fixture
def opened() -> Iterator[list[Store]]:
    """Each worker's own store (its own connections), closed after the test."""
    stores: list[Store] = []
    yield stores
    for store in stores:
        store.close()


@pytest.fixture
def postgres_url(postgres: Postgres, postgres_template: str) -> Iterator[str]:
    """Several workers share a database only on PostgreSQL (SQLite refuses a second one)."""
    name = postgres.create_database(postgres_template)
    yield postgres.url(name)
    postgres.drop_database(name)


def _mail(number: int, to: str) -> bytes:
    return (
        f"From: Buyer {number} <buyer{number}@buyer.example>\r\nTo: {to}\r\n"
        f"Subject: A question, number {number}\r\nMessage-ID: <q{number}@buyer.example>\r\n"
        "Date: Mon, 02 Mar 2026 09:00:00 +0000\r\nMIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n\r\n"
        f"Hello, does the kettle fit a gas stove? ({number})\r\n"
    ).encode()


def _settings(
    url: str, dovecot: Dovecot, first: User, second: User | None = None, **imap: object
) -> Settings:
    def mailbox(user: User) -> dict[str, object]:
        return dovecot.imap_settings(user, **imap).model_dump()

    store = Store.open(url)
    try:
        return settings_for(
            store,
            2525,  # nothing is due: these workers never send
            imap=mailbox(first),
            mailboxes={"second": mailbox(second)} if second else {},
            inbox={"rules_file": str(ROOT / "config" / "mail-rules.yaml")},
            poll_interval_s=0.5,
        )
    finally:
        store.close()


def _reader(
    settings: Settings, which: int, holder: str, clock: Clock, opened: list[Store]
) -> Ingest:
    imap = [imap for _name, imap in settings.every_mailbox][which]
    store = Store.open(settings.database_url)
    opened.append(store)
    rules = load_rules(settings.inbox.rules_file)
    return Ingest(settings, store, rules, clock, imap=imap, holder=holder)


async def test_two_readers_of_one_mailbox_take_turns_and_read_each_message_once(
    postgres_url: str, dovecot: Dovecot, mailbox_user: User, opened: list[Store]
) -> None:
    for number in range(30):
        dovecot.append(mailbox_user, "INBOX", _mail(number, "help@shop.example"))
    settings = _settings(postgres_url, dovecot, mailbox_user)
    clock = SystemClock()
    first, second = (_reader(settings, 0, name, clock, opened) for name in ("w1", "w2"))

    reports = await asyncio.gather(first.run_once(), second.run_once())

    assert sorted(report.total for report in reports) == [0, 30]
    assert [report.duplicates for report in reports] == [0, 0]
    assert first.store.mailbox_lease(first.name) is not None
    assert not first.holding and not second.holding  # released when done


async def test_a_reader_does_not_read_while_another_holds_the_lease(
    postgres_url: str, dovecot: Dovecot, mailbox_user: User, opened: list[Store]
) -> None:
    dovecot.append(mailbox_user, "INBOX", _mail(1, "help@shop.example"))
    settings = _settings(postgres_url, dovecot, mailbox_user, poll_interval_s=0.5, timeout_s=1)
    clock = FixedClock(NOW)
    reader = _reader(settings, 0, "w2", clock, opened)
    reader.store.take_mailbox(reader.name, "w1", NOW, NOW + timedelta(hours=1))

    with pytest.raises(Exception, match="w1 has been reading this mailbox"):
        await reader.run_once()
    assert reader.store.inbound_messages() == []
    assert not reader.fresh(NOW)  # and the sending side holds its pass meanwhile

    clock.advance(timedelta(hours=1))  # w1 stopped renewing: its lease ran out
    assert (await reader.run_once()).total == 1
    assert reader.fresh(clock.now())


def _daemon(settings: Settings, worker_id: str, opened: list[Store]) -> Daemon:
    store = Store.open(settings.database_url)
    opened.append(store)
    renderer = Renderer(settings.templates_dir, settings.default_locale)
    campaigns = load_checked_campaigns(settings, renderer)
    rules = load_rules(settings.inbox.rules_file)
    clock = SystemClock()
    mailboxes = [
        Ingest(settings, store, rules, clock, imap=imap) for _name, imap in settings.every_mailbox
    ]
    return Daemon(
        settings, store, campaigns, renderer, clock, mailboxes=mailboxes, worker_id=worker_id
    )


async def _until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + SETTLE_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {SETTLE_S:.0f} s: {what}")
        await asyncio.sleep(0.05)


async def test_two_workers_split_two_mailboxes_and_read_each_message_once(
    postgres_url: str, dovecot: Dovecot, opened: list[Store]
) -> None:
    users = [dovecot.add_user(f"shop{n}-{time.monotonic_ns()}", "s3cret-pass") for n in (1, 2)]
    for number in range(20):
        dovecot.append(users[number % 2], "INBOX", _mail(number, f"help{number % 2}@shop.example"))
    settings = _settings(postgres_url, dovecot, users[0], users[1], poll_interval_s=0.5)
    first, second = _daemon(settings, "w1", opened), _daemon(settings, "w2", opened)
    stop = asyncio.Event()

    with structlog.testing.capture_logs() as logs:
        running = [asyncio.create_task(first.run(stop))]
        await _until(lambda: all(m.holding for m in first.mailboxes), "w1 reads both alone")
        running.append(asyncio.create_task(second.run(stop)))
        await _until(
            lambda: (
                sum(m.holding for m in first.mailboxes) == 1
                and sum(m.holding for m in second.mailboxes) == 1
            ),
            "w1 hands one mailbox to w2",
        )
        for number in range(20, 40):  # new mail while each reads one mailbox
            to = f"help{number % 2}@shop.example"
            dovecot.append(users[number % 2], "INBOX", _mail(number, to))
        await _until(lambda: len(first.store.inbound_messages()) == 40, "every message stored")
        stop.set()
        await asyncio.wait_for(asyncio.gather(*running), SETTLE_S)

    stored = [m.subject for m in first.store.inbound_messages()]
    assert sorted(stored) == sorted(f"A question, number {n}" for n in range(40))
    finished = [e for e in logs if e["event"] == "ingest.finished"]
    assert sum(e["stored"] for e in finished) == 40
    assert sum(e["duplicates"] for e in finished) == 0  # no message was read twice
    readers = {event["worker"] for event in finished if event["stored"]}
    assert readers == {"w1", "w2"}  # the second worker took its share
