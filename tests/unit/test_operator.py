"""The operator commands' pure parts: which address is one, the sample order's marketplace,
reading a suppression list, and the status screen."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from worker.cli_operator import sample_marketplace, status_lines
from worker.cli_suppress import address_problem, read_addresses
from worker.domain import Campaign
from worker.store_status import FailedSend, MailboxRead, Status

NOW = datetime(2026, 3, 10, 9, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("ann@example.com", None),
        ("Ann@Example.COM", None),
        ("ann@example.com\r\nBcc: x@example.com", "it holds a line break"),
        ("ann@example.com,bob@example.com", "it needs exactly one @"),
        ("ann@example.com bob@example.com", "it contains spaces"),
        ("jörg@example.de", "its part before the @ is not ASCII"),
        ("a" * 250 + "@example.com", "longer than 254"),
        ("", "the e-mail address is empty"),
    ],
)
def test_one_address_or_why_not(text: str, problem: str | None) -> None:
    found = address_problem(text)
    assert found == problem if problem is None else problem in (found or "")


def test_the_sample_order_comes_from_a_marketplace_the_campaign_applies_to() -> None:
    assert sample_marketplace(Campaign("a", (), frozenset({"amazon"}))) == "amazon"
    assert sample_marketplace(Campaign("b", (), frozenset({"ebay", "shop"}))) == "shop"
    assert sample_marketplace(Campaign("c", (), frozenset({"ebay", "aliexpress"}))) == "aliexpress"


def test_a_suppression_list_names_each_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "list.txt"
    path.write_text(
        "\ufeffAnn@Example.com\n# a comment\n\nnot an address\nbob@example.com\n", encoding="utf-8"
    )
    good, bad = read_addresses(path)
    assert good == ["ann@example.com", "bob@example.com"]
    assert [(b.line, "contains spaces" in b.reason) for b in bad] == [(4, True)]


def test_a_csv_is_read_by_its_email_column(tmp_path: Path) -> None:
    path = tmp_path / "export.csv"
    path.write_text(
        'id,E-Mail,name\n1,cara@example.com,Cara\n2\n3,"dan@example.com",Dan\n', encoding="utf-8"
    )
    good, bad = read_addresses(path)
    assert good == ["cara@example.com", "dan@example.com"]
    assert [(b.line, b.reason) for b in bad] == [(3, "no email column in this row")]


def test_the_status_screen_escapes_what_strangers_wrote() -> None:
    status = Status(
        now=NOW,
        sends={("sent", ""): 5, ("failed", "550 5.1.1 \x1b[2J"): 1, ("skipped", "suppressed"): 2},
        in_doubt=1,
        oldest_in_doubt=NOW - timedelta(hours=3),
        failures=[FailedSend(9, "SHOP-\u202e1", "c", "s", "550 \x1b]2;x\x07", NOW)],
        open_disputes=1,
        needs_review=0,
        suppressions={"unsubscribe": 2},
        inbound={"buyer": 4},
        mailboxes=[MailboxRead("shop@imap.example", NOW - timedelta(minutes=5), None)],
        oldest_due=NOW - timedelta(days=2, hours=1),
        due_unsent=3,
        buyers_awaiting_pass=0,
    )
    screen = "\n".join(status_lines(status, "sqlite:///var/worker.db"))
    assert "\x1b" not in screen and "\u202e" not in screen and "\x07" not in screen
    assert "  sent             5" in screen and "suppressed 2" in screen
    assert "in doubt: 1, the oldest since 2026-03-10 06:00 (3 h ago)" in screen
    assert "(2 d 1 h late)" in screen
    assert "last full read 2026-03-10 08:55 (5 min ago), last message stored never" in screen
