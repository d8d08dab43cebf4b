"""``worker send-test`` against a real SMTP server on 127.0.0.1 (aiosmtpd, scripted), and the
status counts, on SQLite and PostgreSQL alike."""

from __future__ import annotations

import asyncio
import email
import email.policy
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.conftest import opened_stores, settings_for
from tests.integration.smtp_server import Script, scripted_server
from worker.cli import build_parser
from worker.config import Settings
from worker.domain import Order
from worker.store import Store

NOW = datetime(2026, 3, 10, 9, 0, tzinfo=UTC)


def _with_order(store: Store) -> None:
    order = Order(
        "SHOP-7",
        "shop",
        "ann@example.com",
        "Ann Smith",
        ("Glass kettle",),
        "en",
        "GB",
        delivered_at=NOW - timedelta(days=8),
    )
    store.upsert_orders([order], NOW - timedelta(days=9))
    store.schedule("SHOP-7", "review-follow-up", "check-in", NOW, NOW)


def _settings(store: Store, port: int, tmp_path: Path) -> Settings:
    return settings_for(store, port, bounces={"secret_file": str(tmp_path / "secret")})


SendTest = Callable[..., Awaitable[int]]


@pytest.fixture
def send_test(monkeypatch: pytest.MonkeyPatch) -> Iterator[SendTest]:
    """``worker send-test review-follow-up check-in ARGS...`` as the command line runs it,
    in a thread of its own (it runs its own event loop); the stores it opens are closed after
    it, as a process would close its connections on exit."""
    opened = opened_stores(monkeypatch)

    async def run(settings: Settings, *args: str) -> int:
        parsed = build_parser().parse_args(["send-test", "review-follow-up", "check-in", *args])
        try:
            code: int = await asyncio.to_thread(parsed.handler, parsed, settings)
        finally:
            for store in opened:
                store.close()
        return code

    yield run


async def test_send_test_reaches_the_relay_marked_and_leaves_the_order_alone(
    store: Store, tmp_path: Path, send_test: SendTest
) -> None:
    _with_order(store)
    before = store.sends()
    async with scripted_server() as server:
        settings = _settings(store, server.port, tmp_path)
        code = await send_test(settings, "--order", "SHOP-7", "--to", "tester@example.org")
    assert code == 0
    assert server.seen.recipients == ["tester@example.org"]
    (raw,) = server.seen.messages
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert message["X-Worker-Test"] == "yes"
    assert str(message["Subject"]).startswith("[TEST] ") and "Glass kettle" in message["Subject"]
    assert message["X-Worker-Order"] == "SHOP-7"
    assert not str(message["Message-ID"]).startswith("<w"), "no send's signed Message-ID"
    assert "+b" not in str(message["Reply-To"] or ""), "no reply token of the order"
    assert store.sends() == before, "the order's sends are as they were"
    (test,) = store.test_sends()
    assert (test.outcome, test.recipient, test.order_id) == ("sent", "tester@example.org", "SHOP-7")
    assert test.message_id == message["Message-ID"]


async def test_a_refused_test_is_recorded_and_suppresses_no_one(
    store: Store, tmp_path: Path, send_test: SendTest
) -> None:
    _with_order(store)
    before = store.sends()
    async with scripted_server(Script(rcpt=["550 5.1.1 User unknown"])) as server:
        settings = _settings(store, server.port, tmp_path)
        code = await send_test(settings, "--to", "ann@example.com")
    assert code == 1
    assert server.seen.messages == []
    (test,) = store.test_sends()
    assert test.outcome == "failed" and "5.1.1" in test.detail and test.order_id is None
    assert store.suppressions() == [], "a test's refusal is the operator's, not a buyer's"
    assert store.sends() == before


def test_status_groups_reasons_by_their_first_word(store: Store) -> None:
    _with_order(store)
    at = NOW - timedelta(days=1)
    store.record_skip("SHOP-7", "c", "a", at, "suppressed:unsubscribe", at)
    store.record_skip("SHOP-7", "c", "b", at, "suppressed:hard_bounce", at)
    store.record_skip("SHOP-7", "c", "d", at, "too_late: 3 days past due (limit 2 days)", at)
    store.record_skip("SHOP-7", "c", "e", at, "reviewed", at)
    status = store.status(NOW)
    assert status.sends == {
        ("scheduled", ""): 1,
        ("skipped", "reviewed"): 1,
        ("skipped", "suppressed"): 2,
        ("skipped", "too_late"): 1,
    }
    assert (status.due_unsent, status.oldest_due) == (1, NOW)
    assert status.in_doubt == 0 and status.oldest_in_doubt is None
