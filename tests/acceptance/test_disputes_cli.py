"""Disputes and intent tags as an agent uses them: the real CLI in subprocesses on a real SQLite
file, the buyer's mail stored through the store as the mailbox reader stores it (with the
intent reader's tags)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import update

from tests.acceptance.test_cli import Workdir, _free_port
from tests.acceptance.test_inbox_cli import _mail, _seller
from tests.dovecot import Dovecot, User
from tests.integration.test_intent_remote import (  # noqa: F401 (endpoint: a fixture)
    KEY,
    KEY_ENV,
    MODEL,
    Endpoint,
    endpoint,
    reading,
)
from tests.messages import plain_mail, read_as
from worker.domain import (
    Intent,
    Match,
    MatchMethod,
)
from worker.inbound import Received, parse
from worker.origin import Origin
from worker.react import Standing, react
from worker.schema import EPOCH, customer
from worker.store import SoftBounceRule, Store
from worker.thread import Threaded

T0 = datetime(2026, 3, 10, 9, 0, tzinfo=UTC)
"""After the test orders' delivery (2 March): the check-in of SHOP-1 is due from 9 March."""
RULE = SoftBounceRule(3, timedelta(days=7))


def _buyer_mail(
    store: Store,
    uid: int,
    order_id: str,
    buyer: str,
    words: str,
    intent: Intent,
    confidence: float,
    *,
    at: datetime,
    needs_review: bool = False,
    subject: str = "About my order",
) -> None:
    """One message from the order's buyer, read with this intent and stored as ingest does."""
    message = parse(plain_mail(buyer, subject, words, message_id=f"<m{uid}@buyer.example>"))
    verdict = read_as(intent, confidence, needs_review=needs_review)
    matched = Match(order_id, MatchMethod.BUYER_ADDRESS, "test")
    reactions = react(
        verdict, matched, Standing(buyer, Origin(buyer, None, "not authenticated"), buyer=buyer)
    )
    received = Received("help@shop.example", "INBOX", 1, uid, at)
    store.record_inbound(message, received, verdict, Threaded(matched), reactions, RULE, at)


@pytest.fixture
def work(tmp_path: Path) -> Workdir:
    return Workdir(tmp_path, _free_port()).ready()


@pytest.fixture
def stored(work: Workdir) -> Iterator[Store]:
    store = Store.open(f"sqlite:///{work.path / 'var' / 'worker.db'}")
    yield store
    store.close()


def _id_of(listing: str, order_id: str) -> str:
    return next(line.split()[0] for line in listing.splitlines() if f" {order_id} " in line)


def test_an_agent_dismisses_an_unsure_complaint_and_the_check_in_goes_out_at_once(
    work: Workdir, stored: Store
) -> None:
    _buyer_mail(stored, 1, "SHOP-1", "ann@example.com", "The box is dented but the kettle is "
                "perfect.\x1b[2J", Intent.DAMAGED, 0.42, at=T0, needs_review=True)  # fmt: skip
    _buyer_mail(stored, 2, "SHOP-2", "bob@example.com", "It never arrived.",
                Intent.NOT_RECEIVED, 0.97, at=T0)  # fmt: skip
    at = (T0 + timedelta(hours=1)).isoformat()
    assert "dispute_open" in work.run("plan", "--order", "SHOP-1", "--at", at).stdout

    review = work.run("disputes", "list", "--needs-review", check=True).stdout
    assert review.startswith("1 dispute(s) awaiting review")
    assert "SHOP-1" in review and "SHOP-2" not in review and "NEEDS REVIEW" in review
    assert '"The box is dented but the kettle is perfect.␛[2J"' in review
    assert "(damaged 0.42; intent=damaged)" in review and "\x1b" not in review
    listing = work.run("disputes", "list", check=True).stdout
    assert listing.startswith("2 dispute(s) open") and "ann@example.com" in listing
    dispute_id = _id_of(review, "SHOP-1")

    with stored.engine.begin() as c:  # as a pass leaves a buyer with nothing to do
        c.execute(update(customer).values(next_due_at=None))
    done = work.run("disputes", "dismiss", dispute_id, "--by", "maria", "--at", at, check=True)
    assert f"dispute {dispute_id} (damaged, order SHOP-1) dismissed by maria" in done.stdout
    assert "with no cool-down" in done.stdout
    assert stored.next_due("ann@example.com") == EPOCH, "the next pass plans the buyer"
    assert stored.next_due("bob@example.com") is None, "and only that buyer"
    plan = work.run("plan", "--order", "SHOP-1", "--at", at).stdout
    assert "dispute" not in plan and "due" in plan
    assert "0 dispute(s) awaiting review" in work.run("disputes", "list", "--needs-review").stdout
    everything = work.run("disputes", "list", "--all", check=True).stdout
    assert "dismissed" in everything and "SHOP-2" in everything

    again = work.run("disputes", "dismiss", dispute_id, "--by", "maria")
    assert again.returncode == 1
    assert f"dispute {dispute_id} was already dismissed by maria" in again.stderr


def test_an_agent_confirms_a_complaint_and_the_buyer_stays_paused(
    work: Workdir, stored: Store
) -> None:
    _buyer_mail(stored, 1, "SHOP-1", "ann@example.com", "Hairline crack in the glass.",
                Intent.DAMAGED, 0.5, at=T0, needs_review=True)  # fmt: skip
    dispute_id = _id_of(work.run("disputes", "list", check=True).stdout, "SHOP-1")
    at = (T0 + timedelta(hours=1)).isoformat()
    done = work.run("disputes", "confirm", dispute_id, "--by", "maria", "--at", at, check=True)
    assert "confirmed by maria: it stays open" in done.stdout
    assert "0 dispute(s)" in work.run("disputes", "list", "--needs-review", check=True).stdout
    listing = work.run("disputes", "list", check=True).stdout
    assert "confirmed" in listing and "NEEDS REVIEW" not in listing
    later = (T0 + timedelta(days=3)).isoformat()
    assert "dispute_open" in work.run("plan", "--order", "SHOP-1", "--at", later).stdout


def test_answering_a_dispute_that_is_not_there_or_by_a_bad_name_fails_clearly(
    work: Workdir, stored: Store
) -> None:
    missing = work.run("disputes", "confirm", "999")
    assert missing.returncode == 1 and "no dispute 999" in missing.stderr
    _buyer_mail(stored, 1, "SHOP-1", "ann@example.com", "Broken.", Intent.DAMAGED, 0.5,
                at=T0, needs_review=True)  # fmt: skip
    dispute_id = _id_of(work.run("disputes", "list", check=True).stdout, "SHOP-1")
    bad = work.run("disputes", "dismiss", dispute_id, "--by", "eve\x1b]0;pwned\x07")
    assert bad.returncode == 2 and "control characters" in bad.stderr and "\x1b" not in bad.stderr
    work.run("dispute", "close", "SHOP-1", "--at", (T0 + timedelta(hours=1)).isoformat())
    closed = work.run("disputes", "dismiss", dispute_id)
    assert closed.returncode == 1 and "already closed" in closed.stderr


def test_thread_and_inbox_show_the_intent_and_inbox_lists_urgent_mail_first(
    work: Workdir, stored: Store
) -> None:
    hour = timedelta(hours=1)
    mails = [  # (uid, order, buyer, words, intent, confidence, at)
        (1, "SHOP-1", "ann@example.com", "Thanks, lovely kettle!", Intent.THANKS, 0.93, T0),
        (2, "SHOP-2", "bob@example.com", "Where is my parcel?", Intent.WHERE_IS_MY_ORDER, 0.81,
         T0 + hour),
        (3, "SHOP-1", "ann@example.com", "Please send it to my office.", Intent.ADDRESS_CHANGE,
         0.7, T0 + 2 * hour),
        (4, "SHOP-2", "bob@example.com", "Arrived broken.", Intent.DAMAGED, 0.96, T0 + 3 * hour),
        (5, "SHOP-1", "ann@example.com", "Still nothing?", Intent.WHERE_IS_MY_ORDER, 0.77,
         T0 + 4 * hour),
    ]  # fmt: skip
    for uid, order_id, buyer, words, intent, sure, at in mails:
        _buyer_mail(stored, uid, order_id, buyer, words, intent, sure, at=at, subject=words)

    thread = work.run("thread", "SHOP-2", check=True).stdout
    assert "<- reply                [where_is_my_order 0.81] bob@example.com" in thread
    assert "<- complaint            [damaged 0.96] bob@example.com" in thread

    inbox = work.run("inbox", check=True).stdout
    header, *lines = inbox.splitlines()
    assert " intent " in header
    assert "where_is_my_order" in lines[1] and "Where is my parcel?" in lines[1]

    asked = work.run("inbox", "--intent", "where_is_my_order", check=True).stdout
    assert [line.split()[0] for line in asked.splitlines()[1:]] == ["2", "5"]
    both = work.run("inbox", "--intent", "thanks,damaged", check=True).stdout.splitlines()[1:]
    assert [line.split()[0] for line in both] == ["1", "4"]
    repeated = work.run("inbox", "--intent", "thanks", "--intent", "damaged", check=True)
    assert repeated.stdout.splitlines()[1:] == both

    urgent = work.run("inbox", "--urgent", check=True).stdout.splitlines()[1:]
    assert [line.split()[0] for line in urgent] == ["4", "5", "2", "3", "1"]

    wrong = work.run("inbox", "--intent", "angry")
    assert wrong.returncode == 2 and "'angry' is not an intent" in wrong.stderr
    mixed = work.run("inbox", "--awaiting", "--urgent")
    assert mixed.returncode == 2 and "--awaiting lists conversations" in mixed.stderr


def test_an_unsure_complaint_read_from_the_mailbox_waits_for_an_agent(
    tmp_path: Path,
    dovecot: Dovecot,
    mailbox_user: User,
    endpoint: Endpoint,  # noqa: F811 (the fixture imported above)
) -> None:
    """The whole path: ingest reads the mail; the shipped model reads thanks, the operator's
    endpoint (scripted, on loopback) a damaged parcel: one reader only, so the dispute it
    opens waits in the review list, and dismissing it resumes the buyer at once."""
    work = _seller(tmp_path, dovecot, mailbox_user)
    work.env |= {
        "WORKER_INTENTS_BACKEND": "openai",
        "WORKER_INTENTS_URL": endpoint.url,
        "WORKER_INTENTS_MODEL": MODEL,
        "WORKER_INTENTS_API_KEY_ENV": KEY_ENV,
        KEY_ENV: KEY,
    }
    endpoint.script.append(reading("damaged", 0.8))
    words = "Thank you, all arrived and it works well."
    dovecot.append(mailbox_user, "INBOX", _mail("ann@buyer.example", "Kettle", words, "<d@b>"))
    work.run("ingest", "--once", check=True)
    assert len(endpoint.requests) == 1

    thread = work.run("thread", "SHOP-2001", check=True).stdout
    assert "<- complaint            [damaged 0." in thread
    review = work.run("disputes", "list", "--needs-review", check=True).stdout
    assert review.startswith("1 dispute(s) awaiting review") and "NEEDS REVIEW" in review
    assert f'"{words}"' in review
    assert "dispute_open" in work.run("plan", "--order", "SHOP-2001").stdout

    dispute_id = _id_of(review, "SHOP-2001")
    work.run("disputes", "dismiss", dispute_id, "--by", "maria", check=True)
    assert "dispute" not in work.run("plan", "--order", "SHOP-2001", check=True).stdout
    tagged = work.run("inbox", "--intent", "damaged", check=True).stdout.splitlines()[1:]
    assert len(tagged) == 1 and "ann@buyer.example" in tagged[0]
