"""The mailbox commands as an agent uses them: the real CLI in subprocesses, a real Dovecot."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from tests.acceptance.test_cli import Workdir, _free_port
from tests.conftest import ROOT
from tests.dovecot import Dovecot, User

ORDERS = (
    "order_id,marketplace,buyer_email,buyer_name,product,locale,country,delivered_at\n"
    "SHOP-2001,shop,ann@buyer.example,Ann Smith,Glass kettle,en,GB,{delivered}\n"
    "SHOP-2002,shop,ben@buyer.example,Ben Jones,Tea strainer,en,GB,{delivered}\n"
)


def _mail(sender: str, subject: str, body: str, message_id: str) -> bytes:
    head = (
        f"From: {sender}\r\nTo: help@shop.example\r\nSubject: {subject}\r\n"
        f"Message-ID: {message_id}\r\nDate: Mon, 16 Nov 2026 09:00:00 +0000\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n\r\n"
    )
    return (head + body + "\r\n").encode()


def _seller(tmp_path: Path, dovecot: Dovecot, user: User) -> Workdir:
    work = Workdir(tmp_path, _free_port())
    work.env.update(
        WORKER_IMAP_HOST="127.0.0.1",
        WORKER_IMAP_PORT=str(dovecot.port),
        WORKER_IMAP_TLS="none",
        WORKER_IMAP_USERNAME=user.name,
        WORKER_IMAP_PASSWORD=user.password,
        WORKER_IMAP_FOLDERS="INBOX,Sent",
        WORKER_INBOX_RULES_FILE=str(ROOT / "config" / "mail-rules.yaml"),
        WORKER_INBOX_AGENT_ADDRESSES="help@shop.example",
    )
    work.run("db", "upgrade", check=True)
    delivered = (datetime.now(UTC) - timedelta(days=10)).strftime("%Y-%m-%dT%H:%M:%SZ")
    (tmp_path / "orders.csv").write_text(ORDERS.format(delivered=delivered), encoding="utf-8")
    work.run("import", "orders", "orders.csv", check=True)
    return work


def test_ingest_thread_and_inbox_show_an_agent_what_waits(
    tmp_path: Path, dovecot: Dovecot, mailbox_user: User
) -> None:
    work = _seller(tmp_path, dovecot, mailbox_user)
    question = _mail("ann@buyer.example", "Descaling?", "How do I descale the kettle?", "<q@b>")
    complaint = _mail("ben@buyer.example", "Parcel", "My parcel has not arrived yet.", "<c@b>")
    # A terminal escape sequence, RFC 2047-encoded: it must not reach the agent's terminal.
    stranger = _mail("who@else.example", "=?utf-8?q?Hello=1B[2J?=", "Teapots?", "<s@e>")
    for raw in (question, complaint, stranger):
        dovecot.append(mailbox_user, "INBOX", raw)

    ingested = work.run("ingest", "--once", check=True)
    assert "3 stored" in ingested.stdout and "1 unmatched" in ingested.stdout
    again = work.run("ingest", "--once", check=True)
    assert "0 stored" in again.stdout, "the checkpoint holds across processes"

    thread = work.run("thread", "SHOP-2002", check=True).stdout
    assert "<- complaint" in thread and "Parcel" in thread and "has not arrived" in thread
    assert "intent=" in thread and "matched by buyer_address" in thread
    plan = work.run("plan", "--order", "SHOP-2002").stdout
    assert "dispute_open" in plan

    later = (datetime.now(UTC) + timedelta(hours=25)).isoformat()
    awaiting = work.run("inbox", "--awaiting", "--now", later, check=True).stdout
    assert "2 conversation(s)" in awaiting
    assert "SHOP-2001" in awaiting and "SHOP-2002" in awaiting
    assert "0 conversation(s)" in work.run("inbox", "--awaiting", check=True).stdout

    answer = (
        b"From: Anna <help@shop.example>\r\nTo: ann@buyer.example\r\nSubject: Re: Descaling?\r\n"
        b"Message-ID: <a@shop.example>\r\nIn-Reply-To: <q@b>\r\n\r\nCitric acid, 2 spoons.\r\n"
    )
    dovecot.append(mailbox_user, "Sent", answer, flags=["\\Seen"])
    work.run("ingest", "--once", check=True)
    awaiting = work.run("inbox", "--awaiting", "--now", later, check=True).stdout
    assert "1 conversation(s)" in awaiting and "SHOP-2001" not in awaiting

    unmatched = work.run("inbox", "--unmatched", check=True).stdout
    assert "who@else.example" in unmatched and "SHOP-" not in unmatched
    assert "Hello␛[2J" in unmatched and "\x1b" not in unmatched

    row_id = next(line.split()[0] for line in unmatched.splitlines() if "who@else" in line)
    filed = work.run("inbox", "assign", row_id, "SHOP-2001", check=True).stdout
    assert f"message {row_id} filed under SHOP-2001" in filed
    assert "matched by manual" in work.run("thread", "SHOP-2001", check=True).stdout
    assert "who@else" not in work.run("inbox", "--unmatched", check=True).stdout
    again = work.run("inbox", "assign", row_id, "SHOP-2002")
    assert again.returncode == 1 and "already filed under SHOP-2001" in again.stderr


def test_a_wrong_mailbox_password_is_named_and_nothing_is_sent(
    tmp_path: Path, dovecot: Dovecot, mailbox_user: User
) -> None:
    work = _seller(tmp_path, dovecot, mailbox_user)
    work.env["WORKER_IMAP_PASSWORD"] = "wrong"
    for command in (("ingest", "--once"), ("check",), ("run", "--once")):
        done = work.run(*command)
        assert done.returncode == 1, command
        assert f"login refused for {mailbox_user.name}" in done.stderr, command
        assert f"imap 127.0.0.1:{dovecot.port}" in done.stderr, command
    assert "sent" not in work.run("sends", "--summary", check=True).stdout.split("\n", 1)[1]
