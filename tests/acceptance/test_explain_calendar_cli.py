"""`worker plan --from --days` and `worker explain` in subprocesses, against what `worker run`
then sends to the `worker sink` on the same simulated day."""

from __future__ import annotations

import email
import email.policy
import subprocess
from collections import Counter
from email.message import EmailMessage
from pathlib import Path

from tests.acceptance.test_cli import DUE, Workdir, sink, workdir

__all__ = ["sink", "workdir"]  # fixtures, used by name


def _received(maildir: Path) -> list[EmailMessage]:
    parse = email.message_from_bytes
    return [
        parse(p.read_bytes(), policy=email.policy.default)
        for p in sorted((maildir / "new").glob("*"))
    ]


def _calendar_sent(output: str, day: str) -> Counter[str]:
    counts: Counter[str] = Counter()
    for line in output.splitlines():
        fields = line.split()
        if len(fields) >= 4 and fields[0] == day and fields[2] == "send":
            counts[fields[1]] += int(fields[3])
    return counts


def test_calendar_and_explain_agree_with_the_daemon(
    workdir: Workdir, sink: subprocess.Popen[str]
) -> None:
    workdir.ready()
    calendar = workdir.run("plan", "--from", "2026-03-09", "--days", "1", "--orders", check=True)
    before = workdir.run("explain", "SHOP-1", "--at", "2026-03-08T12:00:00Z", check=True)

    workdir.run("run", "--once", "--now", DUE, check=True)

    received = _received(workdir.path / "var/sink")
    arrived = Counter(f"{m['X-Worker-Campaign']}/{m['X-Worker-Step']}" for m in received)
    assert sum(arrived.values()) == 3, calendar.stdout
    assert _calendar_sent(calendar.stdout, "2026-03-09") == arrived, calendar.stdout
    assert "orders: " in calendar.stdout and "SHOP-1" in calendar.stdout
    assert "nothing written" in calendar.stdout

    assert "check-in" in before.stdout and "waiting until 2026-03-09" in before.stdout
    after = workdir.run("explain", "SHOP-1", "--at", "2026-03-09T13:00:00Z", check=True)
    ann = next(m for m in received if m["X-Worker-Order"] == "SHOP-1")
    check_in = next(line for line in after.stdout.splitlines() if " check-in " in line)
    assert f"with Message-ID {ann['Message-ID']}" in check_in, after.stdout
    waiting = [line for line in after.stdout.splitlines() if "waiting" in line]
    assert waiting and all(" check-in " not in line for line in waiting)


def test_plan_at_still_prints_a_snapshot(workdir: Workdir) -> None:
    workdir.ready()
    done = workdir.run("plan", "--at", DUE, check=True)
    assert done.stdout.startswith("plan at 2026-03-09T12:00:00+00:00")


def test_explain_refuses_an_unknown_order(workdir: Workdir) -> None:
    workdir.ready()
    done = workdir.run("explain", "NO-SUCH\x1b[2J")
    assert done.returncode == 1
    assert "is not stored" in done.stderr and "\x1b" not in done.stderr
    assert "Traceback" not in done.stderr
