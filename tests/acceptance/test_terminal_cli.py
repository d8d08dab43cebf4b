"""What `worker thread`, `worker inbox` and the console log show of an attacker's mail, through
the real command line and a real Dovecot: placeholders, never terminal commands."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from tests.acceptance.test_cli import Workdir, _free_port
from tests.conftest import ROOT
from tests.dovecot import Dovecot, User
from tests.unit.test_terminal import ATTACK, SHOWN, shown_only


def _mail(subject: str, sender: str, body: str) -> bytes:
    return (
        f"From: {sender}\r\nTo: help@shop.example\r\nSubject: {subject}\r\n"
        "Message-ID: <attack@buyer.example>\r\nDate: Mon, 16 Nov 2026 09:00:00 +0000\r\n"
        "Content-Type: text/plain; charset=x-\x1b[2J\r\n\r\n"
        f"{body}\r\n"
    ).encode()


def _seller(tmp_path: Path, dovecot: Dovecot, user: User) -> Workdir:
    work = Workdir(tmp_path, _free_port())
    work.env.update(
        WORKER_IMAP_HOST="127.0.0.1",
        WORKER_IMAP_PORT=str(dovecot.port),
        WORKER_IMAP_TLS="none",
        WORKER_IMAP_USERNAME=user.name,
        WORKER_IMAP_PASSWORD=user.password,
        WORKER_INBOX_RULES_FILE=str(ROOT / "config" / "mail-rules.yaml"),
    )
    work.run("db", "upgrade", check=True)
    delivered = (datetime.now(UTC) - timedelta(days=10)).strftime("%Y-%m-%dT%H:%M:%SZ")
    (tmp_path / "orders.csv").write_text(
        "order_id,marketplace,buyer_email,buyer_name,product,locale,country,delivered_at\n"
        f"SHOP-3001,shop,ann@buyer.example,Ann Smith,Glass kettle,en,GB,{delivered}\n",
        encoding="utf-8",
    )
    work.run("import", "orders", "orders.csv", check=True)
    return work


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
        "thread": work.run("thread", "SHOP-3001", check=True).stdout,
        "thread --full": work.run("thread", "SHOP-3001", "--full", check=True).stdout,
        "inbox": work.run("inbox", check=True).stdout,
        "inbox --awaiting": work.run("inbox", "--awaiting", "--now", later, check=True).stdout,
    }
    for command, out in outputs.items():
        assert shown_only(out), (command, out)
        assert SHOWN in out, (command, out)
    assert f"Hello {SHOWN}\n    Bye" in outputs["thread --full"]
    assert "parse errors: part 0 (text/plain): unknown charset 'x-\\x1b[2j'" in outputs["inbox"]
