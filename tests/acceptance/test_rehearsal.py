"""The rehearsal script (bench/rehearsal.py), small enough for the suite, must pass every check."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import cast

import pytest

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


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_small_rehearsal_passes_every_check(
    rehearsal_main: Main, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # One `worker` process costs ~2 s on 2 cores, so the season is short: a week of deliveries
    # and 50 days after it, enough for check-ins, requests, reminders, thank-yous and disputes.
    args = ["--orders", "120", "--disputes", "8", "--reviews", "15", "--days", "7"]
    args += ["--tail-days", "50", "--seed", "7", "--workdir", str(tmp_path / "shop")]

    code = rehearsal_main(args)

    report = capsys.readouterr().out
    assert code == 0, report
    assert "result: PASSED" in report
    for step in ("check-in", "review-request", "review-reminder", "thank-you"):
        assert f"/{step}" in report, f"the season was too short to send any {step}:\n{report}"
