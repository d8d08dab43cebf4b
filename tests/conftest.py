"""Shared fixtures: real SQLite files, a real SMTP sink and a real Dovecot on loopback."""

from __future__ import annotations

import itertools
import os
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import NoReturn

import pytest

from tests.dovecot import Dovecot, DovecotUnavailable, User
from worker.config import Settings
from worker.sink import Sink, SinkOptions
from worker.store import Store

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    """A migrated SQLite file; or, with WORKER_TEST_DATABASE_URL, that database emptied first."""
    url = (
        os.environ.get("WORKER_TEST_DATABASE_URL") or f"sqlite:///{tmp_path / 'var' / 'worker.db'}"
    )
    opened = Store.open(url)
    if opened.engine.dialect.name == "postgresql":
        with opened.engine.begin() as connection:
            connection.exec_driver_sql("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
    opened.upgrade()
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
        **changes,
    }
    return Settings.model_validate(data)


# Dovecot: one throwaway IMAP server for the session, a fresh mailbox per test ---------------

_users = itertools.count(1)


def _unavailable(reason: str) -> NoReturn:
    """CI must run the IMAP tests; a developer without Dovecot is told why they were skipped."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"dovecot: {reason}", pytrace=False)
    pytest.skip(f"dovecot: {reason}")


def _started() -> Dovecot:
    try:
        server = Dovecot()
        server.start()
    except (DovecotUnavailable, OSError, subprocess.CalledProcessError) as error:
        _unavailable(str(error))
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
