"""Shared fixtures: real SQLite files, a real SMTP sink on loopback, settings pointing at both."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

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
