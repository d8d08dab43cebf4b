"""The daemon's HTTP server, over real HTTP on 127.0.0.1: one-click unsubscribe, /metrics
against what a real SMTP server received, /healthz on an injected clock."""

from __future__ import annotations

import asyncio
import email
import re
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from email.message import Message
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs

from tests.conftest import ROOT, settings_for
from tests.dovecot import Dovecot, User
from tests.integration.smtp_server import Script, closed_port, scripted_server
from tests.messages import plain_mail
from worker.clock import FixedClock
from worker.config import Settings
from worker.daemon import Daemon, load_checked_campaigns
from worker.domain import Order, SendState, SuppressionReason
from worker.errors import WorkerError
from worker.ingest import Ingest
from worker.render import Renderer
from worker.rules import load_rules
from worker.store import Store
from worker.unsubscribe import OneClick

DELIVERED = datetime(2026, 3, 2, 11, 0, tzinfo=UTC)
CHECK_IN_DUE = DELIVERED + timedelta(days=7, hours=1)
REVIEW_DUE = DELIVERED + timedelta(days=35, hours=1)
KEY = OneClick(b"a test key of thirty-two bytes!!")
URL = "https://shop.example/unsubscribe/{token}"
_TOKEN_IN_HEADER = re.compile(r"<https://shop\.example/unsubscribe/([A-Za-z0-9_-]+)>")

ANN = Order(
    "SHOP-1", "shop", "ann@example.com", "Ann", ("Kettle",), "de", "DE", delivered_at=DELIVERED
)
BEN = Order(
    "SHOP-2", "shop", "ben@example.com", "Ben", ("Kettle",), "en", "GB", delivered_at=DELIVERED
)
CID = Order(
    "SHOP-3", "shop", "cid@example.com", "Cid", ("Kettle",), "en", "IE", delivered_at=DELIVERED
)


def _daemon(
    store: Store, smtp_port: int, clock: FixedClock, *, readers: int = 0, **changes: object
) -> Daemon:
    settings = settings_for(store, smtp_port, unsubscribe={"url": URL}, **changes)
    renderer = Renderer(settings.templates_dir, settings.default_locale)
    campaigns = load_checked_campaigns(settings, renderer)
    mailboxes = [_unread_mailbox(settings, store, clock, n) for n in range(readers)]
    return Daemon(settings, store, campaigns, renderer, clock, mailboxes=mailboxes, one_click=KEY)


def _unread_mailbox(settings: Settings, store: Store, clock: FixedClock, n: int) -> Ingest:
    """A mailbox on a port nobody listens on: its reader never reads."""
    imap = settings.imap.model_copy(
        update={"host": "127.0.0.1", "port": closed_port(), "tls": "none", "username": f"u{n}"}
    )
    rules = load_rules(settings.inbox.rules_file)
    return Ingest(settings, store, rules, clock, imap=imap)


@asynccontextmanager
async def _running(daemon: Daemon) -> AsyncIterator[str]:
    """The daemon's loop on this event loop; yields its HTTP server's base URL."""
    stop = asyncio.Event()
    task = asyncio.create_task(daemon.run(stop))
    try:
        await _until(
            lambda: (daemon.web is not None and daemon.web.port is not None) or task.done()
        )
        assert daemon.web is not None and daemon.web.port is not None, task.result()
        yield f"http://127.0.0.1:{daemon.web.port}"
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=15)


async def _until(condition: Callable[[], bool], timeout_s: float = 15.0) -> None:
    """Wait for a state the daemon reaches on its own task; there is no event to await."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


def _passes(logs: list[dict[str, object]]) -> int:
    return sum(1 for entry in logs if entry["event"] == "pass.finished")


def _messages(raw: list[bytes]) -> list[Message]:
    return [email.message_from_bytes(data) for data in raw]


def _token_of(message: Message) -> str:
    found = _TOKEN_IN_HEADER.search(" ".join(str(message["List-Unsubscribe"]).split()))
    assert found is not None, message["List-Unsubscribe"]
    return found.group(1)


def _metric(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    values: dict[tuple[tuple[str, str], ...], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                values[tuple(sorted(sample.labels.items()))] = sample.value
    return values


async def test_one_click_post_unsubscribes_get_does_not_and_bad_tokens_change_nothing(
    store: Store,
) -> None:
    store.upsert_orders([ANN, BEN], DELIVERED)
    clock = FixedClock(CHECK_IN_DUE)
    async with scripted_server() as smtp:
        daemon = _daemon(store, smtp.port, clock)
        with capture_logs() as logs:
            async with _running(daemon) as base, aiohttp.ClientSession() as http:
                await _until(lambda: _passes(logs) >= 1)
                by_buyer = {
                    str(m["To"]).split("<")[-1].rstrip(">"): m
                    for m in _messages(smtp.seen.messages)
                }
                assert set(by_buyer) == {"ann@example.com", "ben@example.com"}
                ann_message = by_buyer["ann@example.com"]
                assert ann_message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
                assert "mailto:" in str(ann_message["List-Unsubscribe"])  # still offered
                ann, ben = _token_of(ann_message), _token_of(by_buyer["ben@example.com"])
                one_click = {"List-Unsubscribe": "One-Click"}

                # A link scanner's GET: the confirmation page in the buyer's language, no change.
                async with http.get(f"{base}/unsubscribe/{ann}") as page:
                    assert page.status == 200
                    html = await page.text()
                assert 'lang="de"' in html and "Abmelden" in html and 'method="post"' in html
                assert "a…@example.com" in html and "ann@example.com" not in html
                assert store.suppressions() == []

                # Forged, altered, other buyers' and oversized: refused, nothing changed.
                forged = KEY.token("SHOP-2", "ann@example.com")  # ann's address, ben's order
                altered = ann[:-2] + ("A" if ann[-2] != "A" else "B") + ann[-1]
                stranger = OneClick(b"someone else's key, also long!!").token(
                    "SHOP-1", "ann@example.com"
                )
                for bad in (forged, altered, stranger, "x" * 40, "%00"):
                    async with http.post(f"{base}/unsubscribe/{bad}", data=one_click) as refused:
                        assert refused.status in (400, 404), bad
                        assert "not valid" in await refused.text()
                async with http.post(f"{base}/unsubscribe/{ann}", data="x" * 10_000) as big:
                    assert big.status == 413
                async with http.post(f"{base}/unsubscribe/{ann}", data={"other": "1"}) as wrong:
                    assert wrong.status == 400
                assert store.suppressions() == []

                # RFC 8058's POST, as a mail client sends it: unsubscribed, in German.
                async with http.post(f"{base}/unsubscribe/{ann}", data=one_click) as done:
                    assert done.status == 200
                    assert "Sie sind abgemeldet" in await done.text()
                # Ben's own token still works for Ben only (checked, not used).
                assert KEY.valid(ben, "ben@example.com") and not KEY.valid(ben, "ann@example.com")

        [suppression] = store.suppressions()
        assert suppression.email == "ann@example.com"
        assert suppression.reason is SuppressionReason.UNSUBSCRIBE
        assert "one-click" in suppression.detail
        [added] = [e for e in logs if e["event"] == "suppression.added"]
        assert (added["email"], added["detail"]) == ("ann@example.com", "one-click")

        # The planner stops mailing Ann: the review request goes to Ben alone.
        before = len(smtp.seen.messages)
        clock.at = REVIEW_DUE
        await daemon.run_pass()
        later = _messages(smtp.seen.messages[before:])
        assert [str(m["To"]) for m in later] == ["Ben <ben@example.com>"]
        ann_rows = [s for s in store.sends() if s.order_id == "SHOP-1"]
        assert {s.step: s.state for s in ann_rows}["review-request"] is SendState.SKIPPED
        skips = _metric(daemon.metrics.exposition().decode(), "worker_skips_total")
        # by the reason's code alone: "suppressed", not "suppressed:unsubscribe"
        assert skips == {
            (("reason", "suppressed"),): 1.0,
            (("reason", "previous_step_not_sent"),): 1.0,  # the reminder of the skipped request
        }


async def test_metrics_counters_match_what_the_smtp_server_received(store: Store) -> None:
    store.upsert_orders([ANN, BEN, CID], DELIVERED)
    clock = FixedClock(CHECK_IN_DUE)
    refuse_one = Script(rcpt=["550 5.1.1 no such user"])  # the first recipient only
    async with scripted_server(refuse_one) as smtp:
        daemon = _daemon(
            store, smtp.port, clock, smtp={**_smtp(store, smtp.port), "concurrency": 1}
        )
        with capture_logs() as logs:
            async with _running(daemon) as base, aiohttp.ClientSession() as http:
                await _until(lambda: _passes(logs) >= 1)
                async with http.get(f"{base}/metrics") as answer:
                    assert answer.status == 200
                    assert answer.headers["Content-Type"].startswith("text/plain")
                    text = await answer.text()

    received = Counter(
        (str(m["X-Worker-Campaign"]), str(m["X-Worker-Step"]))
        for m in _messages(smtp.seen.messages)
    )
    assert sum(received.values()) == 2  # three due, the first refused at RCPT
    sends = _metric(text, "worker_sends_total")
    sent = {
        (dict(k)["campaign"], dict(k)["step"]): v
        for k, v in sends.items()
        if dict(k)["outcome"] == "sent"
    }
    assert sent == dict(received)
    failed = sum(v for k, v in sends.items() if dict(k)["outcome"] == "failed")
    assert failed == 1 == sum(1 for s in store.sends() if s.state is SendState.FAILED)
    assert _metric(text, "worker_sends_in_doubt") == {(): 0.0}
    assert _metric(text, "worker_oldest_due_unsent_seconds") == {(): 0.0}


def _smtp(store: Store, port: int) -> dict[str, object]:
    return settings_for(store, port).smtp.model_dump()


async def test_metrics_gauges_read_the_store_when_scraped(store: Store) -> None:
    store.upsert_orders([ANN], DELIVERED)
    row = store.schedule("SHOP-1", "review-follow-up", "check-in", CHECK_IN_DUE, CHECK_IN_DUE)
    [claimed] = store.claim([row.id], CHECK_IN_DUE, "w", lambda s: f"<w{s.id}.x@shop>").sends
    store.mark_in_doubt(claimed.id, "connection lost after the data", CHECK_IN_DUE)
    store.upsert_orders([BEN], DELIVERED)
    store.schedule("SHOP-2", "review-follow-up", "check-in", CHECK_IN_DUE, CHECK_IN_DUE)
    clock = FixedClock(CHECK_IN_DUE + timedelta(minutes=30))
    daemon = _daemon(store, 1, clock)
    text = daemon.metrics.exposition().decode()
    assert _metric(text, "worker_sends_in_doubt") == {(): 1.0}
    assert _metric(text, "worker_oldest_due_unsent_seconds") == {(): 1800.0}


async def test_healthz_fails_when_the_loop_stops_beating(store: Store) -> None:
    clock = FixedClock(CHECK_IN_DUE)
    daemon = _daemon(store, 1, clock)  # nothing to send: the loop sleeps a poll interval
    with capture_logs() as logs:
        async with _running(daemon) as base, aiohttp.ClientSession() as http:
            await _until(lambda: _passes(logs) >= 1)
            async with http.get(f"{base}/healthz") as alive:
                assert (alive.status, await alive.text()) == (200, "ok\n")
            allowed = daemon.heartbeat.due_by - clock.now()
            clock.advance(allowed + timedelta(seconds=1))
            async with http.get(f"{base}/healthz") as stalled:
                assert stalled.status == 503
                assert (await stalled.text()).startswith("stalled: loop: no pass for")
            async with http.get(f"{base}/nothing-here") as unknown:
                assert unknown.status == 404
            async with http.delete(f"{base}/healthz") as wrong_method:
                assert wrong_method.status == 405


async def test_healthz_names_a_mailbox_that_has_not_been_read(store: Store) -> None:
    clock = FixedClock(CHECK_IN_DUE)
    daemon = _daemon(store, 1, clock, readers=1)
    [reader] = daemon.mailboxes
    async with _running(daemon) as base, aiohttp.ClientSession() as http:
        async with http.get(f"{base}/healthz") as starting:
            assert starting.status == 200  # its first read is forgiven its first lease
        clock.advance(timedelta(seconds=reader.lease_s + 1))
        daemon._alive(0)  # the loop is fine; only the mailbox stalled
        async with http.get(f"{base}/healthz") as stalled:
            assert stalled.status == 503
            body = await stalled.text()
    assert f"mailbox {reader.name}: never read" in body and "loop" not in body


async def test_a_taken_port_stops_start_up_with_a_clear_error(store: Store) -> None:
    holder = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = holder.sockets[0].getsockname()[1]
    try:
        daemon = _daemon(store, 1, FixedClock(CHECK_IN_DUE), http={"port": port})
        with pytest.raises(WorkerError, match=f"cannot listen on 127.0.0.1:{port}"):
            await daemon.run(asyncio.Event())
    finally:
        holder.close()
        await holder.wait_closed()


async def test_metrics_count_inbound_mail_by_kind_as_the_reader_stores_it(
    store: Store, dovecot: Dovecot, mailbox_user: User
) -> None:
    store.upsert_orders([ANN], DELIVERED)
    clock = FixedClock(CHECK_IN_DUE)
    imap = dovecot.imap_settings(mailbox_user).model_dump()
    settings = settings_for(
        store, 1, imap=imap, inbox={"rules_file": str(ROOT / "config" / "mail-rules.yaml")}
    )
    renderer = Renderer(settings.templates_dir, settings.default_locale)
    ingest = Ingest(settings, store, load_rules(settings.inbox.rules_file), clock)
    daemon = Daemon(
        settings, store, load_checked_campaigns(settings, renderer), renderer, clock, ingest=ingest
    )
    dovecot.append(
        mailbox_user,
        "INBOX",
        plain_mail("ann@example.com", "Question", "Does it fit a gas stove?", message_id="<q@x>"),
        when=clock.now(),
    )
    dovecot.append(
        mailbox_user,
        "INBOX",
        plain_mail("ann@example.com", "unsubscribe", "unsubscribe", message_id="<u@x>"),
        when=clock.now(),
    )
    async with _running(daemon) as base, aiohttp.ClientSession() as http:
        await _until(lambda: ingest.last_read_at is not None)
        async with http.get(f"{base}/metrics") as answer:
            text = await answer.text()
        async with http.get(f"{base}/healthz") as health:
            assert health.status == 200
    stored = Counter(row.kind.value for row in store.inbound_messages())
    inbound = _metric(text, "worker_inbound_messages_total")
    assert {dict(k)["kind"]: v for k, v in inbound.items()} == dict(stored)
    assert sum(stored.values()) == 2
    [lag] = _metric(text, "worker_mailbox_poll_lag_seconds").values()
    assert lag == 0.0  # read at the clock's (fixed) now


class BrokenFigures(Store):
    """A store whose gauges fail with a bug's error, detail and all."""

    def figures(self, now: datetime) -> Any:
        raise RuntimeError("bug detail that must not reach a client")


async def _raw(port: int, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    try:
        return await asyncio.wait_for(reader.read(), timeout=10)
    finally:
        writer.close()


async def test_hostile_requests_get_short_answers_and_no_traceback(store: Store) -> None:
    store.upsert_orders([ANN], DELIVERED)
    token = KEY.token("SHOP-1", "ann@example.com")
    daemon = _daemon(
        BrokenFigures(store.engine),
        1,
        FixedClock(CHECK_IN_DUE),
        http={"port": 0, "request_timeout_s": 0.5},
    )
    with capture_logs() as logs:
        async with _running(daemon) as base, aiohttp.ClientSession() as http:
            async with http.get(f"{base}/metrics") as broken:
                assert (broken.status, await broken.text()) == (500, "internal error\n")
            port = daemon.web.port if daemon.web else 0
            long_line = await _raw(port, b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\n\r\n")
            escape = await _raw(port, b"GET /healthz HTTP/1.1\r\nX: \x1b[31mred\r\n\r\n")
            # A body announced and never sent: cut off after request_timeout_s.
            slow = await _raw(
                port,
                f"POST /unsubscribe/{token} HTTP/1.1\r\nHost: x\r\nContent-Length: 20\r\n"
                "Connection: close\r\n\r\nList-Unsub".encode(),
            )
    for answer in (long_line, escape):
        assert answer.startswith(b"HTTP/1.0 400") or answer.startswith(b"HTTP/1.1 400")
        assert b"Traceback" not in answer and b"\x1b" not in answer
    assert slow.startswith(b"HTTP/1.1 503") and slow.endswith(b"timed out\n")
    assert store.suppressions() == []
    [failed] = [e for e in logs if e["event"] == "http.failed"]
    assert failed == {
        "event": "http.failed",
        "path": "/metrics",
        "error": "RuntimeError",
        "log_level": "error",
    }
