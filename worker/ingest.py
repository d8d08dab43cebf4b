"""Read the seller's mailbox: fetch, classify, thread, store, react, checkpoint.

Messages come in batches of ``imap.batch_size``. Each message goes through the pure steps
(``inbound.parse``, ``classify``, ``origin``, ``thread``, ``react``); then the batch is written
in one transaction, each message with its consequences, and the folder's new checkpoint. A
crash or a dropped connection at any point leaves the checkpoint at the last stored batch, so
the next pass fetches the rest: nothing lost, nothing done twice. A batch the database
refuses is stored again one message at a time; a message it still refuses is quarantined
(kept raw, acting on nothing), so no message can hold up the others.

Reading a message (parse and classify) runs off the event loop, in a thread that reads the
batch one message after another, each within a time budget; a message that cannot be read in
it is quarantined with its error and the next is read (in a new thread), so no single message
can stop or stall the mailbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import socket
import threading
import time
from collections import ChainMap, Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Generic, TypeVar

import re2

from worker import logs
from worker.classify import classify, compile_index
from worker.clock import Clock
from worker.config import ImapSettings, Settings, mailbox_key
from worker.delivery import delivery_of
from worker.domain import Classification, MatchMethod, MessageKind
from worker.errors import FolderMissing, MailboxError, StoreError, UnknownOrder
from worker.inbound import InboundMessage, ParseLimits, Received, parse, unreadable
from worker.intent import STAGED, ReadsIntent, at_stage, stage_of
from worker.intent_remote import intent_reader
from worker.mailbox import FetchedMessage, FolderStatus, Mailbox
from worker.origin import MAX_SIGNATURES, DnsLookup, Origin, judge, verify_dkim
from worker.react import Reactions, Standing, react
from worker.return_path import Signer
from worker.rules import MailRules
from worker.store import Checkpoint, Recorded, SoftBounceRule, Store
from worker.store_inbound import Inbound
from worker.thread import Threaded, match, wanted

log = logs.get("worker.ingest")

A = TypeVar("A")
R = TypeVar("R")

_RELAXING = frozenset({MessageKind.DISPUTE_CLOSED, MessageKind.REVIEW, MessageKind.DELIVERED})
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


class LeaseLost(MailboxError):
    """Another worker took the mailbox (this one stalled past its lease): stop reading it."""


class Ingest:
    """One mailbox, read through one connection made by ``connect_mailbox``, by one worker
    at a time: whoever holds its lease (worker/store_leases.py)."""

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
        imap: ImapSettings | None = None,
        holder: str | None = None,
        intents: ReadsIntent | None = None,
    ) -> None:
        """``signer`` must hold the key the sending side signs with (the CLI passes the kept
        one); ``dkim_dns`` replaces DNS for DKIM keys (tests). ``imap``: the mailbox, when
        not ``settings.imap``; ``holder``: the worker's name on the mailbox's lease;
        ``intents``: who reads the buyers' words, by default as ``settings.intents`` say."""
        self.intents = intents or intent_reader(settings.intents)
        """Built once: the model is loaded, and an endpoint's failures counted, across
        messages."""
        self.settings = settings
        self.imap = imap or settings.imap
        self.store = store
        self.rules = rules
        compile_index(rules)
        self.clock = clock
        cap = settings.inbox.max_message_bytes
        self.new_mailbox = connect_mailbox or (lambda: Mailbox(self.imap, max_message_bytes=cap))
        self.limits = parse_limits(settings)
        self.name = mailbox_key(self.imap)
        self.holder = holder or f"{socket.gethostname()}:{os.getpid()}"
        self.holding = False
        """This worker holds the mailbox's lease (as of the last attempt)."""
        self.siblings: Sequence[Ingest] = ()
        """Every mailbox this worker reads (this one among them), in a fixed order."""
        self.share: Callable[[], int] | None = None
        """How many of them this worker should hold at most (the daemon's fair share)."""
        self.soft_bounces = SoftBounceRule(
            settings.inbox.soft_bounce_limit, settings.inbox.soft_bounce_window
        )
        self.unsubscribe_addresses = unsubscribe_only(settings)
        self.transit = settings.delivery.transit_table()
        self.seller_addresses = settings.seller_addresses
        self._texts: dict[str, tuple[str, ...]] = {}
        """The text of our mail to the senders of the batch being read, by address."""
        self.signer = signer or Signer.ephemeral()
        self.dkim_dns = dkim_dns
        self.last_read_at: datetime | None = None
        """When every folder was last read to the end; sending waits while this is stale."""
        self.on_stored: Callable[[str], None] | None = None
        """Told the kind of each new message stored (the daemon's metrics)."""

    async def run_once(self) -> IngestReport:
        """Connect, read every folder up to date, disconnect: ``worker ingest --once``.

        Waits (at most a lease's length) while another worker reads the mailbox.
        """
        await self._wait_for_lease()
        try:
            mailbox = self.new_mailbox()
            await mailbox.connect()
            try:
                return await self.read_all(mailbox)
            finally:
                await mailbox.close()
        finally:
            self.release_lease()

    async def read_all(self, mailbox: Mailbox) -> IngestReport:
        report = IngestReport()
        started = self.clock.now()
        self._keep_lease()
        for folder in self.imap.folders:
            try:
                await self.read_folder(mailbox, folder, report)
            except FolderMissing as exc:  # one misnamed folder must not stop the others
                log.error("mailbox.folder_missing", folder=folder, error=str(exc))
        self.last_read_at = started
        self.store.mailbox_read(self.name, self.holder, started)
        log.info("ingest.finished", mailbox=self.name, worker=self.holder, **report.summary())
        return report

    async def read_folder(self, mailbox: Mailbox, folder: str, report: IngestReport) -> None:
        status = await mailbox.select(folder)
        last_uid = self._start_from(status)
        while True:
            batch = await mailbox.fetch_after(last_uid, self.imap.batch_size)
            if not batch:  # a batch cut short by size is not the end of the folder
                return
            self._keep_lease()
            await self.take_batch(batch, folder, status.uidvalidity, report)
            last_uid = batch[-1].uid

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
        """The whole pipeline for one message: a batch of one."""
        [recorded] = await self.take_batch([fetched], folder, uidvalidity, report)
        return recorded

    async def take_batch(
        self,
        batch: Sequence[FetchedMessage],
        folder: str,
        uidvalidity: int,
        report: IngestReport,
    ) -> list[Recorded]:
        """The whole pipeline for a fetched batch (UIDs ascending); only the store may raise,
        and then nothing of the batch is stored (nothing is lost)."""
        readings = await self._read_batch(batch, folder)
        return await self._keep(batch, readings, folder, uidvalidity, report)

    async def _keep(
        self,
        batch: Sequence[FetchedMessage],
        readings: list[Reading],
        folder: str,
        uidvalidity: int,
        report: IngestReport,
    ) -> list[Recorded]:
        """Check DKIM where it matters, thread, react, store and report a batch read."""
        unproven = [i for i, reading in enumerate(readings) if self._needs_dkim(reading)]
        if unproven:  # DNS answers are awaited together, not one after another
            checked = [self._with_dkim(readings[i], batch[i].raw) for i in unproven]
            for index, reading in zip(unproven, await asyncio.gather(*checked), strict=True):
                readings[index] = reading
        now = self.clock.now()
        items = self._threaded(batch, readings, folder, uidvalidity, now)
        stored = self._store(items, now)
        for item, recorded in stored:
            matched = item.threaded.match
            order_id = recorded.dispute_order or (matched.order_id if matched else None)
            self._report(item, order_id, recorded, report)
        return [recorded for _, recorded in stored]

    def _threaded(
        self,
        batch: Sequence[FetchedMessage],
        readings: Sequence[Reading],
        folder: str,
        uidvalidity: int,
        now: datetime,
    ) -> list[Inbound]:
        """Thread and react to each message of the batch, in order, with the store's answers
        for the whole batch read at once. A message answering one stored earlier in the same
        batch threads to that one's order, as it would had they been stored one by one."""
        recent = self.settings.inbox.buyer_match_window
        wants = [
            wanted(
                r.message,
                r.verdict,
                return_path_sends=self.signer.sends_in(r.message.recipients),
                authenticated=r.origin.vouches_for(r.message.sender),
            )
            for r in readings
        ]
        found = self.store.candidates_for(wants)
        identities = [(r.message.message_id or "", r.message.content_hash) for r in readings]
        stored = self.store.stored_identities(identities)
        earlier: dict[str, str] = {}
        """Message-ID -> order, of the batch's new messages threaded so far."""
        threads: list[Threaded] = []
        for reading, want, candidates, identity in zip(
            readings, wants, found, identities, strict=True
        ):
            if earlier:
                answered = ChainMap(earlier, dict(candidates.orders_by_message_id))
                candidates = replace(candidates, orders_by_message_id=answered)
            threaded = match(want, candidates, reading.verdict, now=now, recent=recent)
            threads.append(threaded)
            new, message_id = identity not in stored, reading.message.message_id
            stored.add(identity)
            if new and message_id and threaded.match is not None:
                earlier[message_id] = threaded.match.order_id
        buyers = self._buyers({t.match.order_id for t in threads if t.match is not None})
        items = []
        for fetched, reading, threaded in zip(batch, readings, threads, strict=True):
            message, verdict, origin = reading.message, reading.verdict, reading.origin
            # A server clock ahead of ours must not date a complaint after the mail it should
            # stop.
            at = min(fetched.internal_date, now)
            verdict = self._at_stage(verdict, threaded, at)
            standing = self._standing(message, origin, threaded, buyers, at)
            reactions = react(verdict, threaded.match, standing)
            if now - at > self.settings.inbox.act_within:
                reactions = reactions.only_suppressions()
            received = Received(self.name, folder, uidvalidity, fetched.uid, at)
            items.append(Inbound(message, received, verdict, threaded, reactions, origin.evidence))
        return items

    def _at_stage(
        self, verdict: Classification, threaded: Threaded, at: datetime
    ) -> Classification:
        """A "where is it?" or "please cancel" read against where the matched order stood
        when the message arrived (``worker.intent.at_stage``)."""
        if verdict.intent not in STAGED or threaded.match is None:
            return verdict
        try:
            order = self.store.order(threaded.match.order_id)
        except UnknownOrder:  # gone meanwhile: read as if no order matched
            return verdict
        delivery = delivery_of(order, None, self.transit)
        return at_stage(verdict, stage_of(order, delivery, at))

    def _buyers(self, order_ids: set[str]) -> dict[str, str]:
        if not order_ids:
            return {}
        buyers = self.store.buyers_of(order_ids)
        for missing in order_ids - buyers.keys():  # gone meanwhile: the store says so
            buyers[missing] = self.store.order(missing).buyer_email
        return buyers

    def _standing(
        self,
        message: InboundMessage,
        origin: Origin,
        threaded: Threaded,
        buyers: dict[str, str],
        received_at: datetime,
    ) -> Standing:
        """``written_at``: the message's Date, never after it arrived (a sender's clock, or
        a forger, may say the future)."""
        matched, send = threaded.match, threaded.send
        buyer = buyers[matched.order_id] if matched else None
        tied = send is not None and matched is not None and matched.method in _OUR_SEND
        written = message.date
        if written is None or written.tzinfo is None or written > received_at:
            written = received_at
        return Standing(
            message.sender,
            origin,
            buyer=buyer,
            sent_to=send.recipient if tied and send else None,
            written_at=written,
        )

    def _store(self, items: list[Inbound], now: datetime) -> list[tuple[Inbound, Recorded]]:
        """The batch in one transaction; if the database refuses it, one message at a time."""
        try:
            recorded = self.store.record_inbound_batch(items, self.soft_bounces, now)
            return list(zip(items, recorded, strict=True))
        except Exception as exc:  # one message the database refuses must not cost the others
            first = items[0].received
            log.warning(
                "ingest.batch_refused",
                folder=first.folder,
                uids=f"{first.uid}-{items[-1].received.uid}",
                error=f"{exc!r}"[:500],
                action="storing the messages one by one",
            )
        return [self._store_one(item, now) for item in items]

    def _store_one(self, item: Inbound, now: datetime) -> tuple[Inbound, Recorded]:
        """One message; one the database refuses is kept raw, quarantined, acting on nothing.

        A failing database (a ``StoreError``) is not the message's fault: it is raised, the
        checkpoint stays before the message, and the next pass reads it again."""
        try:
            return item, self._record(item, now)
        except StoreError:
            raise
        except Exception as exc:  # the database refuses this message, not every message
            error = f"cannot be stored: {exc!r}"[:500]
        received = item.received
        log.error("mail.quarantined", folder=received.folder, uid=received.uid, error=error)
        reading = _quarantined(item.message.raw, error)
        kept = Inbound(
            reading.message,
            received,
            reading.verdict,
            Threaded(None),
            Reactions(),
            reading.origin.evidence,
        )
        return kept, self._record(kept, now)

    def _record(self, item: Inbound, now: datetime) -> Recorded:
        return self.store.record_inbound(
            item.message,
            item.received,
            item.verdict,
            item.threaded,
            item.reactions,
            self.soft_bounces,
            now,
            authentication=item.authentication,
        )

    async def _read_batch(self, batch: Sequence[FetchedMessage], folder: str) -> list[Reading]:
        """Parse, classify and judge each message, off the event loop, one after another in
        a thread of their own: one thread hop for the batch, not one per message.

        Each message is read within ``inbox.read_timeout_s``; one that takes longer, or whose
        reading raises, is quarantined and the next is read (in a new thread)."""
        if not batch:
            return []
        reader = _Reader(self._read, batch, prepare=self._prepare_texts)
        budget = self.settings.inbox.read_timeout_s
        readings = []
        for fetched, step in zip(batch, await _each_in_time(reader, budget), strict=True):
            if step.value is not None:
                readings.append(step.value)
                continue
            if step.timed_out:
                error = f"not read within {budget:g} s (inbox.read_timeout_s)"
            else:
                error = f"cannot be read: {step.error!r}"[:500]
            log.error("mail.quarantined", folder=folder, uid=fetched.uid, error=error)
            readings.append(_quarantined(fetched.raw, error))
        return readings

    def _prepare_texts(self, batch: Sequence[FetchedMessage]) -> None:
        """Blocking: the reader thread, before the batch. The text of the mail we sent to
        the senders the batch seems to have, in one query (the store has no index to find
        them one by one quickly); a sender missed here is looked up on its own."""
        likely = {address for fetched in batch for address in _likely_senders(fetched.raw)}
        known: dict[str, tuple[str, ...]] = {}
        try:
            known = self.store.texts_sent_to_each(likely) if likely else {}
        finally:  # on a failure, each message looks its sender up (and says if that fails)
            self._texts = known

    def _read(self, fetched: FetchedMessage) -> Reading:
        """Blocking: runs in the reader thread. Parse, classify, judge the origin.

        A message fetched cut short (past ``max_message_bytes``) is read as what it is; the
        server's size is believed only then, as some servers' sizes are a little off."""
        size = fetched.size if fetched.truncated else None
        message = parse(fetched.raw, limits=self.limits, size=size)
        ours = self._texts.get(message.sender)
        if ours is None:
            ours = self.store.texts_sent_to(message.sender)
        verdict = classify(
            message,
            self.rules,
            seller_addresses=self.seller_addresses,
            unsubscribe_addresses=self.unsubscribe_addresses,
            ours=ours,
            reader=self.intents,
        )
        return Reading(message, verdict, judge(message, self.settings.authentication.authserv_ids))

    def _needs_dkim(self, reading: Reading) -> bool:
        """Without a trusted Authentication-Results header, a notice that would relax a
        protection has its DKIM signatures checked."""
        origin = reading.origin
        return (
            self.settings.authentication.verify_dkim
            and not origin.verified
            and reading.verdict.kind in _RELAXING
            and bool(origin.from_address)
        )

    async def _with_dkim(self, reading: Reading, raw: bytes) -> Reading:
        """The DKIM check ``_needs_dkim`` asks for (DNS, off the loop, bounded)."""
        auth = self.settings.authentication
        origin = reading.origin
        if not self._needs_dkim(reading):
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
        self, item: Inbound, order_id: str | None, recorded: Recorded, report: IngestReport
    ) -> None:
        message, received, verdict = item.message, item.received, item.verdict
        withheld = item.reactions.withheld
        where = {"folder": received.folder, "uid": received.uid, "message_id": message.message_id}
        if recorded.duplicate:
            report.duplicates += 1
            log.info("mail.duplicate", **where)
            return
        report.stored[verdict.kind.value] += 1
        if self.on_stored is not None:
            self.on_stored(verdict.kind.value)
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
                "dispute.opened",
                order=recorded.dispute_order,
                kind=recorded.dispute,
                needs_review=item.reactions.needs_review,
                **where,
            )
        if recorded.disputes_closed:
            log.info("dispute.closed", count=recorded.disputes_closed, **where)
        if recorded.delivered:
            parcel = item.reactions.delivered
            log.info(
                "parcel.delivered",
                orders=list(recorded.delivered),
                at=parcel.at.isoformat() if parcel else None,
                **where,
            )
        for added in recorded.suppressed:
            log.warning(
                "suppression.added",
                email=added.email,
                reason=added.reason.value,
                detail=added.detail,
            )

    # The daemon's side: a connection kept open, IDLE, reconnect with backoff ---------------

    @property
    def lease_s(self) -> float:
        """How long a lease lasts unrenewed: as long as the mailbox stays fresh unread."""
        return 3 * self.imap.poll_interval_s + self.imap.timeout_s

    @property
    def _lease_retry_s(self) -> float:
        return min(self.imap.poll_interval_s, 5.0)

    def fresh(self, now: datetime) -> bool:
        """Read recently enough, by this worker or by the one holding the mailbox, that no
        complaint can be sitting unread for long."""
        read = self.last_read()
        return read is not None and now - read <= timedelta(seconds=self.lease_s)

    def last_read(self) -> datetime | None:
        """When the mailbox was last read to the end, by this worker or the lease holder."""
        read = self.last_read_at
        if not self.holding:
            lease = self.store.mailbox_lease(self.name)
            if lease is not None and lease[2] is not None and (read is None or lease[2] > read):
                read = lease[2]
        return read

    def _take_lease(self) -> bool:
        now = self.clock.now()
        until = now + timedelta(seconds=self.lease_s)
        holder = self.store.take_mailbox(self.name, self.holder, now, until)
        was, self.holding = self.holding, holder == self.holder
        if self.holding and not was:
            log.info("mailbox.lease_taken", mailbox=self.name, worker=self.holder)
        elif was and not self.holding:
            log.warning("mailbox.lease_lost", mailbox=self.name, worker=self.holder, to=holder)
        return self.holding

    def _keep_lease(self) -> None:
        """Renew before each batch: a reader that stalled past its lease stops there."""
        if not self._take_lease():
            raise LeaseLost(f"{self.name}: another worker took over the mailbox")

    async def _wait_for_lease(self) -> None:
        deadline = time.monotonic() + self.lease_s + self.imap.timeout_s
        while not self._take_lease():
            if time.monotonic() >= deadline:
                lease = self.store.mailbox_lease(self.name)
                holder = lease[0] if lease else "another worker"
                raise MailboxError(
                    f"{self.name}: {holder} has been reading this mailbox for more than "
                    f"{self.lease_s:.0f} s; try again when it is done"
                )
            await asyncio.sleep(min(self._lease_retry_s, 0.2))

    def release_lease(self) -> None:
        """Let another worker read the mailbox at once (stopping, or ``--once`` done)."""
        if not self.holding:
            return
        self.holding = False
        try:
            self.store.release_mailbox(self.name, self.holder, self.clock.now())
        except StoreError as exc:  # it expires on its own
            log.warning("mailbox.release_failed", mailbox=self.name, error=str(exc))

    def _held(self) -> list[Ingest]:
        return [mailbox for mailbox in self.siblings if mailbox.holding]

    def _beyond_share(self) -> bool:
        """This worker holds more mailboxes than its share, and this one is among the last:
        it should hand it over to a worker that has fewer."""
        if self.share is None or not self.holding:
            return False
        held = self._held()
        return self in held and held.index(self) >= max(1, self.share())

    async def _lease_for_watch(self, stop: asyncio.Event) -> bool:
        """Hold the lease, or wait a little and say no: a worker already holding its share
        of the mailboxes leaves this one to the others."""
        if not self.holding and self.share is not None and len(self._held()) >= self.share():
            await _wait(stop, self._lease_retry_s)
            return False
        if stop.is_set():
            return False
        if self._take_lease():
            return True
        await _wait(stop, self._lease_retry_s)
        return False

    async def watch(self, stop: asyncio.Event, on_read: Callable[[], None]) -> None:
        """Read until ``stop`` while holding the lease; a dropped connection is retried with
        growing, jittered waits; a lease held elsewhere is asked for again now and then."""
        failures = 0
        try:
            while not stop.is_set():
                try:
                    if not await self._lease_for_watch(stop):
                        continue
                    mailbox = self.new_mailbox()
                    try:
                        await mailbox.connect()
                        log.info("mailbox.connected", mailbox=self.name, idle=mailbox.supports_idle)
                        failures = 0
                        await self._follow(mailbox, stop, on_read)
                    finally:
                        await mailbox.close()
                except LeaseLost:
                    continue
                except (MailboxError, StoreError) as exc:
                    failures += 1
                    delay = self._backoff_s(failures)
                    log.error("mailbox.disconnected", error=str(exc), retry_in_s=round(delay, 1))
                    await _wait(stop, delay)
        finally:
            self.release_lease()

    async def _follow(
        self, mailbox: Mailbox, stop: asyncio.Event, on_read: Callable[[], None]
    ) -> None:
        while not stop.is_set():
            await self.read_all(mailbox)
            on_read()
            if self._beyond_share():
                log.info("mailbox.handed_over", mailbox=self.name, worker=self.holder)
                self.release_lease()
                return
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


@dataclass(frozen=True, slots=True)
class _Done(Generic[R]):
    """One item's outcome in ``_each_in_time``."""

    value: R | None = None
    error: Exception | None = None
    timed_out: bool = False


class _Reader(Generic[A, R]):
    """A thread working through a batch's items one after another, saying which one it is
    on. ``prepare`` runs first, with the items, under no budget (a store query)."""

    PREPARING = -1

    def __init__(
        self,
        work: Callable[[A], R],
        items: Sequence[A],
        *,
        first: int = 0,
        prepare: Callable[[Sequence[A]], None] | None = None,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.work, self.items, self.prepare = work, items, prepare
        self.first = first
        self.done: dict[int, _Done[R]] = {}
        self.current = (self.PREPARING if prepare else first, time.monotonic())
        """The item being worked on and when its turn began (replaced whole: one write)."""
        self.prepared: asyncio.Future[None] = self.loop.create_future()
        self.finished: asyncio.Future[None] = self.loop.create_future()
        self.given_up = threading.Event()
        threading.Thread(
            target=self._run,
            name="worker-ingest-reader",
            daemon=True,  # a runaway must not keep the process alive
        ).start()

    def then(self, first: int) -> _Reader[A, R]:
        """A new thread for the items from ``first`` on, after this one was given up."""
        return _Reader(self.work, self.items, first=first)

    def _run(self) -> None:
        if self.prepare is not None:
            with contextlib.suppress(Exception):  # a shortcut: the items do without it
                self.prepare(self.items)
            self.current = (self.first, time.monotonic())
            self._settle(self.prepared)  # the first item's budget runs from now
        for index in range(self.first, len(self.items)):
            if self.given_up.is_set():
                return
            self.current = (index, time.monotonic())
            try:
                self.done[index] = _Done(self.work(self.items[index]))
            except Exception as exc:  # reported for this item; the next is read
                self.done[index] = _Done(error=exc)
        self.current = (len(self.items), time.monotonic())
        self._settle(self.finished)

    def _settle(self, future: asyncio.Future[None]) -> None:
        try:
            self.loop.call_soon_threadsafe(_settle, future)
        except RuntimeError:  # the event loop is closed: no one is waiting any more
            return


def _settle(finished: asyncio.Future[None]) -> None:
    if not finished.done():
        finished.set_result(None)


async def _each_in_time(reader: _Reader[A, R], budget: float) -> list[_Done[R]]:
    """Each item's outcome from ``reader``, which works through them one after another in a
    thread: one thread hop for a batch, not one per item. The event loop wakes when the
    batch is done, or when the item being worked on reaches the end of its budget (counted
    from when its turn began). That item is given up (``timed_out``), its thread left to
    finish it alone (it starts no other), and the items after it go on in a new thread."""
    items = reader.items
    done: list[_Done[R]] = []
    try:
        while True:
            overran: int | None = None
            while not reader.finished.done():
                index, began = reader.current
                if index == _Reader.PREPARING:  # no budget for the store's query
                    await asyncio.shield(reader.prepared)
                    continue
                if index >= len(items):  # all done: the thread is saying so
                    await asyncio.shield(reader.finished)
                    continue
                try:
                    async with asyncio.timeout_at(began + budget):
                        await asyncio.shield(reader.finished)
                except TimeoutError:
                    if reader.current != (index, began):
                        continue  # it went on meanwhile
                    if index in reader.done:  # just done: let the thread take the next
                        await asyncio.sleep(0.001)
                        continue
                    overran = index  # still on it: past its budget
                    break
            end = len(items) if overran is None else overran
            done.extend(reader.done[i] for i in range(len(done), end))
            if overran is None:
                return done
            reader.given_up.set()
            done.append(_Done(timed_out=True))
            if len(done) == len(items):
                return done
            reader = reader.then(len(done))
    finally:
        reader.given_up.set()  # after a cancellation, no further item starts


_ADDRESS = re2.compile(rb"[A-Za-z0-9._%+=\-]+@[A-Za-z0-9.\-]+")
_SENDER_FIELDS = (b"from:", b"sender:", b"return-path:")
_SCANNED_HEADER = 16 * 1024


def _likely_senders(raw: bytes) -> set[str]:
    """The addresses on the first lines of From, Sender and Return-Path, lower-cased: a
    guess at the sender ``parse`` will find, without parsing (a wrong guess costs a query)."""
    head = raw[:_SCANNED_HEADER]
    found: set[str] = set()
    for line in head.split(b"\n"):
        if not line.strip():
            break
        if line[:13].lower().startswith(_SENDER_FIELDS):
            found.update(
                m.group(0).decode("ascii", "replace").lower()
                for m in _ADDRESS.finditer(line[:1024])
            )
    return found
