"""The store: orders, events and the send records, on SQLite or PostgreSQL.

Every method is one short transaction. State changes of a send are guarded by the state they
expect (``WHERE state = 'sending'``), so two workers can never both move the same row, and the
claim is one ``UPDATE ... WHERE id IN (SELECT ... FOR UPDATE SKIP LOCKED) RETURNING`` that is
committed before the SMTP conversation begins.

``Store`` is the one entry point: it opens the database, runs the migrations and holds the
transactions, and takes its methods from one mixin per kind of record it keeps, so each module
stays readable on its own: worker/store_orders.py (orders, customers, disputes, reviews,
replies, suppressions, imports), worker/store_planning.py (which buyers a pass plans, their
histories, what a pass writes back), worker/store_sends.py (the send records) and
worker/store_inbound.py (inbound mail). The names other modules import from here are
re-exported from those modules.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
from collections.abc import Iterator
from importlib.resources import files
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import URL, Connection, Engine, create_engine, event, make_url
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError, SQLAlchemyError

from worker.errors import SchemaOutOfDate, StoreConflict, StoreError
from worker.store_disputes import DisputeRow, DisputesMixin
from worker.store_figures import FiguresMixin
from worker.store_inbound import (
    Awaiting,
    Checkpoint,
    ConversationEntry,
    InboundMixin,
    InboundRow,
    Recorded,
    SoftBounceRule,
)
from worker.store_leases import MailboxLeasesMixin
from worker.store_operator import OperatorMixin
from worker.store_orders import BATCH_ROWS, OrdersMixin, UpsertCount
from worker.store_pauses import PausesMixin
from worker.store_planning import BUYER_BATCH, DueCursor, Planned, PlanningMixin
from worker.store_report import ReportMixin
from worker.store_sends import STALE_CLAIM_REASON, Claim, SendsMixin, SentRecord
from worker.store_status import StatusMixin

__all__ = [
    "BATCH_ROWS",
    "BUYER_BATCH",
    "STALE_CLAIM_REASON",
    "Awaiting",
    "Checkpoint",
    "Claim",
    "ConversationEntry",
    "DatabaseFailure",
    "DisputeRow",
    "DueCursor",
    "InboundRow",
    "Planned",
    "Recorded",
    "SentRecord",
    "SoftBounceRule",
    "Store",
    "UpsertCount",
]


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
_CONFLICTS = frozenset({"40P01", "40001"})
"""PostgreSQL's deadlock and serialization failure: the transaction may simply be run again."""
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


class Store(
    OrdersMixin,
    PlanningMixin,
    SendsMixin,
    InboundMixin,
    MailboxLeasesMixin,
    DisputesMixin,
    StatusMixin,
    OperatorMixin,
    PausesMixin,
    ReportMixin,
    FiguresMixin,
):
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
    def _begin_write(self) -> Iterator[Connection]:
        """One transaction that holds the write lock from its first statement: on SQLite,
        ``BEGIN IMMEDIATE``, so what it reads cannot change before it writes (PostgreSQL
        locks the rows it reads ``FOR UPDATE`` instead)."""
        with self._database_errors(), self.engine.begin() as connection:
            if connection.dialect.name == "sqlite":
                connection.exec_driver_sql("BEGIN IMMEDIATE")
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
            detail = " ".join(_masked(str(exc.orig), self.engine.url).split())  # one line
            cause = _scrubbed(exc, self.engine.url)
            if getattr(exc.orig, "sqlstate", None) in _CONFLICTS:
                raise StoreConflict(f"the database failed: {detail}", where=self.where) from cause
            raise StoreError(f"the database failed: {detail}", where=self.where) from cause
