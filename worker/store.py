"""The store: orders, events and the send records, on SQLite or PostgreSQL.

Every method is one short transaction. State changes of a send are guarded by the state they
expect (``WHERE state = 'sending'``), so two workers can never both move the same row, and the
claim is one ``UPDATE ... WHERE id IN (SELECT ... FOR UPDATE SKIP LOCKED) RETURNING`` that is
committed before the SMTP conversation begins.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from importlib.resources import files
from itertools import islice
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import (
    URL,
    Connection,
    Engine,
    RowMapping,
    and_,
    bindparam,
    create_engine,
    event,
    func,
    make_url,
    or_,
    select,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import (
    DBAPIError,
    IntegrityError,
    InterfaceError,
    OperationalError,
    SQLAlchemyError,
)

from worker import schema
from worker.domain import (
    Bounce,
    Classification,
    Customer,
    Dispute,
    DisputeKind,
    Match,
    MatchMethod,
    MessageKind,
    Order,
    Reply,
    Review,
    Send,
    SendState,
    Suppression,
    SuppressionReason,
)
from worker.errors import DuplicateSend, SchemaOutOfDate, StoreError, UnknownOrder
from worker.feeds import OrderRow
from worker.inbound import InboundMessage, Received
from worker.origin import Origin
from worker.plan import OrderHistory, Refusal
from worker.react import CloseDisputes, Reactions, Standing, Suppress, react
from worker.send import relay_message_id
from worker.thread import Candidates, SendRef, Threaded, Wanted

BATCH_ROWS = 500
STALE_CLAIM_REASON = (
    "the worker stopped during the SMTP conversation; check the relay's log before re-sending"
)


@dataclass(frozen=True, slots=True)
class UpsertCount:
    inserted: int = 0
    updated: int = 0
    older: int = 0
    """Known orders left as they were: every row of theirs was older than what is stored."""


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """Every message of the folder up to ``last_uid`` is stored, under this UIDVALIDITY."""

    mailbox: str
    folder: str
    uidvalidity: int
    last_uid: int


@dataclass(frozen=True, slots=True)
class SoftBounceRule:
    limit: int
    window: timedelta


@dataclass(frozen=True, slots=True)
class Claim:
    """What a claim took (``sends``, now ``sending``) and what it refused, with the reason."""

    sends: list[Send]
    refused: dict[int, str]


@dataclass(frozen=True, slots=True)
class Recorded:
    """What storing one inbound message changed."""

    row_id: int | None
    duplicate: bool
    dispute: DisputeKind | None = None
    dispute_order: str | None = None
    disputes_closed: int = 0
    suppressed: tuple[Suppress, ...] = ()


@dataclass(frozen=True, slots=True)
class ConversationEntry:
    at: datetime
    direction: str
    """``in`` (to the seller) or ``out`` (the seller's or the worker's)."""
    who: str
    subject: str
    text: str
    label: str
    """The message kind, or ``campaign/step`` for the worker's sends."""
    detail: str


@dataclass(frozen=True, slots=True)
class Awaiting:
    order_id: str
    since: datetime
    buyer: str
    subject: str
    kind: str


@dataclass(frozen=True, slots=True)
class InboundRow:
    id: int
    received_at: datetime
    folder: str
    uid: int
    sender: str
    subject: str
    kind: MessageKind
    evidence: str
    order_id: str | None
    match_method: str | None
    match_detail: str
    parse_errors: tuple[str, ...]
    bounce_recipient: str | None = None
    authentication: str = ""
    withheld: str = ""


def _alembic_config(engine: Engine) -> Config:
    config = Config()
    config.set_main_option("script_location", str(files("worker") / "migrations"))
    # ConfigParser reads % as interpolation: a URL-quoted password would fail, echoing the URL.
    url = engine.url.render_as_string(hide_password=False).replace("%", "%%")
    config.set_main_option("sqlalchemy.url", url)
    return config


_URL_PASSWORD = re.compile(r"((?:^|\s|/)[^:/@\s]*:)[^@\s]*(@)")
"""``user:password@`` in a URL, even one too broken to parse."""
_DSN_PASSWORD = re.compile(r"(?i)\b(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)")
_DRIVER_PACKAGES = {
    "psycopg": "'psycopg[binary]'",
    "psycopg2": "psycopg2-binary",
    "pg8000": "pg8000",
    "asyncpg": "asyncpg",
    "pymysql": "PyMySQL",
    "MySQLdb": "mysqlclient",
}


def _secrets(url: URL | None) -> set[str]:
    """The password as drivers may echo it: raw or URL-quoted (too short ones would mask
    every such letter of the message; they are masked where they stand in a URL)."""
    password = str(url.password or "") if url is not None else ""
    forms = {password, quote(password, safe=""), quote_plus(password)}
    return {form for form in forms if len(form) >= 4}


def _masked(text: str, url: URL | None) -> str:
    """``text`` without the database password, wherever and however it is written."""
    for secret in _secrets(url):
        text = text.replace(secret, "***")
    text = _URL_PASSWORD.sub(r"\1***\2", text)
    return _DSN_PASSWORD.sub(r"\1***", text)


def _chain(exc: BaseException) -> list[BaseException]:
    """The error and all it carries: causes, contexts and a DBAPI error's ``orig``."""
    found: list[BaseException] = []
    todo: list[BaseException] = [exc]
    while todo:
        current = todo.pop()
        if any(current is seen for seen in found):
            continue
        found.append(current)
        linked = (current.__cause__, current.__context__, getattr(current, "orig", None))
        todo.extend(item for item in linked if isinstance(item, BaseException))
    return found


def _scrubbed(exc: BaseException, url: URL) -> BaseException:
    """``exc`` with the password masked in its chain's messages, to chain to a StoreError; a
    stand-in with the masked text if some message still shows it."""
    for item in _chain(exc):
        item.args = tuple(_masked(a, url) if isinstance(a, str) else a for a in item.args)
    if any(_masked(str(item), url) != str(item) for item in _chain(exc)):
        return DatabaseFailure(_masked(str(exc), url))
    return exc


class DatabaseFailure(Exception):
    """What the database driver said, with the password masked."""


def _engine(url: str) -> Engine | StoreError:
    """The engine, or the error to raise: made here and raised by the caller, outside this
    handler, so nothing chained to it echoes the URL."""
    shown = _masked(url, None)
    try:
        parsed = make_url(url)
        shown = parsed.render_as_string(hide_password=True)
        return create_engine(parsed)
    except ImportError as exc:
        return StoreError(_missing_driver(exc, parsed), where=shown)
    except (SQLAlchemyError, ValueError) as exc:
        detail = _masked(str(exc), None)
        return StoreError(f"cannot use this database URL: {detail}", where=shown)


def _missing_driver(exc: ImportError, url: URL) -> str:
    module = (exc.name or "").split(".")[0] or url.get_driver_name()
    package = _DRIVER_PACKAGES.get(module, module)
    if exc.name:
        text = f"the database driver {module} is not installed"
    else:
        text = f"the database driver {module} cannot be loaded ({_masked(str(exc), url)})"
    text += f": run `pip install {package}`"
    if url.get_backend_name() != "postgresql":
        return text
    if module != "psycopg":
        return (
            f"{text}; or use psycopg 3: `pip install 'psycopg[binary]'` and a URL starting "
            "postgresql+psycopg://"
        )
    if "+" not in url.drivername:
        return f"{text}, and write the URL as postgresql+psycopg://... to name that driver"
    return text


@contextlib.contextmanager
def _foreign_keys_deferred(connection: Connection) -> Iterator[None]:
    """SQLite's batch migrations copy and drop tables that others reference: with foreign
    keys enforced, dropping ``order`` under existing sends fails. Off during the migration,
    checked after it, on again before the connection goes back to the pool."""
    if connection.dialect.name != "sqlite":
        yield
        return
    connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
    try:
        yield
        broken = connection.exec_driver_sql("PRAGMA foreign_key_check").all()
        if broken:
            raise StoreError(f"the migration broke foreign keys: {broken[:5]}")
    finally:
        connection.exec_driver_sql("PRAGMA foreign_keys=ON")


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


class Store:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @classmethod
    def open(cls, url: str) -> Store:
        """Connect; for a SQLite file, create its folder so ``var/worker.db`` just works.

        Errors show the URL with its password masked, and say which driver to install.
        """
        engine = _engine(url)
        if isinstance(engine, StoreError):
            raise engine  # raised here, outside the handler, so no raw chain carries the URL
        if engine.dialect.name == "sqlite":
            database = engine.url.database
            if database and database != ":memory:":
                Path(database).parent.mkdir(parents=True, exist_ok=True)
            event.listen(engine, "connect", _sqlite_pragmas)
        return cls(engine)

    def close(self) -> None:
        self.engine.dispose()

    @contextlib.contextmanager
    def sole_worker(self) -> Iterator[None]:
        """While held, no other ``worker run`` may use this SQLite file (an OS lock beside
        it, released when the process ends however it ends). PostgreSQL takes several
        workers: its claims lock rows, so this holds nothing there."""
        database = self.engine.url.database
        if self.engine.dialect.name != "sqlite" or not database or database == ":memory:":
            yield
            return
        path = Path(f"{database}.lock")
        with path.open("a+", encoding="ascii") as lock:
            try:
                fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                lock.seek(0)
                holder = lock.read().strip() or "another process"
                raise StoreError(
                    f"another worker (pid {holder}) is running on this SQLite file; SQLite "
                    "takes one worker per database: stop that one, or use PostgreSQL for "
                    "several",
                    where=self.where,
                ) from None
            lock.seek(0)
            lock.truncate()
            lock.write(f"{os.getpid()}\n")
            lock.flush()
            yield

    @property
    def where(self) -> str:
        return self.engine.url.render_as_string(hide_password=True)

    # Schema ---------------------------------------------------------------------------------

    def upgrade(self, revision: str = "head") -> tuple[str | None, str | None]:
        """Apply pending migrations; returns (revision before, revision after)."""
        before = self.current_revision()
        config = _alembic_config(self.engine)
        with self._connect() as connection, _foreign_keys_deferred(connection):
            config.attributes["connection"] = connection
            command.upgrade(config, revision)
            connection.commit()
        return before, self.current_revision()

    def current_revision(self) -> str | None:
        with self._connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()

    def head_revision(self) -> str:
        head = ScriptDirectory.from_config(_alembic_config(self.engine)).get_current_head()
        assert head is not None
        return head

    def check_schema(self) -> None:
        """Refuse to work on a database that is not at the latest migration."""
        current, head = self.current_revision(), self.head_revision()
        if current != head:
            have = current or "empty"
            raise SchemaOutOfDate(
                f"the database is at revision {have}, the code needs {head}; "
                "run `worker db upgrade`",
                where=self.where,
            )

    @contextlib.contextmanager
    def _connect(self) -> Iterator[Connection]:
        """A connection for reads; database failures become a StoreError naming the database."""
        with self._database_errors(), self.engine.connect() as connection:
            yield connection

    @contextlib.contextmanager
    def _begin(self) -> Iterator[Connection]:
        """One transaction, committed on leaving the block, rolled back on an error."""
        with self._database_errors(), self.engine.begin() as connection:
            yield connection

    @contextlib.contextmanager
    def _database_errors(self) -> Iterator[None]:
        """A lost or refused connection becomes a StoreError naming the database. Drivers may
        echo the connection string: the password is masked in the message and in the chained
        errors, so neither the message, a log line nor a traceback shows it."""
        try:
            yield
        except DBAPIError as exc:
            if (
                not isinstance(exc, OperationalError | InterfaceError)
                and type(exc) is not DBAPIError
            ):
                raise  # a refused statement (IntegrityError...) is for the caller to handle
            detail = _masked(str(exc.orig), self.engine.url)
            cause = _scrubbed(exc, self.engine.url)
            raise StoreError(f"the database failed: {detail}", where=self.where) from cause

    # Orders and events ----------------------------------------------------------------------

    def upsert_orders(
        self, orders: Iterable[Order | OrderRow], now: datetime, *, force: bool = False
    ) -> UpsertCount:
        """Insert new orders; a known order takes a row only when the row is at least as new as
        what is stored, so an old export never undoes a newer one and a newer one can clear or
        correct any date. A row is as new as the feed's own last-updated time, else as the
        import (``now``, never before a time already stored: a file imported later is newer).
        Then each field the row's file has replaces the stored one; a plain Order has them all.
        The buyer's name, locale, country and zone follow the same rule, but an empty value
        never erases one (they come from all the buyer's orders). ``force`` takes every row
        whatever its age (a correction). One transaction, so a file that fails half-way leaves
        nothing behind."""
        inserted = updated = older = 0
        with self._begin() as tx:
            imported_at = _import_time(tx, now)
            for batch in _batches(orders):
                rows = [item if isinstance(item, OrderRow) else OrderRow(item) for item in batch]
                keys = [row.order.order_id for row in rows]
                pending = {
                    key: _Pending(_order_from(stored), stored["source_updated_at"])
                    for key, stored in _rows_by(tx, schema.order, "order_id", keys).items()
                }
                emails = list({row.order.buyer_email for row in rows})
                buyers = {
                    email: _Pending(_customer_from(stored), stored["source_updated_at"])
                    for email, stored in _rows_by(tx, schema.customer, "email", emails).items()
                }
                for row in rows:
                    stamp = imported_at
                    if row.updated_at is not None:
                        stamp = min(row.updated_at, imported_at)
                    taken = _take(pending, row.order.order_id, row, stamp, force, _merge_order)
                    if taken:
                        _take(buyers, row.order.buyer_email, row, stamp, force, _merge_customer)
                self._write_customers(tx, [b for b in buyers.values() if b.new or b.taken], now)
                news = [_order_values(p.value, now, p.stamp) for p in pending.values() if p.new]
                changed = [
                    {**_order_values(p.value, now, p.stamp), "key": key}
                    for key, p in pending.items()
                    if p.taken and not p.new
                ]
                if news:
                    tx.execute(schema.order.insert(), news)
                if changed:
                    tx.execute(_order_update(changed[0]), changed)
                inserted += len(news)
                updated += len(changed)
                older += sum(1 for p in pending.values() if not (p.new or p.taken))
        return UpsertCount(inserted, updated, older)

    def _write_customers(self, tx: Connection, buyers: list[_Pending], now: datetime) -> None:
        if not buyers:
            return
        table = schema.customer
        postgresql = self.engine.dialect.name == "postgresql"
        insert: Any = pg_insert(table) if postgresql else sqlite_insert(table)
        kept = ("name", "locale", "country", "timezone", "updated_at", "source_updated_at")
        statement = insert.on_conflict_do_update(
            index_elements=["email"], set_={k: insert.excluded[k] for k in kept}
        )
        tx.execute(statement, [_customer_values(b.value, now, b.stamp) for b in buyers])

    def upsert_disputes(self, disputes: Iterable[Dispute]) -> UpsertCount:
        """Keyed by (order, kind, opened_at); a later close date wins. One transaction."""
        inserted = updated = 0
        with self._begin() as tx:
            for item in disputes:
                self._require_order(tx, item.order_id)
                key = and_(
                    schema.dispute.c.order_id == item.order_id,
                    schema.dispute.c.kind == item.kind.value,
                    schema.dispute.c.opened_at == item.opened_at,
                )
                closed = tx.execute(select(schema.dispute.c.closed_at).where(key)).first()
                if closed is None:
                    tx.execute(schema.dispute.insert().values(_dispute_values(item)))
                    inserted += 1
                elif item.closed_at is not None and (
                    closed[0] is None or item.closed_at > closed[0]
                ):
                    tx.execute(schema.dispute.update().where(key).values(closed_at=item.closed_at))
                    updated += 1
        return UpsertCount(inserted, updated)

    def upsert_reviews(self, reviews: Iterable[Review]) -> UpsertCount:
        """One review per (order, source); the newer one wins. One transaction."""
        inserted = updated = 0
        with self._begin() as tx:
            for item in reviews:
                self._require_order(tx, item.order_id)
                key = and_(
                    schema.review.c.order_id == item.order_id,
                    schema.review.c.source == item.source,
                )
                known = tx.execute(select(schema.review.c.reviewed_at).where(key)).first()
                values = {
                    "order_id": item.order_id,
                    "rating": item.rating,
                    "reviewed_at": item.reviewed_at,
                    "source": item.source,
                }
                if known is None:
                    tx.execute(schema.review.insert().values(values))
                    inserted += 1
                elif item.reviewed_at >= known[0]:
                    tx.execute(schema.review.update().where(key).values(values))
                    updated += 1
        return UpsertCount(inserted, updated)

    def open_dispute(
        self, order_id: str, kind: DisputeKind, at: datetime, source: str = "manual"
    ) -> None:
        self.upsert_disputes([Dispute(order_id, kind, at, None, source)])

    def close_disputes(self, order_id: str, at: datetime) -> int:
        """Close every dispute of the order that is open at ``at``; returns how many."""
        with self._begin() as tx:
            self._require_order(tx, order_id)
            return _close_disputes(tx, order_id, at)

    def add_reply(self, reply: Reply) -> None:
        with self._begin() as tx:
            self._require_order(tx, reply.order_id)
            # the same reply recorded twice is still one reply
            _insert_ignoring_duplicate(
                tx,
                schema.reply.insert().values(
                    order_id=reply.order_id, replied_at=reply.replied_at, source=reply.source
                ),
            )

    def suppress(
        self, email: str, reason: SuppressionReason, at: datetime, detail: str = ""
    ) -> bool:
        """Add a suppression; False if the address was already suppressed (first reason stays)."""
        with self._begin() as tx:
            return _suppress(tx, Suppress(email, reason, detail), at)

    def _require_order(self, tx: Connection, order_id: str) -> None:
        if (
            tx.execute(
                select(schema.order.c.order_id).where(schema.order.c.order_id == order_id)
            ).first()
            is None
        ):
            raise UnknownOrder(
                f"no order {order_id!r}; import it first with `worker import orders`"
            )

    def has_order(self, order_id: str) -> bool:
        with self._connect() as connection:
            query = select(schema.order.c.order_id).where(schema.order.c.order_id == order_id)
            return connection.execute(query).first() is not None

    def order(self, order_id: str) -> Order:
        with self._connect() as connection:
            return self._order_in(connection, order_id)

    # Planning input -------------------------------------------------------------------------

    def histories(self) -> list[OrderHistory]:
        """Every order with what the planner needs; the buyer's disputes span all their orders."""
        with self._connect() as c:
            return list(_histories_of(c, None).values())

    # Send records ---------------------------------------------------------------------------

    def schedule(
        self, order_id: str, campaign: str, step: str, due_at: datetime, now: datetime
    ) -> Send:
        """The row that exists before any SMTP conversation; returns the existing one if any."""
        with self._begin() as tx:
            with contextlib.suppress(DuplicateSend):
                self._insert_send(tx, order_id, campaign, step, SendState.SCHEDULED, due_at, now)
            return self._existing_send(tx, order_id, campaign, step)

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
            for row in claimed:
                mid = message_id(row)
                tx.execute(table.update().where(table.c.id == row.id).values(message_id=mid))
        sends = sorted((replace(r, message_id=message_id(r)) for r in claimed), key=lambda s: s.id)
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

    def mark_failed(self, send_id: int, reason: str, now: datetime) -> bool:
        with self._begin() as tx:
            return self._move(tx, send_id, SendState.SENDING, SendState.FAILED, now, reason=reason)

    def mark_in_doubt(self, send_id: int, reason: str, now: datetime) -> bool:
        with self._begin() as tx:
            return self._move(
                tx, send_id, SendState.SENDING, SendState.IN_DOUBT, now, reason=reason
            )

    def unclaim(self, send_id: int, reason: str, now: datetime) -> bool:
        """Give back a claim whose message never reached the server (a stop before the data,
        a relay found down): scheduled again, the attempt not counted."""
        attempts = schema.send.c.attempts - 1
        return self._reschedule(
            send_id, now, reason=reason, attempts=attempts, not_before=None, claimed_by=None
        )

    def requeue(self, send_id: int, now: datetime) -> Send:
        """An operator found an ``in_doubt`` send not delivered: schedule it again."""
        reason = "requeued by an operator after in_doubt"
        return self._settle(send_id, SendState.SCHEDULED, now, reason=reason, not_before=None)

    def resolve(self, send_id: int, *, sent: bool, now: datetime) -> Send:
        """An operator read the relay's log: the ``in_doubt`` send went out, or never did."""
        if sent:
            return self._settle(send_id, SendState.SENT, now, reason="", sent_at=now)
        reason = "not sent (resolved by an operator after in_doubt)"
        return self._settle(send_id, SendState.FAILED, now, reason=reason)

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
        with self._begin() as tx:
            return self._move(tx, send_id, SendState.SENDING, SendState.SCHEDULED, now, **values)

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

    def suppressions(self) -> list[Suppression]:
        with self._connect() as c:
            return [
                _suppression_from(r)
                for r in c.execute(
                    select(schema.suppression).order_by(schema.suppression.c.created_at)
                ).mappings()
            ]

    # Inbound mail ---------------------------------------------------------------------------

    def checkpoint(self, mailbox: str, folder: str) -> Checkpoint | None:
        table = schema.mailbox_checkpoint
        query = select(table).where(table.c.mailbox == mailbox, table.c.folder == folder)
        with self._connect() as c:
            row = c.execute(query).mappings().first()
        if row is None:
            return None
        return Checkpoint(mailbox, folder, row["uidvalidity"], row["last_uid"])

    def save_checkpoint(self, checkpoint: Checkpoint, now: datetime) -> None:
        """Start a folder, or restart it after a UIDVALIDITY change, before its first message."""
        with self._begin() as tx:
            _put_checkpoint(tx, checkpoint, now, only_forward=False)

    def candidates(self, want: Wanted) -> Candidates:
        """Everything ``worker.thread.match`` may need for one message, in a few queries."""
        send, inbound, order = schema.send, schema.inbound_message, schema.order
        with self._connect() as c:
            threaded = inbound.c.order_id.is_not(None)
            of_counterpart = (
                _orders_where(c, order.c.buyer_email == want.counterpart)
                if want.counterpart
                else ()
            )
            return Candidates(
                sends_by_id={
                    ref.send_id: ref
                    for ref in _send_refs(c, send.c.id, want.return_path_sends).values()
                },
                sends_by_message_id=_send_refs(c, send.c.message_id, want.message_ids),
                sends_by_relay_id=_send_refs(c, send.c.relay_message_id, want.relay_ids),
                orders_by_message_id=_pairs(
                    c, inbound.c.message_id, inbound.c.order_id, want.message_ids, threaded
                ),
                orders_by_token=_pairs(c, order.c.reply_token, order.c.order_id, want.tokens),
                orders_by_number={
                    o.order_id: o
                    for o in (
                        _orders_where(c, order.c.order_id.in_(want.order_numbers))
                        if want.order_numbers
                        else ()
                    )
                },
                orders_of_counterpart=of_counterpart,
            )

    def record_inbound(
        self,
        message: InboundMessage,
        received: Received,
        verdict: Classification,
        threaded: Threaded,
        reactions: Reactions,
        soft_bounces: SoftBounceRule,
        now: datetime,
        authentication: str = "",
    ) -> Recorded:
        """Store the message, apply its reactions and advance the checkpoint, all or nothing.

        A message already stored (same Message-ID and bytes: a rescan after a UIDVALIDITY
        change, or the same mail in two folders) only advances the checkpoint.
        """
        with self._begin() as tx:
            row_id = _insert_inbound(
                tx, message, received, verdict, threaded, now, authentication, reactions.withheld
            )
            outcome = Recorded(row_id, duplicate=row_id is None)
            if row_id is not None:
                outcome = self._apply(tx, row_id, received, threaded, reactions, soft_bounces)
            checkpoint = Checkpoint(
                received.mailbox, received.folder, received.uidvalidity, received.uid
            )
            _put_checkpoint(tx, checkpoint, now, only_forward=True)
        return outcome

    def _apply(
        self,
        tx: Connection,
        row_id: int,
        received: Received,
        threaded: Threaded,
        reactions: Reactions,
        soft_bounces: SoftBounceRule,
    ) -> Recorded:
        at = received.received_at
        order_id = threaded.match.order_id if threaded.match else None
        source = reactions.dispute_source
        if reactions.hold_buyer:  # the sender's own latest order, never the one matched
            order_id, source = _latest_order_of(tx, reactions.hold_buyer), "mailbox:unthreaded"
        dispute = None
        if order_id is not None and reactions.open_dispute is not None:
            dispute = reactions.open_dispute
            _open_dispute(tx, order_id, dispute, at, source, row_id)
        closed = 0
        if order_id is not None and reactions.close_disputes is not None:
            closed = _close_noticed(tx, order_id, reactions.close_disputes, at)
        if order_id is not None and reactions.review:
            _add_review(tx, order_id, reactions.rating, at)
        if order_id is not None and reactions.reply:
            _insert_ignoring_duplicate(
                tx, schema.reply.insert().values(order_id=order_id, replied_at=at, source="mailbox")
            )
        suppressions = list(reactions.suppress)
        if reactions.soft_bounce:
            suppressions.extend(_soft_bounce_limit(tx, reactions.soft_bounce, at, soft_bounces))
        added = tuple(s for s in suppressions if _suppress(tx, s, at))
        return Recorded(row_id, False, dispute, order_id if dispute else None, closed, added)

    def conversation(self, order_id: str) -> list[ConversationEntry]:
        """Our sends and every message threaded to the order, oldest first."""
        inbound, send = schema.inbound_message, schema.send
        with self._connect() as c:
            self._require_order(c, order_id)
            # The Sent folder's copy of a campaign message is that send, listed once.
            messages = c.execute(
                select(*_READ).where(inbound.c.order_id == order_id, ~_campaign_copies())
            ).mappings()
            entries = [_entry_from_inbound(r) for r in messages]
            sends = c.execute(
                select(send).where(send.c.order_id == order_id, send.c.sent_at.is_not(None))
            ).mappings()
            entries.extend(_entry_from_send(r) for r in sends)
        return sorted(entries, key=lambda e: (e.at, e.direction))

    def awaiting(self, answered_before: datetime) -> list[Awaiting]:
        """Orders whose last word is the buyer's, written before ``answered_before``.

        The seller's answer is any message from the seller's own address threaded to the
        order, except the worker's own campaign mail: an automatic review request is not an
        answer to a buyer's question.
        """
        inbound = schema.inbound_message
        # An unsubscribe asks for silence, not an answer.
        spoken = [k.value for k in (MessageKind.COMPLAINT, MessageKind.REPLY, MessageKind.SELLER)]
        query = (
            select(
                inbound.c.order_id,
                inbound.c.received_at,
                inbound.c.sender,
                inbound.c.subject,
                inbound.c.kind,
            )
            .where(
                inbound.c.order_id.is_not(None),
                inbound.c.kind.in_(spoken),
                ~_campaign_copies(),
            )
            .order_by(inbound.c.received_at, inbound.c.id)
        )
        last: dict[str, RowMapping] = {}
        with self._connect() as c:
            for row in c.execute(query).mappings():
                last[row["order_id"]] = row
        waiting = [
            Awaiting(order_id, row["received_at"], row["sender"], row["subject"], row["kind"])
            for order_id, row in last.items()
            if row["kind"] != MessageKind.SELLER.value and row["received_at"] <= answered_before
        ]
        return sorted(waiting, key=lambda a: a.since)

    def inbound_messages(
        self, *, unmatched: bool = False, kinds: Iterable[MessageKind] | None = None
    ) -> list[InboundRow]:
        inbound = schema.inbound_message
        query = select(*_READ).order_by(inbound.c.received_at, inbound.c.id)
        if unmatched:
            query = query.where(inbound.c.order_id.is_(None))
        if kinds is not None:
            query = query.where(inbound.c.kind.in_([k.value for k in kinds]))
        with self._connect() as c:
            return [_inbound_row_from(r) for r in c.execute(query).mappings()]

    def assign_inbound(self, row_id: int, order_id: str, soft_bounces: SoftBounceRule) -> Recorded:
        """An agent files an unmatched message under an order; it then acts as if threaded."""
        inbound = schema.inbound_message
        with self._begin() as tx:
            order = self._order_in(tx, order_id)
            row = tx.execute(select(inbound).where(inbound.c.id == row_id)).mappings().first()
            if row is None:
                raise StoreError(f"no inbound message {row_id}; see `worker inbox --unmatched`")
            if row["order_id"] is not None:
                raise StoreError(f"message {row_id} is already filed under {row['order_id']}")
            matched = Match(order_id, MatchMethod.MANUAL, "filed by an agent")
            # Filing vouches for the order, not for the sender: an unproven notice still
            # closes nothing (an agent closes a dispute with `worker dispute close`).
            origin = Origin(row["sender"], None, row["authentication"] or "not authenticated")
            standing = Standing(row["sender"], origin, buyer=order.buyer_email)
            reactions = react(_verdict_from(row), matched, standing)
            tx.execute(
                inbound.update()
                .where(inbound.c.id == row_id)
                .values(
                    order_id=order_id,
                    match_method=matched.method.value,
                    match_detail=matched.detail,
                )
            )
            received = Received(
                row["mailbox"], row["folder"], row["uidvalidity"], row["uid"], row["received_at"]
            )
            return self._apply(tx, row_id, received, Threaded(matched), reactions, soft_bounces)

    def texts_sent_to(self, address: str, limit: int = 10) -> tuple[str, ...]:
        """The text of our latest messages to ``address``: what may come back quoted."""
        if not address:
            return ()
        send = schema.send
        query = (
            select(send.c.body_text)
            .where(send.c.recipient == address, send.c.body_text.is_not(None))
            .order_by(send.c.sent_at.desc())
            .limit(limit)
        )
        with self._connect() as c:
            return tuple(text for (text,) in c.execute(query))

    def _order_in(self, tx: Connection, order_id: str) -> Order:
        row = tx.execute(select(schema.order).where(schema.order.c.order_id == order_id))
        found = row.mappings().first()
        if found is None:
            raise UnknownOrder(
                f"no order {order_id!r}; import it first with `worker import orders`"
            )
        return _order_from(found)

    def raw_message(self, row_id: int) -> bytes:
        inbound = schema.inbound_message
        with self._connect() as c:
            raw = c.execute(select(inbound.c.raw).where(inbound.c.id == row_id)).scalar()
        if raw is None:
            raise StoreError(f"no inbound message {row_id}", where=self.where)
        return bytes(raw)

    def reply_token(self, order_id: str, new_token: Callable[[], str]) -> str:
        """The order's reply token, made with ``new_token`` the first time it is asked for."""
        order = schema.order
        with self._begin() as tx:
            self._require_order(tx, order_id)
            query = select(order.c.reply_token).where(order.c.order_id == order_id)
            token = tx.execute(query).scalar()
            if token is None:
                token = new_token()
                tx.execute(
                    order.update()
                    .where(order.c.order_id == order_id, order.c.reply_token.is_(None))
                    .values(reply_token=token)
                )
                token = tx.execute(query).scalar()
        assert isinstance(token, str)
        return token

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


# Inbound mail, inside a transaction -----------------------------------------------------------


_READ = [c for c in schema.inbound_message.c if c.name != "raw"]
"""Listing and threading never need a message's raw bytes; `raw_message` reads them."""


def _campaign_copies() -> Any:
    """Our own campaign mail as the Sent folder holds it: the send, not an agent's answer."""
    inbound, send = schema.inbound_message, schema.send
    ours = select(send.c.message_id).where(send.c.message_id.is_not(None))
    return and_(inbound.c.kind == MessageKind.SELLER.value, inbound.c.message_id.in_(ours))


def _close_disputes(tx: Connection, order_id: str, at: datetime, *only: Any) -> int:
    dispute = schema.dispute
    result = tx.execute(
        dispute.update()
        .where(
            dispute.c.order_id == order_id,
            dispute.c.closed_at.is_(None),
            dispute.c.opened_at <= at,
            *only,
        )
        .values(closed_at=at)
    )
    return int(result.rowcount)


def _close_noticed(tx: Connection, order_id: str, which: CloseDisputes, at: datetime) -> int:
    """A marketplace's closing notice closes only what that marketplace opened (or its
    export brought in) of that kind: never a dispute an agent or a complaint opened."""
    dispute, order = schema.dispute, schema.order
    sources = [f"marketplace:{which.marketplace}"]
    of_order = select(order.c.marketplace).where(order.c.order_id == order_id)
    if tx.execute(of_order).scalar() == which.marketplace:
        sources.append("import")
    kind = dispute.c.kind == which.kind.value
    return _close_disputes(tx, order_id, at, kind, dispute.c.source.in_(sources))


def _insert_ignoring_duplicate(tx: Connection, statement: Any) -> bool:
    try:
        with tx.begin_nested():
            tx.execute(statement)
    except IntegrityError:
        return False
    return True


def _suppress(tx: Connection, item: Suppress, at: datetime) -> bool:
    table = schema.suppression
    if tx.execute(select(table.c.email).where(table.c.email == item.email)).first():
        return False
    tx.execute(
        table.insert().values(
            email=item.email, reason=item.reason.value, detail=item.detail, created_at=at
        )
    )
    return True


def _pairs(
    c: Connection, key: Any, value: Any, wanted: Sequence[str], *where: Any
) -> dict[str, str]:
    """``{key: value}`` for rows whose key is wanted; no query when nothing is wanted."""
    if not wanted:
        return {}
    rows = c.execute(select(key, value).where(key.in_(wanted), *where))
    return {k: v for k, v in rows}


def _orders_where(c: Connection, condition: Any) -> tuple[Order, ...]:
    return tuple(
        _order_from(r) for r in c.execute(select(schema.order).where(condition)).mappings()
    )


def _send_refs(c: Connection, column: Any, values: Sequence[Any]) -> dict[Any, SendRef]:
    if not values:
        return {}
    send = schema.send
    query = select(column, send.c.order_id, send.c.id, send.c.recipient).where(column.in_(values))
    return {
        value: SendRef(order_id, send_id, to) for value, order_id, send_id, to in c.execute(query)
    }


def _histories_of(c: Connection, order_ids: set[str] | None) -> dict[str, OrderHistory]:
    """The planner's view of these orders (``None``: of every order), read in ``c``."""
    order = schema.order
    query = (
        select(order) if order_ids is None else select(order).where(order.c.order_id.in_(order_ids))
    )
    orders = [_order_from(r) for r in c.execute(query).mappings()]
    buyers = {o.buyer_email for o in orders}
    ids = {o.order_id for o in orders}

    def rows(table: Any, *where: Any) -> Iterator[RowMapping]:
        return iter(c.execute(select(table).where(*where) if where else select(table)).mappings())

    every = order_ids is None
    customers = {
        r["email"]: _customer_from(r)
        for r in rows(schema.customer, *(() if every else (schema.customer.c.email.in_(buyers),)))
    }
    buyer_of_dispute = select(order.c.buyer_email, schema.dispute).join(
        order, order.c.order_id == schema.dispute.c.order_id
    )
    if not every:
        buyer_of_dispute = buyer_of_dispute.where(order.c.buyer_email.in_(buyers))
    disputes: dict[str, list[Dispute]] = defaultdict(list)
    for r in c.execute(buyer_of_dispute).mappings():
        disputes[r["buyer_email"]].append(_dispute_from(r))
    reviews = _group(c, schema.review, _review_from, None if every else ids)
    replies = _group(c, schema.reply, _reply_from, None if every else ids)
    sends: dict[str, dict[tuple[str, str], Send]] = defaultdict(dict)
    for r in rows(schema.send, *(() if every else (schema.send.c.order_id.in_(ids),))):
        sends[r["order_id"]][(r["campaign"], r["step"])] = _send_from(r)
    suppressions = {
        r["email"]: _suppression_from(r)
        for r in rows(
            schema.suppression, *(() if every else (schema.suppression.c.email.in_(buyers),))
        )
    }
    return {
        o.order_id: OrderHistory(
            order=o,
            customer=customers.get(o.buyer_email, Customer(o.buyer_email)),
            disputes=tuple(disputes.get(o.buyer_email, ())),
            reviews=tuple(reviews.get(o.order_id, ())),
            replies=tuple(replies.get(o.order_id, ())),
            sends=sends.get(o.order_id, {}),
            suppression=suppressions.get(o.buyer_email),
        )
        for o in orders
    }


def _buyer_of_send() -> Any:
    """The claimed send's buyer address, read in the claiming statement itself."""
    order, send = schema.order, schema.send
    return select(order.c.buyer_email).where(order.c.order_id == send.c.order_id).scalar_subquery()


def _insert_inbound(
    tx: Connection,
    message: InboundMessage,
    received: Received,
    verdict: Classification,
    threaded: Threaded,
    now: datetime,
    authentication: str,
    withheld: str,
) -> int | None:
    """The new row's id, or ``None`` when the same message is already stored."""
    bounce = verdict.bounce
    match = threaded.match
    values = {
        "mailbox": received.mailbox,
        "folder": received.folder,
        "uidvalidity": received.uidvalidity,
        "uid": received.uid,
        "message_id": message.message_id or "",
        "content_hash": message.content_hash,
        "received_at": received.received_at,
        "dated_at": message.date,
        "sender": message.sender,
        "sender_name": message.sender_name,
        "recipients": json.dumps(list(message.recipients)),
        "subject": message.subject,
        "thread_ids": json.dumps(list(message.thread_ids)),
        "body_text": message.text,
        "raw": message.raw,
        "parse_errors": json.dumps(list(message.errors), ensure_ascii=False),
        "kind": verdict.kind.value,
        "evidence": verdict.evidence,
        "dispute_kind": verdict.dispute_kind.value if verdict.dispute_kind else None,
        "rating": verdict.rating,
        "marketplace": verdict.marketplace,
        "bounce_status": bounce.status if bounce else None,
        "bounce_recipient": bounce.recipient if bounce else None,
        "order_id": match.order_id if match else None,
        "send_id": threaded.send_id,
        "match_method": match.method.value if match else None,
        "match_detail": match.detail if match else "",
        "authentication": authentication,
        "withheld": withheld,
        "ingested_at": now,
    }
    table = schema.inbound_message
    identity = and_(
        table.c.message_id == values["message_id"],
        table.c.content_hash == values["content_hash"],
    )
    if tx.execute(select(table.c.id).where(identity)).first() is not None:
        return None
    # Parameters apart from the statement: SQLAlchemy compiles this 30-column insert once.
    return int(tx.execute(table.insert().returning(table.c.id), values).scalar_one())


def _put_checkpoint(
    tx: Connection, point: Checkpoint, now: datetime, *, only_forward: bool
) -> None:
    table = schema.mailbox_checkpoint
    key = and_(table.c.mailbox == point.mailbox, table.c.folder == point.folder)
    known = tx.execute(select(table).where(key)).mappings().first()
    values = {"uidvalidity": point.uidvalidity, "last_uid": point.last_uid, "updated_at": now}
    if known is None:
        tx.execute(table.insert(), {"mailbox": point.mailbox, "folder": point.folder, **values})
        return
    same_folder = known["uidvalidity"] == point.uidvalidity
    if only_forward and same_folder and known["last_uid"] >= point.last_uid:
        return
    tx.execute(table.update().where(key), values)


def _latest_order_of(tx: Connection, email: str) -> str | None:
    order = schema.order
    moment = func.coalesce(order.c.delivered_at, order.c.shipped_at, order.c.ordered_at)
    query = (
        select(order.c.order_id)
        .where(order.c.buyer_email == email)
        .order_by(moment.desc(), order.c.updated_at.desc())
        .limit(1)
    )
    found = tx.execute(query).scalar()
    return str(found) if found is not None else None


def _open_dispute(
    tx: Connection, order_id: str, kind: DisputeKind, at: datetime, source: str, row_id: int
) -> None:
    dispute = schema.dispute
    already = select(dispute.c.id).where(
        dispute.c.order_id == order_id, dispute.c.kind == kind.value, dispute.c.closed_at.is_(None)
    )
    if tx.execute(already).first() is not None:
        return  # the buyer writing twice about the same problem is one dispute
    _insert_ignoring_duplicate(
        tx,
        dispute.insert().values(
            order_id=order_id,
            kind=kind.value,
            opened_at=at,
            source=source,
            inbound_message_id=row_id,
        ),
    )


def _add_review(tx: Connection, order_id: str, rating: int | None, at: datetime) -> None:
    review = schema.review
    key = and_(review.c.order_id == order_id, review.c.source == "mailbox")
    if tx.execute(select(review.c.id).where(key)).first() is None:
        tx.execute(
            review.insert().values(
                order_id=order_id, rating=rating, reviewed_at=at, source="mailbox"
            )
        )
    elif rating is not None:  # a revised rating replaces the earlier one
        tx.execute(review.update().where(key).values(rating=rating, reviewed_at=at))


def _soft_bounce_limit(
    tx: Connection, email: str, at: datetime, rule: SoftBounceRule
) -> list[Suppress]:
    inbound = schema.inbound_message
    count = tx.execute(
        select(func.count()).where(
            inbound.c.bounce_recipient == email,
            inbound.c.kind == MessageKind.BOUNCE_SOFT.value,
            inbound.c.withheld == "",  # only reports tied to one of our sends count
            inbound.c.received_at > at - rule.window,
            inbound.c.received_at <= at,
        )
    ).scalar_one()
    if count < rule.limit:
        return []
    detail = f"{count} soft bounces within {rule.window.days} days"
    return [Suppress(email, SuppressionReason.SOFT_BOUNCES, detail)]


def _verdict_from(row: RowMapping) -> Classification:
    bounce = None
    if row["bounce_status"] is not None or row["bounce_recipient"] is not None:
        bounce = Bounce(row["bounce_status"] or "", row["bounce_recipient"] or "")
    return Classification(
        MessageKind(row["kind"]),
        row["evidence"],
        dispute_kind=DisputeKind(row["dispute_kind"]) if row["dispute_kind"] else None,
        rating=row["rating"],
        bounce=bounce,
        marketplace=row["marketplace"],
    )


def _entry_from_inbound(row: RowMapping) -> ConversationEntry:
    seller = row["kind"] == MessageKind.SELLER.value
    detail = f"matched by {row['match_method']}"
    if row["evidence"]:
        detail = f"{row['evidence']}; {detail}"
    if row["withheld"]:
        detail = f"{detail}; {row['withheld']}"
    return ConversationEntry(
        at=row["received_at"],
        direction="out" if seller else "in",
        who=row["sender"],
        subject=row["subject"],
        text=row["body_text"],
        label=row["kind"],
        detail=detail,
    )


def _entry_from_send(row: RowMapping) -> ConversationEntry:
    return ConversationEntry(
        at=row["sent_at"],
        direction="out",
        who="worker",
        subject="",
        text="",
        label=f"{row['campaign']}/{row['step']}",
        detail=f"{row['state']} {row['message_id'] or ''}".strip(),
    )


def _inbound_row_from(row: RowMapping) -> InboundRow:
    return InboundRow(
        id=row["id"],
        received_at=row["received_at"],
        folder=row["folder"],
        uid=row["uid"],
        sender=row["sender"],
        subject=row["subject"],
        kind=MessageKind(row["kind"]),
        evidence=row["evidence"],
        order_id=row["order_id"],
        match_method=row["match_method"],
        match_detail=row["match_detail"],
        parse_errors=tuple(json.loads(row["parse_errors"])),
        bounce_recipient=row["bounce_recipient"],
        authentication=row["authentication"],
        withheld=row["withheld"],
    )


# Row <-> value conversion ----------------------------------------------------------------------


def _batches(items: Iterable[Any]) -> Iterator[list[Any]]:
    iterator = iter(items)
    while batch := list(islice(iterator, BATCH_ROWS)):
        yield batch


def _rows_by(tx: Connection, table: Any, key: str, values: list[str]) -> dict[str, RowMapping]:
    rows = tx.execute(select(table).where(table.c[key].in_(values))).mappings()
    return {r[key]: r for r in rows}


def _group(
    connection: Connection,
    table: Any,
    convert: Callable[[RowMapping], Any],
    order_ids: set[str] | None = None,
) -> dict[str, list[Any]]:
    query = (
        select(table) if order_ids is None else select(table).where(table.c.order_id.in_(order_ids))
    )
    grouped: dict[str, list[Any]] = defaultdict(list)
    for row in connection.execute(query).mappings():
        grouped[row["order_id"]].append(convert(row))
    return grouped


@dataclass(frozen=True, slots=True)
class _Pending:
    """An order or a buyer during an import: its values, as of when they are true, whether it
    is new, and whether a row of the import was taken."""

    value: Any
    stamp: datetime | None
    new: bool = False
    taken: bool = False


def _take(
    pending: dict[str, _Pending],
    key: str,
    row: OrderRow,
    stamp: datetime,
    force: bool,
    merge: Callable[[Any, OrderRow], Any],
) -> bool:
    """Apply ``row`` if it is at least as new as what is held (or forced); False if older."""
    known = pending.get(key)
    if known is None:
        pending[key] = _Pending(merge(None, row), stamp, new=True, taken=True)
    elif force or known.stamp is None or stamp >= known.stamp:
        pending[key] = _Pending(merge(known.value, row), stamp, known.new, taken=True)
    else:
        return False
    return True


def _order_update(values: dict[str, Any]) -> Any:
    """An UPDATE for executemany: ``key`` names the order, the other values are set."""
    columns = [name for name in values if name not in ("order_id", "key")]
    return (
        schema.order.update()
        .where(schema.order.c.order_id == bindparam("key"))
        .values({name: bindparam(name) for name in columns})
    )


def _import_time(tx: Connection, now: datetime) -> datetime:
    """The import's own time, never before one already stored: the file imported later is the
    newer one even if the clock was set back in between."""
    stored: list[datetime | None] = [
        tx.execute(select(func.max(table.c.source_updated_at))).scalar()
        for table in (schema.order, schema.customer)
    ]
    return max([now, *(moment for moment in stored if moment is not None)])


def _merge_order(known: Order | None, row: OrderRow) -> Order:
    """The row is at least as new: every field its file has replaces the stored one, empty or
    not (so a wrong date can be cleared); fields its file has no column for stay as stored."""
    if known is None:
        return row.order
    changes = {name: getattr(row.order, name) for name in row.fields if name != "order_id"}
    return replace(known, **changes)


def _merge_customer(known: Customer | None, row: OrderRow) -> Customer:
    """What the row knows of its buyer fills in; an empty value never erases a known one."""
    order = row.order
    if known is None:
        return Customer(
            order.buyer_email, order.buyer_name, order.locale, order.country, order.timezone
        )
    return Customer(
        known.email,
        order.buyer_name or known.name,
        order.locale or known.locale,
        order.country or known.country,
        order.timezone or known.timezone,
    )


def _customer_values(customer: Customer, now: datetime, stamp: datetime | None) -> dict[str, Any]:
    return {
        "email": customer.email,
        "name": customer.name,
        "locale": customer.locale,
        "country": customer.country,
        "timezone": customer.timezone,
        "updated_at": now,
        "source_updated_at": stamp,
    }


def _order_values(order: Order, now: datetime, stamp: datetime | None) -> dict[str, Any]:
    return {
        "order_id": order.order_id,
        "marketplace": order.marketplace,
        "buyer_email": order.buyer_email,
        "buyer_name": order.buyer_name,
        "products": json.dumps(list(order.products), ensure_ascii=False),
        "locale": order.locale,
        "country": order.country,
        "ordered_at": order.ordered_at,
        "shipped_at": order.shipped_at,
        "delivered_at": order.delivered_at,
        "review_url": order.review_url,
        "updated_at": now,
        "source_updated_at": stamp,
    }


def _order_from(row: RowMapping) -> Order:
    return Order(
        order_id=row["order_id"],
        marketplace=row["marketplace"],
        buyer_email=row["buyer_email"],
        buyer_name=row["buyer_name"],
        products=tuple(json.loads(row["products"])),
        locale=row["locale"],
        country=row["country"],
        ordered_at=row["ordered_at"],
        shipped_at=row["shipped_at"],
        delivered_at=row["delivered_at"],
        review_url=row["review_url"],
    )


def _customer_from(row: RowMapping) -> Customer:
    return Customer(row["email"], row["name"], row["locale"], row["country"], row["timezone"])


def _dispute_values(item: Dispute) -> dict[str, Any]:
    return {
        "order_id": item.order_id,
        "kind": item.kind.value,
        "opened_at": item.opened_at,
        "closed_at": item.closed_at,
        "source": item.source,
    }


def _dispute_from(row: RowMapping) -> Dispute:
    return Dispute(
        row["order_id"], DisputeKind(row["kind"]), row["opened_at"], row["closed_at"], row["source"]
    )


def _review_from(row: RowMapping) -> Review:
    return Review(row["order_id"], row["rating"], row["reviewed_at"], row["source"])


def _reply_from(row: RowMapping) -> Reply:
    return Reply(row["order_id"], row["replied_at"], row["source"])


def _suppression_from(row: RowMapping) -> Suppression:
    return Suppression(
        row["email"], SuppressionReason(row["reason"]), row["created_at"], row["detail"]
    )


def _send_from(row: RowMapping) -> Send:
    return Send(
        id=row["id"],
        order_id=row["order_id"],
        campaign=row["campaign"],
        step=row["step"],
        state=SendState(row["state"]),
        due_at=row["due_at"],
        reason=row["reason"],
        message_id=row["message_id"],
        attempts=row["attempts"],
        not_before=row["not_before"],
        claimed_at=row["claimed_at"],
        sent_at=row["sent_at"],
    )
