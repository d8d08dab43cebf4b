"""Read the seller's mailbox: fetch, classify, thread, store, react, checkpoint.

Each message goes through the pure steps (``inbound.parse``, ``classify``, ``thread``,
``react``) and is then written in one transaction with its consequences and the folder's
new checkpoint. A crash or a dropped connection at any point leaves the checkpoint at the
last stored message, so the next pass fetches the rest: nothing lost, nothing done twice.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from worker import logs
from worker.classify import classify
from worker.clock import Clock
from worker.config import Settings
from worker.domain import Classification, MessageKind
from worker.errors import FolderMissing, MailboxError, StoreError
from worker.inbound import InboundMessage, Received, parse
from worker.mailbox import FetchedMessage, FolderStatus, Mailbox
from worker.react import react
from worker.rules import MailRules
from worker.store import Checkpoint, Recorded, SoftBounceRule, Store
from worker.thread import match, wanted

log = logs.get("worker.ingest")


@dataclass
class IngestReport:
    """What one pass over the mailbox did."""

    stored: Counter[str] = field(default_factory=Counter)
    duplicates: int = 0
    unmatched: int = 0
    with_errors: int = 0

    @property
    def total(self) -> int:
        return sum(self.stored.values())

    def summary(self) -> dict[str, object]:
        return {
            "stored": self.total,
            "duplicates": self.duplicates,
            "unmatched": self.unmatched,
            "with_errors": self.with_errors,
            **{f"kind_{k}": n for k, n in sorted(self.stored.items())},
        }


class Ingest:
    """One mailbox, read through one connection made by ``connect_mailbox``."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        rules: MailRules,
        clock: Clock,
        connect_mailbox: Callable[[], Mailbox] | None = None,
    ) -> None:
        self.settings = settings
        self.imap = settings.imap
        self.store = store
        self.rules = rules
        self.clock = clock
        self.new_mailbox = connect_mailbox or (lambda: Mailbox(settings.imap))
        self.name = f"{self.imap.username or ''}@{self.imap.host}"
        self.soft_bounces = SoftBounceRule(
            settings.inbox.soft_bounce_limit, settings.inbox.soft_bounce_window
        )
        self.unsubscribe_addresses = _unsubscribe_only(settings)
        self.last_read_at: datetime | None = None
        """When every folder was last read to the end; sending waits while this is stale."""

    async def run_once(self) -> IngestReport:
        """Connect, read every folder up to date, disconnect: ``worker ingest --once``."""
        mailbox = self.new_mailbox()
        await mailbox.connect()
        try:
            return await self.read_all(mailbox)
        finally:
            await mailbox.close()

    async def read_all(self, mailbox: Mailbox) -> IngestReport:
        report = IngestReport()
        started = self.clock.now()
        for folder in self.imap.folders:
            try:
                await self.read_folder(mailbox, folder, report)
            except FolderMissing as exc:  # one misnamed folder must not stop the others
                log.error("mailbox.folder_missing", folder=folder, error=str(exc))
        self.last_read_at = started
        log.info("ingest.finished", mailbox=self.name, **report.summary())
        return report

    async def read_folder(self, mailbox: Mailbox, folder: str, report: IngestReport) -> None:
        status = await mailbox.select(folder)
        last_uid = self._start_from(status)
        while True:
            batch = await mailbox.fetch_after(last_uid, self.imap.batch_size)
            for fetched in batch:
                self.take(fetched, folder, status.uidvalidity, report)
                last_uid = fetched.uid
            if len(batch) < self.imap.batch_size:
                return

    def _start_from(self, status: FolderStatus) -> int:
        """The last UID already stored; 0 for a new folder or a new UIDVALIDITY (rescan)."""
        known = self.store.checkpoint(self.name, status.folder)
        if known is not None and known.uidvalidity == status.uidvalidity:
            return known.last_uid
        if known is not None:
            log.warning(
                "mailbox.uidvalidity_changed",
                mailbox=self.name,
                folder=status.folder,
                was=known.uidvalidity,
                now=status.uidvalidity,
                action="rescan; messages already stored are recognised and skipped",
            )
        fresh = Checkpoint(self.name, status.folder, status.uidvalidity, 0)
        self.store.save_checkpoint(fresh, self.clock.now())
        return 0

    def take(
        self, fetched: FetchedMessage, folder: str, uidvalidity: int, report: IngestReport
    ) -> Recorded:
        """The whole pipeline for one message; only the store may raise (nothing is lost)."""
        now = self.clock.now()
        message = parse(fetched.raw)
        verdict = self._classify(message, folder, fetched.uid)
        want = wanted(message, verdict)
        threaded = match(
            want,
            self.store.candidates(want),
            verdict,
            now=now,
            recent=self.settings.inbox.buyer_match_window,
        )
        buyer = self.store.order(threaded.match.order_id).buyer_email if threaded.match else None
        reactions = react(verdict, threaded.match, message.sender, buyer)
        # A server clock ahead of ours must not date a complaint after the mail it should stop.
        at = min(fetched.internal_date, now)
        if now - at > self.settings.inbox.act_within:
            reactions = reactions.only_suppressions()
        received = Received(self.name, folder, uidvalidity, fetched.uid, at)
        recorded = self.store.record_inbound(
            message, received, verdict, threaded, reactions, self.soft_bounces, now
        )
        order_id = recorded.dispute_order or (threaded.match.order_id if threaded.match else None)
        self._report(message, received, verdict, order_id, recorded, report)
        return recorded

    def _classify(self, message: InboundMessage, folder: str, uid: int) -> Classification:
        try:
            return classify(
                message,
                self.rules,
                seller_addresses=self.settings.seller_addresses,
                unsubscribe_addresses=self.unsubscribe_addresses,
            )
        except Exception as exc:  # one message must never stop the mailbox
            log.exception("mail.unclassifiable", folder=folder, uid=uid, error=repr(exc))
            return Classification(
                MessageKind.REPLY, f"unclassified: the classifier failed: {exc!r}"
            )

    def _report(
        self,
        message: InboundMessage,
        received: Received,
        verdict: Classification,
        order_id: str | None,
        recorded: Recorded,
        report: IngestReport,
    ) -> None:
        where = {"folder": received.folder, "uid": received.uid, "message_id": message.message_id}
        if recorded.duplicate:
            report.duplicates += 1
            log.info("mail.duplicate", **where)
            return
        report.stored[verdict.kind.value] += 1
        report.unmatched += order_id is None
        report.with_errors += bool(message.errors)
        log.info(
            "mail.received",
            **where,
            kind=verdict.kind.value,
            evidence=verdict.evidence,
            order=order_id,
            parse_errors=list(message.errors) or None,
        )
        if verdict.kind is MessageKind.BOUNCE_POLICY:
            log.error(
                "bounce.policy",
                **where,
                detail=verdict.bounce.diagnostic if verdict.bounce else verdict.evidence,
                meaning="refused for policy or reputation: check SPF/DKIM/DMARC and the relay",
            )
        if recorded.dispute is not None:
            log.warning(
                "dispute.opened", order=recorded.dispute_order, kind=recorded.dispute, **where
            )
        if recorded.disputes_closed:
            log.info("dispute.closed", count=recorded.disputes_closed, **where)
        for item in recorded.suppressed:
            log.warning(
                "suppression.added", email=item.email, reason=item.reason.value, detail=item.detail
            )

    # The daemon's side: a connection kept open, IDLE, reconnect with backoff ---------------

    def fresh(self, now: datetime) -> bool:
        """Read recently enough that no complaint can be sitting unread for long."""
        limit = timedelta(seconds=3 * self.imap.poll_interval_s + self.imap.timeout_s)
        return self.last_read_at is not None and now - self.last_read_at <= limit

    async def watch(self, stop: asyncio.Event, on_read: Callable[[], None]) -> None:
        """Read until ``stop``; a dropped connection is retried with growing, jittered waits."""
        failures = 0
        while not stop.is_set():
            mailbox = self.new_mailbox()
            try:
                await mailbox.connect()
                log.info("mailbox.connected", mailbox=self.name, idle=mailbox.supports_idle)
                failures = 0
                await self._follow(mailbox, stop, on_read)
            except (MailboxError, StoreError) as exc:
                failures += 1
                delay = self._backoff_s(failures)
                log.error("mailbox.disconnected", error=str(exc), retry_in_s=round(delay, 1))
                await _wait(stop, delay)
            finally:
                await mailbox.close()

    async def _follow(
        self, mailbox: Mailbox, stop: asyncio.Event, on_read: Callable[[], None]
    ) -> None:
        while not stop.is_set():
            await self.read_all(mailbox)
            on_read()
            if len(self.imap.folders) > 1:  # IDLE watches the selected folder: the first one
                await mailbox.select(self.imap.folders[0])
            waiting = asyncio.create_task(mailbox.wait_for_news(self.imap.poll_interval_s))
            stopping = asyncio.create_task(stop.wait())
            await asyncio.wait({waiting, stopping}, return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()
            if not waiting.done():
                waiting.cancel()
                await asyncio.gather(waiting, return_exceptions=True)
                return
            waiting.result()  # a MailboxError from IDLE ends this connection

    def _backoff_s(self, failures: int) -> float:
        ceiling = min(
            self.imap.reconnect_max_s, self.imap.reconnect_initial_s * 2.0 ** (failures - 1)
        )
        return ceiling * random.uniform(0.5, 1.0)

    async def append_sent(self, messages: Iterable[tuple[bytes, datetime]]) -> int:
        """Copy sent messages to the Sent folder; a failure is logged, never fatal to sending."""
        folder = self.imap.sent_folder
        pending = list(messages)
        if folder is None or not pending:
            return 0
        mailbox = self.new_mailbox()
        done = 0
        try:
            await mailbox.connect()
            for raw, when in pending:
                await mailbox.append(folder, raw, when)
                done += 1
        except MailboxError as exc:
            log.warning("mailbox.append_failed", folder=folder, copied=done, error=str(exc))
        finally:
            await mailbox.close()
        return done


def _unsubscribe_only(settings: Settings) -> frozenset[str]:
    """The List-Unsubscribe address, unless buyers' ordinary replies go there too."""
    mailto = (settings.unsubscribe.mailto or "").lower()
    replies = settings.reply_address.lower()
    return frozenset({mailto}) if mailto and mailto != replies else frozenset()


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), timeout=seconds)
    except TimeoutError:
        pass
