"""`worker pause` stops a running daemon's sends within one pass, on every worker, across
restarts; `worker resume` lets what waited go out while still inside its max_lateness."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

from structlog.testing import capture_logs

from tests.conftest import settings_for
from tests.integration.smtp_server import scripted_server
from worker.clock import FixedClock
from worker.daemon import Daemon, PassReport, load_checked_campaigns
from worker.domain import Order, SendState
from worker.pauses import PauseScope
from worker.render import Renderer
from worker.store import Planned, Store

DELIVERED = datetime(2026, 3, 2, 11, 0, tzinfo=UTC)  # a Monday
CHECK_IN_DUE = DELIVERED + timedelta(days=7, hours=1)


def _order(number: int, email: str, marketplace: str = "shop") -> Order:
    return Order(
        f"ORD-{number}", marketplace, email, "Ann", ("Kettle",), "en", "GB", delivered_at=DELIVERED
    )


def _daemon(store: Store, port: int, clock: FixedClock, **changes: object) -> Watched:
    settings = settings_for(store, port, **changes)
    renderer = Renderer(settings.templates_dir, settings.default_locale)
    return Watched(settings, store, load_checked_campaigns(settings, renderer), renderer, clock)


def _states(store: Store) -> dict[str, SendState]:
    return {row.order_id: row.state for row in store.sends()}


class Watched(Daemon):
    """The daemon, telling the test each time a pass has finished."""

    passed: asyncio.Event | None = None

    async def run_pass(self, stop: asyncio.Event | None = None) -> PassReport:
        report = await super().run_pass(stop)
        if self.passed is not None:
            self.passed.set()
        return report

    async def passes(self, count: int) -> None:
        """Until ``count`` more passes have finished."""
        self.passed = asyncio.Event()
        async with asyncio.timeout(10):
            for _ in range(count):
                self.passed.clear()
                await self.passed.wait()


async def test_a_pause_stops_a_running_daemon_within_one_pass_and_resume_sends(
    store: Store,
) -> None:
    other = Store.open(store.engine.url.render_as_string(hide_password=False))  # an operator
    clock = FixedClock(CHECK_IN_DUE)
    store.upsert_orders([_order(1, "ann@example.com")], DELIVERED)
    async with scripted_server() as server:
        daemon = _daemon(store, server.port, clock, poll_interval_s=0.05)
        stop = asyncio.Event()
        with capture_logs() as logs:
            running = asyncio.create_task(daemon.run(stop))
            await server.seen.wait_until(lambda seen: len(seen.messages) == 1)

            other.pause(PauseScope.EVERYTHING, "", "ops", "relay incident", clock.now())
            other.upsert_orders([_order(2, "ben@example.com")], clock.now())  # due at once
            await daemon.passes(3)
            assert len(server.seen.messages) == 1, "nothing goes out once paused"
            assert "ORD-2" not in _states(store), "held, not skipped: no row until it is due"
            [changed] = [e for e in logs if e["event"] == "pauses.changed"]
            assert changed["paused"] == ["everything by ops"]

            assert other.resume(PauseScope.EVERYTHING, "") is not None
            await server.seen.wait_until(lambda seen: len(seen.messages) == 2)
            stop.set()
            await asyncio.wait_for(running, timeout=10)
    other.close()
    assert server.seen.recipients == ["ann@example.com", "ben@example.com"]
    assert _states(store) == {"ORD-1": SendState.SENT, "ORD-2": SendState.SENT}


class PausedMidPass(Store):
    """An operator pauses everything after the pass planned and before it claims."""

    paused = False

    def plan_due(self, *args: Any, **kwargs: Any) -> Planned | None:
        planned = super().plan_due(*args, **kwargs)
        if planned is not None and planned.due and not self.paused:
            self.pause(PauseScope.EVERYTHING, "", "ops", "", CHECK_IN_DUE)
            self.paused = True
        return planned


async def test_a_pause_stored_during_a_pass_stops_its_claims_and_the_row_stays_scheduled(
    store: Store,
) -> None:
    store.upsert_orders([_order(1, "ann@example.com")], DELIVERED)
    clock = FixedClock(CHECK_IN_DUE)
    async with scripted_server() as server:
        daemon = _daemon(PausedMidPass(store.engine), server.port, clock)
        report = await daemon.run_pass()
        assert report.waiting["paused"] == 1 and not report.outcomes["sent"]
        assert _states(store) == {"ORD-1": SendState.SCHEDULED}

        clock.advance(timedelta(minutes=5))
        report = await daemon.run_pass()  # planned again: held by the pause, still scheduled
        assert report.waiting["paused"] == 1
        assert _states(store) == {"ORD-1": SendState.SCHEDULED}
        assert server.seen.messages == []

        store.resume(PauseScope.EVERYTHING, "")
        clock.advance(timedelta(minutes=5))
        report = await daemon.run_pass()
    assert report.outcomes["sent"] == 1
    assert server.seen.recipients == ["ann@example.com"]


async def test_a_pause_survives_a_restart_and_holds_every_new_worker(store: Store) -> None:
    url = store.engine.url.render_as_string(hide_password=False)
    store.upsert_orders([_order(1, "ann@example.com")], DELIVERED)
    store.pause(PauseScope.EVERYTHING, "", "ops", "", CHECK_IN_DUE)
    clock = FixedClock(CHECK_IN_DUE)
    async with scripted_server() as server:
        restarted = Store.open(url)
        try:
            report = await _daemon(restarted, server.port, clock).run_pass()
            assert [p.paused_by for p in restarted.pauses()] == ["ops"]
        finally:
            restarted.close()
    assert report.waiting["paused"] == 1
    assert server.seen.messages == []


async def test_a_marketplace_or_campaign_pause_holds_only_its_own_mail(store: Store) -> None:
    store.upsert_orders(
        [_order(1, "ann@example.com", "shop"), _order(2, "ben@example.com", "ebay")], DELIVERED
    )
    store.pause(PauseScope.MARKETPLACE, "ebay", "ops", "", CHECK_IN_DUE)
    clock = FixedClock(CHECK_IN_DUE)
    async with scripted_server() as server:
        daemon = _daemon(store, server.port, clock)
        await daemon.run_pass()
        assert server.seen.recipients == ["ann@example.com"]

        store.pause(PauseScope.CAMPAIGN, "review-follow-up", "ops", "", clock.now())
        store.resume(PauseScope.MARKETPLACE, "ebay")
        clock.advance(timedelta(hours=1))
        report = await daemon.run_pass()
        assert server.seen.recipients == ["ann@example.com"], "the campaign is paused"
        assert report.waiting["paused"] == 1

        store.resume(PauseScope.CAMPAIGN, "review-follow-up")
        clock.advance(timedelta(hours=1))
        await daemon.run_pass()
    assert server.seen.recipients == ["ann@example.com", "ben@example.com"]


async def test_a_step_paused_past_its_max_lateness_is_skipped_on_resume(store: Store) -> None:
    store.upsert_orders([_order(1, "ann@example.com")], DELIVERED)
    store.pause(PauseScope.EVERYTHING, "", "ops", "", CHECK_IN_DUE)
    clock = FixedClock(CHECK_IN_DUE)
    async with scripted_server() as server:
        daemon = _daemon(store, server.port, clock)
        await daemon.run_pass()
        store.resume(PauseScope.EVERYTHING, "")
        clock.advance(timedelta(days=12))  # the check-in allows 10 days
        await daemon.run_pass()
    assert server.seen.messages == []
    [row] = store.sends()
    assert row.state is SendState.SKIPPED and row.reason.startswith("too_late")


async def test_the_dry_run_shows_what_a_pause_holds(store: Store) -> None:
    store.upsert_orders([_order(1, "ann@example.com")], DELIVERED)
    store.pause(PauseScope.MARKETPLACE, "shop", "ops", "", CHECK_IN_DUE)
    dry = _daemon(store, 25, FixedClock(CHECK_IN_DUE)).plan()
    [check_in] = [d for d in dry.decisions if d.step == "check-in"]
    assert (check_in.verdict.value, check_in.reason) == ("wait", "paused")
    assert store.sends() == [], "a dry run records nothing"
