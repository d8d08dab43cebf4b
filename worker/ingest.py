"""Read the seller's mailbox: fetch, classify, thread, store, react, checkpoint.

Each message goes through the pure steps (``inbound.parse``, ``classify``, ``origin``,
``thread``, ``react``) and is then written in one transaction with its consequences and the
folder's new checkpoint. A crash or a dropped connection at any point leaves the checkpoint
at the last stored message, so the next pass fetches the rest: nothing lost, nothing done
twice. Reading a message (parse and classify) runs off the event loop within a time budget;
a message that cannot be read in it is quarantined with its error and the next is read, so
no single message can stop or stall the mailbox.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from worker import logs
from worker.classify import classify
from worker.clock import Clock
from worker.config import Settings
from worker.domain import Classification, MatchMethod, MessageKind
from worker.errors import FolderMissing, MailboxError, StoreError
from worker.inbound import InboundMessage, ParseLimits, Received, parse, unreadable
from worker.mailbox import FetchedMessage, FolderStatus, Mailbox
from worker.origin import MAX_SIGNATURES, DnsLookup, Origin, judge, verify_dkim
from worker.react import Standing, react
from worker.return_path import Signer
from worker.rules import MailRules
from worker.store import Checkpoint, Recorded, SoftBounceRule, Store
from worker.thread import Threaded, match, wanted

log = logs.get("worker.ingest")

_RELAXING = frozenset({MessageKind.DISPUTE_CLOSED, MessageKind.REVIEW})
_OUR_SEND = frozenset(
    {MatchMethod.RETURN_PATH, MatchMethod.SEND_MESSAGE_ID, MatchMethod.RELAY_MESSAGE_ID}
)


@dataclass(frozen=True, slots=True)
class Reading:
    """One message as read off the event loop: parsed, classified, its origin judged."""

    message: InboundMessage
    verdict: Classification
    origin: Origin


@dataclass
class IngestReport:
    """What one pass over the mailbox did."""

    stored: Counter[str] = field(default_factory=Counter)
    duplicates: int = 0
    unmatched: int = 0
    with_errors: int = 0
    withheld: int = 0

    @property
    def total(self) -> int:
        return sum(self.stored.values())

    def summary(self) -> dict[str, object]:
        return {
            "stored": self.total,
            "duplicates": self.duplicates,
            "unmatched": self.unmatched,
            "with_errors": self.with_errors,
            "withheld": self.withheld,
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
        *,
        signer: Signer | None = None,
        dkim_dns: DnsLookup | None = None,
    ) -> None:
        """``signer`` must hold the key the sending side signs with (the CLI passes the kept
        one); ``dkim_dns`` replaces DNS for DKIM keys (tests)."""
        self.settings = settings
        self.imap = settings.imap
        self.store = store
        self.rules = rules
        self.clock = clock
        cap = settings.inbox.max_message_bytes
        self.new_mailbox = connect_mailbox or (
            lambda: Mailbox(settings.imap, max_message_bytes=cap)
        )
        self.limits = parse_limits(settings)
        self.name = f"{self.imap.username or ''}@{self.imap.host}"
        self.soft_bounces = SoftBounceRule(
            settings.inbox.soft_bounce_limit, settings.inbox.soft_bounce_window
        )
        self.unsubscribe_addresses = unsubscribe_only(settings)
        self.signer = signer or Signer.ephemeral()
        self.dkim_dns = dkim_dns
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
                await self.take(fetched, folder, status.uidvalidity, report)
                last_uid = fetched.uid
            if not batch:  # a batch cut short by size is not the end of the folder
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

    async def take(
        self, fetched: FetchedMessage, folder: str, uidvalidity: int, report: IngestReport
    ) -> Recorded:
        """The whole pipeline for one message; only the store may raise (nothing is lost)."""
        reading = await self._read_within_budget(fetched, folder)
        reading = await self._with_dkim(reading, fetched.raw)
        message, verdict, origin = reading.message, reading.verdict, reading.origin
        now = self.clock.now()
        want = wanted(
            message,
            verdict,
            return_path_sends=self.signer.sends_in(message.recipients),
            authenticated=origin.vouches_for(message.sender),
        )
        threaded = match(
            want,
            self.store.candidates(want),
            verdict,
            now=now,
            recent=self.settings.inbox.buyer_match_window,
        )
        reactions = react(verdict, threaded.match, self._standing(message, origin, threaded))
        # A server clock ahead of ours must not date a complaint after the mail it should stop.
        at = min(fetched.internal_date, now)
        if now - at > self.settings.inbox.act_within:
            reactions = reactions.only_suppressions()
        received = Received(self.name, folder, uidvalidity, fetched.uid, at)
        recorded = self.store.record_inbound(
            message,
            received,
            verdict,
            threaded,
            reactions,
            self.soft_bounces,
            now,
            authentication=origin.evidence,
        )
        order_id = recorded.dispute_order or (threaded.match.order_id if threaded.match else None)
        self._report(message, received, verdict, order_id, recorded, report, reactions.withheld)
        return recorded

    def _standing(self, message: InboundMessage, origin: Origin, threaded: Threaded) -> Standing:
        matched, send = threaded.match, threaded.send
        buyer = self.store.order(matched.order_id).buyer_email if matched else None
        tied = send is not None and matched is not None and matched.method in _OUR_SEND
        return Standing(
            message.sender, origin, buyer=buyer, sent_to=send.recipient if tied and send else None
        )

    async def _read_within_budget(self, fetched: FetchedMessage, folder: str) -> Reading:
        budget = self.settings.inbox.read_timeout_s
        try:
            return await asyncio.wait_for(asyncio.to_thread(self._read, fetched), budget)
        except TimeoutError:
            error = f"not read within {budget:g} s (inbox.read_timeout_s)"
        except Exception as exc:  # one message must never stop the mailbox
            error = f"cannot be read: {exc!r}"[:500]
        log.error("mail.quarantined", folder=folder, uid=fetched.uid, error=error)
        return _quarantined(fetched.raw, error)

    def _read(self, fetched: FetchedMessage) -> Reading:
        """Blocking: runs in a worker thread. Parse, classify, judge the origin.

        A message fetched cut short (past ``max_message_bytes``) is read as what it is; the
        server's size is believed only then, as some servers' sizes are a little off."""
        size = fetched.size if fetched.truncated else None
        message = parse(fetched.raw, limits=self.limits, size=size)
        verdict = classify(
            message,
            self.rules,
            seller_addresses=self.settings.seller_addresses,
            unsubscribe_addresses=self.unsubscribe_addresses,
            ours=self.store.texts_sent_to(message.sender),
        )
        return Reading(message, verdict, judge(message, self.settings.authentication.authserv_ids))

    async def _with_dkim(self, reading: Reading, raw: bytes) -> Reading:
        """Without a trusted Authentication-Results header, a notice that would relax a
        protection has its DKIM signatures checked (DNS, off the loop, bounded)."""
        auth = self.settings.authentication
        origin = reading.origin
        if origin.verified or reading.verdict.kind not in _RELAXING or not origin.from_address:
            return reading
        if not auth.verify_dkim:
            return reading
        limit = auth.dns_timeout_s * MAX_SIGNATURES + 1
        try:
            checked = await asyncio.wait_for(
                asyncio.to_thread(verify_dkim, raw, origin.from_address, self.dkim_dns), limit
            )
        except TimeoutError:
            checked = Origin(origin.from_address, None, f"dkim: DNS did not answer in {limit:g} s")
        evidence = (
            checked.evidence if checked.verified else f"{origin.evidence}; {checked.evidence}"
        )
        return Reading(reading.message, reading.verdict, replace(checked, evidence=evidence))

    def _report(
        self,
        message: InboundMessage,
        received: Received,
        verdict: Classification,
        order_id: str | None,
        recorded: Recorded,
        report: IngestReport,
        withheld: str,
    ) -> None:
        where = {"folder": received.folder, "uid": received.uid, "message_id": message.message_id}
        if recorded.duplicate:
            report.duplicates += 1
            log.info("mail.duplicate", **where)
            return
        report.stored[verdict.kind.value] += 1
        report.unmatched += order_id is None
        report.with_errors += bool(message.errors)
        report.withheld += bool(withheld)
        log.info(
            "mail.received",
            **where,
            kind=verdict.kind.value,
            evidence=verdict.evidence,
            order=order_id,
            parse_errors=list(message.errors) or None,
        )
        if withheld:
            log.warning("mail.withheld", **where, kind=verdict.kind.value, reason=withheld)
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


def unsubscribe_only(settings: Settings) -> frozenset[str]:
    """The List-Unsubscribe address, unless buyers' ordinary replies go there too: only mail
    to an address of its own is an unsubscribe whatever it says."""
    mailto = (settings.unsubscribe.mailto or "").lower()
    replies = settings.reply_address.lower()
    return frozenset({mailto}) if mailto and mailto != replies else frozenset()


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), timeout=seconds)
    except TimeoutError:
        pass


def parse_limits(settings: Settings) -> ParseLimits:
    inbox = settings.inbox
    return ParseLimits(
        max_message_bytes=inbox.max_message_bytes,
        max_header_bytes=inbox.max_header_bytes,
        max_parts=inbox.max_parts,
        max_depth=inbox.max_depth,
        max_text_bytes=inbox.max_text_bytes,
    )


def _quarantined(raw: bytes, error: str) -> Reading:
    """A message that could not be read: kept raw with its error, acting on nothing."""
    verdict = Classification(MessageKind.QUARANTINED, error)
    return Reading(unreadable(raw, error), verdict, Origin("", None, "not read"))
