"""The operator's commands as an operator runs them: the real CLI in subprocesses on a real
SQLite file, a real SMTP sink (aiosmtpd, `worker sink`) where a message goes out."""

from __future__ import annotations

import email
import email.policy
import json
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path

import pytest
from sqlalchemy import func, select, update

from tests.acceptance.test_cli import DUE, ROOT, Workdir, _free_port, maildir_count
from tests.acceptance.test_cli import sink as sink
from worker import schema
from worker.domain import DisputeKind, Send, SuppressionReason
from worker.store import Store
from worker.store_inbound import Checkpoint

NOW = datetime(2026, 3, 10, 9, 0, tzinfo=UTC)


@pytest.fixture
def workdir(tmp_path: Path) -> Workdir:
    work = Workdir(tmp_path, _free_port())
    work.env["PYTHONPATH"] = str(ROOT)  # the worktree under test, wherever the venv points
    return work.ready()


@pytest.fixture
def store(workdir: Workdir) -> Iterator[Store]:
    opened = Store.open(f"sqlite:///{workdir.path / 'var' / 'worker.db'}")
    yield opened
    opened.close()


def _messages(maildir: Path) -> list[EmailMessage]:
    found = []
    for path in sorted((maildir / "new").glob("*")):
        parsed = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        found.append(parsed)
    return found


def _text(message: EmailMessage) -> str:
    part = message.get_body(("plain",))
    assert part is not None
    content = str(part.get_content())
    return content.replace("\r\n", "\n")


def _preview_body(out: str) -> str:
    return out.split("\n\n", 1)[1]


# preview ------------------------------------------------------------------------------------


def test_preview_shows_headers_and_text_in_the_buyers_language(workdir: Workdir) -> None:
    html = workdir.path / "preview.html"
    done = workdir.run(
        "preview",
        "review-follow-up",
        "check-in",
        "--order",
        "12-34567-89012",
        "--html",
        str(html),
        check=True,
    )
    head, body = done.stdout.split("\n\n", 1)
    assert "language de" in head and "order 12-34567-89012 (ebay)" in head
    assert "From: Kettle & Co <service@shop.example>" in head
    assert "To: Jonas Müller <jonas@example.de>" in head
    assert "\nSubject: " in head and "Milchaufschäumer" in head
    assert "List-Unsubscribe: <mailto:service@shop.example?subject=unsubscribe>" in head
    assert "Jonas" in body and "12-34567-89012" in body
    assert '<html lang="de">' in html.read_text(encoding="utf-8")
    english = workdir.run(
        "preview",
        "review-follow-up",
        "check-in",
        "--order",
        "12-34567-89012",
        "--locale",
        "en",
        check=True,
    ).stdout
    assert "language en (--locale en)" in english and "Content-Language: en" in english
    assert workdir.run("sends", check=True).stdout.count("\n") == 1, "a preview records nothing"


def test_preview_without_an_order_renders_a_sample_of_several_items(workdir: Workdir) -> None:
    out = workdir.run("preview", "review-follow-up", "check-in", check=True).stdout
    assert "a sample order" in out and "(shop)" in out
    body = _preview_body(out)
    assert "Stainless steel insulated water bottle" in body and "Spare silicone seal" in body


def test_preview_is_what_the_daemon_then_sends(
    workdir: Workdir,
    sink: subprocess.Popen[str],
) -> None:
    preview = workdir.run(
        "preview", "review-follow-up", "check-in", "--order", "SHOP-1", check=True
    )
    workdir.run("run", "--once", "--now", DUE, check=True)
    sent = next(m for m in _messages(workdir.path / "var/sink") if m["X-Worker-Order"] == "SHOP-1")
    assert _text(sent) == _preview_body(preview.stdout)
    assert f"Subject: {sent['Subject']}\n" in preview.stdout


def test_preview_escapes_a_strangers_text_for_the_terminal(workdir: Workdir, store: Store) -> None:
    with store.engine.begin() as tx:
        tx.execute(
            update(schema.order)
            .where(schema.order.c.order_id == "SHOP-1")
            .values(
                buyer_name="Ann\x1b]2;owned\x07 \u202eSmith", products=json.dumps(["Kettle\x1b[2J"])
            )
        )
    out = workdir.run("preview", "review-follow-up", "check-in", "--order", "SHOP-1", check=True)
    assert "\x1b" not in out.stdout and "\u202e" not in out.stdout and "\x07" not in out.stdout
    assert "␛" in out.stdout


def test_preview_names_the_campaigns_and_steps_it_knows(workdir: Workdir) -> None:
    done = workdir.run("preview", "no-such", "check-in")
    assert done.returncode == 2 and "review-follow-up" in done.stderr
    done = workdir.run("preview", "review-follow-up", "nope")
    assert done.returncode == 2 and "check-in" in done.stderr
    done = workdir.run("preview", "review-follow-up", "check-in", "--order", "NOPE")
    assert done.returncode == 1 and "no order 'NOPE'" in done.stderr
    done = workdir.run("preview", "review-thanks", "thank-you", "--order", "SHOP-1")
    assert done.returncode == 1 and "order SHOP-1 has no review" in done.stderr
    assert "Traceback" not in done.stderr


# send-test --------------------------------------------------------------------------------


def test_send_test_goes_marked_to_the_address_and_counts_for_no_order(
    workdir: Workdir,
    store: Store,
    sink: subprocess.Popen[str],
) -> None:
    done = workdir.run(
        "send-test",
        "review-follow-up",
        "check-in",
        "--order",
        "SHOP-1",
        "--to",
        "Tester@Example.org",
        "--by",
        "ops",
        check=True,
    )
    assert "sent to tester@example.org" in done.stdout
    (message,) = _messages(workdir.path / "var/sink")
    assert message["X-Worker-Test"] == "yes"
    assert str(message["Subject"]).startswith("[TEST] ")
    assert message["To"].addresses[0].addr_spec == "tester@example.org"
    assert "ann@example.com" not in message.as_string()
    assert store.sends() == [], "a test is no send of the order"
    (recorded,) = store.test_sends()
    assert (recorded.order_id, recorded.recipient, recorded.outcome, recorded.created_by) == (
        "SHOP-1",
        "tester@example.org",
        "sent",
        "ops",
    )
    assert recorded.message_id == message["Message-ID"]
    # Planning and the cap go on as if no test had been sent: the order's check-in goes out.
    plan = workdir.run("plan", "--at", DUE, check=True).stdout
    assert any(line.startswith("due") and "SHOP-1" in line for line in plan.splitlines())
    workdir.run("run", "--once", "--now", DUE, check=True)
    assert maildir_count(workdir.path / "var/sink") == 4
    assert len([s for s in store.sends() if s.order_id == "SHOP-1"]) >= 1
    assert store.test_sends() == [recorded]


@pytest.mark.parametrize(
    "address",
    ["a@example.com, b@example.com", "a@example.com\r\nBcc: b@example.com", "no-at-sign", ""],
)
def test_send_test_takes_one_address_only(workdir: Workdir, store: Store, address: str) -> None:
    done = workdir.run("send-test", "review-follow-up", "check-in", "--to", address)
    assert done.returncode == 2 and "is not one address" in done.stderr
    assert store.test_sends() == []


# status -----------------------------------------------------------------------------------


def _claimed(store: Store, order_id: str, step: str, at: datetime) -> Send:
    row = store.schedule(order_id, "c", step, at, at)
    (claimed,) = store.claim([row.id], at, "test", lambda s: f"<w{s.id}.x@shop.example>").sends
    return claimed


def test_status_counts_what_the_rows_hold(workdir: Workdir, store: Store) -> None:
    long_ago = NOW - timedelta(days=3)
    store.schedule("SHOP-1", "c", "due-late", NOW - timedelta(hours=5), long_ago)
    store.schedule("SHOP-2", "c", "due-later", NOW - timedelta(hours=1), long_ago)
    store.schedule("SHOP-2", "c", "not-yet", NOW + timedelta(days=1), long_ago)
    store.record_skip("SHOP-1", "c", "s1", long_ago, "suppressed:unsubscribe", long_ago)
    store.record_skip("SHOP-2", "c", "s1", long_ago, "suppressed:hard_bounce", long_ago)
    store.record_skip("SHOP-1", "c", "s2", long_ago, "reviewed", long_ago)
    sent = _claimed(store, "SHOP-1", "sent", long_ago)
    store.mark_sent(sent.id, "250 ok", long_ago)
    failed = _claimed(store, "SHOP-2", "failed", NOW - timedelta(hours=2))
    store.mark_failed(failed.id, "550 5.1.1 \x1b[31mUser unknown", NOW - timedelta(hours=2))
    old_failure = _claimed(store, "SHOP-2", "old-failure", long_ago)
    store.mark_failed(old_failure.id, "554 old", long_ago)
    doubt = _claimed(store, "12-34567-89012", "doubt", NOW - timedelta(hours=30))
    store.mark_in_doubt(doubt.id, "timeout after data", NOW - timedelta(hours=30))
    store.open_dispute("SHOP-1", DisputeKind.COMPLAINT, long_ago)
    store.open_dispute("SHOP-2", DisputeKind.NOT_RECEIVED, long_ago)
    with store.engine.begin() as tx:
        tx.execute(
            update(schema.dispute)
            .where(schema.dispute.c.order_id == "SHOP-2")
            .values(needs_review=True)
        )
    store.open_dispute("12-34567-89012", DisputeKind.COMPLAINT, long_ago - timedelta(days=1))
    store.close_disputes("12-34567-89012", long_ago)
    store.suppress("x@example.com", SuppressionReason.UNSUBSCRIBE, long_ago)
    store.suppress("y@example.com", SuppressionReason.UNSUBSCRIBE, long_ago)
    store.suppress("z@example.com", SuppressionReason.HARD_BOUNCE, long_ago)
    store.save_checkpoint(Checkpoint("shop@imap.example", "INBOX", 7, 0), NOW - timedelta(hours=1))
    for uid, kind, age in (
        (1, "buyer", 1),
        (2, "buyer", 2),
        (3, "bounce_hard", 3),
        (4, "buyer", 9),
    ):
        _inbound(store, uid, kind, NOW - timedelta(days=age))

    out = workdir.run("status", "--now", NOW.isoformat(), check=True).stdout
    lines = out.splitlines()

    def line(start: str) -> str:
        return next(text for text in lines if text.strip().startswith(start))

    with store.engine.connect() as c:
        by_state: dict[str, int] = dict(
            c.execute(select(schema.send.c.state, func.count()).group_by(schema.send.c.state)).all()
        )
    for state, count in by_state.items():
        assert line(state).split()[:2] == [state, str(count)]
    assert "(hard_bounce" not in line("skipped") and "suppressed 2" in line("skipped")
    assert "reviewed 1" in line("skipped")
    assert line("in doubt:").startswith("in doubt: 1, the oldest since")
    assert "(30 h ago)" in line("in doubt:")
    assert "due, not sent: 2, the oldest due 2026-03-10 04:00 (5 h late)" in out
    assert line("failures, last 24 h:") == "failures, last 24 h: 1"
    failure = lines[lines.index("failures, last 24 h: 1") + 1]
    assert str(failed.id) in failure and "␛[31mUser unknown" in failure and "\x1b" not in out
    assert "disputes: 2 open, 1 need review" in out
    assert "suppressions: 3 (hard_bounce 1, unsubscribe 2)" in out
    assert "inbound, last 7 d: 3 (bounce_hard 1, buyer 2)" in out
    assert "mailbox shop@imap.example: last full read never, last message stored" in out
    assert "(1 h ago)" in line("mailbox shop@imap.example")
    assert len(lines) < 40, "one screen"


def _inbound(store: Store, uid: int, kind: str, at: datetime) -> None:
    with store.engine.begin() as tx:
        tx.execute(
            schema.inbound_message.insert().values(
                mailbox="shop@imap.example",
                folder="INBOX",
                uidvalidity=7,
                uid=uid,
                message_id=f"<m{uid}@example.com>",
                content_hash=f"{uid:064d}",
                received_at=at,
                sender="buyer@example.com",
                raw=b"",
                kind=kind,
                ingested_at=at,
            )
        )


def test_status_of_an_empty_store_says_so(workdir: Workdir) -> None:
    out = workdir.run("status", check=True).stdout
    assert "sends:\n  none yet" in out and "in doubt: none" in out
    assert "due, not sent: none" in out and "mailboxes: none read yet" in out


# in-doubt ---------------------------------------------------------------------------------


def test_in_doubt_list_and_resolve_next_to_the_old_command(workdir: Workdir, store: Store) -> None:
    first = _claimed(store, "SHOP-1", "check-in", NOW)
    store.mark_in_doubt(first.id, "connection lost after the data", NOW)
    second = _claimed(store, "SHOP-2", "check-in", NOW)
    store.mark_in_doubt(second.id, "timeout", NOW + timedelta(minutes=1))
    listed = workdir.run("in-doubt", "list", check=True).stdout
    assert listed.startswith("2 send(s) in doubt")
    assert listed.index(f"{first.id:6} since") < listed.index(f"{second.id:6} since")
    assert f"Message-ID <w{first.id}.x@shop.example>" in listed and "to ann@example.com" in listed

    done = workdir.run("in-doubt", "resolve", str(first.id), "--sent", "--by", "maria", check=True)
    assert "is now sent" in done.stdout and '"by": "maria"' in done.stderr
    done = workdir.run("sends", "resolve", str(second.id), "--not-sent", check=True)
    assert "is now failed" in done.stdout
    states = {s.id: (s.state.value, s.reason) for s in store.sends()}
    assert states[first.id] == ("sent", "resolved by maria after in_doubt")
    assert states[second.id][0] == "failed" and "after in_doubt" in states[second.id][1]
    again = workdir.run("in-doubt", "resolve", str(first.id), "--not-sent")
    assert again.returncode == 1 and "is not in_doubt (it is sent)" in again.stderr
    assert workdir.run("in-doubt", "list", check=True).stdout.startswith("0 send(s)")


# suppressions -----------------------------------------------------------------------------


def _plan_line(workdir: Workdir, order_id: str) -> str:
    """The order's check-in as planned now (a suppression counts from when it was added)."""
    out = workdir.run("plan", check=True).stdout
    return next(
        line for line in out.splitlines() if f" {order_id} " in line and "/check-in " in line
    )


def test_suppress_add_list_remove_with_who(workdir: Workdir, store: Store) -> None:
    done = workdir.run(
        "suppress", "add", "Ann@Example.com", "--reason", "manual", "--by", "ops", check=True
    )
    assert "ann@example.com suppressed (manual) by ops" in done.stdout
    assert "suppressed:manual" in _plan_line(workdir, "SHOP-1")
    again = workdir.run("suppress", "add", "ann@example.com", "--reason", "unsubscribe", check=True)
    assert "already suppressed (manual" in again.stdout and "by ops" in again.stdout
    store.suppress("bob@example.com", SuppressionReason.HARD_BOUNCE, NOW, "550 5.1.1")
    listed = workdir.run("suppress", "list", check=True).stdout.splitlines()
    assert listed[0] == "2 suppressed address(es)"
    assert any("hard_bounce" in x and "worker" in x and "bob@example.com" in x for x in listed)
    only = workdir.run("suppress", "list", "--reason", "manual", check=True).stdout
    assert "ann@example.com" in only and "bob@example.com" not in only

    removed = workdir.run("suppress", "remove", "ann@example.com", "--by", "lea", check=True)
    assert "manual suppression removed by lea" in removed.stdout
    assert '"event": "suppression.removed"' in removed.stderr and '"by": "lea"' in removed.stderr
    assert "suppressed" not in _plan_line(workdir, "SHOP-1")

    refused = workdir.run("suppress", "remove", "bob@example.com", "--by", "lea")
    assert refused.returncode == 1 and "hard_bounce" in refused.stderr
    assert "--force" in refused.stderr and "Nothing changed" in refused.stderr
    assert [s.email for s in store.suppression_rows()] == ["bob@example.com"]
    workdir.run("suppress", "remove", "bob@example.com", "--force", "--by", "lea", check=True)
    assert store.suppression_rows() == []
    with store.engine.connect() as c:
        kept = c.execute(
            select(
                schema.suppression_removal.c.email,
                schema.suppression_removal.c.reason,
                schema.suppression_removal.c.created_by,
                schema.suppression_removal.c.removed_by,
                schema.suppression_removal.c.forced,
            ).order_by(schema.suppression_removal.c.id)
        ).all()
    assert [tuple(r) for r in kept] == [
        ("ann@example.com", "manual", "ops", "lea", False),
        ("bob@example.com", "hard_bounce", None, "lea", True),
    ]
    missing = workdir.run("suppress", "remove", "nobody@example.com")
    assert missing.returncode == 1 and "is not suppressed" in missing.stderr


def test_suppress_import_names_bad_lines_and_keeps_the_good(workdir: Workdir, store: Store) -> None:
    listing = workdir.path / "list.txt"
    listing.write_text(
        "# exported from the old tool\n"
        "ann@example.com\n"
        "\n"
        "two@example.com, three@example.com\n"
        "Bob@Example.com\n"
        "\x1b[31mevil@example.com\n" + "x" * 2000 + "@example.com\n"
        "ann@example.com\n",
        encoding="utf-8",
    )
    done = workdir.run("suppress", "import", str(listing), "--reason", "unsubscribe", "--by", "ops")
    assert done.returncode == 1
    assert f"{listing}:4: " in done.stderr and f"{listing}:6: " in done.stderr
    assert f"{listing}:7: " in done.stderr and "longer than 1000" in done.stderr
    assert "\x1b" not in done.stderr and "␛" in done.stderr
    assert "2 suppressed (unsubscribe), 1 already suppressed, 3 bad line(s)" in done.stdout
    rows = {(s.email, s.reason.value, s.created_by) for s in store.suppression_rows()}
    assert rows == {
        ("ann@example.com", "unsubscribe", "ops"),
        ("bob@example.com", "unsubscribe", "ops"),
    }

    table = workdir.path / "export.csv"
    table.write_text(
        "name,Email,since\nCara,cara@example.com,2025\nNo mail,,2025\nDan,dan@example.com\n"
        'Eve,"eve@example.com",2024\n',
        encoding="utf-8",
    )
    done = workdir.run("suppress", "import", str(table))
    assert done.returncode == 1 and f"{table}:3: " in done.stderr
    assert "3 suppressed (manual), 0 already suppressed, 1 bad line(s)" in done.stdout
    assert {"cara@example.com", "dan@example.com", "eve@example.com"} <= {
        s.email for s in store.suppression_rows()
    }


def test_suppress_import_of_a_file_not_utf8_imports_nothing(workdir: Workdir, store: Store) -> None:
    listing = workdir.path / "latin1.txt"
    listing.write_bytes("ann@example.com\nj\xf6rg@example.de\n".encode("latin-1"))
    done = workdir.run("suppress", "import", str(listing))
    assert done.returncode == 2 and "not UTF-8" in done.stderr and str(listing) in done.stderr
    assert store.suppression_rows() == []


def test_send_test_refuses_a_suppressed_address(workdir: Workdir, store: Store) -> None:
    store.suppress("tester@example.org", SuppressionReason.SPAM_COMPLAINT, NOW)
    done = workdir.run("send-test", "review-follow-up", "check-in", "--to", "tester@example.org")
    assert done.returncode == 1 and "is suppressed (spam_complaint" in done.stderr
    assert store.test_sends() == []
