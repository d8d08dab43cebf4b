"""The rehearsal script (bench/rehearsal.py), small enough for the suite, must pass every check."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import cast

import pytest

from tests.postgres import Postgres

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "rehearsal.py"

Main = Callable[[Sequence[str]], int]


@pytest.fixture
def rehearsal_main(monkeypatch: pytest.MonkeyPatch) -> Main:
    """bench/ is not a package: load the script as a module, registered as dataclasses need."""
    spec = importlib.util.spec_from_file_location("rehearsal", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    return cast(Main, module.main)


SMALL = ["--orders", "120", "--disputes", "8", "--reviews", "15", "--days", "7"]
SMALL += ["--tail-days", "50", "--seed", "7"]
"""One `worker` process costs ~1-2 s on 2 cores, so the season is short: a week of deliveries
and 50 days after it, enough for check-ins, requests, reminders, thank-yous and disputes."""


def _assert_passed(code: int, report: str, errors: str) -> None:
    assert code == 0, report + errors[-4000:]
    assert "result: PASSED" in report
    for step in ("check-in", "review-request", "review-reminder", "thank-you"):
        assert f"/{step}" in report, f"the season was too short to send any {step}:\n{report}"


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_small_rehearsal_passes_every_check(
    rehearsal_main: Main, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = rehearsal_main([*SMALL, "--workdir", str(tmp_path / "shop")])

    report, errors = capsys.readouterr()
    _assert_passed(code, report, errors)


@pytest.fixture
def empty_postgres_url(postgres: Postgres) -> Iterator[str]:
    """A new PostgreSQL database without tables, as the rehearsal requires."""
    name = postgres.create_database()
    yield postgres.url(name)
    postgres.drop_database(name)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_small_rehearsal_with_three_workers_on_postgresql_passes_every_check(
    rehearsal_main: Main,
    tmp_path: Path,
    empty_postgres_url: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Each pass is three `worker run --once` at once on one database: the claims, not the
    single process, keep every message to once."""
    args = [*SMALL, "--workdir", str(tmp_path / "shop")]
    args += ["--database-url", empty_postgres_url, "--workers", "3"]

    code = rehearsal_main(args)

    report, errors = capsys.readouterr()
    _assert_passed(code, report, errors)
    assert "3 workers each on postgresql+psycopg://" in report
