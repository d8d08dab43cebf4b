"""Who reads which mailbox: one row per mailbox naming the worker that holds it, until when.

A lease row rather than a PostgreSQL advisory lock: an advisory lock belongs to a session,
and a transaction-pooling proxy (PgBouncer's default mode) hands each transaction a different
session, so the lock would be taken and lost at random; it does not exist on SQLite either.
A row works through any proxy and on both databases, and operators can read it
(``SELECT * FROM mailbox_lease``). Its cost: a worker that dies holding a mailbox keeps it
until the lease expires; until then no one reads that mailbox, and sending waits, as it does
whenever a mailbox has not been read recently (``Ingest.fresh``).

A holder renews its lease with every read; the row also keeps when the mailbox was last read
to the end (``read_at``), so workers that do not hold it know whether it is fresh.

Each running worker also beats (a ``worker_state`` row ``worker:<id>``), so the workers can
split the mailboxes among themselves: a worker holds at most its fair share
(``ceil(mailboxes / live workers)``) and lets go of the rest.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import case, delete, func, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from worker import schema
from worker.store_database import _Database, retried_on_conflict

_LEASE = schema.mailbox_lease
_STATE = schema.worker_state
_BEAT = "worker:"
FORGET_AFTER = timedelta(days=1)
"""A worker silent this long is forgotten (its heartbeat row deleted)."""


class MailboxLeasesMixin(_Database):
    @retried_on_conflict
    def take_mailbox(self, mailbox: str, holder: str, now: datetime, until: datetime) -> str:
        """Take or renew the lease on ``mailbox`` until ``until``, if it is free, expired or
        already ``holder``'s; returns who holds it afterwards (``holder`` on success)."""
        with self._begin() as tx:
            insert = pg_insert if tx.dialect.name == "postgresql" else sqlite_insert
            row = insert(_LEASE).values(
                mailbox=mailbox, holder=holder, taken_at=now, expires_at=until
            )
            mine = _LEASE.c.holder == row.excluded.holder
            tx.execute(
                row.on_conflict_do_update(
                    index_elements=[_LEASE.c.mailbox],
                    set_={
                        "holder": row.excluded.holder,
                        "taken_at": case((mine, _LEASE.c.taken_at), else_=row.excluded.taken_at),
                        "expires_at": row.excluded.expires_at,
                    },
                    where=or_(_LEASE.c.holder == holder, _LEASE.c.expires_at <= now),
                )
            )
            current: str = tx.execute(
                select(_LEASE.c.holder).where(_LEASE.c.mailbox == mailbox)
            ).scalar_one()
        return current

    @retried_on_conflict
    def mailbox_read(self, mailbox: str, holder: str, at: datetime) -> None:
        """``holder`` read every folder of ``mailbox`` to the end, starting at ``at``."""
        with self._begin() as tx:
            tx.execute(
                update(_LEASE)
                .where(_LEASE.c.mailbox == mailbox, _LEASE.c.holder == holder)
                .values(read_at=at)
            )

    @retried_on_conflict
    def release_mailbox(self, mailbox: str, holder: str, now: datetime) -> None:
        """Free at once for another worker; when it was last read is kept."""
        with self._begin() as tx:
            tx.execute(
                update(_LEASE)
                .where(_LEASE.c.mailbox == mailbox, _LEASE.c.holder == holder)
                .values(expires_at=now)
            )

    def mailbox_lease(self, mailbox: str) -> tuple[str, datetime, datetime | None] | None:
        """(holder, expires_at, read_at) of ``mailbox``'s lease, if anyone ever took it."""
        with self._connect() as connection:
            row = connection.execute(
                select(_LEASE.c.holder, _LEASE.c.expires_at, _LEASE.c.read_at).where(
                    _LEASE.c.mailbox == mailbox
                )
            ).one_or_none()
        return None if row is None else (row.holder, row.expires_at, row.read_at)

    @retried_on_conflict
    def worker_alive(self, worker: str, now: datetime) -> None:
        """``worker`` is running at ``now``; workers silent for a day are forgotten."""
        key = f"{_BEAT}{worker}"[:64]
        with self._begin() as tx:
            insert = pg_insert if tx.dialect.name == "postgresql" else sqlite_insert
            row = insert(_STATE).values(key=key, value=worker, updated_at=now)
            tx.execute(
                row.on_conflict_do_update(
                    index_elements=[_STATE.c.key], set_={"updated_at": row.excluded.updated_at}
                )
            )
            tx.execute(
                delete(_STATE).where(
                    _STATE.c.key.startswith(_BEAT), _STATE.c.updated_at < now - FORGET_AFTER
                )
            )

    @retried_on_conflict
    def worker_gone(self, worker: str) -> None:
        """``worker`` stops: the others may take its share at once."""
        with self._begin() as tx:
            tx.execute(delete(_STATE).where(_STATE.c.key == f"{_BEAT}{worker}"[:64]))

    def live_workers(self, since: datetime) -> int:
        """Workers that beat at or after ``since``."""
        with self._connect() as connection:
            count: int = connection.execute(
                select(func.count())
                .select_from(_STATE)
                .where(_STATE.c.key.startswith(_BEAT), _STATE.c.updated_at >= since)
            ).scalar_one()
        return count
