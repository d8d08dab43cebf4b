"""The store's send records: scheduling and skipping a step, the claim that makes a row
``sending`` before any SMTP talk, and every later move of its state (sent, failed, in doubt,
released, unclaimed, requeued or resolved by an operator, expired claims).

Every state change is guarded by the state it expects (``WHERE state = 'sending'``, see
``_move``), so two workers can never both move the same row.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, bindparam, or_, select
from sqlalchemy.exc import IntegrityError

from worker import schema
from worker.domain import Send, SendState
from worker.errors import DuplicateSend, StoreError
from worker.plan import OrderHistory, Refusal
from worker.send import relay_message_id
from worker.store_database import _Database, retried_on_conflict
from worker.store_planning import _histories_of
from worker.store_rows import _send_from

STALE_CLAIM_REASON = (
    "the worker stopped during the SMTP conversation; check the relay's log before re-sending"
)


@dataclass(frozen=True, slots=True)
class SentRecord:
    """A send the relay accepted, to be recorded with others of its chunk."""

    send_id: int
    reply: str
    at: datetime
    text: str | None = None


@dataclass(frozen=True, slots=True)
class Claim:
    """What a claim took (``sends``, now ``sending``) and what it refused, with the reason."""

    sends: list[Send]
    refused: dict[int, str]


class SendsMixin(_Database):
    # Send records ---------------------------------------------------------------------------

    @retried_on_conflict
    def schedule(
        self, order_id: str, campaign: str, step: str, due_at: datetime, now: datetime
    ) -> Send:
        """The row that exists before any SMTP conversation; returns the existing one if any."""
        with self._begin() as tx:
            with contextlib.suppress(DuplicateSend):
                self._insert_send(tx, order_id, campaign, step, SendState.SCHEDULED, due_at, now)
            return self._existing_send(tx, order_id, campaign, step)

    @retried_on_conflict
    def record_skip(
        self, order_id: str, campaign: str, step: str, due_at: datetime, reason: str, now: datetime
    ) -> Send:
        """Record a step that will never be sent; a still-scheduled row is skipped too."""
        with self._begin() as tx:
            try:
                self._insert_send(
                    tx, order_id, campaign, step, SendState.SKIPPED, due_at, now, reason
                )
            except DuplicateSend:
                existing = self._existing_send(tx, order_id, campaign, step)
                self._move(
                    tx, existing.id, SendState.SCHEDULED, SendState.SKIPPED, now, reason=reason
                )
            return self._existing_send(tx, order_id, campaign, step)

    def _insert_send(
        self,
        tx: Connection,
        order_id: str,
        campaign: str,
        step: str,
        state: SendState,
        due_at: datetime,
        now: datetime,
        reason: str = "",
    ) -> None:
        """The unique constraint, not an earlier read, decides who creates the row."""
        values: dict[str, object] = {"order_id": order_id, "campaign": campaign, "step": step}
        values |= {"state": state.value, "due_at": due_at, "reason": reason}
        values |= {"created_at": now, "updated_at": now}
        try:
            with tx.begin_nested():
                tx.execute(schema.send.insert().values(values))
        except IntegrityError as exc:
            raise DuplicateSend(where=f"order {order_id} {campaign}/{step}") from exc

    def _existing_send(self, tx: Connection, order_id: str, campaign: str, step: str) -> Send:
        table = schema.send
        row = (
            tx.execute(
                select(table).where(
                    table.c.order_id == order_id, table.c.campaign == campaign, table.c.step == step
                )
            )
            .mappings()
            .one()
        )
        return _send_from(row)

    @retried_on_conflict
    def claim(
        self,
        send_ids: Sequence[int],
        now: datetime,
        worker: str,
        message_id: Callable[[Send], str],
        check: Callable[[Send, OrderHistory], Refusal | None] | None = None,
    ) -> Claim:
        """Mark due rows ``sending`` and commit, so no other worker can take them.

        ``check`` judges each row against what is stored *now*, in the same transaction: a
        dispute opened, an address suppressed, a review or reply recorded while the pass ran
        stops the send here, before any SMTP talk. A refused row is skipped for good, or left
        scheduled when the refusal is only for now (an open dispute).
        """
        if not send_ids:
            return Claim([], {})
        table = schema.send
        due = (
            select(table)
            .where(
                table.c.id.in_(list(send_ids)),
                table.c.state == SendState.SCHEDULED.value,
                or_(table.c.not_before.is_(None), table.c.not_before <= now),
            )
            .with_for_update(skip_locked=True)
        )
        with self._begin() as tx:
            candidates = [_send_from(r) for r in tx.execute(due).mappings()]
            refused = self._refusals(tx, candidates, check) if check else {}
            for send_id, refusal in refused.items():
                state = SendState.SKIPPED if refusal.final else SendState.SCHEDULED
                tx.execute(
                    table.update()
                    .where(table.c.id == send_id, table.c.state == SendState.SCHEDULED.value)
                    .values(state=state.value, reason=refusal.reason, updated_at=now)
                )
            chosen = [c.id for c in candidates if c.id not in refused]
            rows = (
                tx.execute(
                    table.update()
                    .where(table.c.id.in_(chosen), table.c.state == SendState.SCHEDULED.value)
                    .values(
                        state=SendState.SENDING.value,
                        recipient=_buyer_of_send(),
                        claimed_at=now,
                        claimed_by=worker,
                        attempts=table.c.attempts + 1,
                        updated_at=now,
                    )
                    .returning(*table.c)
                )
                .mappings()
                .all()
                if chosen
                else []
            )
            claimed = [_send_from(r) for r in rows]
            claimed = [replace(r, message_id=message_id(r)) for r in claimed]
            if claimed:
                tx.execute(
                    table.update()
                    .where(table.c.id == bindparam("claimed_id"))
                    .values(message_id=bindparam("claimed_message_id")),
                    [{"claimed_id": r.id, "claimed_message_id": r.message_id} for r in claimed],
                )
        sends = sorted(claimed, key=lambda s: s.id)
        return Claim(sends, {i: r.reason for i, r in refused.items()})

    def _refusals(
        self,
        tx: Connection,
        candidates: list[Send],
        check: Callable[[Send, OrderHistory], Refusal | None],
    ) -> dict[int, Refusal]:
        histories = _histories_of(tx, {c.order_id for c in candidates})
        found = {c.id: check(c, histories[c.order_id]) for c in candidates}
        return {send_id: refusal for send_id, refusal in found.items() if refusal is not None}

    @retried_on_conflict
    def mark_sent(self, send_id: int, reply: str, now: datetime, text: str | None = None) -> bool:
        """``text`` is the message's text part, kept so our words never count as the buyer's."""
        with self._begin() as tx:
            return self._move(
                tx,
                send_id,
                SendState.SENDING,
                SendState.SENT,
                now,
                sent_at=now,
                relay_reply=reply,
                relay_message_id=relay_message_id(reply),
                body_text=text,
                reason="",
            )

    @retried_on_conflict
    def mark_sent_many(self, sent: Sequence[SentRecord]) -> list[bool]:
        """:meth:`mark_sent` for several sends in one transaction (a delivery task's chunk):
        one commit instead of one per message. Each row moves only from ``sending``."""
        if not sent:
            return []
        with self._begin() as tx:
            return [
                self._move(
                    tx,
                    record.send_id,
                    SendState.SENDING,
                    SendState.SENT,
                    record.at,
                    sent_at=record.at,
                    relay_reply=record.reply,
                    relay_message_id=relay_message_id(record.reply),
                    body_text=record.text,
                    reason="",
                )
                for record in sent
            ]

    def mark_failed(self, send_id: int, reason: str, now: datetime) -> bool:
        return self._move_claimed(send_id, SendState.FAILED, now, reason=reason)

    def mark_in_doubt(self, send_id: int, reason: str, now: datetime) -> bool:
        return self._move_claimed(send_id, SendState.IN_DOUBT, now, reason=reason)

    def unclaim(self, send_id: int, reason: str, now: datetime) -> bool:
        """Give back a claim whose message never reached the server (a stop before the data,
        a relay found down): scheduled again, the attempt not counted."""
        attempts = schema.send.c.attempts - 1
        return self._reschedule(
            send_id, now, reason=reason, attempts=attempts, not_before=None, claimed_by=None
        )

    def withdraw(self, send_id: int, reason: str, *, final: bool, now: datetime) -> bool:
        """A claimed send found refused just before its SMTP conversation (a dispute or a
        suppression recorded since the claim): skipped for good (``final``), else scheduled
        again with the attempt not counted, as a refusal at claim time would leave it."""
        if final:
            return self._move_claimed(send_id, SendState.SKIPPED, now, reason=reason)
        attempts = schema.send.c.attempts - 1
        return self._reschedule(
            send_id, now, reason=reason, attempts=attempts, not_before=None, claimed_by=None
        )

    def requeue(self, send_id: int, now: datetime) -> Send:
        """An operator found an ``in_doubt`` send not delivered: schedule it again."""
        reason = "requeued by an operator after in_doubt"
        return self._settle(send_id, SendState.SCHEDULED, now, reason=reason, not_before=None)

    def resolve(self, send_id: int, *, sent: bool, now: datetime, by: str = "an operator") -> Send:
        """An operator read the relay's log: the ``in_doubt`` send went out, or never did.
        Who decided stays in the row's reason."""
        if sent:
            reason = f"resolved by {by} after in_doubt"
            return self._settle(send_id, SendState.SENT, now, reason=reason, sent_at=now)
        reason = f"not sent (resolved by {by} after in_doubt)"
        return self._settle(send_id, SendState.FAILED, now, reason=reason)

    @retried_on_conflict
    def _settle(self, send_id: int, to: SendState, now: datetime, **values: Any) -> Send:
        table = schema.send
        with self._begin() as tx:
            if not self._move(tx, send_id, SendState.IN_DOUBT, to, now, **values):
                row = tx.execute(select(table.c.state).where(table.c.id == send_id)).first()
                state = "no such send" if row is None else f"it is {row[0]}"
                raise StoreError(f"send {send_id} is not in_doubt ({state}); nothing changed")
            found = tx.execute(select(table).where(table.c.id == send_id)).mappings().one()
        return _send_from(found)

    def release(self, send_id: int, reason: str, not_before: datetime, now: datetime) -> bool:
        """Give a transiently failed claim back, to be retried no earlier than ``not_before``."""
        return self._reschedule(send_id, now, reason=reason, not_before=not_before)

    def _reschedule(self, send_id: int, now: datetime, **values: Any) -> bool:
        return self._move_claimed(send_id, SendState.SCHEDULED, now, **values)

    @retried_on_conflict
    def _move_claimed(self, send_id: int, to: SendState, now: datetime, **values: Any) -> bool:
        """One claimed (``sending``) row to ``to``, alone in its transaction."""
        with self._begin() as tx:
            return self._move(tx, send_id, SendState.SENDING, to, now, **values)

    @retried_on_conflict
    def expire_claims(self, claimed_before: datetime, now: datetime) -> list[Send]:
        """Claims older than any message deadline belong to a worker that died mid-send."""
        table = schema.send
        with self._begin() as tx:
            rows = (
                tx.execute(
                    table.update()
                    .where(
                        table.c.state == SendState.SENDING.value,
                        table.c.claimed_at < claimed_before,
                    )
                    .values(
                        state=SendState.IN_DOUBT.value,
                        updated_at=now,
                        reason=STALE_CLAIM_REASON,
                    )
                    .returning(*table.c)
                )
                .mappings()
                .all()
            )
        return [_send_from(r) for r in rows]

    def sends(self, states: Iterable[SendState] | None = None) -> list[Send]:
        query = select(schema.send).order_by(schema.send.c.due_at, schema.send.c.id)
        if states is not None:
            query = query.where(schema.send.c.state.in_([s.value for s in states]))
        with self._connect() as c:
            return [_send_from(r) for r in c.execute(query).mappings()]

    def _move(
        self,
        tx: Connection,
        send_id: int,
        expected: SendState,
        to: SendState,
        now: datetime,
        **values: Any,
    ) -> bool:
        table = schema.send
        result = tx.execute(
            table.update()
            .where(table.c.id == send_id, table.c.state == expected.value)
            .values(state=to.value, updated_at=now, **values)
        )
        return bool(result.rowcount == 1)


def _buyer_of_send() -> Any:
    """The claimed send's buyer address, read in the claiming statement itself."""
    order, send = schema.order, schema.send
    return select(order.c.buyer_email).where(order.c.order_id == send.c.order_id).scalar_subquery()
