"""Shared fixtures: real databases (SQLite files and a throwaway PostgreSQL), a real SMTP sink
and a real Dovecot on loopback."""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import pytest

from tests.dovecot import Dovecot, DovecotUnavailable, User
from tests.postgres import Postgres, PostgresUnavailable
from worker.cli import build_parser
from worker.config import Settings
from worker.sink import Sink, SinkOptions
from worker.store import Store

ROOT = Path(__file__).resolve().parent.parent

DATABASES = ["sqlite", "postgresql"]
"""Every store-backed test runs on each: test ids end in ``[sqlite]`` or ``[postgresql]``."""


def _unavailable(service: str, reason: str) -> NoReturn:
    """CI must run the tests that need a server; a developer without it is told why they were
    skipped."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{service}: {reason}", pytrace=False)
    pytest.skip(f"{service}: {reason}")


# Databases: a fresh one per test, SQLite or PostgreSQL ----------------------------------------
#
# Migrating costs more than copying: each kind is migrated once per session into a template,
# and every test gets a copy (a file copy; CREATE DATABASE ... TEMPLATE), dropped after it.


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """One throwaway cluster for the session, started by the first test that needs it."""
    try:
        import psycopg  # noqa: F401
    except ImportError as error:
        _unavailable("postgresql", f"the psycopg driver is missing ({error}): pip install -e .")
    try:
        server = Postgres()
    except (PostgresUnavailable, OSError) as error:
        _unavailable("postgresql", str(error))
    try:
        server.start()
    except (PostgresUnavailable, OSError, subprocess.SubprocessError) as error:
        server.remove()
        _unavailable("postgresql", str(error))
    yield server
    server.remove()


@pytest.fixture(scope="session")
def postgres_template(postgres: Postgres) -> str:
    """A database migrated to head that no one connects to: the template of each test's own."""
    name = postgres.create_database(name="worker_template")
    template = Store.open(postgres.url(name))
    try:
        template.upgrade()
    finally:
        template.close()
    postgres.freeze_template(name)
    return name


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file migrated to head, closed (its WAL folded in): copied for each test."""
    path = tmp_path_factory.mktemp("sqlite-template") / "worker.db"
    template = Store.open(f"sqlite:///{path}")
    try:
        template.upgrade()
    finally:
        template.close()
    return path


def _postgres_database(request: pytest.FixtureRequest, migrated: bool) -> Iterator[str]:
    server: Postgres = request.getfixturevalue("postgres")
    template = request.getfixturevalue("postgres_template") if migrated else "template0"
    name = server.create_database(template)
    yield server.url(name)
    server.drop_database(name)


def _fresh_database(
    request: pytest.FixtureRequest, tmp_path: Path, migrated: bool
) -> Iterator[str]:
    """The URL of a database of the test's own, of the kind the test's parameter names."""
    if request.param == "postgresql":
        yield from _postgres_database(request, migrated)
        return
    path = tmp_path / "var" / "worker.db"
    path.parent.mkdir(parents=True, exist_ok=True)
    if migrated:
        shutil.copyfile(request.getfixturevalue("sqlite_template"), path)
    yield f"sqlite:///{path}"


@pytest.fixture(params=DATABASES)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database migrated to head, with no rows: a SQLite file or a PostgreSQL database."""
    yield from _fresh_database(request, tmp_path, migrated=True)


@pytest.fixture(params=DATABASES)
def empty_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database with no tables at all (no migration ran), of either kind."""
    yield from _fresh_database(request, tmp_path, migrated=False)


@pytest.fixture
def postgresql_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """A migrated PostgreSQL database of the test's own, for what only PostgreSQL does
    (row locks held by several workers at once)."""
    yield from _postgres_database(request, migrated=True)


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    """The store on a migrated database of the test's own, on SQLite and on PostgreSQL."""
    opened = Store.open(database_url)
    yield opened
    opened.close()


@pytest.fixture
async def sink(tmp_path: Path) -> AsyncIterator[Sink]:
    async with Sink(SinkOptions(port=0, maildir=tmp_path / "sink")) as running:
        yield running


def settings_for(store: Store, smtp_port: int, **changes: object) -> Settings:
    """The shipped campaigns and templates, the test's database and SMTP server."""
    data: dict[str, object] = {
        "database_url": store.engine.url.render_as_string(hide_password=False),
        "from": "Kettle & Co <service@shop.example>",
        "reply_to": "Kettle & Co service <help@shop.example>",
        "seller": {"name": "Kettle & Co", "signature": "Anna, customer service"},
        "smtp": {
            "host": "127.0.0.1",
            "port": smtp_port,
            "tls": "none",
            "attempts": 2,
            "backoff_initial_s": 0,
            "backoff_max_s": 0,
            "timeout_s": 5,
            "message_deadline_s": 20,
        },
        "campaigns_dir": str(ROOT / "campaigns"),
        "templates_dir": str(ROOT / "templates"),
        "http": {"port": 0},  # tests run side by side: any free port
        **changes,
    }
    return Settings.model_validate(data)


# `worker import` as the command line runs it --------------------------------------------


@dataclass(frozen=True)
class Imported:
    code: int
    out: str
    err: str


Importer = Callable[..., Imported]


def opened_stores(monkeypatch: pytest.MonkeyPatch) -> list[Store]:
    """Every store a command handler opens from here on, for the test to close after it, as
    a process would close its connections on exit."""
    opened: list[Store] = []
    open_store = Store.open

    def tracked(url: str) -> Store:
        opened.append(open_store(url))
        return opened[-1]

    monkeypatch.setattr(Store, "open", tracked)
    return opened


@pytest.fixture
def run_import(
    store: Store, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> Importer:
    """``worker import ARGS...`` as the command line parses and runs it (WorkerErrors raise).

    The handler leaves the store it opened to the end of the process; here the store is
    closed when the handler returns, as a process would close its connections on exit.
    """
    settings = settings_for(store, 8025)
    opened = opened_stores(monkeypatch)

    def run(*args: str | Path) -> Imported:
        parsed = build_parser().parse_args(["import", *map(str, args)])
        try:
            code = parsed.handler(parsed, settings)
        finally:
            while opened:
                opened.pop().close()
        out, err = capsys.readouterr()
        return Imported(code, out, err)

    return run


# Dovecot: one throwaway IMAP server for the session, a fresh mailbox per test ---------------

_users = itertools.count(1)


def _started() -> Dovecot:
    try:
        server = Dovecot()
        server.start()
    except (DovecotUnavailable, OSError, subprocess.CalledProcessError) as error:
        _unavailable("dovecot", str(error))
    return server


@pytest.fixture(scope="session")
def dovecot() -> Iterator[Dovecot]:
    server = _started()
    yield server
    server.remove()


@pytest.fixture
def private_dovecot() -> Iterator[Dovecot]:
    """A server of the test's own, for tests that stop it."""
    server = _started()
    yield server
    server.remove()


@pytest.fixture
def mailbox_user(dovecot: Dovecot) -> User:
    """A new user with an empty mailbox, so tests never see each other's mail."""
    if not dovecot.running:
        dovecot.start()
    return dovecot.add_user(f"buyer{next(_users)}-{os.getpid()}", "s3cret-pass")
