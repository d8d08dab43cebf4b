"""`worker pause`, `resume`, `pauses` and `report` as an operator runs them: a pause stored
by one command holds the next `worker run`, and the report says when a hold-out is too small."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.acceptance.test_cli import DUE, Workdir, maildir_count, sink, workdir

__all__ = ["sink", "workdir"]  # fixtures


def test_a_pause_holds_the_next_run_until_resumed(
    workdir: Workdir, sink: subprocess.Popen[str]
) -> None:
    workdir.ready()
    paused = workdir.run("pause", "--by", "ops", "--reason", "relay incident", check=True)
    assert "everything paused since" in paused.stdout and "by ops: relay incident" in paused.stdout
    assert '"event": "pause.added"' in paused.stderr and '"by": "ops"' in paused.stderr
    listed = workdir.run("pauses", check=True).stdout
    assert listed == workdir.run("pause", "--list", check=True).stdout
    assert listed.startswith("everything paused since") and "relay incident" in listed

    held = workdir.run("run", "--once", "--now", DUE, check=True)
    assert "waiting: paused 3" in held.stdout
    assert maildir_count(workdir.path / "var/sink") == 0

    resumed = workdir.run("resume", "--by", "lee", check=True)
    assert '"event": "pause.lifted"' in resumed.stderr and '"by": "lee"' in resumed.stderr
    assert "resumed everything (paused by ops)" in resumed.stdout
    assert workdir.run("pauses", check=True).stdout == "nothing is paused\n"
    sent = workdir.run("run", "--once", "--now", DUE, check=True)
    assert "sent 3" in sent.stdout
    assert maildir_count(workdir.path / "var/sink") == 3


def test_a_marketplace_pause_and_bad_scopes(workdir: Workdir) -> None:
    workdir.ready()
    done = workdir.run("pause", "--marketplace", "ebay", check=True)
    assert "marketplace ebay paused" in done.stdout
    assert "worker resume --marketplace ebay" in done.stdout
    unknown = workdir.run("pause", "--campaign", "no-such-campaign")
    assert unknown.returncode == 1 and "no campaign named 'no-such-campaign'" in unknown.stderr
    both = workdir.run("pause", "--campaign", "x", "--marketplace", "ebay")
    assert both.returncode == 2 and "not allowed with" in both.stderr
    hostile = workdir.run("pause", "--reason", "stop\x1b]0;owned\x07")
    assert hostile.returncode == 2 and "control characters" in hostile.stderr
    assert "\x1b" not in hostile.stderr


def _holdout(path: Path) -> None:
    campaign = path / "campaigns" / "review-follow-up.yaml"
    text = campaign.read_text(encoding="utf-8")
    campaign.write_text(
        text.replace("    template: check_in\n", "    template: check_in\n    holdout: 50%\n"),
        encoding="utf-8",
    )


def test_the_report_says_when_the_hold_out_is_too_small(
    workdir: Workdir, sink: subprocess.Popen[str]
) -> None:
    _holdout(workdir.path)
    workdir.ready()
    workdir.run("run", "--once", "--now", DUE, check=True)
    sends = workdir.run("sends", check=True).stdout
    # The sample is a hash of campaign, step and order: SHOP-1 and the eBay order are in it.
    assert sends.count("holdout") == 2 and maildir_count(workdir.path / "var/sink") == 1
    report = workdir.run("report", "--now", "2026-03-20T00:00:00Z", check=True).stdout
    [sent_line] = [line for line in report.splitlines() if "review-follow-up/check-in" in line]
    assert sent_line.split()[1:3] == ["sent", "1"]
    assert "hold-out too small to compare: 2 orders, fewer than 30" in report
