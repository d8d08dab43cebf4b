"""The store's pauses (worker/pauses.py): ``worker pause`` and ``worker resume`` write them,
every pass and every claim read them.

Pausing wakes no one: the next pass plans the due buyers as usual and holds their steps
(WAIT ``paused``, no next look). Resuming wakes the buyers the pause may have held, in the
same transaction, so the next pass of any worker plans them again and sends what is still
inside its ``max_lateness``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, RowMapping, select
from sqlalchemy.exc import IntegrityError

from worker import schema
from worker.pauses import Pause, PauseScope
from worker.store_database import _Database, retried_on_conflict


@dataclass(frozen=True, slots=True)
class Paused:
    """What ``pause`` did: the pause in force for that scope, and whether it is new."""

    pause: Pause
    new: bool


class PausesMixin(_Database):
    def pauses(self) -> list[Pause]:
        """Every pause in force, oldest first: one small read."""
        with self._connect() as c:
            return _pauses(c)

    @retried_on_conflict
    def pause(self, scope: PauseScope, target: str, by: str, reason: str, now: datetime) -> Paused:
        """Pause ``scope``; a scope already paused keeps its first pause (who and why)."""
        table = schema.pause
        with self._begin() as tx:
            found = _pause_of(tx, scope, target)
            if found is not None:
                return Paused(found, new=False)
            values = {
                "scope": scope.value,
                "target": target,
                "paused_by": by,
                "reason": reason,
                "paused_at": now,
            }
            try:
                with tx.begin_nested():
                    tx.execute(table.insert().values(**values))
            except IntegrityError:  # another operator paused it a moment ago
                raced = _pause_of(tx, scope, target)
                assert raced is not None
                return Paused(raced, new=False)
            return Paused(Pause(scope, target, by, reason, now), new=True)

    @retried_on_conflict
    def resume(self, scope: PauseScope, target: str) -> Pause | None:
        """Lift the pause of ``scope`` and wake the buyers it may have held; None if that
        scope was not paused (nothing is woken)."""
        table, customer, order = schema.pause, schema.customer, schema.order
        with self._begin() as tx:
            found = _pause_of(tx, scope, target)
            if found is None:
                return None
            tx.execute(table.delete().where(table.c.scope == scope.value, table.c.target == target))
            woken = customer.update().values(next_due_at=schema.EPOCH)
            if scope is PauseScope.MARKETPLACE:
                buyers = select(order.c.buyer_email).where(order.c.marketplace == target)
                woken = woken.where(customer.c.email.in_(buyers))
            tx.execute(woken)
            return found


def _pause_of(c: Connection, scope: PauseScope, target: str) -> Pause | None:
    table = schema.pause
    row = (
        c.execute(select(table).where(table.c.scope == scope.value, table.c.target == target))
        .mappings()
        .first()
    )
    return None if row is None else _pause_from(row)


def _pauses(c: Connection) -> list[Pause]:
    table = schema.pause
    rows = c.execute(select(table).order_by(table.c.paused_at, table.c.id)).mappings()
    return [_pause_from(r) for r in rows]


def _pause_from(row: RowMapping) -> Pause:
    return Pause(
        PauseScope(row["scope"]), row["target"], row["paused_by"], row["reason"], row["paused_at"]
    )
