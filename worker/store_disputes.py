"""The store's disputes as agents review them: the list of disputes with the buyer's words
that opened them, and an agent's confirm or dismiss.

A dispute the intent reader opened on an unsure reading (``needs_review``) pauses the buyer
like any other, until an agent answers it: confirming keeps it open as an ordinary dispute;
dismissing closes it at once and marks it dismissed, so the planner resumes the buyer's mail
without the cool-down (``worker.plan``). Either answer is an UPDATE of the dispute row, which
the triggers of migration 0005 turn into a wake-up of the buyer for the next pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, RowMapping, func, select

from worker import schema
from worker.domain import DisputeKind, Intent
from worker.errors import StoreError
from worker.store_database import _Database, retried_on_conflict
from worker.store_rows import CONFIRMED, DISMISSED
from worker.terminal import printable

AGENT_NAME_LIMIT = 64
"""``dispute.reviewed_by`` holds at most this many characters."""


def agent_name(text: str) -> str:
    """Who answered a dispute, as it may be stored and later shown on a terminal: one short
    line of visible characters. Raises ``ValueError`` saying what is wrong with it."""
    name = text.strip()
    if not name:
        raise ValueError("the agent's name is empty")
    if len(name) > AGENT_NAME_LIMIT:
        raise ValueError(f"the agent's name is longer than {AGENT_NAME_LIMIT} characters")
    if printable(name) != name or any(c.isspace() and c != " " for c in name):
        raise ValueError(f"the agent's name {printable(name)!r} holds control characters")
    return name


@dataclass(frozen=True, slots=True)
class DisputeRow:
    """One dispute as ``worker disputes list`` shows it."""

    id: int
    order_id: str
    buyer: str
    kind: DisputeKind
    opened_at: datetime
    closed_at: datetime | None
    source: str
    needs_review: bool
    """Opened on an unsure reading and not answered yet (while it is open)."""
    review: str | None
    """``confirmed``, ``dismissed`` or ``None``."""
    reviewed_at: datetime | None
    reviewed_by: str | None
    evidence: str
    """What the reader found in the message that opened it; empty for imported ones."""
    words: str
    """The opening message's text (capped), for the first words an agent reads."""
    intent: Intent | None
    confidence: float | None


WORDS_KEPT = 500
"""Characters of the opening message read for the list: it shows its first words only."""


class DisputesMixin(_Database):
    # Disputes, as agents review them -------------------------------------------------------

    def disputes(self, *, needs_review: bool = False, every: bool = False) -> list[DisputeRow]:
        """Open disputes, oldest first; ``needs_review``: only those awaiting an agent;
        ``every``: closed ones as well."""
        dispute = schema.dispute
        query = _listing()
        if needs_review:
            query = query.where(dispute.c.needs_review.is_(True), dispute.c.review.is_(None))
        if needs_review or not every:
            query = query.where(dispute.c.closed_at.is_(None))
        with self._connect() as c:
            rows = c.execute(query.order_by(dispute.c.opened_at, dispute.c.id)).mappings()
            return [_row_from(r) for r in rows]

    def dispute(self, dispute_id: int) -> DisputeRow:
        with self._connect() as c:
            return _row_from(_found(c, dispute_id))

    @retried_on_conflict
    def confirm_dispute(self, dispute_id: int, by: str, at: datetime) -> DisputeRow:
        """An agent says it is a complaint: it stays open, an ordinary dispute, and leaves the
        needs-review list."""
        who = _checked_agent(by)
        with self._begin() as tx:
            row = _found(tx, dispute_id)
            _require_open(row, "confirm")
            if row["review"] == CONFIRMED:
                raise StoreError(
                    f"dispute {dispute_id} was already confirmed by {row['reviewed_by']} "
                    f"at {row['reviewed_at']:%Y-%m-%d %H:%M} UTC"
                )
            _answer(tx, dispute_id, CONFIRMED, who, at)
            return _row_from(_found(tx, dispute_id))

    @retried_on_conflict
    def dismiss_dispute(self, dispute_id: int, by: str, at: datetime) -> DisputeRow:
        """An agent says it was no complaint: closed at ``at`` and marked dismissed, so the
        buyer's mail resumes at once, with no cool-down. The update wakes the buyer."""
        who = _checked_agent(by)
        with self._begin() as tx:
            row = _found(tx, dispute_id)
            _require_open(row, "dismiss")
            if at < row["opened_at"]:
                raise StoreError(
                    f"dispute {dispute_id} opened at {row['opened_at']:%Y-%m-%d %H:%M} UTC, "
                    f"after {at:%Y-%m-%d %H:%M} UTC: dismiss it at or after its opening"
                )
            _answer(tx, dispute_id, DISMISSED, who, at, closed_at=at)
            return _row_from(_found(tx, dispute_id))


def _checked_agent(by: str) -> str:
    try:
        return agent_name(by)
    except ValueError as exc:
        raise StoreError(str(exc)) from None


def _listing() -> Any:
    dispute, order, inbound = schema.dispute, schema.order, schema.inbound_message
    return (
        select(
            dispute,
            order.c.buyer_email,
            inbound.c.evidence,
            # The first words only: a message body may be megabytes.
            func.substr(inbound.c.body_text, 1, WORDS_KEPT).label("words"),
            inbound.c.intent,
            inbound.c.intent_confidence,
        )
        .join(order, order.c.order_id == dispute.c.order_id)
        .outerjoin(inbound, inbound.c.id == dispute.c.inbound_message_id)
    )


def _found(c: Connection, dispute_id: int) -> RowMapping:
    row = c.execute(_listing().where(schema.dispute.c.id == dispute_id)).mappings().first()
    if row is None:
        raise StoreError(f"no dispute {dispute_id}; see `worker disputes list --all`")
    return row


def _require_open(row: RowMapping, action: str) -> None:
    if row["closed_at"] is None:
        return
    how = "dismissed" if row["review"] == DISMISSED else "closed"
    by = f" by {row['reviewed_by']}" if row["review"] == DISMISSED and row["reviewed_by"] else ""
    raise StoreError(
        f"dispute {row['id']} was already {how}{by} at {row['closed_at']:%Y-%m-%d %H:%M} UTC: "
        f"there is nothing to {action}"
    )


def _answer(
    tx: Connection,
    dispute_id: int,
    review: str,
    by: str,
    at: datetime,
    *,
    closed_at: datetime | None = None,
) -> None:
    """Guarded by ``closed_at IS NULL``: a dispute closed meanwhile (a marketplace's notice,
    another agent) is not answered twice."""
    dispute = schema.dispute
    values: dict[str, Any] = {"review": review, "reviewed_at": at, "reviewed_by": by}
    if closed_at is not None:
        values["closed_at"] = closed_at
    done = tx.execute(
        dispute.update()
        .where(dispute.c.id == dispute_id, dispute.c.closed_at.is_(None))
        .values(**values)
    )
    if done.rowcount != 1:
        raise StoreError(f"dispute {dispute_id} was closed meanwhile; see `worker disputes list`")


def _row_from(row: RowMapping) -> DisputeRow:
    review = row["review"]
    intent = row["intent"]
    return DisputeRow(
        id=row["id"],
        order_id=row["order_id"],
        buyer=row["buyer_email"],
        kind=DisputeKind(row["kind"]),
        opened_at=row["opened_at"],
        closed_at=row["closed_at"],
        source=row["source"],
        needs_review=bool(row["needs_review"]) and review is None and row["closed_at"] is None,
        review=review,
        reviewed_at=row["reviewed_at"],
        reviewed_by=row["reviewed_by"],
        evidence=row["evidence"] or "",
        words=row["words"] or "",
        intent=Intent(intent) if intent in Intent._value2member_map_ else None,
        confidence=row["intent_confidence"],
    )
