"""The store's answers for ``worker status`` and ``worker in-doubt list``: counts and a few
rows, each one query the database groups or limits itself, so a store of any size answers
in the same few statements (no row is loaded to be counted).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, case, func, literal, select

from worker import schema
from worker.domain import SendState
from worker.store_database import _Database

RECENT_FAILURES = 10
"""Failed sends ``worker status`` shows, newest first."""
FAILURES_WITHIN = timedelta(hours=24)
INBOUND_WITHIN = timedelta(days=7)


@dataclass(frozen=True, slots=True)
class FailedSend:
    id: int
    order_id: str
    campaign: str
    step: str
    reason: str
    at: datetime


@dataclass(frozen=True, slots=True)
class InDoubtSend:
    """A send that may have reached the relay without a 250 seen: an operator reads the
    relay's log and resolves it."""

    id: int
    order_id: str
    campaign: str
    step: str
    recipient: str | None
    message_id: str | None
    relay_message_id: str | None
    claimed_at: datetime | None
    since: datetime
    """When it went in doubt (the row's last change)."""
    attempts: int
    reason: str


@dataclass(frozen=True, slots=True)
class MailboxRead:
    mailbox: str
    read_at: datetime | None
    """When its lease holder last read every folder to the end (NULL: no lease yet)."""
    checkpoint_at: datetime | None
    """The newest folder checkpoint: when a message of it was last stored."""


@dataclass(frozen=True, slots=True)
class Status:
    """One screen of what the worker is doing, at ``now``."""

    now: datetime
    sends: dict[tuple[str, str], int]
    """(state, reason up to its first ``:``) -> count; the reason is given for skipped sends
    only (empty for the other states)."""
    in_doubt: int
    oldest_in_doubt: datetime | None
    failures: list[FailedSend]
    """Failed within :data:`FAILURES_WITHIN`, newest first, at most :data:`RECENT_FAILURES`."""
    open_disputes: int
    needs_review: int
    suppressions: dict[str, int]
    inbound: dict[str, int]
    """By kind, received within :data:`INBOUND_WITHIN`."""
    mailboxes: list[MailboxRead]
    oldest_due: datetime | None
    """The earliest due time of a ``scheduled`` send already due and not sent."""
    due_unsent: int
    buyers_awaiting_pass: int
    """Buyers whose next look has come: a pass has not planned them yet."""


class StatusMixin(_Database):
    def status(self, now: datetime) -> Status:
        """Every count in one read transaction (a consistent picture on PostgreSQL)."""
        send, dispute = schema.send, schema.dispute
        with self._connect() as c:
            key = _reason_key(c)
            sends = {
                (state, reason or ""): count
                for state, reason, count in c.execute(
                    select(send.c.state, key, func.count())
                    .group_by(send.c.state, key)
                    .order_by(send.c.state, key)
                )
            }
            in_doubt, oldest_in_doubt = c.execute(
                select(func.count(), func.min(send.c.updated_at)).where(
                    send.c.state == SendState.IN_DOUBT.value
                )
            ).one()
            failures = [
                FailedSend(r.id, r.order_id, r.campaign, r.step, r.reason, r.updated_at)
                for r in c.execute(
                    select(
                        send.c.id,
                        send.c.order_id,
                        send.c.campaign,
                        send.c.step,
                        send.c.reason,
                        send.c.updated_at,
                    )
                    .where(
                        send.c.state == SendState.FAILED.value,
                        send.c.updated_at >= now - FAILURES_WITHIN,
                    )
                    .order_by(send.c.updated_at.desc(), send.c.id.desc())
                    .limit(RECENT_FAILURES)
                )
            ]
            open_ = dispute.c.closed_at.is_(None)
            unanswered = dispute.c.needs_review.is_(True) & dispute.c.review.is_(None)
            open_disputes, needs_review = c.execute(
                select(
                    func.count(),
                    func.coalesce(func.sum(_one_if(unanswered)), 0),
                ).where(open_)
            ).one()
            due = send.c.state == SendState.SCHEDULED.value
            due_unsent, oldest_due = c.execute(
                select(func.count(), func.min(send.c.due_at)).where(due, send.c.due_at <= now)
            ).one()
            return Status(
                now=now,
                sends=sends,
                in_doubt=int(in_doubt),
                oldest_in_doubt=_aware(oldest_in_doubt),
                failures=failures,
                open_disputes=int(open_disputes),
                needs_review=int(needs_review),
                suppressions=_counted(c, schema.suppression.c.reason),
                inbound=_counted(
                    c,
                    schema.inbound_message.c.kind,
                    schema.inbound_message.c.received_at >= now - INBOUND_WITHIN,
                ),
                mailboxes=_mailbox_reads(c),
                oldest_due=_aware(oldest_due),
                due_unsent=int(due_unsent),
                buyers_awaiting_pass=int(
                    c.execute(
                        select(func.count()).where(schema.customer.c.next_due_at <= now)
                    ).scalar_one()
                ),
            )

    def in_doubt_sends(self) -> list[InDoubtSend]:
        """Every ``in_doubt`` send, oldest first, with what to look for in the relay's log."""
        send = schema.send
        query = (
            select(send)
            .where(send.c.state == SendState.IN_DOUBT.value)
            .order_by(send.c.updated_at, send.c.id)
        )
        with self._connect() as c:
            return [
                InDoubtSend(
                    id=r["id"],
                    order_id=r["order_id"],
                    campaign=r["campaign"],
                    step=r["step"],
                    recipient=r["recipient"],
                    message_id=r["message_id"],
                    relay_message_id=r["relay_message_id"],
                    claimed_at=r["claimed_at"],
                    since=r["updated_at"],
                    attempts=r["attempts"],
                    reason=r["reason"],
                )
                for r in c.execute(query).mappings()
            ]


def _reason_key(c: Connection) -> Any:
    """A skipped send's reason up to its first ``:`` (``suppressed:hard_bounce`` ->
    ``suppressed``), computed by the database so it can group by it. Other states group by
    state alone: their reasons are a relay's words, one per row (``worker status`` lists the
    recent failures and the in-doubt ones instead)."""
    send = schema.send
    reason = send.c.reason
    if c.dialect.name == "postgresql":
        key = func.split_part(reason, ":", 1)
    else:
        key = func.substr(reason, 1, func.instr(reason + literal(":"), ":") - 1)
    return case((send.c.state == SendState.SKIPPED.value, key), else_=literal(""))


def _one_if(condition: Any) -> Any:
    return case((condition, 1), else_=0)


def _counted(c: Connection, column: Any, *where: Any) -> dict[str, int]:
    query = select(column, func.count()).where(*where).group_by(column).order_by(column)
    return {str(value): int(count) for value, count in c.execute(query)}


def _mailbox_reads(c: Connection) -> list[MailboxRead]:
    """Each mailbox the worker has read or leased: its last full read and newest checkpoint."""
    lease, checkpoint = schema.mailbox_lease, schema.mailbox_checkpoint
    reads = {r.mailbox: r.read_at for r in c.execute(select(lease.c.mailbox, lease.c.read_at))}
    checkpoints = {
        r.mailbox: r.at
        for r in c.execute(
            select(checkpoint.c.mailbox, func.max(checkpoint.c.updated_at).label("at")).group_by(
                checkpoint.c.mailbox
            )
        )
    }
    return [
        MailboxRead(name, reads.get(name), _aware(checkpoints.get(name)))
        for name in sorted(reads.keys() | checkpoints.keys())
    ]


def _aware(moment: datetime | None) -> datetime | None:
    """Aggregates (MIN, MAX) come back without the column type's conversion: naive UTC."""
    if moment is None:
        return None
    if isinstance(moment, str):  # SQLite hands an aggregate of a DATETIME back as text
        moment = datetime.fromisoformat(moment)
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment
