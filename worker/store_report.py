"""``worker report``: what each campaign step adds, measured against its hold-out.

For every step, two groups of orders whose step fell in the window: the ones sent the
message (``sent``, counted from ``sent_at``) and the ones held out (``skipped`` with reason
``holdout``, counted from the moment the message would have gone, ``due_at``). For each group,
how many orders then had a buyer's reply, a dispute opened, a review, a 4 or 5 star review,
between that moment and now. One grouped query: the counts come from the database, not from
rows read into Python.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, case, exists, func, or_, select

from worker import schema
from worker.domain import SendState
from worker.plan import HOLDOUT
from worker.store_database import _Database

MIN_HOLDOUT = 30
"""Held-out orders below which a comparison says nothing worth printing."""


@dataclass(frozen=True, slots=True)
class Group:
    """One group of orders of one step: counts of what followed the (would-be) message."""

    orders: int = 0
    replied: int = 0
    disputed: int = 0
    reviewed: int = 0
    good_reviews: int = 0
    """Reviews of 4 or 5 stars."""

    def rate(self, count: int) -> float | None:
        return count / self.orders if self.orders else None


@dataclass(frozen=True, slots=True)
class StepReport:
    campaign: str
    step: str
    sent: Group
    held_out: Group

    @property
    def comparable(self) -> bool:
        """Enough held-out orders (and some sent) to compare the two groups at all."""
        return self.held_out.orders >= MIN_HOLDOUT and self.sent.orders > 0


OUTCOMES = ("replied", "disputed", "reviewed", "good_reviews")
"""The counts of a :class:`Group` that the report compares, in the order it prints them."""


def difference(step: StepReport, outcome: str) -> tuple[float, float] | None:
    """The sent group's rate of ``outcome`` less the held-out group's, with the half-width
    of its 95% interval (normal approximation): what the message adds, and how sure that is.
    None when the groups are too small to compare."""
    if not step.comparable:
        return None
    sent, held = step.sent, step.held_out
    p1, p0 = getattr(sent, outcome) / sent.orders, getattr(held, outcome) / held.orders
    spread = math.sqrt(p1 * (1 - p1) / sent.orders + p0 * (1 - p0) / held.orders)
    return p1 - p0, 1.96 * spread


class ReportMixin(_Database):
    def step_report(
        self, since: datetime, now: datetime, campaign: str | None = None
    ) -> list[StepReport]:
        """Per campaign step with a send or a hold-out in ``since..now``, both groups."""
        send = schema.send
        moment = func.coalesce(send.c.sent_at, send.c.due_at)
        is_sent = send.c.state == SendState.SENT.value
        is_held = and_(send.c.state == SendState.SKIPPED.value, send.c.reason == HOLDOUT)

        def after(table: Any, column: Any, *extra: Any) -> Any:
            """1 when the order had such a row after the (would-be) message, else 0."""
            found = exists().where(
                table.c.order_id == send.c.order_id, column > moment, column <= now, *extra
            )
            return func.sum(case((found, 1), else_=0))

        review = schema.review
        query = (
            select(
                send.c.campaign,
                send.c.step,
                send.c.state,
                func.count().label("orders"),
                after(schema.reply, schema.reply.c.replied_at).label("replied"),
                after(schema.dispute, schema.dispute.c.opened_at).label("disputed"),
                after(review, review.c.reviewed_at).label("reviewed"),
                after(review, review.c.reviewed_at, review.c.rating >= 4).label("good_reviews"),
            )
            .where(or_(is_sent, is_held), moment >= since, moment <= now)
            .group_by(send.c.campaign, send.c.step, send.c.state)
            .order_by(send.c.campaign, send.c.step)
        )
        if campaign is not None:
            query = query.where(send.c.campaign == campaign)
        groups: dict[tuple[str, str], dict[bool, Group]] = {}
        with self._connect() as c:
            for row in c.execute(query):
                counts = Group(
                    row.orders,
                    int(row.replied or 0),
                    int(row.disputed or 0),
                    int(row.reviewed or 0),
                    int(row.good_reviews or 0),
                )
                sent = row.state == SendState.SENT.value
                groups.setdefault((row.campaign, row.step), {})[sent] = counts
        return [
            StepReport(name, step, found.get(True, Group()), found.get(False, Group()))
            for (name, step), found in groups.items()
        ]
