"""What the daemon's /metrics and /unsubscribe read from the store: cheap reads, at request
time, never a scan of every order."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select

from worker import schema
from worker.domain import Customer, Order, SendState
from worker.errors import UnknownOrder
from worker.store_database import _Database
from worker.store_rows import _customer_from

_SEND = schema.send


@dataclass(frozen=True, slots=True)
class Figures:
    """Gauges read at scrape time."""

    oldest_due: datetime | None
    """The due time of the longest-waiting ``scheduled`` send already due, if any."""
    in_doubt: int


class FiguresMixin(_Database):
    def figures(self, now: datetime) -> Figures:
        with self._connect() as connection:
            oldest = connection.execute(
                select(func.min(_SEND.c.due_at)).where(
                    _SEND.c.state == SendState.SCHEDULED.value, _SEND.c.due_at <= now
                )
            ).scalar_one()
            doubtful = connection.execute(
                select(func.count()).where(_SEND.c.state == SendState.IN_DOUBT.value)
            ).scalar_one()
        return Figures(oldest, int(doubtful))

    def buyer_of(self, order_id: str) -> tuple[Order, Customer | None] | None:
        """An order and its buyer, or None when no such order is stored."""
        with self._connect() as connection:
            try:
                order = self._order_in(connection, order_id)
            except UnknownOrder:
                return None
            row = (
                connection.execute(
                    select(schema.customer).where(schema.customer.c.email == order.buyer_email)
                )
                .mappings()
                .first()
            )
        return order, None if row is None else _customer_from(row)
