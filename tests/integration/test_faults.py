"""Faults injected into a pass: each bounded in count and time, loopback only.

What a dispute opened mid-pass, a stop signal and a killed process do to the send records.
The SMTP servers here are real aiosmtpd servers on the running loop, gated where a test
needs the pass to stand still at a known point.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session
from structlog.testing import capture_logs

from tests.conftest import ROOT, settings_for
from tests.integration.smtp_server import HANG, Script, closed_port, scripted_server, silent_server
from worker.clock import FixedClock
from worker.daemon import Daemon, load_checked_campaigns
from worker.domain import DisputeKind, Order, SendState, SuppressionReason
from worker.render import Renderer, TemplateRunner
from worker.store import Store

DELIVERED = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)  # a Monday
CHECK_IN_DUE = DELIVERED + timedelta(days=7, hours=1)


def _order(n: int, buyer: str) -> Order:
    return Order(f"SHOP-{n}", "shop", buyer, f"Buyer {n}", ("Kettle",), "en", "GB",
                 delivered_at=DELIVERED)  # fmt: skip


@dataclass
class _Gate:
    """Holds the first message in DATA until released; records every recipient."""

    recipients: list[str] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.recipients.extend(envelope.rcpt_tos)
        self.arrived.set()
        await asyncio.wait_for(self.release.wait(), timeout=10)
        return "250 2.0.0 Ok: queued"


@asynccontextmanager
async def _gated_server() -> AsyncIterator[tuple[_Gate, int]]:
    gate = _Gate()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SMTP(gate), "127.0.0.1", 0)
    try:
        yield gate, server.sockets[0].getsockname()[1]
    finally:
        gate.release.set()
        server.close()
        await server.wait_closed()


def _daemon(store: Store, port: int, **overrides: Any) -> Daemon:
    smtp = {"host": "127.0.0.1", "port": port, "tls": "none", "timeout_s": 5, "concurrency": 1}
    top = {k: overrides.pop(k) for k in ("templates_dir", "render_timeout_s") if k in overrides}
    settings = settings_for(store, port, smtp=smtp | overrides, **top)
    renderer = Renderer(settings.templates_dir, settings.default_locale)
    campaigns = load_checked_campaigns(settings, renderer)
    return Daemon(settings, store, campaigns, renderer, FixedClock(CHECK_IN_DUE))


async def test_a_dispute_opened_while_a_pass_runs_stops_that_buyers_later_sends(
    store: Store,
) -> None:
    """The pass is held inside the first SMTP conversation; meanwhile Ben complains (as an
    agent's `worker dispute open` would record it). Ben's check-in, claimed after that, must
    not leave, though the plan made at the start of the pass had it due."""
    ann, ben = _order(1, "ann@buyer.example"), _order(2, "ben@buyer.example")
    store.upsert_orders([ann, ben], DELIVERED)
    async with _gated_server() as (gate, port):
        daemon = _daemon(store, port)
        running = asyncio.create_task(daemon.run_pass())
        await asyncio.wait_for(gate.arrived.wait(), timeout=10)
        assert gate.recipients == [ann.buyer_email]  # orders are taken in their order
        store.open_dispute(ben.order_id, DisputeKind.NOT_RECEIVED, CHECK_IN_DUE)
        gate.release.set()
        report = await asyncio.wait_for(running, timeout=20)

    assert gate.recipients == [ann.buyer_email]
    assert report.outcomes["sent"] == 1 and report.outcomes["refused"] == 1
    rows = {s.order_id: s for s in store.sends()}
    assert rows[ben.order_id].state is SendState.SCHEDULED
    assert rows[ben.order_id].reason == "dispute_open"


async def test_a_suppression_recorded_mid_pass_skips_the_send_for_good(store: Store) -> None:
    ann, ben = _order(1, "ann@buyer.example"), _order(2, "ben@buyer.example")
    store.upsert_orders([ann, ben], DELIVERED)
    async with _gated_server() as (gate, port):
        running = asyncio.create_task(_daemon(store, port).run_pass())
        await asyncio.wait_for(gate.arrived.wait(), timeout=10)
        store.suppress(ben.buyer_email, SuppressionReason.UNSUBSCRIBE, CHECK_IN_DUE, "by mail")
        gate.release.set()
        await asyncio.wait_for(running, timeout=20)

    assert gate.recipients == [ann.buyer_email]
    rows = {s.order_id: s for s in store.sends()}
    assert (rows[ben.order_id].state, rows[ben.order_id].reason) == (
        SendState.SKIPPED,
        "suppressed:unsubscribe",
    )


def _orders(count: int) -> list[Order]:
    return [_order(n, f"buyer{n}@example.com") for n in range(1, count + 1)]


async def test_a_relay_that_never_greets_stops_the_pass_quickly_and_costs_no_attempt(
    store: Store,
) -> None:
    store.upsert_orders(_orders(20), DELIVERED)
    async with silent_server() as port:
        daemon = _daemon(store, port, timeout_s=0.5, concurrency=4, breaker_failures=3)
        with capture_logs() as logs:
            report = await asyncio.wait_for(daemon.run_pass(), timeout=15)

    assert report.relay_down is not None
    assert report.retry_in_s == daemon.settings.poll_interval_s
    assert not report.ok
    rows = store.sends()
    assert {s.state for s in rows} == {SendState.SCHEDULED} and len(rows) == 20
    assert all(s.attempts == 0 for s in rows), [s.attempts for s in rows]
    assert [e["event"] for e in logs].count("relay.down") == 1


async def test_the_backoff_grows_while_the_relay_stays_down(store: Store) -> None:
    store.upsert_orders(_orders(3), DELIVERED)
    daemon = _daemon(store, closed_port(), timeout_s=0.5, breaker_failures=1)
    waits = [(await daemon.run_pass()).retry_in_s for _ in range(3)]
    first = daemon.settings.poll_interval_s
    assert waits == [first, 2 * first, 4 * first]


@pytest.mark.parametrize(
    ("script", "state"),
    [
        (Script(rcpt=[HANG]), SendState.SCHEDULED),  # stopped before the data: not sent
        (Script(data=[HANG]), SendState.IN_DOUBT),  # stopped after the data: maybe sent
    ],
    ids=["before-the-data", "after-the-data"],
)
async def test_a_stop_cancels_a_send_by_what_the_server_may_hold(
    store: Store, script: Script, state: SendState
) -> None:
    store.upsert_orders(_orders(1), DELIVERED)
    script = copy.deepcopy(script)  # the server uses its replies up; the next database needs them
    stage = "RCPT" if script.rcpt else "DATA"
    async with scripted_server(script) as server:
        running = asyncio.create_task(_daemon(store, server.port).run_pass())
        await server.seen.wait_until(lambda seen: stage in " ".join(seen.commands), timeout_s=10)
        running.cancel()  # what the shutdown timeout does to a send still in flight
        with contextlib.suppress(asyncio.CancelledError):
            await running
    [row] = store.sends()
    assert row.state is state
    if state is SendState.SCHEDULED:
        assert row.attempts == 0 and "before the message was handed over" in row.reason


async def test_a_template_looping_on_one_orders_data_fails_that_send_alone(
    store: Store, tmp_path: Path
) -> None:
    """Rendered before the claim, in a child process within render_timeout_s: the runaway
    is stopped, its send fails naming the template, and the next buyer's mail goes out."""
    templates = tmp_path / "templates"
    shutil.copytree(ROOT / "templates", templates)
    check_in = templates / "check_in" / "en.jinja"
    bait = (
        '{% if buyer.name == "Loop" %}{% for i in range(100000) %}{% for j in range(100000) %}'
        "{% endfor %}{% endfor %}{% endif %}"
    )
    check_in.write_text(check_in.read_text().replace("Hello", bait + "Hello", 1))
    looping = Order("SHOP-1", "shop", "loop@example.com", "Loop", ("Kettle",), "en", "GB",
                    delivered_at=DELIVERED)  # fmt: skip
    store.upsert_orders([looping, _order(2, "ben@buyer.example")], DELIVERED)
    async with _gated_server() as (gate, port):
        gate.release.set()
        daemon = _daemon(store, port, templates_dir=str(templates), render_timeout_s=0.5)
        async with TemplateRunner.from_settings(daemon.settings) as runner:
            daemon.runner = runner
            report = await asyncio.wait_for(daemon.run_pass(), timeout=30)
    assert gate.recipients == ["ben@buyer.example"]
    rows = {s.order_id: s for s in store.sends()}
    assert rows["SHOP-1"].state is SendState.FAILED
    assert "took longer than 0.5 s to render" in rows["SHOP-1"].reason
    assert report.outcomes["sent"] == 1 and report.outcomes["failed"] == 1
