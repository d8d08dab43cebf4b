"""Faults injected into a pass: each bounded in count and time, loopback only.

What a dispute opened mid-pass, a stop signal and a killed process do to the send records.
The SMTP servers here are real aiosmtpd servers on the running loop, gated where a test
needs the pass to stand still at a known point.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session

from tests.conftest import settings_for
from worker.clock import FixedClock
from worker.daemon import Daemon, load_checked_campaigns
from worker.domain import DisputeKind, Order, SendState, SuppressionReason
from worker.render import Renderer
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
    settings = settings_for(store, port, smtp=smtp | overrides)
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
