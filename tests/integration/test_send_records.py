"""Every send is a row that moves scheduled -> sending -> sent | failed | in_doubt, exactly once."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from structlog.testing import capture_logs

from tests.acceptance.test_cli import wait_until
from tests.conftest import settings_for
from worker.clock import FixedClock
from worker.daemon import Daemon, load_checked_campaigns
from worker.domain import DisputeKind, Order, SendState, SuppressionReason
from worker.errors import StoreError
from worker.render import Renderer
from worker.sink import RejectRule, Sink, SinkOptions
from worker.store import Planned, SentRecord, Store

DELIVERED = datetime(2026, 3, 2, 11, 0, tzinfo=UTC)
CHECK_IN_DUE = DELIVERED + timedelta(days=7, hours=1)


def _orders(*emails: str) -> list[Order]:
    return [
        Order(f"SHOP-{n}", "shop", email, "Ann", ("Kettle",), "en", "GB", delivered_at=DELIVERED)
        for n, email in enumerate(emails, start=1)
    ]


def _daemon(store: Store, port: int, clock: FixedClock, **smtp: object) -> Daemon:
    base = settings_for(store, port)
    settings = settings_for(store, port, smtp={**base.smtp.model_dump(), **smtp})
    renderer = Renderer(settings.templates_dir, settings.default_locale)
    return Daemon(settings, store, load_checked_campaigns(settings, renderer), renderer, clock)


class ProcessKilled(BaseException):
    """Stands for SIGKILL: nothing in the worker catches a BaseException it does not know."""


class CrashAfterAcceptance(Store):
    """The process dies after the server's 250 but before the database commit."""

    def mark_sent_many(self, sent: Sequence[SentRecord]) -> list[bool]:
        raise ProcessKilled("killed between 250 and commit")


async def test_crash_between_acceptance_and_commit_leaves_in_doubt_and_never_resends(
    store: Store, sink: Sink
) -> None:
    store.upsert_orders(_orders("ann@example.com"), DELIVERED)
    crashing = CrashAfterAcceptance(store.engine)
    clock = FixedClock(CHECK_IN_DUE)
    with pytest.raises(ProcessKilled):
        await _daemon(crashing, sink.port, clock).run_pass()
    assert len(sink.received) == 1
    assert [r.state for r in store.sends()] == [SendState.SENDING]

    clock.advance(timedelta(hours=1))
    restarted = _daemon(store, sink.port, clock)
    with capture_logs() as logs:
        report = await restarted.run_pass()
    assert [r.state for r in store.sends()] == [SendState.IN_DOUBT]
    assert any(e["event"] == "send.in_doubt" and e["reason"] == "claim_expired" for e in logs)
    assert not report.ok
    clock.advance(timedelta(hours=6))
    await restarted.run_pass()
    assert len(sink.received) == 1, "an in-doubt message is never re-sent automatically"


async def test_a_dispute_recorded_after_the_claim_stops_the_later_sends_of_its_chunk(
    store: Store, sink: Sink, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Sends are claimed a chunk at a time; the protections are asked again before each
    later send's SMTP conversation, so a complaint that arrives meanwhile still stops it."""
    store.upsert_orders(_orders("ann@example.com", "ben@example.com"), DELIVERED)
    delivered = sink.deliver

    async def complaint_arrives(envelope: Any, *, dropped: bool = False) -> str:
        key = await delivered(envelope, dropped=dropped)
        if len(sink.received) == 1:  # while the first message is handed over
            other = "SHOP-2" if "ann@" in envelope.rcpt_tos[0] else "SHOP-1"
            store.open_dispute(other, DisputeKind.DAMAGED, CHECK_IN_DUE, source="mailbox")
        return key

    monkeypatch.setattr(sink, "deliver", complaint_arrives)
    daemon = _daemon(store, sink.port, FixedClock(CHECK_IN_DUE), concurrency=1)
    with capture_logs() as logs:
        report = await daemon.run_pass()

    assert len(sink.received) == 1
    assert report.outcomes["sent"] == 1 and report.outcomes["refused"] == 1
    states = sorted(s.state for s in store.sends())
    assert states == sorted([SendState.SENT, SendState.SCHEDULED])  # resumes after the dispute
    [refused] = [e for e in logs if e["event"] == "send.refused_at_claim"]
    assert refused["reason"].startswith("dispute")


async def test_connection_lost_after_final_dot_is_in_doubt(store: Store, tmp_path: Path) -> None:
    store.upsert_orders(_orders("ann@example.com"), DELIVERED)
    options = SinkOptions(port=0, maildir=tmp_path / "sink", drop_after_data="ann@*")
    async with Sink(options) as dropping:
        clock = FixedClock(CHECK_IN_DUE)
        daemon = _daemon(store, dropping.port, clock)
        await daemon.run_pass()
        clock.advance(timedelta(hours=2))
        await daemon.run_pass()
    assert len(dropping.received) == 1
    [row] = store.sends()
    assert row.state is SendState.IN_DOUBT and row.attempts == 1


async def test_hard_bounce_fails_the_send_and_suppresses_the_buyer(
    store: Store, tmp_path: Path
) -> None:
    store.upsert_orders(_orders("gone@example.com"), DELIVERED)
    rule = RejectRule.parse(
        "gone@*=550 5.1.1 <gone@example.com>: Recipient address rejected: User unknown"
    )
    async with Sink(SinkOptions(port=0, maildir=tmp_path / "sink", reject=(rule,))) as refusing:
        with capture_logs() as logs:
            report = await _daemon(store, refusing.port, FixedClock(CHECK_IN_DUE)).run_pass()
    [row] = store.sends()
    assert row.state is SendState.FAILED and "5.1.1" in row.reason
    assert [(s.email, s.reason) for s in store.suppressions()] == [
        ("gone@example.com", SuppressionReason.HARD_BOUNCE)
    ]
    assert any(e["event"] == "suppression.added" for e in logs)
    assert not report.ok


async def test_policy_rejection_is_our_problem_and_suppresses_no_one(
    store: Store, tmp_path: Path
) -> None:
    store.upsert_orders(_orders("ann@example.com"), DELIVERED)
    rule = RejectRule.parse(
        "*=550 5.7.1 Service unavailable; client host blocked using a reputation list"
    )
    async with Sink(SinkOptions(port=0, maildir=tmp_path / "sink", reject=(rule,))) as refusing:
        await _daemon(store, refusing.port, FixedClock(CHECK_IN_DUE)).run_pass()
    [row] = store.sends()
    assert row.state is SendState.FAILED and "5.7.1" in row.reason
    assert store.suppressions() == []


async def test_transient_refusal_is_retried_on_a_later_pass(store: Store, tmp_path: Path) -> None:
    store.upsert_orders(_orders("ann@example.com"), DELIVERED)
    rule = RejectRule.parse("*=451 4.3.0 Try again later")
    clock = FixedClock(CHECK_IN_DUE)
    async with Sink(SinkOptions(port=0, maildir=tmp_path / "sink", reject=(rule,))) as busy:
        report = await _daemon(store, busy.port, clock).run_pass()
    assert report.outcomes["retry"] == 1
    [row] = store.sends()
    assert row.state is SendState.SCHEDULED and row.not_before is not None and "451" in row.reason
    async with Sink(SinkOptions(port=0, maildir=tmp_path / "sink2")) as healthy:
        daemon = _daemon(store, healthy.port, clock)
        await daemon.run_pass()
        assert healthy.received == [], "waits for not_before"
        clock.at = row.not_before
        await daemon.run_pass()
        assert len(healthy.received) == 1
    [row] = store.sends()
    assert row.state is SendState.SENT and row.attempts == 2


async def test_unreachable_server_gives_up_after_max_passes(store: Store) -> None:
    store.upsert_orders(_orders("ann@example.com"), DELIVERED)
    clock = FixedClock(CHECK_IN_DUE)
    daemon = _daemon(store, 9, clock, max_passes=2, retry_after_s=60)  # port 9 (discard): refused
    await daemon.run_pass()
    clock.advance(timedelta(minutes=2))
    report = await daemon.run_pass()
    [row] = store.sends()
    assert row.state is SendState.FAILED and row.reason.startswith("gave up after 2 passes")
    assert not report.ok


async def test_concurrent_daemons_send_each_message_once(store: Store, sink: Sink) -> None:
    store.upsert_orders(_orders(*(f"buyer{n}@example.com" for n in range(30))), DELIVERED)
    clock = FixedClock(CHECK_IN_DUE)
    first, second = (_daemon(store, sink.port, clock, concurrency=3) for _ in range(2))
    await asyncio.gather(first.run_pass(), second.run_pass())
    assert len(sink.received) == 30
    assert len({m["To"] for m in sink.received}) == 30


class LockedOnce(Store):
    """The first pass finds the database locked (another process holds the write lock)."""

    failures = 1

    def plan_due(self, *args: Any, **kwargs: Any) -> Planned | None:
        if self.failures:
            self.failures -= 1
            raise StoreError("database is locked", where="test")
        return super().plan_due(*args, **kwargs)


async def test_daemon_survives_a_failed_pass_and_sends_on_the_next(
    store: Store, sink: Sink
) -> None:
    store.upsert_orders(_orders("ann@example.com"), DELIVERED)
    daemon = _daemon(LockedOnce(store.engine), sink.port, FixedClock(CHECK_IN_DUE))
    daemon.settings = daemon.settings.model_copy(update={"poll_interval_s": 0.05})
    stop = asyncio.Event()
    with capture_logs() as logs:
        running = asyncio.create_task(daemon.run(stop))
        await sink.wait_for(1, timeout=10)
        stop.set()
        await asyncio.wait_for(running, timeout=10)
    events = [e["event"] for e in logs]
    assert events.index("pass.failed") < events.index("send.sent")
    assert [r.state for r in store.sends()] == [SendState.SENT]


def _in_doubt(store: Store) -> int:
    store.upsert_orders(_orders("ann@example.com"), DELIVERED)
    row = store.schedule("SHOP-1", "review-follow-up", "check-in", CHECK_IN_DUE, CHECK_IN_DUE)
    [claimed] = store.claim([row.id], CHECK_IN_DUE, "w", lambda s: f"<w{s.id}.x@shop>").sends
    assert store.mark_in_doubt(claimed.id, "connection lost after the data", CHECK_IN_DUE)
    return claimed.id


def test_an_operator_settles_in_doubt_and_nothing_else(store: Store) -> None:
    later = CHECK_IN_DUE + timedelta(hours=1)
    send_id = _in_doubt(store)
    requeued = store.requeue(send_id, later)
    assert (requeued.state, requeued.not_before) == (SendState.SCHEDULED, None)
    assert "operator" in requeued.reason
    with pytest.raises(StoreError, match="is not in_doubt \\(it is scheduled\\)"):
        store.resolve(send_id, sent=True, now=later)


def test_resolved_as_sent_keeps_the_message_id_for_threading(store: Store) -> None:
    send_id = _in_doubt(store)
    sent = store.resolve(send_id, sent=True, now=CHECK_IN_DUE + timedelta(hours=1), by="maria")
    assert (sent.state, sent.message_id) == (SendState.SENT, f"<w{send_id}.x@shop>")
    assert sent.sent_at == CHECK_IN_DUE + timedelta(hours=1)
    assert sent.reason == "resolved by maria after in_doubt"


def test_a_deadlock_with_another_worker_costs_a_retry_not_the_record(
    postgresql_url: str,
) -> None:
    """Two workers' transactions can wake the same buyers in opposite orders (a chunk marked
    sent, an inbound batch); PostgreSQL then aborts one. Marking a chunk sent is where losing
    it hurts most (the messages are out: without the record they end in_doubt), so here it
    is the one aborted, and the records must still land."""
    store = Store.open(postgresql_url)
    try:
        store.upsert_orders(_orders("ann@example.com", "ben@example.com"), DELIVERED)
        rows = [store.schedule(f"SHOP-{n}", "c", "s", CHECK_IN_DUE, DELIVERED) for n in (1, 2)]
        claimed = store.claim([r.id for r in rows], CHECK_IN_DUE, "w", lambda s: f"<w{s.id}@x>")
        ann, ben = claimed.sends
        later = CHECK_IN_DUE + timedelta(days=30)
        wake_up = text("UPDATE customer SET next_due_at = :at WHERE email = :email")
        with store.engine.begin() as tx:  # nobody due: each wake below takes the row's lock
            for email in ("ann@example.com", "ben@example.com"):
                tx.execute(wake_up, {"at": later, "email": email})

        marked: list[object] = []
        other = store.engine.connect()
        watcher = store.engine.connect()
        try:
            other.begin()
            other.execute(wake_up, {"at": later + timedelta(1), "email": "ben@example.com"})
            records = [SentRecord(s.id, "250 OK", CHECK_IN_DUE, "text") for s in (ann, ben)]
            marking = threading.Thread(
                target=lambda: marked.append(_outcome(store.mark_sent_many, records))
            )
            marking.start()
            # The chunk holds ann and waits for ben: now the other worker wants ann.
            waiting = text("SELECT count(*) FROM pg_locks WHERE NOT granted")
            wait_until(lambda: watcher.execute(waiting).scalar_one() > 0, 10, "a lock wait")
            watcher.rollback()
            other.execute(wake_up, {"at": later + timedelta(2), "email": "ann@example.com"})
            other.commit()  # the other worker's transaction went through whole
            marking.join(30)
        finally:
            other.close()
            watcher.close()
        assert not marking.is_alive()
        assert marked == [[True, True]], "the chunk's records were retried and landed"
        assert {s.id: s.state for s in store.sends()} == {
            ann.id: SendState.SENT,
            ben.id: SendState.SENT,
        }
    finally:
        store.close()


def _outcome(call: Callable[..., object], *args: object) -> object:
    """What ``call`` returned, or the exception it raised: a thread's result, for asserting."""
    try:
        return call(*args)
    except Exception as exc:  # the test asserts on it
        return exc
