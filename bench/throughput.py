"""How fast one worker pass delivers, measured against raw aiosmtplib in the same run.

Everything runs in one process on one event loop, against the project's own sink
(``worker.sink.Sink``) on 127.0.0.1: a baseline of raw aiosmtplib sends, a real
``Daemon.run_pass()`` over orders that are all due their check-in, the pure planner on its own,
and a timed sequential copy of the pass showing where a message's time goes. Prints figures
(median, min, max of ``--repeat`` runs) and ratios; asserts nothing about speed.

    .venv/bin/python bench/throughput.py [--orders 300] [--repeat 3] [--concurrency 4]

The default size keeps a run near a minute on a small shared machine; see bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import email.policy
import os
import platform
import shutil
import sqlite3
import statistics
import sys
import tempfile
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import parseaddr
from pathlib import Path
from time import perf_counter
from typing import Any, TextIO, TypeVar

import aiosmtplib
import structlog

from worker import logs
from worker.campaign import load_campaigns
from worker.clock import FixedClock
from worker.compose import compose
from worker.config import Settings
from worker.daemon import Daemon, load_checked_campaigns
from worker.domain import (
    Campaign,
    CampaignStep,
    Customer,
    Dispute,
    DisputeKind,
    Order,
    Review,
    Send,
    SendState,
)
from worker.plan import OrderHistory, Policy, plan
from worker.render import Renderer, TemplateRunner, message_context
from worker.return_path import Signer
from worker.send import Mailer, Sent
from worker.sink import Sink, SinkOptions
from worker.store import Store

ROOT = Path(__file__).resolve().parent.parent
NOW = datetime(2026, 3, 9, 12, 0, tzinfo=UTC)  # a Monday, inside the send window in GB
DELIVERED = NOW - timedelta(days=7, hours=1)  # check-in due an hour ago, well within lateness
LOCALES = ("en", "de", "fr", "es", "it", "ja", "zh")
SENDER = "Kettle & Co <service@shop.example>"
T = TypeVar("T")
SMTP = "smtp: Mailer.send, client"
SINK = "sink: server, parse, Maildir"


@dataclass
class Figure:
    """One measured quantity over the repeated runs."""

    label: str
    unit: str
    values: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    def row(self) -> str:
        low, high = min(self.values), max(self.values)
        return f"{self.label:<44}{self.median:>11.1f}{low:>11.1f}{high:>11.1f}  {self.unit}"


@dataclass
class Results:
    """Every figure of the run, filled one repeat at a time."""

    raw1: Figure
    raw_n: Figure
    raw_worker_bytes: Figure
    passes: Figure
    plans: dict[int, Figure]
    loads: Figure
    commits: Figure

    @classmethod
    def empty(cls, count: int, connections: int) -> Results:
        return cls(
            Figure("raw aiosmtplib, 1 connection", "msg/s"),
            Figure(f"raw aiosmtplib, {connections} connections", "msg/s"),
            Figure(f"raw aiosmtplib, {connections} conn, worker's msgs", "msg/s"),
            Figure(f"worker run_pass(), concurrency {connections}", "msg/s"),
            {
                n: Figure(f"plan(), {n} histories in memory", "decisions/s")
                for n in (count, 10 * count)
            },
            Figure(f"Store.histories(), {count} orders + sends", "ms"),
            Figure("one SQLite commit here (WAL, as the store)", "ms"),
        )

    def all(self) -> list[Figure]:
        return [
            self.raw1,
            self.raw_n,
            self.raw_worker_bytes,
            self.passes,
            *self.plans.values(),
            self.loads,
            self.commits,
        ]


@dataclass
class Inputs:
    """Built once, before any clock starts."""

    work: Path
    template_db: Path
    small: list[Wire]
    composed: list[Wire]
    books: dict[int, list[OrderHistory]]
    campaigns: list[Campaign]


# Inputs ---------------------------------------------------------------------------------------


def make_orders(count: int) -> list[Order]:
    """Web-shop orders in seven locales, all in GB, all delivered at the same moment."""
    return [
        Order(
            f"BENCH-{i:07d}",
            "shop",
            f"buyer{i}@example.com",
            f"Buyer {i}",
            (f"Glass kettle model {i % 50}",),
            LOCALES[i % len(LOCALES)],
            "GB",
            delivered_at=DELIVERED,
            review_url=f"https://shop.example/p/{i % 50}#reviews",
        )
        for i in range(count)
    ]


def make_histories(count: int) -> list[OrderHistory]:
    """A mixed book for the planner: some reviewed, some disputed, some already checked in."""
    return [_history(order, i) for i, order in enumerate(make_orders(count))]


def _history(order: Order, i: int) -> OrderHistory:
    customer = Customer(order.buyer_email, order.buyer_name, order.locale, order.country)
    reviews = (Review(order.order_id, 5, NOW - timedelta(hours=20)),) if i % 10 == 3 else ()
    disputes = (
        (Dispute(order.order_id, DisputeKind.DAMAGED, NOW - timedelta(days=2)),)
        if i % 20 == 7
        else ()
    )
    sends = {}
    if i % 10 == 5:
        sent = Send(
            i, order.order_id, "review-follow-up", "check-in", SendState.SENT, NOW, sent_at=NOW
        )
        sends[("review-follow-up", "check-in")] = sent
    return OrderHistory(order, customer, disputes, reviews, sends=sends)


def small_messages(count: int) -> list[EmailMessage]:
    """What the baseline sends: short plain-text messages, built before the clock starts."""
    messages = []
    for i in range(count):
        message = EmailMessage()
        message["From"] = SENDER
        message["To"] = f"buyer{i}@example.com"
        message["Subject"] = f"Baseline message {i}"
        message.set_content(f"Hello buyer {i},\n\nthis is a baseline message.\n")
        messages.append(message)
    return messages


def worker_messages(work: Path, count: int) -> list[EmailMessage]:
    """The worker's own check-in messages (one per locale, reused), to send raw as well."""
    settings = settings_for(work / "unused.db", 25, 1)
    renderer = Renderer(settings.templates_dir, settings.default_locale)
    built = []
    for i, order in enumerate(make_orders(len(LOCALES))):
        send = Send(i + 1, order.order_id, "review-follow-up", "check-in", SendState.SENDING, NOW)
        send = replace(send, message_id=Signer.ephemeral().message_id(send, "shop.example"))
        context = message_context(order, settings.seller, None, order.locale or "en")
        rendered = renderer.render("check_in", order.locale, context)
        built.append(compose(rendered, send=send, order=order, settings=settings, now=NOW))
    return [built[i % len(built)] for i in range(count)]


def mean_size(messages: list[Wire]) -> int:
    return round(statistics.mean(len(data) for _sender, _to, data in messages[: len(LOCALES)]))


def settings_for(database: Path, smtp_port: int, concurrency: int) -> Settings:
    """The shipped campaigns and templates, this run's database and sink."""
    return Settings.model_validate(
        {
            "database_url": f"sqlite:///{database}",
            "from": SENDER,
            "reply_to": "Kettle & Co service <help@shop.example>",
            "seller": {"name": "Kettle & Co", "signature": "Anna, customer service"},
            "smtp": {"host": "127.0.0.1", "port": smtp_port, "concurrency": concurrency},
            "campaigns_dir": str(ROOT / "campaigns"),
            "templates_dir": str(ROOT / "templates"),
        }
    )


def seed_database(path: Path, orders: list[Order]) -> None:
    """A migrated database holding the orders; each worker run gets a fresh copy of it."""
    store = Store.open(f"sqlite:///{path}")
    try:
        store.upgrade()
        store.upsert_orders(orders, NOW - timedelta(days=8))
    finally:
        store.close()


def copy_database(template: Path, target: Path) -> None:
    for part in template.parent.glob(template.name + "*"):  # the file, and a WAL if one is left
        shutil.copyfile(part, target.parent / (target.name + part.name[len(template.name) :]))


# Runs -----------------------------------------------------------------------------------------


@contextmanager
def sink_dir(work: Path, name: str) -> Iterator[Path]:
    """A fresh Maildir per run, removed afterwards so the disk does not fill up."""
    path = work / name
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


Wire = tuple[str, str, bytes]
"""A pre-built message: envelope sender, recipient, and the bytes, serialised once."""


def wire(messages: list[EmailMessage]) -> list[Wire]:
    """Serialised before any clock starts: the baseline pays for SMTP alone."""
    return [
        (
            parseaddr(str(m["From"]))[1],
            parseaddr(str(m["To"]))[1],
            m.as_bytes(policy=email.policy.SMTP),
        )
        for m in messages
    ]


async def raw_smtp(work: Path, messages: list[Wire], connections: int) -> float:
    """Seconds for raw aiosmtplib to hand every pre-built message to the sink over
    ``connections``."""
    with sink_dir(work, "sink-raw") as maildir:
        async with Sink(SinkOptions(port=0, maildir=maildir)) as sink:
            shares = [messages[i::connections] for i in range(connections)]
            start = perf_counter()
            await asyncio.gather(*(_send_all(sink.port, share) for share in shares))
            elapsed = perf_counter() - start
            await sink.wait_for(len(messages), timeout=30)
    return elapsed


async def _send_all(port: int, messages: list[Wire]) -> None:
    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=30) as smtp:
        for sender, recipient, data in messages:
            await smtp.sendmail(sender, [recipient], data)


async def worker_pass(work: Path, template_db: Path, count: int, concurrency: int) -> float:
    """Seconds for one real ``Daemon.run_pass()`` to plan, record, render and send ``count``,
    built as ``worker run`` builds it: templates rendered in the rendering process (started
    before the clock, as a running daemon's is after its first pass)."""
    database = work / "pass.db"
    copy_database(template_db, database)
    with sink_dir(work, "sink-pass") as maildir:
        async with Sink(SinkOptions(port=0, maildir=maildir)) as sink:
            daemon, store = _daemon(database, sink.port, concurrency)
            assert daemon.runner is not None
            try:
                async with daemon.runner:
                    await daemon.runner.start()
                    start = perf_counter()
                    report = await daemon.run_pass()
                    elapsed = perf_counter() - start
            finally:
                store.close()
            _check_sent(report.outcomes["sent"], count, report.summary())
            await sink.wait_for(count, timeout=30)
    return elapsed


def _daemon(database: Path, port: int, concurrency: int) -> tuple[Daemon, Store]:
    settings = settings_for(database, port, concurrency)
    store = Store.open(settings.database_url)
    renderer = Renderer(settings.templates_dir, settings.default_locale)
    campaigns = load_checked_campaigns(settings, renderer)
    runner = TemplateRunner.from_settings(settings)
    clock = FixedClock(NOW)
    daemon = Daemon(settings, store, campaigns, renderer, clock, worker_id="bench", runner=runner)
    return daemon, store


def _check_sent(sent: int, expected: int, detail: object) -> None:
    if sent != expected:
        raise SystemExit(f"the pass sent {sent} of {expected} messages, figures void: {detail}")


def load_time(work: Path) -> float:
    """Seconds for ``Store.histories()`` on the last pass's database (orders plus sends)."""
    store = Store.open(f"sqlite:///{work / 'pass.db'}")
    try:
        start = perf_counter()
        store.histories()
        return perf_counter() - start
    finally:
        store.close()


def plan_rate(histories: list[OrderHistory], campaigns: list[Campaign]) -> float:
    """Decisions per second of the pure planner, no I/O."""
    start = perf_counter()
    decided = plan(histories, campaigns, NOW, Policy())
    return len(decided.decisions) / (perf_counter() - start)


def commit_ms(work: Path, commits: int = 50) -> float:
    """One tiny SQLite commit in the bench's folder, journal as the store sets it: the floor
    under each of the three commits the pass makes per message (schedule, claim, mark sent)."""
    path = work / "commit-probe.db"
    with closing(sqlite3.connect(path, isolation_level=None)) as db:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE IF NOT EXISTS probe (n INTEGER)")
        start = perf_counter()
        for n in range(commits):
            db.execute("INSERT INTO probe VALUES (?)", (n,))  # autocommit: one commit each
        return (perf_counter() - start) / commits * 1000


# Where the time goes --------------------------------------------------------------------------


@dataclass
class Stopwatch:
    spent: defaultdict[str, float] = field(default_factory=lambda: defaultdict(float))

    def call(self, stage: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        start = perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            self.spent[stage] += perf_counter() - start

    async def wait(self, stage: str, awaitable: Awaitable[T]) -> T:
        start = perf_counter()
        try:
            return await awaitable
        finally:
            self.spent[stage] += perf_counter() - start


async def breakdown(work: Path, template_db: Path, count: int) -> tuple[Stopwatch, float]:
    """A sequential copy of the pass's steps (one connection), each call timed on its own."""
    database = work / "breakdown.db"
    copy_database(template_db, database)
    with sink_dir(work, "sink-breakdown") as maildir:
        async with Sink(SinkOptions(port=0, maildir=maildir)) as sink:
            daemon, store = _daemon(database, sink.port, 1)
            watch = Stopwatch()
            _time_deliveries(sink, watch)
            try:
                start = perf_counter()
                await _copy_of_pass(daemon, watch)
                elapsed = perf_counter() - start
            finally:
                store.close()
            await sink.wait_for(count, timeout=30)
    watch.spent[SMTP] -= watch.spent[SINK]  # the sink works inside the client's wait for 250
    return watch, elapsed


def _time_deliveries(sink: Sink, watch: Stopwatch) -> None:
    """Wraps this sink object's ``deliver`` (the server's work per message); no code changed."""
    deliver = sink.deliver

    async def timed(envelope: Any, *, dropped: bool = False) -> str:
        return await watch.wait(SINK, deliver(envelope, dropped=dropped))

    sink.deliver = timed  # type: ignore[method-assign]


async def _copy_of_pass(daemon: Daemon, watch: Stopwatch) -> None:
    store, settings, now = daemon.store, daemon.settings, daemon.clock.now()
    histories = {h.order.order_id: h for h in watch.call("store: load", store.histories)}
    decided = watch.call("plan", plan, histories.values(), daemon.campaigns, now, daemon.policy)
    rows = [
        watch.call(
            "store: schedule", store.schedule, d.order_id, d.campaign, d.step, d.at or now, now
        )
        for d in decided.due
    ]
    steps = {(c.name, s.id): s for c in daemon.campaigns for s in c.steps}
    async with Mailer(settings.smtp) as mailer:
        for row in rows:
            [send] = watch.call(
                "store: claim",
                store.claim,
                [row.id],
                now,
                "bench",
                lambda s: daemon.signer.message_id(s, settings.sender_domain),
                daemon._guard,
            ).sends
            history = histories[send.order_id]
            step = steps[(send.campaign, send.step)]
            message = _build(daemon, watch, send, history, step)
            outcome = await watch.wait(
                SMTP,
                mailer.send(
                    message,
                    sender=daemon.signer.return_path(send.id, daemon.return_path_base),
                    recipient=history.order.buyer_email,
                ),
            )
            if not isinstance(outcome, Sent):
                raise SystemExit(f"order {send.order_id} was not sent, figures void: {outcome}")
            watch.call("store: mark sent", store.mark_sent, send.id, outcome.reply, now)


def _build(
    daemon: Daemon, watch: Stopwatch, send: Send, history: OrderHistory, step: CampaignStep
) -> EmailMessage:
    order, settings = history.order, daemon.settings
    locale = history.customer.locale or order.locale
    context = message_context(order, settings.seller, None, locale or settings.default_locale)
    rendered = watch.call("render", daemon.renderer.render, step.template, locale, context)
    return watch.call(
        "compose",
        compose,
        rendered,
        send=send,
        order=order,
        settings=settings,
        now=daemon.clock.now(),
    )


# Report ---------------------------------------------------------------------------------------


def print_table(args: argparse.Namespace, inputs: Inputs, figures: list[Figure]) -> None:
    print(
        f"throughput: {args.orders} orders, {args.repeat} runs each, concurrency "
        f"{args.concurrency}; {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"aiosmtplib {aiosmtplib.__version__}"
    )
    print(
        f"message sizes: baseline {mean_size(inputs.small)} bytes, "
        f"worker's {mean_size(inputs.composed)} bytes (multipart text + HTML)"
    )
    print("machine noise: the cores may be shared, so compare medians, not single runs")
    print()
    print(f"{'figure':<44}{'median':>11}{'min':>11}{'max':>11}  unit")
    for figure in figures:
        print(figure.row())


def print_ratios(results: Results, connections: int) -> None:
    print()
    passes = results.passes.median
    for baseline, name in (
        (results.raw1, "raw aiosmtplib, 1 connection"),
        (results.raw_n, f"raw aiosmtplib, {connections} connections"),
        (
            results.raw_worker_bytes,
            f"raw aiosmtplib sending the worker's messages, {connections} connections (ceiling)",
        ),
    ):
        print(f"worker pass = {passes / baseline.median:.2f}x {name}, same run")


def print_breakdown(watch: Stopwatch, elapsed: float, count: int) -> None:
    print()
    print(
        f"where a message's time goes: sequential copy of the pass, 1 connection, one run, "
        f"{count / elapsed:.1f} msg/s"
    )
    print(f"{'stage':<30}{'us/message':>12}{'share':>8}")
    stages = sorted(watch.spent.items(), key=lambda item: -item[1])
    stages.append(("other (event loop)", elapsed - sum(watch.spent.values())))
    for stage, seconds in stages:
        print(f"{stage:<30}{seconds / count * 1e6:>12.0f}{seconds / elapsed:>8.0%}")


# Main -----------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--orders", type=int, default=300, help="messages per run (N)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure; medians shown")
    parser.add_argument("--concurrency", type=int, default=4, help="SMTP connections")
    parser.add_argument(
        "--run-timeout-s", type=float, default=300.0, help="give up on any one run after this"
    )
    args = parser.parse_args(argv)
    if args.orders < 1 or args.repeat < 1 or not 1 <= args.concurrency <= 64:
        parser.error("--orders and --repeat must be at least 1, --concurrency 1 to 64")
    return args


def quiet_logs(devnull: TextIO) -> None:
    """The daemon's real JSON log lines are produced (a real cost), then thrown away."""
    logs.configure("json")
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(file=devnull))


def prepare(work: Path, count: int) -> Inputs:
    template_db = work / "template.db"
    seed_database(template_db, make_orders(count))
    books = {n: make_histories(n) for n in (count, 10 * count)}
    campaigns = load_campaigns(ROOT / "campaigns")
    return Inputs(
        work,
        template_db,
        wire(small_messages(count)),
        wire(worker_messages(work, count)),
        books,
        campaigns,
    )


async def one_repeat(args: argparse.Namespace, inputs: Inputs, results: Results) -> None:
    """Each figure once; interleaved, so drift on a shared machine hits every figure alike."""
    count, work = args.orders, inputs.work
    async with asyncio.timeout(args.run_timeout_s):
        results.raw1.values.append(count / await raw_smtp(work, inputs.small, 1))
    async with asyncio.timeout(args.run_timeout_s):
        seconds = await raw_smtp(work, inputs.small, args.concurrency)
        results.raw_n.values.append(count / seconds)
    async with asyncio.timeout(args.run_timeout_s):
        seconds = await raw_smtp(work, inputs.composed, args.concurrency)
        results.raw_worker_bytes.values.append(count / seconds)
    async with asyncio.timeout(args.run_timeout_s):
        seconds = await worker_pass(work, inputs.template_db, count, args.concurrency)
        results.passes.values.append(count / seconds)
    results.loads.values.append(load_time(work) * 1000)
    results.commits.values.append(commit_ms(work))
    for n, book in inputs.books.items():
        results.plans[n].values.append(plan_rate(book, inputs.campaigns))


async def measure(args: argparse.Namespace, work: Path) -> None:
    inputs = prepare(work, args.orders)
    results = Results.empty(args.orders, args.concurrency)
    for _ in range(args.repeat):
        await one_repeat(args, inputs, results)
    print_table(args, inputs, results.all())
    print_ratios(results, args.concurrency)
    async with asyncio.timeout(args.run_timeout_s):
        watch, elapsed = await breakdown(work, inputs.template_db, args.orders)
    print_breakdown(watch, elapsed, args.orders)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with open(os.devnull, "w") as devnull, tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        quiet_logs(devnull)
        try:
            asyncio.run(measure(args, Path(tmp)))
        except TimeoutError:
            print(f"a run took longer than --run-timeout-s {args.run_timeout_s:g}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
