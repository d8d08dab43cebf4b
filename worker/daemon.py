"""The loop: plan, record, send, sleep until the next due time or the poll interval.

One pass reads the store, asks the pure planner what is due, records skips, then hands due
sends to a bounded set of delivery tasks. Each task claims one send (committed before any
SMTP talk), renders, sends, and records the outcome without an await in between, so a
cancellation cannot lose a result that the server already acknowledged.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from worker import logs
from worker.campaign import load_campaigns
from worker.clock import Clock
from worker.compose import compose
from worker.config import Settings
from worker.domain import Campaign, CampaignStep, Review, Send, SuppressionReason, TriggerEvent
from worker.errors import CampaignError, StoreError, TemplateError, WorkerError
from worker.ingest import Ingest
from worker.plan import Decision, OrderHistory, Plan, Policy, Refusal, plan, refusal
from worker.render import (
    RenderedMessage,
    Renderer,
    TemplateRunner,
    message_context,
    sample_context,
)
from worker.return_path import Signer, return_path_base
from worker.send import Failed, Handover, InDoubt, Mailer, Outcome, Retry, Sent
from worker.store import Store

log = logs.get("worker.daemon")

OUTCOMES = ("sent", "skipped", "refused", "retry", "given_back", "failed", "in_doubt", "error")
"""What a pass did with each due send, in the order the summary gives them."""
RELAY_BACKOFF_MAX_S = 1800.0
"""The longest wait between passes while the relay stays down."""
_RELAY_DOWN = "the SMTP relay refuses connections or never greets; check smtp.host/port and it"


@dataclass
class PassReport:
    """What one pass did; ``--once`` exits non-zero unless ``ok``."""

    now: datetime
    outcomes: Counter[str] = field(default_factory=Counter)
    waiting: Counter[str] = field(default_factory=Counter)
    next_wakeup: datetime | None = None
    relay_down: str | None = None
    """Why sending stopped early: the relay was found down."""
    retry_in_s: float | None = None
    """With ``relay_down``: when the next pass tries again."""

    @property
    def ok(self) -> bool:
        bad = self.outcomes["failed"] or self.outcomes["in_doubt"] or self.outcomes["error"]
        return not (bad or self.relay_down)

    def summary(self) -> dict[str, object]:
        return {
            "now": self.now.isoformat(),
            **{k: self.outcomes[k] for k in OUTCOMES},
            "waiting": sum(self.waiting.values()),
            "next_wakeup": self.next_wakeup.isoformat() if self.next_wakeup else None,
            "relay_down": self.relay_down,
        }


def policy_from(settings: Settings) -> Policy:
    return Policy(
        dispute_cooldown=settings.dispute_cooldown, default_zone=ZoneInfo(settings.default_timezone)
    )


def load_checked_campaigns(settings: Settings, renderer: Renderer) -> list[Campaign]:
    """Campaigns and every template they use, rendered once against a sample order."""
    campaigns = load_campaigns(settings.campaigns_dir)
    sample = sample_context(settings.seller, settings.default_locale)
    for campaign in campaigns:
        for step in campaign.steps:
            line = campaign.step_lines.get(step.id)
            where = f"{campaign.source}:{line}" if line else campaign.source
            if not (settings.templates_dir / step.template).is_dir():
                raise CampaignError(
                    f"steps.{step.id}.template: no folder {settings.templates_dir / step.template}",
                    where=where,
                )
            # Only a step triggered by a review may use `review` in its template.
            reviewed = step.trigger.event is TriggerEvent.REVIEWED
            renderer.check([step.template], sample if reviewed else {**sample, "review": None})
    return campaigns


class Daemon:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        campaigns: Sequence[Campaign],
        renderer: Renderer,
        clock: Clock,
        *,
        worker_id: str | None = None,
        ingest: Ingest | None = None,
        signer: Signer | None = None,
        runner: TemplateRunner | None = None,
    ) -> None:
        """``signer`` holds the kept key (:func:`worker.return_path.load_signer`); without
        one, a key for this process only: reports about its sends are tied only while it
        runs."""
        self.settings = settings
        self.store = store
        self.campaigns = list(campaigns)
        self.renderer = renderer
        self.clock = clock
        self.policy = policy_from(settings)
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}"
        self.signer = signer or Signer.ephemeral()
        self.runner = runner
        self.return_path_base = return_path_base(settings)
        self.ingest = ingest
        self._sent_copies: list[tuple[bytes, datetime]] = []
        self._relay_down_passes = 0
        self._wake = asyncio.Event()

    def plan(self, at: datetime | None = None) -> Plan:
        """A dry run: what would be sent at ``at`` and why the rest would not."""
        moment = at or self.clock.now()
        return plan(self.store.histories(), self.campaigns, moment, self.policy)

    async def run(self, stop: asyncio.Event) -> None:
        """Pass after pass until ``stop`` is set; waits on whichever comes first.

        With a mailbox, a watched task reads it all along and wakes the loop after each
        read; if that task dies of a bug, the daemon stops rather than send blind.
        """
        log.info(
            "daemon.started",
            worker=self.worker_id,
            campaigns=[c.name for c in self.campaigns],
            mailbox=self.ingest.name if self.ingest else None,
        )
        reader = None
        if self.ingest is not None:
            reader = asyncio.create_task(self.ingest.watch(stop, self._wake.set))
        try:
            while not stop.is_set():
                delay = await self._pass_or_pause(stop)
                await _wait_any(stop, self._wake, reader, delay)
                self._wake.clear()
                if reader is not None and reader.done():
                    reader.result()  # re-raises what killed the mailbox reader
                    break
        finally:
            await self._stop_reader(reader)
        log.info("daemon.stopped", worker=self.worker_id)

    async def _stop_reader(self, reader: asyncio.Task[None] | None) -> None:
        """The reader sees ``stop`` itself and logs out; cancel it only if that hangs."""
        if reader is None or reader.done():
            return
        done, _ = await asyncio.wait({reader}, timeout=self.settings.imap.timeout_s + 2)
        if not done:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)

    async def _pass_or_pause(self, stop: asyncio.Event) -> float:
        if self.ingest is not None and not self.ingest.fresh(self.clock.now()):
            log.warning(
                "pass.held", reason="mailbox_unread", last_read=_iso(self.ingest.last_read_at)
            )
            return self.settings.poll_interval_s
        try:
            return self._sleep_s(await self.run_pass(stop))
        except StoreError as exc:
            # A locked or unreachable database is often brief; try again next tick.
            log.error("pass.failed", error=str(exc), retry_in_s=self.settings.poll_interval_s)
            return self.settings.poll_interval_s

    async def run_once(self, stop: asyncio.Event | None = None) -> PassReport:
        """``worker run --once``: read the mailbox to the end, then one sending pass.

        If the mailbox cannot be read, nothing is sent: a complaint may be waiting in it. Once
        ``stop`` is set no new send is taken; what was claimed finishes.
        """
        stop = stop or asyncio.Event()
        if self.ingest is not None:
            await self.ingest.run_once()
        if stop.is_set():
            return PassReport(self.clock.now())
        return await self.run_pass(stop)

    def _sleep_s(self, report: PassReport) -> float:
        if report.retry_in_s is not None:  # the relay is down: wait for it, not for what is due
            return report.retry_in_s
        delay = self.settings.poll_interval_s
        if report.next_wakeup is not None:
            delay = min(delay, (report.next_wakeup - self.clock.now()).total_seconds())
        return max(delay, 0.5)

    async def run_pass(self, stop: asyncio.Event | None = None) -> PassReport:
        now = self.clock.now()
        report = PassReport(now)
        self._expire_stale_claims(now, report)
        histories = {h.order.order_id: h for h in self.store.histories()}
        decided = plan(histories.values(), self.campaigns, now, self.policy)
        for failure in decided.failures:  # one order's bug; its steps wait, the pass goes on
            report.outcomes["error"] += 1
            log.error(
                "plan.failed",
                order=failure.order_id,
                campaign=failure.campaign,
                step=failure.step,
                error=failure.error,
                where=failure.where,
            )
        for decision in decided.waiting:
            report.waiting[decision.reason.split(":")[0]] += 1
            log.debug("send.waiting", **_fields(decision))
        for decision in decided.skipped:
            self._record_skip(decision, now, report)
        queue: asyncio.Queue[tuple[Decision, int]] = asyncio.Queue()
        for decision in decided.due:
            row = self.store.schedule(
                decision.order_id, decision.campaign, decision.step, decision.at or now, now
            )
            queue.put_nowait((decision, row.id))
        if not queue.empty():
            await self._deliver_all(queue, histories, report, stop or asyncio.Event())
            await self._copy_to_sent()
        report.next_wakeup = decided.next_wakeup()
        log.info("pass.finished", **report.summary())
        return report

    async def _copy_to_sent(self) -> None:
        copies, self._sent_copies = self._sent_copies, []
        if self.ingest is not None:
            await self.ingest.append_sent(copies)

    def _expire_stale_claims(self, now: datetime, report: PassReport) -> None:
        margin = timedelta(seconds=2 * self.settings.smtp.message_deadline_s + 60)
        for row in self.store.expire_claims(now - margin, now):
            report.outcomes["in_doubt"] += 1
            log.warning(
                "send.in_doubt",
                send_id=row.id,
                order=row.order_id,
                campaign=row.campaign,
                step=row.step,
                message_id=row.message_id,
                reason="claim_expired",
            )

    def _record_skip(self, decision: Decision, now: datetime, report: PassReport) -> None:
        self.store.record_skip(
            decision.order_id,
            decision.campaign,
            decision.step,
            decision.at or now,
            decision.reason,
            now,
        )
        report.outcomes["skipped"] += 1
        log.info("send.skipped", **_fields(decision))

    async def _deliver_all(
        self,
        queue: asyncio.Queue[tuple[Decision, int]],
        histories: dict[str, OrderHistory],
        report: PassReport,
        stop: asyncio.Event,
    ) -> None:
        async with Mailer(self.settings.smtp) as mailer:
            tasks = [
                asyncio.create_task(self._deliver_from(queue, mailer, histories, report, stop))
                for _ in range(min(self.settings.smtp.concurrency, queue.qsize()))
            ]
            try:
                await asyncio.gather(*tasks)
            finally:
                for task in tasks:
                    task.cancel()

    async def _deliver_from(
        self,
        queue: asyncio.Queue[tuple[Decision, int]],
        mailer: Mailer,
        histories: dict[str, OrderHistory],
        report: PassReport,
        stop: asyncio.Event,
    ) -> None:
        """Take no new work once ``stop`` is set or the relay is down; finish what was
        claimed. Unclaimed rows stay scheduled for the next pass."""
        while not stop.is_set() and not queue.empty():
            if mailer.relay_down is not None:
                self._relay_is_down(mailer.relay_down, report)
                return
            decision, send_id = queue.get_nowait()
            history = histories[decision.order_id]
            rendered = await self._render(decision, history)  # before the claim: no row waits
            claim = self.store.claim(
                [send_id], self.clock.now(), self.worker_id, self._message_id, self._guard
            )
            if send_id in claim.refused:
                reason = claim.refused[send_id]
                report.outcomes["refused"] += 1
                log.info("send.refused_at_claim", **{**_fields(decision), "reason": reason})
                continue
            if not claim.sends:
                log.info("send.claimed_elsewhere", **_fields(decision))
                continue
            send = claim.sends[0]
            if isinstance(rendered, Failed):
                self._record(send, rendered, report, history.order.buyer_email)
                continue
            await self._deliver(send, history, rendered, mailer, report)

    async def _render(self, decision: Decision, history: OrderHistory) -> RenderedMessage | Failed:
        """Within ``render_timeout_s`` and ``render_max_bytes``, off the event loop when the
        daemon has a runner: a template looping on one order's data fails that send alone."""
        order = history.order
        step = self._step(decision.campaign, decision.step)
        locale = history.customer.locale or order.locale
        context = message_context(
            order,
            self.settings.seller,
            _latest_review(history),
            locale or self.settings.default_locale,
        )
        try:
            if self.runner is not None:
                return await self.runner.render(step.template, locale, context)
            return self.renderer.render(step.template, locale, context)
        except TemplateError as exc:
            return Failed(f"cannot build the message: {exc}", None, False)

    def _step(self, campaign: str, step: str) -> CampaignStep:
        return next(c for c in self.campaigns if c.name == campaign).step(step)

    def _guard(self, send: Send, history: OrderHistory) -> Refusal | None:
        """The protections asked again as the send is claimed, against what is stored now."""
        step = self._step(send.campaign, send.step)
        return refusal(history, step, self.clock.now(), self.policy)

    def _reply_token(self, order_id: str) -> str | None:
        if not self.settings.inbox.reply_tokens:
            return None
        return self.store.reply_token(order_id, lambda: secrets.token_hex(8))

    def _message_id(self, send: Send) -> str:
        return self.signer.message_id(send, self.settings.sender_domain)

    async def _deliver(
        self,
        send: Send,
        history: OrderHistory,
        rendered: RenderedMessage,
        mailer: Mailer,
        report: PassReport,
    ) -> None:
        order = history.order
        try:
            message = compose(
                rendered,
                send=send,
                order=order,
                settings=self.settings,
                now=self.clock.now(),
                reply_token=self._reply_token(order.order_id),
            )
        except WorkerError as exc:
            failed = Failed(f"cannot build the message: {exc}", None, False)
            self._record(send, failed, report, order.buyer_email)
            return
        handover = Handover()
        try:
            return_path = self.signer.return_path(send.id, self.return_path_base)
            outcome = await mailer.send(
                message, sender=return_path, recipient=order.buyer_email, progress=handover
            )
        except asyncio.CancelledError:
            if handover.data_started:
                stopped = InDoubt("stopped after the message data began to go out")
                self._record(send, stopped, report, order.buyer_email)
            else:
                self._give_back(send, "stopped before the message was handed over", report)
            raise
        except Exception as exc:  # a bug must not leave the row claimed for ever
            broken = InDoubt(f"unexpected error during the SMTP conversation: {exc!r}")
            self._record(send, broken, report, order.buyer_email)
            raise
        if isinstance(outcome, Retry) and mailer.relay_down is not None:
            self._give_back(send, outcome.reason, report)  # a dead relay costs no pass
            return
        self._record(send, outcome, report, order.buyer_email, rendered.text)
        if isinstance(outcome, Sent):
            self._sent_copies.append((message.as_bytes(), self.clock.now()))

    def _give_back(self, send: Send, reason: str, report: PassReport) -> None:
        """Synchronous, like ``_record``: the row is scheduled again before anything else."""
        self.store.unclaim(send.id, reason, self.clock.now())
        report.outcomes["given_back"] += 1
        log.info("send.given_back", send_id=send.id, order=send.order_id, reason=reason)

    def _relay_is_down(self, reason: str, report: PassReport) -> None:
        """Once per pass: stop sending; the next pass tries again, later each time."""
        if report.relay_down is not None:
            return
        self._relay_down_passes += 1
        delay = min(
            self.settings.poll_interval_s * 2 ** (self._relay_down_passes - 1), RELAY_BACKOFF_MAX_S
        )
        report.relay_down = reason
        report.retry_in_s = delay
        log.error("relay.down", reason=reason, retry_in_s=delay, meaning=_RELAY_DOWN)

    def _record(
        self,
        send: Send,
        outcome: Outcome,
        report: PassReport,
        recipient: str,
        text: str | None = None,
    ) -> None:
        """Synchronous on purpose: no await, so cancellation cannot split send and record."""
        now = self.clock.now()
        fields = {
            "send_id": send.id,
            "order": send.order_id,
            "campaign": send.campaign,
            "step": send.step,
            "message_id": send.message_id,
            "attempt": send.attempts,
        }
        if isinstance(outcome, Sent):
            self.store.mark_sent(send.id, outcome.reply, now, text)
            report.outcomes["sent"] += 1
            self._relay_down_passes = 0
            log.info("send.sent", **fields, relay_message_id=outcome.relay_message_id)
        elif isinstance(outcome, Retry) and send.attempts < self.settings.smtp.max_passes:
            not_before = now + timedelta(seconds=self.settings.smtp.retry_after_s)
            self.store.release(send.id, outcome.reason, not_before, now)
            report.outcomes["retry"] += 1
            log.warning(
                "send.retry_later",
                **fields,
                reason=outcome.reason,
                not_before=not_before.isoformat(),
            )
        elif isinstance(outcome, Retry):
            reason = f"gave up after {send.attempts} passes: {outcome.reason}"
            self.store.mark_failed(send.id, reason, now)
            report.outcomes["failed"] += 1
            log.error("send.failed", **fields, reason=reason)
        elif isinstance(outcome, Failed):
            self.store.mark_failed(send.id, outcome.reason, now)
            report.outcomes["failed"] += 1
            log.error(
                "send.failed",
                **fields,
                reason=outcome.reason,
                code=outcome.code,
                suppress=outcome.suppress,
            )
            if outcome.suppress:
                self._suppress(recipient, outcome, now)
        else:
            self.store.mark_in_doubt(send.id, outcome.reason, now)
            report.outcomes["in_doubt"] += 1
            log.warning("send.in_doubt", **fields, reason=outcome.reason)

    def _suppress(self, email: str, outcome: Failed, now: datetime) -> None:
        if self.store.suppress(email, SuppressionReason.HARD_BOUNCE, now, outcome.reason):
            log.warning(
                "suppression.added", email=email, reason="hard_bounce", detail=outcome.reason
            )


def _latest_review(history: OrderHistory) -> Review | None:
    return max(history.reviews, key=lambda r: r.reviewed_at, default=None)


def _fields(decision: Decision) -> dict[str, object]:
    return {
        "order": decision.order_id,
        "campaign": decision.campaign,
        "step": decision.step,
        "reason": decision.reason,
        "at": decision.at.isoformat() if decision.at else None,
    }


async def run_until_stopped(daemon: Daemon, stop: asyncio.Event, shutdown_timeout_s: float) -> None:
    """Run until stopped; then let in-flight sends finish, cancelling them after the timeout.

    A cancelled send is recorded by :meth:`Daemon._deliver`, never lost.
    """
    await _drained(asyncio.create_task(daemon.run(stop)), stop, shutdown_timeout_s)


async def run_once_until_stopped(
    daemon: Daemon, stop: asyncio.Event, shutdown_timeout_s: float
) -> PassReport:
    """``--once`` under the same rule as the daemon: a stop takes no new work and drains."""
    task = asyncio.create_task(daemon.run_once(stop))
    await _drained(task, stop, shutdown_timeout_s)
    return task.result() if not task.cancelled() else PassReport(daemon.clock.now())


async def _drained(task: asyncio.Task[Any], stop: asyncio.Event, shutdown_timeout_s: float) -> None:
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    if not task.done():
        log.info("daemon.stopping", timeout_s=shutdown_timeout_s)
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout=shutdown_timeout_s)
        except TimeoutError:
            log.warning("daemon.shutdown_timeout", timeout_s=shutdown_timeout_s)
            task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        if not task.cancelled():
            raise


async def _wait_any(
    stop: asyncio.Event, wake: asyncio.Event, reader: asyncio.Task[None] | None, seconds: float
) -> None:
    """Until the first of: stop, a wake-up from the mailbox reader, its death, the timeout."""
    waits: set[asyncio.Future[Any]] = {
        asyncio.ensure_future(stop.wait()),
        asyncio.ensure_future(wake.wait()),
    }
    watched = waits | ({reader} if reader is not None else set())
    await asyncio.wait(watched, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    for waiting in waits:
        waiting.cancel()


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None
