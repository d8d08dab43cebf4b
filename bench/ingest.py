"""How fast the worker reads a mailbox, measured against raw imapclient in the same run.

A throwaway Dovecot on 127.0.0.1 (the test suite's harness, ``tests/dovecot.py``) holds N
generated messages plus every ``tests/fixtures/mail`` file, appended into a fresh user per
repeat before any clock starts. Figures: raw imapclient fetching them by UID batches (the
ceiling), the pure steps (parse, classify, wanted) in-process on the same bytes, a real
``Ingest.run_once()`` into a fresh migrated SQLite file, and a timed sequential copy of
``Ingest.take_batch`` showing where a message's time goes. Prints median, min, max of
``--repeat`` runs, and for each figure the ceiling measured in the same repeats and the
ratio to it; asserts nothing about speed.

    .venv/bin/python bench/ingest.py [--messages 500] [--batch-size 50] [--repeat 3]

See bench/README.md for what each figure means.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email import message_from_string
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from email.utils import format_datetime
from pathlib import Path
from time import perf_counter
from typing import Any, TextIO

import imapclient
import structlog

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # tests.dovecot is not installed; the worker package is

from tests.dovecot import Dovecot, User  # noqa: E402
from worker import logs  # noqa: E402
from worker.classify import classify  # noqa: E402
from worker.clock import FixedClock  # noqa: E402
from worker.config import Settings  # noqa: E402
from worker.domain import Order  # noqa: E402
from worker.inbound import parse  # noqa: E402
from worker.ingest import Ingest, IngestReport, Reading  # noqa: E402
from worker.mailbox import FetchedMessage, Mailbox  # noqa: E402
from worker.origin import judge  # noqa: E402
from worker.return_path import Signer  # noqa: E402
from worker.rules import MailRules, load_rules  # noqa: E402
from worker.store import Checkpoint, Store  # noqa: E402
from worker.thread import wanted  # noqa: E402

NOW = datetime(2026, 3, 20, 12, 0, tzinfo=UTC)
DELIVERED = NOW - timedelta(days=10)
SENT = NOW - timedelta(days=3)  # our check-ins, which most replies answer
DOMAIN = "shop.example"
SIGNER = Signer(b"bench-key-" * 4)
FOLDER = "INBOX"
PASSWORD = "bench-pass"
RULES = ROOT / "config" / "mail-rules.yaml"
FIXTURES = ROOT / "tests" / "fixtures" / "mail"
LOCALES = ("en", "de", "fr", "es", "it", "ja", "zh")


@dataclass
class Figure:
    """One measured quantity over the repeated runs."""

    label: str
    unit: str
    values: list[float] = field(default_factory=list)
    ceilings: list[float] = field(default_factory=list)
    """The ceiling (raw imapclient fetch) measured in the same repeat as each value."""

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    def row(self) -> str:
        low, high = min(self.values), max(self.values)
        line = f"{self.label:<46}{self.median:>10.1f}{low:>10.1f}{high:>10.1f}  {self.unit:<6}"
        if not self.ceilings:
            return line.rstrip()
        pairs = zip(self.values, self.ceilings, strict=True)
        ratios = [value / ceiling for value, ceiling in pairs]
        ceiling = statistics.median(self.ceilings)
        return f"{line}{ceiling:>10.1f}{statistics.median(ratios):>8.2f}x"


@dataclass
class Results:
    raw: Figure
    pure: Figure
    ingest: Figure
    commits: Figure

    @classmethod
    def empty(cls, batch: int) -> Results:
        return cls(
            Figure(f"raw imapclient, 1 conn, UID batches of {batch}", "msg/s"),
            Figure("pure: parse + classify + wanted, in-process", "msg/s"),
            Figure("worker Ingest.run_once(), fresh SQLite", "msg/s"),
            Figure("one SQLite commit here (WAL, as the store)", "ms"),
        )

    def all(self) -> list[Figure]:
        return [self.raw, self.pure, self.ingest, self.commits]


@dataclass
class Inputs:
    """Built once, before any clock starts."""

    work: Path
    template_db: Path
    messages: list[bytes]
    generated: int
    rules: MailRules


# Inputs ---------------------------------------------------------------------------------------


def make_orders(count: int) -> list[Order]:
    """Web-shop orders (Shopify-style numbers), one buyer each, delivered ten days ago."""
    return [
        Order(
            f"#{100001 + i}",
            "shop",
            f"buyer{i}@buyers.example",
            f"Buyer {i}",
            (f"Glass kettle model {i % 40}",),
            LOCALES[i % len(LOCALES)],
            "GB",
            delivered_at=DELIVERED,
        )
        for i in range(count)
    ]


def seed_database(path: Path, orders: list[Order]) -> dict[str, str]:
    """Migrated, with the orders and one sent check-in each; returns their Message-IDs."""
    store = Store.open(f"sqlite:///{path}")
    try:
        store.upgrade()
        store.upsert_orders(orders, DELIVERED)
        rows = [
            store.schedule(o.order_id, "review-follow-up", "check-in", SENT, SENT) for o in orders
        ]
        claimed = store.claim(
            [r.id for r in rows], SENT, "bench", lambda s: SIGNER.message_id(s, DOMAIN)
        ).sends
        for send in claimed:
            store.mark_sent(send.id, f"250 2.0.0 Ok: queued as Q{send.id}", SENT)
        return {s.order_id: s.message_id or "" for s in claimed}
    finally:
        store.close()


def copy_database(template: Path, target: Path) -> None:
    for part in template.parent.glob(template.name + "*"):  # the file, and a WAL if one is left
        shutil.copyfile(part, target.parent / (target.name + part.name[len(template.name) :]))


REPLIES = {
    "en": "It arrived safely and works well, thank you!",
    "de": "Der Wasserkocher ist gut angekommen und funktioniert prima. Danke!",
    "fr": "Bien reçu, la bouilloire fonctionne parfaitement. Merci beaucoup !",
    "es": "Llegó bien y funciona perfectamente. ¡Muchas gracias!",
    "it": "È arrivato in perfette condizioni e funziona benissimo. Grazie!",
    "ja": "無事に届きました。とても使いやすいです。ありがとうございます。",
    "zh": "已经收到了，质量很好，谢谢！",  # noqa: RUF001  (real full-width punctuation)
}


def generated_messages(orders: list[Order], sent_ids: dict[str, str], count: int) -> list[bytes]:
    """A realistic mix: mostly replies to our check-ins, some complaints, out-of-office
    answers, hard bounces, mail naming only the order number or only the buyer, strangers."""
    kinds: list[Callable[[int, Order, str], EmailMessage]] = [
        _reply, _reply, _reply, _reply_html, _complaint,
        _out_of_office, _by_order_number, _by_address, _bounce, _stranger,
    ]  # fmt: skip
    built = []
    for i in range(count):
        order = orders[(i // 2) % len(orders)]
        message = kinds[i % len(kinds)](i, order, sent_ids[order.order_id])
        message["Message-ID"] = f"<b{i}.{i * 7919 % 100003}@mail.example>"
        message["Date"] = format_datetime(NOW - timedelta(minutes=count - i))
        built.append(message.as_bytes(policy=SMTP_POLICY))
    return built


def _base(
    sender: str, subject: str, to: str = f"Kettle & Co service <help@{DOMAIN}>"
) -> EmailMessage:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = to
    message["Subject"] = subject
    return message


def _answering(message: EmailMessage, ours: str) -> EmailMessage:
    message["In-Reply-To"] = ours
    message["References"] = ours
    return message


def _quote(order: Order) -> str:
    return (
        f"\n\nOn Mon, 16 Mar 2026 Kettle & Co <service@{DOMAIN}> wrote:\n"
        f"> Hello {order.buyer_name}, did your {order.products[0]} arrive safely?\n"
        "> If anything is wrong, reply to this message and we will help within 1-2 days.\n"
    )


def _reply(i: int, order: Order, ours: str) -> EmailMessage:
    message = _base(f"{order.buyer_name} <{order.buyer_email}>", f"Re: Your {order.products[0]}")
    message.set_content(REPLIES[order.locale or "en"] + _quote(order))
    return _answering(message, ours)


def _reply_html(i: int, order: Order, ours: str) -> EmailMessage:
    message = _reply(i, order, ours)
    text = REPLIES[order.locale or "en"]
    message.add_alternative(
        f"<html><body><div dir='ltr'><p>{text}</p><p>Best regards,<br>{order.buyer_name}</p>"
        f"</div><blockquote>Hello {order.buyer_name}, did your {order.products[0]} arrive?"
        "</blockquote></body></html>",
        subtype="html",
    )
    return message


def _complaint(i: int, order: Order, ours: str) -> EmailMessage:
    message = _base(order.buyer_email, f"Re: Your {order.products[0]}")
    message.set_content(
        "The lid arrived broken and the kettle leaks. I want a refund." + _quote(order)
    )
    return _answering(message, ours)


def _out_of_office(i: int, order: Order, ours: str) -> EmailMessage:
    message = _base(order.buyer_email, f"Out of Office: Re: Your {order.products[0]}")
    message["Auto-Submitted"] = "auto-replied"
    message.set_content("I am out of the office until Monday 30 March with no access to e-mail.")
    return _answering(message, ours)


def _by_order_number(i: int, order: Order, ours: str) -> EmailMessage:
    message = _base(order.buyer_email, f"Question about order {order.order_id}")
    message.set_content(
        "Hello, does the kettle come with a spare filter? Thanks, " + order.buyer_name
    )
    return message


def _by_address(i: int, order: Order, ours: str) -> EmailMessage:
    message = _base(f"{order.buyer_name} <{order.buyer_email}>", "Descaling the kettle")
    message.set_content("How often should I descale it, and with what? Kind regards")
    return message


BOUNCE = """\
From: MAILER-DAEMON@mail.{domain} (Mail Delivery System)
To: service@{domain}
Subject: Undelivered Mail Returned to Sender
Auto-Submitted: auto-replied
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="b{i}"

--b{i}
Content-Type: text/plain; charset=utf-8

<{buyer}>: host mx.buyers.example said: 550 5.1.1 <{buyer}>: User unknown

--b{i}
Content-Type: message/delivery-status

Reporting-MTA: dns; mail.{domain}

Final-Recipient: rfc822; {buyer}
Action: failed
Status: 5.1.1
Diagnostic-Code: smtp; 550 5.1.1 <{buyer}>: Recipient address rejected: User unknown

--b{i}
Content-Type: text/rfc822-headers

From: Kettle & Co <service@{domain}>
To: {buyer}
Subject: Did your {product} arrive safely?
Message-ID: {ours}

--b{i}--
"""


def _bounce(i: int, order: Order, ours: str) -> EmailMessage:
    """A Postfix-style hard bounce (RFC 3464) of our check-in to this order's buyer."""
    text = BOUNCE.format(
        i=i, domain=DOMAIN, buyer=order.buyer_email, product=order.products[0], ours=ours
    )
    parsed = message_from_string(text, policy=SMTP_POLICY)
    assert isinstance(parsed, EmailMessage)
    return parsed


def _stranger(i: int, order: Order, ours: str) -> EmailMessage:
    message = _base(f"sales{i}@wholesale.example", "Wholesale prices for kettles")
    message.set_content("Dear seller, we would like a quote for 200 glass kettles per month.")
    return message


def fixture_messages() -> list[bytes]:
    return [path.read_bytes() for path in sorted(FIXTURES.rglob("*.eml"))]


def settings_for(database: Path, dovecot: Dovecot, user: User, batch: int) -> Settings:
    return Settings.model_validate(
        {
            "database_url": f"sqlite:///{database}",
            "from": f"Kettle & Co <service@{DOMAIN}>",
            "reply_to": f"Kettle & Co service <help@{DOMAIN}>",
            "imap": dovecot.imap_settings(user, batch_size=batch, timeout_s=60).model_dump(),
            "inbox": {"rules_file": str(RULES)},
            "campaigns_dir": str(ROOT / "campaigns"),
            "templates_dir": str(ROOT / "templates"),
        }
    )


def fill_mailbox(dovecot: Dovecot, name: str, messages: list[bytes]) -> User:
    """A fresh user holding every message, appended over one connection; not measured."""
    user = dovecot.add_user(name, PASSWORD)
    with dovecot.client(user) as client:
        for i, raw in enumerate(messages):
            client.append(FOLDER, raw, (), msg_time=NOW - timedelta(seconds=len(messages) - i))
    return user


# Runs -----------------------------------------------------------------------------------------


def raw_fetch(dovecot: Dovecot, user: User, batch: int, expected: int, deadline: float) -> float:
    """Seconds for one imapclient connection to log in, select read-only and fetch every
    message by UID batches with BODY.PEEK[] and INTERNALDATE, as the worker asks for them."""
    start = perf_counter()
    with imapclient.IMAPClient("127.0.0.1", dovecot.port, ssl=False, timeout=60) as client:
        client.login(user.name, user.password)
        client.select_folder(FOLDER, readonly=True)
        uids = sorted(client.search(["UID", "1:*"]))
        fetched = 0
        for first in range(0, len(uids), batch):
            _check_deadline(deadline)
            response = client.fetch(uids[first : first + batch], ["BODY.PEEK[]", "INTERNALDATE"])
            fetched += sum(len(data[b"BODY[]"]) > 0 for data in response.values())
    elapsed = perf_counter() - start
    _check_count("raw imapclient fetched", fetched, expected)
    return elapsed


def pure_steps(inputs: Inputs, settings: Settings, ingest: Ingest) -> float:
    """Seconds for the pure steps on the same bytes: no I/O, one thread."""
    start = perf_counter()
    for raw in inputs.messages:
        message = parse(raw)
        verdict = classify(
            message,
            inputs.rules,
            seller_addresses=ingest.seller_addresses,
            unsubscribe_addresses=ingest.unsubscribe_addresses,
        )
        wanted(message, verdict)
    return perf_counter() - start


async def ingest_run(ingest: Ingest, expected: int) -> tuple[float, IngestReport]:
    """Seconds for one real ``Ingest.run_once()``: connect, fetch, and one transaction per
    fetched batch into this run's fresh database."""
    start = perf_counter()
    report = await ingest.run_once()
    elapsed = perf_counter() - start
    _check_count("Ingest.run_once() stored", report.total, expected)
    return elapsed, report


def commit_ms(work: Path, commits: int = 50) -> float:
    """One tiny SQLite commit in the bench's folder: the floor under each batch's
    ``record_inbound_batch`` transaction."""
    path = work / "commit-probe.db"
    with closing(sqlite3.connect(path, isolation_level=None)) as db:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE IF NOT EXISTS probe (n INTEGER)")
        start = perf_counter()
        for n in range(commits):
            db.execute("INSERT INTO probe VALUES (?)", (n,))  # autocommit: one commit each
        return (perf_counter() - start) / commits * 1000


def _check_count(what: str, got: int, expected: int) -> None:
    if got != expected:
        raise SystemExit(f"{what} {got} of {expected} messages, figures void")


def _check_deadline(deadline: float) -> None:
    if perf_counter() > deadline:
        raise TimeoutError


# Where the time goes --------------------------------------------------------------------------


@dataclass
class Stopwatch:
    """Time per stage; a stage inside another is taken out of the outer one's time."""

    spent: defaultdict[str, float] = field(default_factory=lambda: defaultdict(float))
    _open: list[str] = field(default_factory=list)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = perf_counter()
        self._open.append(name)
        try:
            yield
        finally:
            self._open.pop()
            elapsed = perf_counter() - start
            self.spent[name] += elapsed
            if self._open:
                self.spent[self._open[-1]] -= elapsed

    def timing(self, target: object, method: str, name: str) -> None:
        """Time each call of ``target.method`` (an attribute of this one object, set by the
        bench) as the stage ``name``."""
        original = getattr(target, method)

        def timed(*args: Any, **kwargs: Any) -> Any:
            with self.stage(name):
                return original(*args, **kwargs)

        setattr(target, method, timed)


async def breakdown(settings: Settings, rules: MailRules, expected: int) -> tuple[Stopwatch, float]:
    """A sequential copy of ``Ingest.run_once`` for one folder, each public call timed."""
    store = Store.open(settings.database_url)
    ingest = Ingest(settings, store, rules, FixedClock(NOW), signer=SIGNER)
    mailbox = Mailbox(settings.imap, max_message_bytes=settings.inbox.max_message_bytes)
    watch = Stopwatch()
    for method, name in (
        ("candidates_for", "store: candidates_for (look-ups)"),
        ("stored_identities", "store: stored_identities"),
        ("buyers_of", "store: buyers_of"),
    ):
        watch.timing(store, method, name)
    try:
        start = perf_counter()
        await mailbox.connect()
        stored = await _copy_of_folder(ingest, mailbox, watch)
        await mailbox.close()
        elapsed = perf_counter() - start
    finally:
        await mailbox.close()
        store.close()
    _check_count("the sequential copy stored", stored, expected)
    return watch, elapsed


async def _copy_of_folder(ingest: Ingest, mailbox: Mailbox, watch: Stopwatch) -> int:
    status = await mailbox.select(FOLDER)
    ingest.store.save_checkpoint(Checkpoint(ingest.name, FOLDER, status.uidvalidity, 0), NOW)
    last_uid, stored, batch_size = 0, 0, ingest.imap.batch_size
    for _ in range(status.exists + 1):  # bounded: one more for the empty answer
        with watch.stage("fetch: Mailbox.fetch_after"):
            batch = await mailbox.fetch_after(last_uid, batch_size)
        if not batch:
            break
        stored += _copy_of_batch(ingest, batch, status.uidvalidity, watch)
        last_uid = batch[-1].uid
    return stored


def _copy_of_batch(
    ingest: Ingest, batch: list[FetchedMessage], uidvalidity: int, watch: Stopwatch
) -> int:
    """The calls of ``Ingest.take_batch``, in its order, run inline (the daemon reads in a
    thread of its own, off the event loop); DKIM, logging and the report are left out."""
    store, settings = ingest.store, ingest.settings
    with watch.stage("store: texts_sent_to_each (1 query)"):
        ingest._prepare_texts(batch)
    readings = []
    for fetched in batch:
        with watch.stage("read: inbound.parse"):
            size = fetched.size if fetched.truncated else None
            message = parse(fetched.raw, limits=ingest.limits, size=size)
        ours = ingest._texts.get(message.sender)
        if ours is None:
            with watch.stage("store: texts_sent_to (a sender missed)"):
                ours = store.texts_sent_to(message.sender)
        with watch.stage("read: classify"):
            verdict = classify(
                message,
                ingest.rules,
                seller_addresses=ingest.seller_addresses,
                unsubscribe_addresses=ingest.unsubscribe_addresses,
                ours=ours,
            )
        with watch.stage("read: origin.judge"):
            origin = judge(message, settings.authentication.authserv_ids)
        readings.append(Reading(message, verdict, origin))
    with watch.stage("thread: wanted, match, react"):
        items = ingest._threaded(batch, readings, FOLDER, uidvalidity, NOW)
    with watch.stage("store: record_inbound_batch (1 tx)"):
        recorded = store.record_inbound_batch(items, ingest.soft_bounces, NOW)
    return sum(not r.duplicate for r in recorded)


# Report ---------------------------------------------------------------------------------------


def print_table(
    args: argparse.Namespace, inputs: Inputs, dovecot: Dovecot, figures: list[Figure]
) -> None:
    total = len(inputs.messages)
    size = statistics.mean(len(m) for m in inputs.messages)
    print(
        f"ingest: {total} messages ({inputs.generated} generated + {total - inputs.generated} "
        f"fixtures, mean {size:.0f} bytes), batches of {args.batch_size}, {args.repeat} runs "
        f"each; {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"imapclient {imapclient.__version__}, Dovecot {dovecot_version(dovecot)}"
    )
    print("machine noise: the cores may be shared, so compare medians, not single runs")
    print("ceiling: raw imapclient fetch of the same messages, measured in the same repeats;")
    print("ratio: the median of each repeat's figure divided by that repeat's ceiling")
    print()
    head = f"{'figure':<46}{'median':>10}{'min':>10}{'max':>10}  {'unit':<6}"
    print(f"{head}{'ceiling':>10}{'ratio':>9}")
    for figure in figures:
        print(figure.row())


def print_mix(report: IngestReport, methods: Counter[str]) -> None:
    kinds = ", ".join(f"{k} {n}" for k, n in report.stored.most_common())
    threads = ", ".join(f"{m} {n}" for m, n in methods.most_common())
    print()
    print(f"what one run stored: {kinds}")
    print(f"threaded to an order: {threads}; unmatched {report.unmatched}")


def print_breakdown(watch: Stopwatch, elapsed: float, count: int, ceiling: float) -> None:
    rate = count / elapsed
    print()
    print(
        f"where a message's time goes: sequential copy of Ingest.take_batch, one run, "
        f"{rate:.1f} msg/s ({rate / ceiling:.2f}x the median ceiling above)"
    )
    print(f"{'stage':<34}{'us/message':>12}{'share':>8}")
    stages = sorted(watch.spent.items(), key=lambda item: -item[1])
    stages.append(("other (connect, select, loop)", elapsed - sum(watch.spent.values())))
    for stage, seconds in stages:
        print(f"{stage:<34}{seconds / count * 1e6:>12.0f}{seconds / elapsed:>8.0%}")


def dovecot_version(dovecot: Dovecot) -> str:
    done = subprocess.run([dovecot.binary, "--version"], capture_output=True, text=True, timeout=10)
    return done.stdout.split()[0] if done.stdout else "?"


# Main -----------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=500, help="generated messages (N)")
    parser.add_argument("--batch-size", type=int, default=50, help="UIDs per FETCH (imap)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure; medians shown")
    parser.add_argument(
        "--run-timeout-s", type=float, default=300.0, help="give up on any one run after this"
    )
    args = parser.parse_args(argv)
    if args.messages < 2 or args.repeat < 1 or not 1 <= args.batch_size <= 1000:
        parser.error("--messages at least 2, --repeat at least 1, --batch-size 1 to 1000")
    return args


def quiet_logs(devnull: TextIO) -> None:
    """The ingest's real JSON log lines are produced (a real cost), then thrown away."""
    logs.configure("json")
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(file=devnull))


def prepare(work: Path, count: int) -> Inputs:
    orders = make_orders(count // 2)
    template_db = work / "template.db"
    sent_ids = seed_database(template_db, orders)
    generated = generated_messages(orders, sent_ids, count)
    messages = generated + fixture_messages()
    return Inputs(work, template_db, messages, len(generated), load_rules(RULES))


@dataclass
class Run:
    """One repeat's fresh mailbox user, database and ingest."""

    user: User
    database: Path
    settings: Settings


def new_run(args: argparse.Namespace, inputs: Inputs, dovecot: Dovecot, name: str) -> Run:
    """A fresh user holding every message and a fresh copy of the migrated database."""
    user = fill_mailbox(dovecot, f"{name}-{os.getpid()}", inputs.messages)
    database = inputs.work / f"{name}.db"
    copy_database(inputs.template_db, database)
    return Run(user, database, settings_for(database, dovecot, user, args.batch_size))


def one_repeat(
    args: argparse.Namespace, inputs: Inputs, dovecot: Dovecot, results: Results, run: Run
) -> IngestReport:
    """Each figure once; interleaved, so drift on a shared machine hits every figure alike."""
    total, timeout = len(inputs.messages), args.run_timeout_s
    raw_fetch(dovecot, run.user, args.batch_size, total, perf_counter() + timeout)  # warm-up
    seconds = raw_fetch(dovecot, run.user, args.batch_size, total, perf_counter() + timeout)
    ceiling = total / seconds
    results.raw.values.append(ceiling)
    store = Store.open(run.settings.database_url)
    try:
        ingest = Ingest(run.settings, store, inputs.rules, FixedClock(NOW), signer=SIGNER)
        results.pure.values.append(total / pure_steps(inputs, run.settings, ingest))
        seconds, report = asyncio.run(asyncio.wait_for(ingest_run(ingest, total), timeout))
    finally:
        store.close()
    results.ingest.values.append(total / seconds)
    results.pure.ceilings.append(ceiling)
    results.ingest.ceilings.append(ceiling)
    results.commits.values.append(commit_ms(inputs.work))
    return report


def stored_mix(database: Path) -> Counter[str]:
    store = Store.open(f"sqlite:///{database}")
    try:
        return Counter(row.match_method or "none" for row in store.inbound_messages())
    finally:
        store.close()


def measure(args: argparse.Namespace, work: Path, dovecot: Dovecot) -> None:
    inputs = prepare(work, args.messages)
    results = Results.empty(args.batch_size)
    for repeat in range(args.repeat):
        run = new_run(args, inputs, dovecot, f"bench{repeat}")
        report = one_repeat(args, inputs, dovecot, results, run)
    print_table(args, inputs, dovecot, results.all())
    print_mix(report, stored_mix(run.database))
    run = new_run(args, inputs, dovecot, "breakdown")
    watch, elapsed = asyncio.run(
        asyncio.wait_for(
            breakdown(run.settings, inputs.rules, len(inputs.messages)), args.run_timeout_s
        )
    )
    print_breakdown(watch, elapsed, len(inputs.messages), results.raw.median)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with open(os.devnull, "w") as devnull, tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        quiet_logs(devnull)
        dovecot = Dovecot()  # its own folder, which Dovecot's users can enter
        try:
            dovecot.start()
            measure(args, Path(tmp), dovecot)
        except TimeoutError:
            print(f"a run took longer than --run-timeout-s {args.run_timeout_s:g}", file=sys.stderr)
            return 1
        finally:
            dovecot.remove()
    return 0


if __name__ == "__main__":
    sys.exit(main())
