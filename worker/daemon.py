"""The loop: plan, record, send, sleep until the next due time or the poll interval.

One pass plans only the buyers whose next look has come (the store keeps it per buyer), a
batch per transaction that also records the skips and schedules the due steps, then hands
the due sends to a bounded set of delivery tasks. Each task renders a few sends, claims them
in one transaction (committed before any SMTP talk), sends each, and records each outcome
without an await in between, so a cancellation cannot lose a result that the server already
acknowledged.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import secrets
import socket
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from worker import logs
from worker.campaign import load_campaigns
from worker.clock import Clock
from worker.compliance import policy_findings, refuse_findings
from worker.compose import compose
from worker.config import Settings
from worker.delivery import delivery_of, expected_window
from worker.domain import (
    Campaign,
    CampaignStep,
    Order,
    Review,
    Send,
    SuppressionReason,
    TriggerEvent,
)
from worker.errors import CampaignError, StoreError, TemplateError, WorkerError
from worker.health import Heartbeat, stalls
from worker.ingest import Ingest
from worker.language import Language, choose_language
from worker.metrics import Metrics
from worker.pauses import PAUSED, Pause, holding
from worker.plan import (
    Decision,
    OrderHistory,
    Plan,
    PlanFailure,
    Policy,
    Refusal,
    plan,
    plan_inputs_digest,
    refusal,
)
from worker.render import (
    RenderedMessage,
    Renderer,
    RenderJob,
    TemplateRunner,
    message_context,
    sample_context,
)
from worker.return_path import Signer, return_path_base
from worker.send import Failed, Handover, InDoubt, Mailer, Outcome, Retry, Sent
from worker.store import DueCursor, Planned, SentRecord, Store
from worker.unsubscribe import OneClick
from worker.web import OneClickDesk, WebServer

log = logs.get("worker.daemon")

OUTCOMES = ("sent", "skipped", "refused", "retry", "given_back", "failed", "in_doubt", "error")
"""What a pass did with each due send, in the order the summary gives them."""
CLAIM_BATCH = 4
"""Sends claimed per transaction by one delivery task: few enough that the last one starts
well within the message deadline."""
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
        dispute_cooldown=settings.dispute_cooldown,
        default_zone=ZoneInfo(settings.default_timezone),
        buyer_cap=settings.buyer_cap,
        transit=settings.delivery.transit_table(),
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
    refuse_findings(policy_findings(settings, campaigns))
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
        mailboxes: Sequence[Ingest] = (),
        signer: Signer | None = None,
        runner: TemplateRunner | None = None,
        one_click: OneClick | None = None,
    ) -> None:
        """``signer`` holds the kept key (:func:`worker.return_path.load_signer`); without
        one, a key for this process only: reports about its sends are tied only while it
        runs. ``ingest`` and ``mailboxes``: the mailboxes to read (``ingest`` first, where
        sent copies go); each is read by whichever worker holds its lease. ``one_click``:
        the key of ``unsubscribe.url``'s ``{token}`` (worker/unsubscribe.py), if set."""
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
        self.mailboxes = [m for m in (ingest, *mailboxes) if m is not None]
        self._share = len(self.mailboxes)
        for mailbox in self.mailboxes:
            mailbox.holder = self.worker_id
            mailbox.siblings = self.mailboxes
            mailbox.share = lambda: self._share
        self._sent_copies: list[tuple[bytes, datetime]] = []
        self._relay_down_passes = 0
        self._wake = asyncio.Event()
        self._plan_inputs = plan_inputs_digest(self.campaigns, self.policy)
        self._paused: list[Pause] = []
        self._locales: dict[str, list[str]] = {}
        """Each template's locale files, read once: templates are checked at start-up and a
        changed one takes a restart, as campaigns do."""
        self.one_click = one_click
        self.started = clock.now()
        self.heartbeat = Heartbeat(self.started, self.started)
        self._alive(0)
        self.metrics = Metrics(
            store.figures, clock.now, self.mailboxes, self.heartbeat, self.started
        )
        for mailbox in self.mailboxes:
            mailbox.on_stored = self.metrics.received
        self.web: WebServer | None = None
        """The HTTP server while :meth:`run` runs (``http.enabled``)."""

    def plan(self, at: datetime | None = None) -> Plan:
        """A dry run: what would be sent at ``at`` and why the rest would not, for every
        order. Holds every decision: for a big store, iterate :meth:`plan_batches`."""
        moment = at or self.clock.now()
        decisions: list[Decision] = []
        failures: list[PlanFailure] = []
        for batch in self.plan_batches(moment):
            decisions.extend(batch.decisions)
            failures.extend(batch.failures)
        return Plan(tuple(decisions), moment, tuple(failures))

    def plan_batches(self, at: datetime) -> Iterator[Plan]:
        """The dry run streamed: every order's decisions at ``at``, a batch of buyers at a
        time, in constant memory. Writes nothing."""
        for result, _histories in self.plan_batches_with_histories(at):
            yield result

    def plan_batches_with_histories(
        self, at: datetime
    ) -> Iterator[tuple[Plan, dict[str, OrderHistory]]]:
        """:meth:`plan_batches` with each batch's histories by order id, for ``worker plan``
        to say more than the decision (the buyer's language). Pauses in force hold what they
        hold, as they would in the daemon."""
        paused = self.store.pauses()
        for histories in self.store.every_history():
            by_order = {h.order.order_id: h for h in histories}
            yield plan(histories, self.campaigns, at, self.policy, paused), by_order

    @property
    def ingest(self) -> Ingest | None:
        """The first mailbox: the one sent copies go to."""
        return self.mailboxes[0] if self.mailboxes else None

    async def run(self, stop: asyncio.Event) -> None:
        """Pass after pass until ``stop`` is set; waits on whichever comes first.

        With mailboxes, a watched task per mailbox reads it all along (while this worker
        holds its lease) and wakes the loop after each read; if one dies of a bug, the
        daemon stops rather than send blind.
        """
        log.info(
            "daemon.started",
            worker=self.worker_id,
            campaigns=[c.name for c in self.campaigns],
            mailboxes=[m.name for m in self.mailboxes],
        )
        await self._serve_http()
        readers = [asyncio.create_task(m.watch(stop, self._wake.set)) for m in self.mailboxes]
        try:
            while not stop.is_set():
                self._beat()
                self._alive(0)
                delay = await self._pass_or_pause(stop)
                self._alive(delay)
                await _wait_any(stop, self._wake, readers, delay)
                self._wake.clear()
                if dead := [reader for reader in readers if reader.done()]:
                    dead[0].result()  # re-raises what killed the mailbox reader
                    break
        finally:
            await self._stop_readers(readers)
            if self.web is not None:
                await self.web.stop()
            if self.mailboxes:
                with contextlib.suppress(StoreError):
                    self.store.worker_gone(self.worker_id)
        log.info("daemon.stopped", worker=self.worker_id)

    async def _serve_http(self) -> None:
        """/metrics, /healthz and, with a key, /unsubscribe/{token} (worker/web.py)."""
        if not self.settings.http.enabled:
            return
        desk = None
        if self.one_click is not None:
            desk = OneClickDesk(self.settings, self.store, self.one_click, self.clock)
        self.web = WebServer(self.settings.http, self.metrics, self.stalls, desk)
        await self.web.start()

    def stalls(self) -> list[str]:
        """What /healthz reports stalled: the loop, or a mailbox read too long ago."""
        return stalls(self.clock.now(), self.heartbeat, self.mailboxes, self.started)

    def _alive(self, wait_s: float) -> None:
        """The loop's heartbeat: the next one is due within ``wait_s`` plus a poll interval
        and a message deadline (a pass beats on every recorded outcome)."""
        grace = self.settings.poll_interval_s + self.settings.smtp.message_deadline_s
        self.heartbeat.beat(self.clock.now(), wait_s + grace)

    def _counted(self, report: PassReport, campaign: str, step: str, outcome: str) -> None:
        """One step's outcome: in the pass's report, the metrics and the heartbeat."""
        report.outcomes[outcome] += 1
        self.metrics.step_outcome(campaign, step, outcome)
        self._alive(0)

    def _beat(self) -> None:
        """Say this worker is alive and take its fair share of the mailboxes: all of them
        split evenly among the workers that beat lately."""
        if not self.mailboxes:
            return
        now = self.clock.now()
        since = now - timedelta(seconds=3 * self.settings.poll_interval_s)
        try:
            self.store.worker_alive(self.worker_id, now)
            live = max(1, self.store.live_workers(since))
        except StoreError as exc:  # the pass will say so too; the share stays as it was
            log.warning("daemon.beat_failed", error=str(exc))
            return
        share = -(-len(self.mailboxes) // live)
        if share != self._share:
            log.info("mailbox.share", worker=self.worker_id, workers=live, mailboxes=share)
        self._share = share

    async def _stop_readers(self, readers: list[asyncio.Task[None]]) -> None:
        """Readers see ``stop`` themselves and log out; cancel the ones that hang."""
        running = {reader for reader in readers if not reader.done()}
        if not running:
            return
        timeout = max(m.imap.timeout_s for m in self.mailboxes) + 2
        _, hanging = await asyncio.wait(running, timeout=timeout)
        for reader in hanging:
            reader.cancel()
        await asyncio.gather(*hanging, return_exceptions=True)

    async def _pass_or_pause(self, stop: asyncio.Event) -> float:
        try:
            if stale := self._unread_mailbox():
                log.warning(
                    "pass.held",
                    reason="mailbox_unread",
                    mailbox=stale.name,
                    last_read=_iso(stale.last_read_at),
                )
                return self.settings.poll_interval_s
            return self._sleep_s(await self.run_pass(stop))
        except StoreError as exc:
            # A locked or unreachable database is often brief; try again next tick.
            log.error("pass.failed", error=str(exc), retry_in_s=self.settings.poll_interval_s)
            return self.settings.poll_interval_s

    def _unread_mailbox(self) -> Ingest | None:
        """A mailbox no worker has read recently: a complaint may be waiting in it."""
        now = self.clock.now()
        return next((m for m in self.mailboxes if not m.fresh(now)), None)

    async def run_once(self, stop: asyncio.Event | None = None) -> PassReport:
        """``worker run --once``: read every mailbox to the end, then one sending pass.

        If a mailbox cannot be read, nothing is sent: a complaint may be waiting in it. Once
        ``stop`` is set no new send is taken; what was claimed finishes.
        """
        stop = stop or asyncio.Event()
        for mailbox in self.mailboxes:
            await mailbox.run_once()
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
        """Plan the buyers whose next look has come, then deliver what is due.

        Planning reads and records one batch of due buyers per transaction (the store keeps
        each buyer's next look), so a pass costs what is due, not what is stored.
        """
        now = self.clock.now()
        report = PassReport(now)
        self._expire_stale_claims(now, report)
        if self.store.plan_inputs_changed(self._plan_inputs, now):
            log.info("plan.reconsider_all", reason="campaigns or planning settings changed")
        paused = self._read_pauses()
        queue: asyncio.Queue[_Due] = asyncio.Queue()
        for batch in self._planned_batches(now, paused):
            self._report_plan(batch.plan, report)
            for decision, send_id in batch.due:
                queue.put_nowait(_Due(decision, send_id, batch.histories[decision.order_id]))
        if not queue.empty():
            await self._deliver_all(queue, report, stop or asyncio.Event())
            await self._copy_to_sent()
        next_look = self.store.next_look()
        report.next_wakeup = None if next_look is None else max(next_look, now)
        log.info("pass.finished", **report.summary())
        return report

    def _read_pauses(self) -> list[Pause]:
        """The operator's pauses in force (one small read), logged when they change."""
        paused = self.store.pauses()
        if paused != self._paused:
            log.warning(
                "pauses.changed",
                paused=[f"{p.describe()} by {p.paused_by}" for p in paused],
                lifted=[p.describe() for p in self._paused if p not in paused],
            )
            self._paused = paused
        return paused

    def _planned_batches(self, now: datetime, paused: Sequence[Pause] = ()) -> Iterator[Planned]:
        """Every batch of buyers due at ``now``, planned and recorded by the store."""

        def decide(histories: Sequence[OrderHistory]) -> Plan:
            return plan(histories, self.campaigns, now, self.policy, paused)

        after: DueCursor | None = None
        looked_now: set[str] = set()  # due again already: not planned twice in one pass
        while True:
            batch = self.store.plan_due(
                now, decide, after=after, planned=looked_now, limit=self.settings.plan_batch
            )
            if batch is None:
                return
            yield batch
            looked_now.update(b for b, at in batch.looks.items() if at is not None and at <= now)
            after = batch.cursor
            if not batch.full:
                return

    def _report_plan(self, decided: Plan, report: PassReport) -> None:
        self._alive(0)
        for failure in decided.failures:  # one order's bug; its steps wait, the pass goes on
            self._counted(report, failure.campaign, failure.step, "error")
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
        for decision in decided.skipped:  # recorded with the batch
            self._counted(report, decision.campaign, decision.step, "skipped")
            self.metrics.skipped(decision.reason)
            log.info("send.skipped", **_fields(decision))

    async def _copy_to_sent(self) -> None:
        copies, self._sent_copies = self._sent_copies, []
        if self.ingest is not None:
            await self.ingest.append_sent(copies)

    def _expire_stale_claims(self, now: datetime, report: PassReport) -> None:
        margin = timedelta(seconds=2 * self.settings.smtp.message_deadline_s + 60)
        for row in self.store.expire_claims(now - margin, now):
            self._counted(report, row.campaign, row.step, "in_doubt")
            log.warning(
                "send.in_doubt",
                send_id=row.id,
                order=row.order_id,
                campaign=row.campaign,
                step=row.step,
                message_id=row.message_id,
                reason="claim_expired",
            )

    async def _deliver_all(
        self, queue: asyncio.Queue[_Due], report: PassReport, stop: asyncio.Event
    ) -> None:
        async with Mailer(self.settings.smtp) as mailer:
            tasks = [
                asyncio.create_task(self._deliver_from(queue, mailer, report, stop))
                for _ in range(min(self.settings.smtp.concurrency, queue.qsize()))
            ]
            try:
                await asyncio.gather(*tasks)
            finally:
                for task in tasks:
                    task.cancel()

    async def _deliver_from(
        self,
        queue: asyncio.Queue[_Due],
        mailer: Mailer,
        report: PassReport,
        stop: asyncio.Event,
    ) -> None:
        """Take no new work once ``stop`` is set or the relay is down; finish what was
        handed over. Unclaimed rows stay scheduled for the next pass.

        Sends are rendered, then claimed a few at a time in one transaction; a claimed send
        not started within the message deadline (the ones before it were slow) is given
        back rather than held ``sending``.
        """
        accepted: list[_Accepted] = []
        try:
            await self._deliver_chunks(queue, mailer, report, stop, accepted)
        finally:
            self._record_accepted(accepted, report)  # no await before it: cancelled or not

    async def _deliver_chunks(
        self,
        queue: asyncio.Queue[_Due],
        mailer: Mailer,
        report: PassReport,
        stop: asyncio.Event,
        accepted: list[_Accepted],
    ) -> None:
        while not stop.is_set() and not queue.empty():
            self._record_accepted(accepted, report)
            if mailer.relay_down is not None:
                self._relay_is_down(mailer.relay_down, report)
                return
            chunk = [queue.get_nowait() for _ in range(min(CLAIM_BATCH, queue.qsize()))]
            if not (chunk := self._not_paused(chunk, report)):
                continue
            # Rendered before the claim: no row waits ``sending`` on a template.
            messages = await self._render(chunk)
            rendered = {due.send_id: message for due, message in zip(chunk, messages, strict=True)}
            claimed_at = self.clock.now()
            claim = self.store.claim(
                [due.send_id for due in chunk],
                claimed_at,
                self.worker_id,
                self._message_id,
                self._guard,
            )
            sends = {send.id: send for send in claim.sends}
            for position, due in enumerate(chunk):
                if due.send_id in claim.refused:
                    reason = claim.refused[due.send_id]
                    self._counted(report, due.decision.campaign, due.decision.step, "refused")
                    log.info("send.refused_at_claim", **{**_fields(due.decision), "reason": reason})
                    continue
                send = sends.get(due.send_id)
                if send is None:
                    log.info("send.claimed_elsewhere", **_fields(due.decision))
                    continue
                held = (self.clock.now() - claimed_at).total_seconds()
                if stop.is_set() or mailer.relay_down is not None:
                    self._give_back(send, "stopped before the message was handed over", report)
                    continue
                if held > self.settings.smtp.message_deadline_s:
                    self._give_back(send, f"claimed {held:.0f} s ago, not started", report)
                    continue
                if position and (refused := self._asked_again(send, due.history)) is not None:
                    self._withdraw(send, due.decision, refused, report)
                    continue
                message = rendered[due.send_id]
                if isinstance(message, Failed):
                    self._record(send, message, report, due.history.order.buyer_email)
                    continue
                await self._deliver(send, due.history, message, mailer, report, accepted)
            if mailer.relay_down is not None:
                self._relay_is_down(mailer.relay_down, report)
                return

    def _not_paused(self, chunk: list[_Due], report: PassReport) -> list[_Due]:
        """The chunk less what a pause stored since the pass began now holds (read again
        before every claim): those rows stay scheduled, and the next pass holds them."""
        paused = self._read_pauses()
        if not paused:
            return chunk
        free = []
        for due in chunk:
            marketplace = due.history.order.marketplace
            if holding(paused, marketplace, due.decision.campaign) is None:
                free.append(due)
            else:
                report.waiting[PAUSED] += 1
                log.info("send.paused", **{**_fields(due.decision), "reason": PAUSED})
        return free

    async def _render(self, chunk: Sequence[_Due]) -> list[RenderedMessage | Failed]:
        """Within ``render_timeout_s`` and ``render_max_bytes`` each, off the event loop in
        one exchange with the runner when the daemon has one: a template looping on one
        order's data fails that send alone."""
        jobs = [self._render_job(due) for due in chunk]
        results: list[RenderedMessage | TemplateError] = []
        if self.runner is not None:
            results = await self.runner.render_many(jobs)
        else:
            for template, locale, context in jobs:
                try:
                    results.append(self.renderer.render(template, locale, context))
                except TemplateError as exc:
                    results.append(exc)
        return [
            Failed(f"cannot build the message: {result}", None, False)
            if isinstance(result, TemplateError)
            else result
            for result in results
        ]

    def _render_job(self, due: _Due) -> RenderJob:
        return self.render_job(due.history, due.decision.campaign, due.decision.step)

    def render_job(
        self, history: OrderHistory, campaign: str, step: str, locale: str | None = None
    ) -> RenderJob:
        """What the step's message is rendered from for this order: the template, the
        buyer's language (or ``locale``, for ``worker preview``) and the variables."""
        order = history.order
        template = self._step(campaign, step).template
        locale = locale or self.language(history, campaign, step).locale
        context = message_context(
            order,
            self.settings.seller,
            _latest_review(history),
            locale,
            self.settings.default_locale,
            tracking=self.settings.tracking,
            ship_from_country=self.policy.transit.ship_from,
            delivery_window=expected_window(
                delivery_of(order, history.customer.country, self.policy.transit)
            ),
        )
        return (template, locale, context)

    def language(self, history: OrderHistory, campaign: str, step: str) -> Language:
        """The buyer's language for a step's template and the rule that chose it, among the
        locales that template has files for (docs/languages.md)."""
        template = self._step(campaign, step).template
        available = self._locales.get(template)
        if available is None:
            available = self._locales[template] = self.renderer.locales(template)
        default = self.settings.default_locale
        return choose_language(history.order, history.customer, available, default)

    def _step(self, campaign: str, step: str) -> CampaignStep:
        return next(c for c in self.campaigns if c.name == campaign).step(step)

    def _guard(self, send: Send, history: OrderHistory) -> Refusal | None:
        """The protections asked again as the send is claimed, against what is stored now."""
        step = self._step(send.campaign, send.step)
        return refusal(history, step, self.clock.now(), self.policy)

    def _asked_again(self, send: Send, history: OrderHistory) -> Refusal | None:
        """The claim's check, asked again for a send claimed with others a moment ago: a
        dispute or suppression recorded since then still stops it (two small reads)."""
        suppression, disputes = self.store.protections(history.order.buyer_email)
        fresh = dataclasses.replace(history, suppression=suppression, disputes=disputes)
        return self._guard(send, fresh)

    def _withdraw(
        self, send: Send, decision: Decision, refused: Refusal, report: PassReport
    ) -> None:
        self.store.withdraw(send.id, refused.reason, final=refused.final, now=self.clock.now())
        self._counted(report, send.campaign, send.step, "refused")
        log.info("send.refused_at_claim", **{**_fields(decision), "reason": refused.reason})

    def _reply_token(self, order_id: str) -> str | None:
        if not self.settings.inbox.reply_tokens:
            return None
        return self.store.reply_token(order_id, lambda: secrets.token_hex(8))

    def _unsubscribe_token(self, order: Order) -> str | None:
        if self.one_click is None or not self.settings.unsubscribe.one_click:
            return None
        return self.one_click.token(order.order_id, order.buyer_email)

    def _message_id(self, send: Send) -> str:
        return self.signer.message_id(send, self.settings.sender_domain)

    async def _deliver(
        self,
        send: Send,
        history: OrderHistory,
        rendered: RenderedMessage,
        mailer: Mailer,
        report: PassReport,
        accepted: list[_Accepted],
    ) -> None:
        """Compose and hand over one claimed message; a message the relay accepted joins
        ``accepted``, recorded with the rest of its chunk; any other outcome is recorded now."""
        order = history.order
        try:
            message = compose(
                rendered,
                send=send,
                order=order,
                settings=self.settings,
                now=self.clock.now(),
                reply_token=self._reply_token(order.order_id),
                unsubscribe_token=self._unsubscribe_token(order),
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
        if isinstance(outcome, Sent):
            accepted.append(_Accepted(send, outcome, self.clock.now(), rendered.text))
            if self.ingest is not None and self.ingest.imap.sent_folder:
                self._sent_copies.append((message.as_bytes(), self.clock.now()))
            return
        self._record(send, outcome, report, order.buyer_email, rendered.text)

    def _record_accepted(self, accepted: list[_Accepted], report: PassReport) -> None:
        """The chunk's accepted messages, ``sent`` in one transaction. Synchronous, like
        ``_record``; until it commits they are ``sending``, so a worker killed in between
        leaves them ``in_doubt``, never sent twice."""
        if not accepted:
            return
        records = [SentRecord(a.send.id, a.outcome.reply, a.at, a.text) for a in accepted]
        done = list(accepted)
        accepted.clear()
        self.store.mark_sent_many(records)
        self._relay_down_passes = 0
        for item in done:
            self._counted(report, item.send.campaign, item.send.step, "sent")
            log.info(
                "send.sent",
                **_send_fields(item.send),
                relay_message_id=item.outcome.relay_message_id,
            )

    def _give_back(self, send: Send, reason: str, report: PassReport) -> None:
        """Synchronous, like ``_record``: the row is scheduled again before anything else."""
        self.store.unclaim(send.id, reason, self.clock.now())
        self._counted(report, send.campaign, send.step, "given_back")
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
        fields = _send_fields(send)
        if isinstance(outcome, Sent):
            self.store.mark_sent(send.id, outcome.reply, now, text)
            self._counted(report, send.campaign, send.step, "sent")
            self._relay_down_passes = 0
            log.info("send.sent", **fields, relay_message_id=outcome.relay_message_id)
        elif isinstance(outcome, Retry) and send.attempts < self.settings.smtp.max_passes:
            not_before = now + timedelta(seconds=self.settings.smtp.retry_after_s)
            self.store.release(send.id, outcome.reason, not_before, now)
            self._counted(report, send.campaign, send.step, "retry")
            log.warning(
                "send.retry_later",
                **fields,
                reason=outcome.reason,
                not_before=not_before.isoformat(),
            )
        elif isinstance(outcome, Retry):
            reason = f"gave up after {send.attempts} passes: {outcome.reason}"
            self.store.mark_failed(send.id, reason, now)
            self._counted(report, send.campaign, send.step, "failed")
            log.error("send.failed", **fields, reason=reason)
        elif isinstance(outcome, Failed):
            self.store.mark_failed(send.id, outcome.reason, now)
            self._counted(report, send.campaign, send.step, "failed")
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
            self._counted(report, send.campaign, send.step, "in_doubt")
            log.warning("send.in_doubt", **fields, reason=outcome.reason)

    def _suppress(self, email: str, outcome: Failed, now: datetime) -> None:
        if self.store.suppress(email, SuppressionReason.HARD_BOUNCE, now, outcome.reason):
            log.warning(
                "suppression.added", email=email, reason="hard_bounce", detail=outcome.reason
            )


@dataclass(frozen=True, slots=True)
class _Accepted:
    """A message the relay took, waiting to be recorded with its chunk."""

    send: Send
    outcome: Sent
    at: datetime
    text: str


@dataclass(frozen=True, slots=True)
class _Due:
    """A due step on its way out: the decision, its ``scheduled`` row, the order's history."""

    decision: Decision
    send_id: int
    history: OrderHistory


def _send_fields(send: Send) -> dict[str, object]:
    return {
        "send_id": send.id,
        "order": send.order_id,
        "campaign": send.campaign,
        "step": send.step,
        "message_id": send.message_id,
        "attempt": send.attempts,
    }


def _latest_review(history: OrderHistory) -> Review | None:
    return max(history.reviews, key=lambda r: r.reviewed_at, default=None)


def _fields(decision: Decision) -> dict[str, object]:
    """A decision as log fields; a delivered step says which delivery time it counted from
    (``delivered ~2026-03-14 (estimated: CN->DE post, 12d)``), so each send's log line
    records the source."""
    fields: dict[str, object] = {
        "order": decision.order_id,
        "campaign": decision.campaign,
        "step": decision.step,
        "reason": decision.reason,
        "at": decision.at.isoformat() if decision.at else None,
    }
    if decision.delivery is not None:
        fields["delivery"] = decision.delivery.describe()
    return fields


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
    stop: asyncio.Event, wake: asyncio.Event, readers: list[asyncio.Task[None]], seconds: float
) -> None:
    """Until the first of: stop, a wake-up from a mailbox reader, its death, the timeout."""
    waits: set[asyncio.Future[Any]] = {
        asyncio.ensure_future(stop.wait()),
        asyncio.ensure_future(wake.wait()),
    }
    watched = waits | set(readers)
    await asyncio.wait(watched, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    for waiting in waits:
        waiting.cancel()


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None
