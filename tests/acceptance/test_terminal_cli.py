"""What `worker thread`, `worker inbox` and the console log show of an attacker's mail, through
the real command line and a real Dovecot: placeholders, never terminal commands."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from tests.acceptance.test_inbox_cli import _seller
from tests.dovecot import Dovecot, User
from tests.unit.test_terminal import ATTACK, SHOWN, shown_only


def _mail(subject: str, sender: str, body: str) -> bytes:
    return (
        f"From: {sender}\r\nTo: help@shop.example\r\nSubject: {subject}\r\n"
        "Message-ID: <attack@buyer.example>\r\nDate: Mon, 16 Nov 2026 09:00:00 +0000\r\n"
        "Content-Type: text/plain; charset=x-\x1b[2J\r\n\r\n"
        f"{body}\r\n"
    ).encode()


def test_thread_inbox_and_logs_show_an_attack_as_text(
    tmp_path: Path, dovecot: Dovecot, mailbox_user: User
) -> None:
    work = _seller(tmp_path, dovecot, mailbox_user)
    raw = _mail(f"Question {ATTACK}", f'"{ATTACK}" <ann@buyer.example>', f"Hello {ATTACK}\nBye")
    dovecot.append(mailbox_user, "INBOX", raw)
    work.env["WORKER_LOG_FORMAT"] = "console"
    ingested = work.run("ingest", "--once", check=True)
    assert "1 stored" in ingested.stdout and shown_only(ingested.stderr)
    later = (datetime.now(UTC) + timedelta(hours=25)).isoformat()
    outputs = {
        "thread": work.run("thread", "SHOP-2001", check=True).stdout,
        "thread --full": work.run("thread", "SHOP-2001", "--full", check=True).stdout,
        "inbox": work.run("inbox", check=True).stdout,
        "inbox --awaiting": work.run("inbox", "--awaiting", "--now", later, check=True).stdout,
    }
    for command, out in outputs.items():
        assert shown_only(out), (command, out)
        assert SHOWN in out, (command, out)
    assert f"Hello {SHOWN}\n    Bye" in outputs["thread --full"]
    assert "parse errors: part 0 (text/plain): unknown charset 'x-\\x1b[2j'" in outputs["inbox"]
