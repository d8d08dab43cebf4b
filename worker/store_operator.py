"""The store's side of an operator's hands-on commands: suppressions added, removed and
imported by a named person, and test sends, kept in their own table so that a test counts
for no order, cap, plan or metric.

A suppression an operator removes is not forgotten: it moves to ``suppression_removal`` with
who removed it, when, and whether it took ``--force`` (a hard bounce or a spam complaint).
Removing it wakes the buyer (the triggers of migration 0005); steps already skipped for the
suppression stay skipped.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, RowMapping, select

from worker import schema
from worker.domain import SuppressionReason
from worker.errors import StoreError, UnknownOrder
from worker.plan import OrderHistory
from worker.store_database import _Database, retried_on_conflict
from worker.store_planning import _histories_of

PROVEN = frozenset({SuppressionReason.HARD_BOUNCE, SuppressionReason.SPAM_COMPLAINT})
"""Reasons a buyer's own mail system gave: removing one needs ``--force``."""


@dataclass(frozen=True, slots=True)
class SuppressionRow:
    email: str
    reason: SuppressionReason
    detail: str
    created_at: datetime
    created_by: str | None
    """The operator who added it; None: the worker itself (a bounce, a report, a reply)."""


@dataclass(frozen=True, slots=True)
class TestSend:
    """A test message as it was handed to the relay, for the record."""

    campaign: str
    step: str
    order_id: str | None
    locale: str
    recipient: str
    subject: str
    message_id: str
    outcome: str
    detail: str
    created_by: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Imported:
    added: int
    already: int


class ForceNeeded(StoreError):
    """The suppression is the buyer's own mail system speaking; removing it takes --force."""


class OperatorMixin(_Database):
    @retried_on_conflict
    def add_suppression(
        self, email: str, reason: SuppressionReason, by: str, at: datetime, detail: str = ""
    ) -> SuppressionRow | None:
        """Suppress ``email`` on an operator's word; the suppression already held (its first
        reason stays) if there is one, else None."""
        with self._begin() as tx:
            held = _held(tx, email)
            if held is not None:
                return held
            _insert(tx, email, reason, by, at, detail)
            return None

    @retried_on_conflict
    def import_suppressions(
        self, emails: Iterable[str], reason: SuppressionReason, by: str, at: datetime, detail: str
    ) -> Imported:
        """Suppress every address; the ones already suppressed keep their reason. One
        transaction: a file that fails half-way leaves nothing behind."""
        added = already = 0
        table = schema.suppression
        with self._begin() as tx:
            for email in emails:
                if tx.execute(select(table.c.email).where(table.c.email == email)).first():
                    already += 1
                    continue
                _insert(tx, email, reason, by, at, detail)
                added += 1
        return Imported(added, already)

    @retried_on_conflict
    def remove_suppression(
        self, email: str, by: str, at: datetime, *, force: bool = False
    ) -> SuppressionRow:
        """Lift the suppression, keeping it in ``suppression_removal`` with who and when.
        A hard bounce or a spam complaint needs ``force``: the buyer's mail system said it."""
        with self._begin() as tx:
            held = _held(tx, email)
            if held is None:
                raise StoreError(f"{email} is not suppressed; nothing changed")
            if held.reason in PROVEN and not force:
                raise ForceNeeded(
                    f"{email} is suppressed for {held.reason.value} ({held.detail or 'no detail'}"
                    f", since {held.created_at:%Y-%m-%d %H:%M} UTC): the buyer's own mail system "
                    "said so, and mailing it again hurts the sender's reputation. Nothing "
                    "changed; add --force if you know the address works again"
                )
            table = schema.suppression
            tx.execute(table.delete().where(table.c.email == email))
            tx.execute(
                schema.suppression_removal.insert().values(
                    email=held.email,
                    reason=held.reason.value,
                    detail=held.detail,
                    created_at=held.created_at,
                    created_by=held.created_by,
                    removed_at=at,
                    removed_by=by,
                    forced=held.reason in PROVEN,
                )
            )
            return held

    def suppression_rows(self, reason: SuppressionReason | None = None) -> list[SuppressionRow]:
        """Every suppression (or those of ``reason``), oldest first."""
        table = schema.suppression
        query = select(table).order_by(table.c.created_at, table.c.email)
        if reason is not None:
            query = query.where(table.c.reason == reason.value)
        with self._connect() as c:
            return [_row(r) for r in c.execute(query).mappings()]

    def history(self, order_id: str) -> OrderHistory:
        """One order as the planner and the daemon's renderer see it (``worker preview``)."""
        with self._connect() as c:
            found = _histories_of(c, [order_id]).get(order_id)
        if found is None:
            raise UnknownOrder(
                f"no order {order_id!r}; import it first with `worker import orders`"
            )
        return found

    def record_test_send(self, test: TestSend) -> int:
        with self._begin() as tx:
            result = tx.execute(
                schema.test_send.insert().values(
                    campaign=test.campaign,
                    step=test.step,
                    order_id=test.order_id,
                    locale=test.locale,
                    recipient=test.recipient,
                    subject=test.subject,
                    message_id=test.message_id,
                    outcome=test.outcome,
                    detail=test.detail,
                    created_by=test.created_by,
                    created_at=test.created_at,
                )
            )
            key = result.inserted_primary_key
            assert key is not None
            return int(key[0])

    def test_sends(self) -> list[TestSend]:
        table = schema.test_send
        with self._connect() as c:
            rows = c.execute(select(table).order_by(table.c.id)).mappings()
            return [
                TestSend(
                    r["campaign"],
                    r["step"],
                    r["order_id"],
                    r["locale"],
                    r["recipient"],
                    r["subject"],
                    r["message_id"],
                    r["outcome"],
                    r["detail"],
                    r["created_by"],
                    r["created_at"],
                )
                for r in rows
            ]


def _held(tx: Connection, email: str) -> SuppressionRow | None:
    table = schema.suppression
    found = tx.execute(select(table).where(table.c.email == email)).mappings().first()
    return None if found is None else _row(found)


def _row(row: RowMapping) -> SuppressionRow:
    return SuppressionRow(
        email=row["email"],
        reason=SuppressionReason(row["reason"]),
        detail=row["detail"],
        created_at=row["created_at"],
        created_by=row["created_by"],
    )


def _insert(
    tx: Connection, email: str, reason: SuppressionReason, by: str, at: datetime, detail: str
) -> None:
    tx.execute(
        schema.suppression.insert().values(
            email=email, reason=reason.value, detail=detail, created_at=at, created_by=by
        )
    )
