"""How a pass scales with what is stored: planning the due buyers of a big store, an idle pass
and the daemon's peak memory, against an indexed SELECT of the same rows and a bare import.

A store of N orders (default 1,000,000) is built once and kept in ``--workdir``: a generated
generic CSV (bench/import_orders.py's generator) stored by ``worker import orders``, then the
worker's first passes at T0, after the last order was delivered (each buyer planned once: the
steps too late skipped, the ones due marked sent, every buyer's next look written). The clock
T is then the moment at which about D buyers (default 10,000) are due. Per repeat, interleaved:
the ceiling (one indexed SELECT of the due buyers' order rows), the worker's planning of the D
buyers (``Daemon._planned_batches(T)``, the daemon as ``worker run`` builds it), the store put
back as it was, and an idle pass (``Daemon.run_pass()`` before anyone's next look). Then peak
RSS of child processes: ``worker run --once --now`` (the real command line), idle and due
(against ``worker sink``), beside a child that only imports the worker's modules; and where
the planning time goes, step by step. Asserts nothing about speed; every loop is bounded.

    .venv/bin/python bench/plan_scale.py [--orders 1000000] [--due 10000] [--repeat 3]
        [--workdir DIR] [--database-url postgresql+psycopg://...] [--profile]

With ``--database-url`` the store is built there (everything in it is dropped first unless it
holds this bench's store of the same size): give it a throwaway database. See
bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import json
import os
import platform
import pstats
import re
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from time import perf_counter
from typing import Any, TextIO

import sqlalchemy
import structlog
from sqlalchemy import (
    Column,
    Engine,
    MetaData,
    String,
    Table,
    Text,
    cast,
    delete,
    func,
    inspect,
    literal,
    select,
    text,
    update,
)

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # bench.import_orders is not installed; the worker package is

from bench.import_orders import RunTimeout, worker_import, write_orders  # noqa: E402
from worker import daemon as daemon_module  # noqa: E402
from worker import logs, schema, store_planning  # noqa: E402
from worker.cli import _daemon  # noqa: E402
from worker.clock import FixedClock  # noqa: E402
from worker.config import load_settings  # noqa: E402
from worker.daemon import Daemon  # noqa: E402
from worker.domain import SendState  # noqa: E402
from worker.store import Store  # noqa: E402

SETUP_VERSION = "1"
"""Bumped when the way the store is built changes: a kept store of another version is rebuilt."""
T0 = datetime(2026, 3, 10, tzinfo=UTC)
"""The first passes: after the generator's last delivery (orders end 2026-02-21, deliveries
at most 13 days later)."""
WINDOW = timedelta(days=1)
"""Buyers whose look falls before T + WINDOW are kept aside, so that a run at T (or a little
later: ``--now`` starts a clock that goes on) is undone exactly."""
SETUP_PASSES = 6
"""The first passes at T0: the sends due are marked sent, their buyers planned again; the
next steps wait, so this ends after two or three."""
MARK = Table(
    "bench_plan_scale",
    MetaData(),
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)
"""What this bench built into the database, and with what."""
KEPT = Table(
    "bench_plan_scale_due",
    MetaData(),
    Column("email", String(320), primary_key=True),
    Column("next_due_at", schema.UtcDateTime),
)
"""The next look of every buyer a run may plan, as it was before any run."""


# The store ------------------------------------------------------------------------------------


@dataclass
class Built:
    """The store at T0, and the moments chosen for a given D."""

    url: str
    orders: int
    buyers: int
    sends: int
    """Send rows after the first passes (skipped and sent)."""
    setup_s: dict[str, float]
    t: datetime
    """About D buyers are due at T."""
    due: int
    """Buyers due at T (ties at one moment can make it a little more than D)."""
    idle_at: datetime
    """Half-way from T0 to the earliest next look: nothing is due, even a little later (the
    command line's clock goes on while it starts)."""


def worker_env(url: str, work: Path, smtp_port: int = 9) -> dict[str, str]:
    """The environment of every daemon here, in this process or a child: the shipped settings,
    campaigns and templates, this store, no mailbox, a return-path key in the work folder."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WORKER_")}
    env.update(
        WORKER_CONFIG=str(ROOT / "config" / "worker.yaml"),
        WORKER_DATABASE_URL=url,
        WORKER_SMTP_HOST="127.0.0.1",
        WORKER_SMTP_PORT=str(smtp_port),
        WORKER_BOUNCES_SECRET_FILE=str(work / "worker-secret"),
        WORKER_CAMPAIGNS_DIR=str(ROOT / "campaigns"),
        WORKER_TEMPLATES_DIR=str(ROOT / "templates"),
        WORKER_LOG_FORMAT="json",
    )
    return env


def daemon_at(url: str, work: Path, at: datetime) -> Daemon:
    """The daemon as ``worker run`` builds it (``worker.cli._daemon``), its clock fixed."""
    settings = load_settings(environ=worker_env(url, work))
    return _daemon(settings, FixedClock(at))


def marks(engine: Engine) -> dict[str, str]:
    if not inspect(engine).has_table(MARK.name):
        return {}
    with engine.connect() as c:
        return {r.key: r.value for r in c.execute(select(MARK))}


def build(args: argparse.Namespace, work: Path) -> Built:
    """The kept store if it is there and of this size, else a new one; then T for ``--due``."""
    url = args.database_url or f"sqlite:///{work / f'plan-scale-{args.orders}.db'}"
    engine = sqlalchemy.create_engine(url)
    try:
        found = marks(engine)
        wanted = {"version": SETUP_VERSION, "orders": str(args.orders), "t0": T0.isoformat()}
        if any(found.get(k) != v for k, v in wanted.items()) or "setup" not in found:
            engine.dispose()
            _empty(url, work)
            setup = _first_passes(args, url, work)
            with engine.begin() as c:
                MARK.create(c)
                c.execute(MARK.insert(), [{"key": k, "value": v} for k, v in wanted.items()])
                c.execute(MARK.insert().values(key="setup", value=json.dumps(setup)))
            found = marks(engine)
        restore(engine)  # a run stopped half-way leaves rows behind
        _choose_t(engine, args.due)
        found = marks(engine)
        with engine.connect() as c:
            counts = [
                c.execute(select(func.count()).select_from(t)).scalar_one()
                for t in (schema.order, schema.customer, schema.send)
            ]
        built = Built(
            url,
            counts[0],
            counts[1],
            counts[2],
            json.loads(found["setup"]),
            datetime.fromisoformat(found["t"]),
            int(found["due_now"]),
            datetime.fromisoformat(found["idle_at"]),
        )
        _check_state(engine, built)
        return built
    finally:
        engine.dispose()


def _empty(url: str, work: Path) -> None:
    """A fresh file, or every table of the given database dropped, then migrated."""
    if url.startswith("sqlite"):
        for old in work.glob(Path(sqlalchemy.make_url(url).database or "").name + "*"):
            old.unlink()
    else:
        engine = sqlalchemy.create_engine(url)
        try:
            with engine.begin() as c:
                c.execute(text("DROP SCHEMA public CASCADE"))
                c.execute(text("CREATE SCHEMA public"))
        finally:
            engine.dispose()
    store = Store.open(url)
    try:
        store.upgrade()
    finally:
        store.close()


def _first_passes(args: argparse.Namespace, url: str, work: Path) -> dict[str, float]:
    """Import the file, then plan every buyer at T0 as the daemon would, until nothing is due."""
    spent: dict[str, float] = {}
    csv_path = work / f"orders-{args.orders}.csv"
    if not csv_path.exists():
        start = perf_counter()
        write_orders(csv_path.with_suffix(".part"), args.orders)
        csv_path.with_suffix(".part").rename(csv_path)
        spent["write csv"] = perf_counter() - start
    print(f"setup: importing {args.orders} orders into {_where(url)}...", file=sys.stderr)
    done = worker_import(url, csv_path, args.run_timeout_s)
    if done.counts != (args.orders, 0, 0):
        raise SystemExit(f"the import stored {done.counts}, not ({args.orders}, 0, 0); void")
    spent["worker import orders"] = done.seconds
    daemon = daemon_at(url, work, T0)
    try:
        daemon.store.plan_inputs_changed(daemon._plan_inputs, T0)
        for n in range(SETUP_PASSES):
            start = perf_counter()
            counts = _plan_all(daemon, T0, perf_counter() + args.run_timeout_s)
            spent[f"first passes: plan {n + 1}"] = perf_counter() - start
            print(f"setup: pass {n + 1} at {T0:%Y-%m-%d}: {dict(counts)}", file=sys.stderr)
            if not counts["due"]:
                break
            _mark_sent(daemon.store.engine, T0)
        else:
            raise SystemExit(f"still something due at T0 after {SETUP_PASSES} passes; void")
    finally:
        daemon.store.close()
    if url.startswith("postgresql"):
        engine = sqlalchemy.create_engine(url, isolation_level="AUTOCOMMIT")
        try:  # what autovacuum does in its own time
            with engine.connect() as c:
                c.execute(text("VACUUM ANALYZE"))
        finally:
            engine.dispose()
    return spent


def _plan_all(daemon: Daemon, at: datetime, deadline: float) -> Counter[str]:
    """Every batch due at ``at``, planned and recorded; what was decided, counted."""
    counts: Counter[str] = Counter()
    for batch in daemon._planned_batches(at):
        counts["batches"] += 1
        counts["buyers"] += len(batch.looks)
        counts["orders"] += len(batch.histories)
        counts.update(d.verdict.value for d in batch.plan.decisions)
        if perf_counter() > deadline:
            raise RunTimeout("planning took longer than --run-timeout-s")
    return counts


def _mark_sent(engine: Engine, at: datetime) -> None:
    """The sends scheduled at T0, sent: the columns ``claim`` and ``mark_sent`` write. Their
    triggers wake the buyers, whom the next pass plans with the send on record."""
    send, order = schema.send, schema.order
    with engine.begin() as c:
        c.execute(
            update(send)
            .where(send.c.state == SendState.SCHEDULED.value)
            .values(
                state=SendState.SENT.value,
                attempts=send.c.attempts + 1,
                claimed_at=at,
                claimed_by="bench-setup",
                recipient=select(order.c.buyer_email)
                .where(order.c.order_id == send.c.order_id)
                .scalar_subquery(),
                message_id=literal("<bench.") + cast(send.c.id, String) + "@shop.example>",
                relay_reply="250 2.0.0 Ok: queued",
                sent_at=at,
                updated_at=at,
            )
        )


def _choose_t(engine: Engine, due: int) -> None:
    """T: the D-th earliest next look. The buyers a run may plan are kept aside."""
    customer = schema.customer
    with engine.begin() as c:
        looks = select(customer.c.next_due_at).where(customer.c.next_due_at.is_not(None))
        first = c.execute(looks.order_by(customer.c.next_due_at).limit(1)).scalar_one()
        t = c.execute(
            looks.order_by(customer.c.next_due_at).offset(due - 1).limit(1)
        ).scalar_one_or_none()
        if t is None:
            raise SystemExit(f"fewer than --due {due} buyers ever come due in this store")
        due_now = c.execute(select(func.count()).where(customer.c.next_due_at <= t)).scalar_one()
        KEPT.drop(c, checkfirst=True)
        KEPT.create(c)
        c.execute(
            KEPT.insert().from_select(
                ["email", "next_due_at"],
                select(customer.c.email, customer.c.next_due_at).where(
                    customer.c.next_due_at <= t + WINDOW
                ),
            )
        )
        values = {"due": str(due), "t": t.isoformat(), "due_now": str(due_now)}
        values["idle_at"] = (T0 + (first - T0) / 2).isoformat()
        c.execute(delete(MARK).where(MARK.c.key.in_(values)))
        c.execute(MARK.insert(), [{"key": k, "value": v} for k, v in values.items()])


def restore(engine: Engine) -> None:
    """The store as the first passes left it: every send row made after T0 deleted (nothing
    else changes rows of theirs: the sends at T0 were all settled), and the next look of every
    buyer a run may have planned put back."""
    customer, send = schema.customer, schema.send
    with engine.begin() as c:
        c.execute(delete(send).where(send.c.created_at > T0))
        if inspect(c).has_table(KEPT.name):
            kept = select(KEPT.c.next_due_at).where(KEPT.c.email == customer.c.email)
            c.execute(
                update(customer)
                .where(customer.c.email.in_(select(KEPT.c.email)))
                .values(next_due_at=kept.scalar_subquery())
            )


def _check_state(engine: Engine, built: Built) -> None:
    """The same rows before every measured run, or the figures are void."""
    customer = schema.customer
    with engine.connect() as c:
        sends = c.execute(select(func.count()).select_from(schema.send)).scalar_one()
        due = c.execute(select(func.count()).where(customer.c.next_due_at <= built.t)).scalar_one()
        idle = c.execute(
            select(func.count()).where(customer.c.next_due_at <= built.idle_at)
        ).scalar_one()
    if (sends, due, idle) != (built.sends, built.due, 0):
        raise SystemExit(
            f"the store was not put back: {sends} sends, {due} due at T, {idle} at the idle "
            f"moment; expected {built.sends}, {built.due}, 0; figures void"
        )


# Measured runs --------------------------------------------------------------------------------


def ceiling_select(engine: Engine, at: datetime) -> tuple[float, int]:
    """Seconds for one indexed SELECT of the due buyers' order rows with the driver alone
    (no SQLAlchemy), and how many rows: through ix_customer_next_due_at, then the order's
    buyer index."""
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        mark = "?" if engine.dialect.paramstyle == "qmark" else "%s"
        moment: Any = at.astimezone(UTC).replace(tzinfo=None)
        if engine.dialect.name == "sqlite":
            moment = moment.strftime("%Y-%m-%d %H:%M:%S.%f")  # as UtcDateTime stores it
        start = perf_counter()
        cursor.execute(
            'SELECT o.* FROM customer c JOIN "order" o ON o.buyer_email = c.email '
            f"WHERE c.next_due_at <= {mark}",
            (moment,),
        )
        rows = cursor.fetchall()
        elapsed = perf_counter() - start
        cursor.close()
        raw.rollback()
        return elapsed, len(rows)
    finally:
        raw.close()


def planning(daemon: Daemon, at: datetime, deadline: float) -> tuple[float, Counter[str]]:
    """Seconds for the daemon's planning of everything due at ``at``: every batch of
    ``Daemon._planned_batches`` (select the due buyers, read their histories, plan, record
    skips, schedule the due steps, write the next looks; one transaction a batch). What a
    pass does before it delivers, bar the stale-claim check and the plan-inputs check."""
    start = perf_counter()
    counts = _plan_all(daemon, at, deadline)
    return perf_counter() - start, counts


async def idle_pass(daemon: Daemon) -> float:
    """Seconds for one whole ``Daemon.run_pass()`` with nothing due (no SMTP is touched)."""
    start = perf_counter()
    report = await daemon.run_pass()
    elapsed = perf_counter() - start
    if sum(report.outcomes.values()):
        raise SystemExit(f"the idle pass did something: {report.summary()}; void")
    return elapsed


def probe(engine: Engine, at: datetime) -> float:
    """The idle pass's ceiling: one look into the due index, with the driver alone."""
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        mark = "?" if engine.dialect.paramstyle == "qmark" else "%s"
        moment: Any = at.astimezone(UTC).replace(tzinfo=None)
        if engine.dialect.name == "sqlite":
            moment = moment.strftime("%Y-%m-%d %H:%M:%S.%f")
        start = perf_counter()
        cursor.execute(
            "SELECT email FROM customer WHERE next_due_at <= "
            f"{mark} ORDER BY next_due_at, email LIMIT 500",
            (moment,),
        )
        cursor.fetchall()
        elapsed = perf_counter() - start
        cursor.close()
        raw.rollback()
        return elapsed
    finally:
        raw.close()


# Memory: child processes ----------------------------------------------------------------------

IMPORTS_ONLY = """
import importlib, pkgutil, worker
for m in pkgutil.walk_packages(worker.__path__, "worker."):
    if not m.name.startswith(("worker.migrations", "worker.__main__")):
        importlib.import_module(m.name)
"""


@dataclass(frozen=True)
class Child:
    peak_mb: float
    """ru_maxrss from wait4: the process's peak resident memory (or a descendant's it waited
    for, if larger: the template runner's forkserver)."""
    seconds: float
    out: str


LAUNCHER = """
import os, subprocess, sys, time
report, deadline = sys.argv[1], time.monotonic() + float(sys.argv[2])
child = subprocess.Popen(sys.argv[3:])
while True:
    pid, status, usage = os.wait4(child.pid, os.WNOHANG)
    if pid:
        break
    if time.monotonic() > deadline:
        child.kill()
        pid, status, usage = os.wait4(child.pid, 0)
        status = -1
        break
    time.sleep(0.05)
with open(report, "w") as out:
    out.write(f"{usage.ru_maxrss} {os.waitstatus_to_exitcode(status) if status >= 0 else -1}")
"""
"""A small process between the bench and the one measured: the kernel's peak RSS of a
process counts from the memory of the one that started it (fork, then exec), and the bench's
own is large; this launcher's is about 10 MB."""


def run_child(command: list[str], env: dict[str, str], timeout: float) -> Child:
    """One process (through the launcher), its peak RSS as the kernel counted it; stopped
    after ``timeout``."""
    with tempfile.TemporaryDirectory(prefix="child-") as folder:
        report, printed_to = Path(folder) / "rusage", Path(folder) / "out"
        with printed_to.open("w") as out:
            start = perf_counter()
            launcher = subprocess.run(
                [sys.executable, "-c", LAUNCHER, str(report), str(timeout), *command],
                env=env,
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.DEVNULL,
                check=False,
                timeout=timeout + 30,
            )
            elapsed = perf_counter() - start
        printed = printed_to.read_text().strip()
        if launcher.returncode != 0 or not report.exists():
            raise SystemExit(f"the launcher failed ({launcher.returncode}) for {command[:4]}")
        maxrss_kb, status = (int(n) for n in report.read_text().split())
    if status == -1:
        raise RunTimeout(f"{' '.join(command)} took longer than --run-timeout-s")
    if status != 0 and not printed.startswith("pass: "):
        raise SystemExit(f"{' '.join(command)} exited {status}: {printed[-500:]}")
    return Child(maxrss_kb / 1024, elapsed, printed)


def imports_only(env: dict[str, str], timeout: float) -> Child:
    return run_child([sys.executable, "-c", IMPORTS_ONLY], env, timeout)


def worker_run(url: str, work: Path, at: datetime, port: int, timeout: float) -> Child:
    """``worker run --once --now AT``: the real command line, the shipped settings."""
    command = [sys.executable, "-m", "worker", "run", "--once", "--now", at.isoformat()]
    return run_child(command, worker_env(url, work, port), timeout)


@contextlib.contextmanager
def sink(work: Path, url: str) -> Iterator[int]:
    """``worker sink`` on a free port, writing to a Maildir removed afterwards."""
    maildir = work / "sink"
    shutil.rmtree(maildir, ignore_errors=True)
    command = [sys.executable, "-m", "worker", "sink", "--port", "0", "--maildir", str(maildir)]
    server = subprocess.Popen(
        command,
        env=worker_env(url, work),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        stream = server.stdout
        assert stream is not None
        line = stream.readline()
        found = re.search(r"listening on [\d.]+:(\d+)", line)
        if found is None:
            raise SystemExit(f"worker sink did not start: {line!r}")
        # The rest of its output (a line per message) is read and dropped.
        threading.Thread(target=lambda: sum(1 for _ in stream), daemon=True).start()
        yield int(found[1])
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        shutil.rmtree(maildir, ignore_errors=True)


# Report ---------------------------------------------------------------------------------------


@dataclass
class Figure:
    label: str
    unit: str
    scale: float = 1.0
    values: list[float] = field(default_factory=list)
    ceiling: Figure | None = None
    digits: int = 1

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    def row(self) -> str:
        low, high, d = min(self.values), max(self.values), self.digits
        line = (
            f"{self.label:<52}{self.median * self.scale:>10.{d}f}{low * self.scale:>10.{d}f}"
            f"{high * self.scale:>10.{d}f}  {self.unit:<4}"
        )
        if self.ceiling is not None and self.ceiling.values:
            top, ratio = self.ceiling, self.median / self.ceiling.median
            line += f"{top.median * top.scale:>10.{top.digits}f}{ratio:>9.1f}x"
        return line


@dataclass
class Results:
    select: Figure
    planning: Figure
    probe: Figure
    idle: Figure
    imports: Figure
    idle_rss: Figure
    due_rss: Figure
    counts: Counter[str] = field(default_factory=Counter)
    rows: int = 0
    due_run: str = ""

    @classmethod
    def empty(cls, due: int) -> Results:
        select_ = Figure(f"indexed SELECT of the {due} due buyers' orders", "ms", 1000)
        probe_ = Figure("one look into the due index (nothing due)", "ms", 1000, digits=3)
        imports = Figure("imports only: python + the worker's modules", "MB")
        return cls(
            select_,
            Figure(f"worker planning, {due} due buyers", "ms", 1000, ceiling=select_),
            probe_,
            Figure("worker run_pass(), nothing due", "ms", 1000, ceiling=probe_),
            imports,
            Figure("peak RSS, worker run --once, nothing due", "MB", ceiling=imports),
            Figure("peak RSS, worker run --once, due (sends)", "MB", ceiling=imports),
        )

    def all(self) -> list[Figure]:
        return [
            self.select,
            self.planning,
            self.probe,
            self.idle,
            self.imports,
            self.idle_rss,
            self.due_rss,
        ]


def print_report(args: argparse.Namespace, built: Built, results: Results) -> None:
    engine = sqlalchemy.make_url(built.url).get_backend_name()
    where = "SQLite " + sqlite3.sqlite_version if engine == "sqlite" else _where(built.url)
    print(
        f"plan_scale: {built.orders} orders, {built.buyers} buyers, {built.sends} send rows; "
        f"{built.due} buyers due at T; {args.repeat} runs each, {where}; {os.cpu_count()} "
        f"cores, Python {platform.python_version()}, SQLAlchemy {sqlalchemy.__version__}"
    )
    print(
        f"first passes at T0 {T0:%Y-%m-%d %H:%M}; T {built.t:%Y-%m-%d %H:%M:%S}; idle moment "
        f"{built.idle_at:%Y-%m-%d %H:%M:%S} (UTC)"
    )
    print("machine noise: the cores may be shared, so compare medians, not single runs")
    print("ratio: the figure's median over its ceiling's median, same runs (times: x slower)")
    print()
    print(f"{'figure':<52}{'median':>10}{'min':>10}{'max':>10}  unit{'ceiling':>10}{'ratio':>10}")
    for figure in results.all():
        if figure.values:
            print(figure.row())
    c = results.counts
    print()
    print(
        f"one planning run: {c['buyers']} buyers in {c['batches']} batches, {c['orders']} "
        f"orders ({results.rows} order rows in the SELECT); decisions: due {c['due']}, "
        f"skip {c['skip']}, wait {c['wait']}, done {c['done']}"
    )
    if results.due_run:
        print(f"the due run (worker run --once --now T): {results.due_run}")
    plan_s = results.planning.median if results.planning.values else float("nan")
    idle_ms = results.idle.median * 1000 if results.idle.values else float("nan")
    rss = max((f.median for f in (results.idle_rss, results.due_rss) if f.values), default=0)
    print(
        f"the issue's targets: planning <= 0.5 s (median {plan_s:.2f} s), idle pass <= 50 ms "
        f"(median {idle_ms:.0f} ms), daemon peak RSS <= 150 MB (largest median {rss:.0f} MB)"
    )
    setup = ", ".join(f"{k} {v:.0f} s" for k, v in built.setup_s.items())
    print(f"setup when the store was built (kept in the work folder): {setup}")


STAGES = (
    (store_planning, "_histories_where", "store: read histories (6 queries)"),
    (daemon_module, "plan", "plan (pure)"),
    (store_planning, "_record_skips", "store: record skips"),
    (store_planning, "_schedule", "store: schedule due (insert, read ids)"),
    (store_planning, "next_looks", "next looks (pure)"),
    (store_planning, "_write_looks", "store: write next looks"),
)
"""What ``Store.plan_due`` calls, by module attribute: the breakdown wraps them in this
process only; no code in worker/ is changed."""


def breakdown(built: Built, work: Path, deadline: float) -> tuple[dict[str, float], float]:
    """One more planning run with each step of ``plan_due`` timed (``perf_counter``), and the
    daemon's engine's commits; the rest is the due-buyer SELECT, BEGIN and the loop."""
    spent: defaultdict[str, float] = defaultdict(float)

    def timed(name: str, fn: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            start = perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[name] += perf_counter() - start

        return wrapper

    engine = sqlalchemy.create_engine(built.url)
    daemon = daemon_at(built.url, work, built.t)
    dialect = daemon.store.engine.dialect
    originals = [(module, name, getattr(module, name)) for module, name, _ in STAGES]
    try:
        restore(engine)
        _check_state(engine, built)
        for (module, name, label), (_, _, original) in zip(STAGES, originals, strict=True):
            setattr(module, name, timed(label, original))
        dialect.do_commit = timed("store: commit", dialect.do_commit)  # type: ignore[method-assign]
        start = perf_counter()
        _plan_all(daemon, built.t, deadline)
        elapsed = perf_counter() - start
    finally:
        for module, name, original in originals:
            setattr(module, name, original)
        daemon.store.close()
        restore(engine)
        engine.dispose()
    return spent, elapsed


def print_breakdown(spent: dict[str, float], elapsed: float, due: int) -> None:
    print()
    print(
        f"where the planning time goes: one more run, {elapsed * 1000:.0f} ms for {due} buyers "
        "(Daemon._planned_batches, each step of Store.plan_due timed)"
    )
    print(f"{'stage':<44}{'ms':>8}{'us/buyer':>10}{'share':>8}")
    stages = sorted(spent.items(), key=lambda item: -item[1])
    stages.append(("store: due-buyer SELECT, BEGIN; other", elapsed - sum(spent.values())))
    for stage, seconds in stages:
        print(
            f"{stage:<44}{seconds * 1000:>8.0f}{seconds / due * 1e6:>10.0f}"
            f"{seconds / elapsed:>8.0%}"
        )


def profile_planning(built: Built, work: Path, deadline: float, top: int = 15) -> None:
    """One more planning run under cProfile: the top entries within worker/ by cumulative
    time, then the top entries anywhere by own time. The raw profile is kept."""
    engine = sqlalchemy.create_engine(built.url)
    daemon = daemon_at(built.url, work, built.t)
    try:
        restore(engine)
        _check_state(engine, built)
        profiler = cProfile.Profile()
        profiler.enable()
        _plan_all(daemon, built.t, deadline)
        profiler.disable()
        restore(engine)
    finally:
        daemon.store.close()
        engine.dispose()
    kept = work / "plan_scale.prof"
    profiler.dump_stats(kept)
    stats = pstats.Stats(profiler)
    total = stats.total_tt  # type: ignore[attr-defined]
    entries = stats.stats  # type: ignore[attr-defined]
    ours = str(ROOT / "worker")
    rows = [
        (cum, tt, nc, f"{Path(f).relative_to(ROOT)}:{line}({name})")
        for (f, line, name), (_cc, nc, tt, cum, _callers) in entries.items()
        if f.startswith(ours)
    ]
    print()
    print(f"profile of one planning run under cProfile ({total:.2f} s profiled; kept in {kept})")
    print(f"top {top} within worker/ by cumulative time")
    print(f"{'cumulative s':>12}{'own s':>9}{'calls':>10}  function")
    for cum, tt, nc, name in sorted(rows, reverse=True)[:top]:
        print(f"{cum:>12.3f}{tt:>9.3f}{nc:>10}  {name}")
    print(f"top {top} anywhere by own time")
    anywhere = sorted(
        ((tt, nc, f"{_short(f)}:{line}({name})") for (f, line, name), (_cc, nc, tt, _cum, _)
         in entries.items()),
        reverse=True,
    )  # fmt: skip
    for tt, nc, name in anywhere[:top]:
        print(f"{tt:>12.3f}{'':>9}{nc:>10}  {name}")


def _short(path: str) -> str:
    for marker in ("site-packages/", str(ROOT) + "/", "lib/python"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


def _where(url: str) -> str:
    parsed = sqlalchemy.make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return "SQLite"
    engine = sqlalchemy.create_engine(url)
    try:
        with engine.connect() as c:
            version = c.execute(text("SHOW server_version")).scalar_one()
        return f"PostgreSQL {version}"
    finally:
        engine.dispose()


# Main -----------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--orders", type=int, default=1_000_000, help="orders stored (N)")
    parser.add_argument("--due", type=int, default=10_000, help="buyers due at T (D)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure; medians shown")
    parser.add_argument(
        "--workdir",
        type=Path,
        help="keep the CSV and the SQLite store here and reuse them (default: a temporary "
        "folder, removed afterwards)",
    )
    parser.add_argument(
        "--database-url",
        help="build the store there instead of a SQLite file (PostgreSQL: a THROWAWAY "
        "database; everything in it is dropped unless it holds this bench's store)",
    )
    parser.add_argument(
        "--no-send",
        action="store_true",
        help="skip the child that sends everything due at T to worker sink (minutes at 1M)",
    )
    parser.add_argument(
        "--profile", action="store_true", help="profile one more planning run (cProfile)"
    )
    parser.add_argument(
        "--run-timeout-s", type=float, default=1800.0, help="give up on any one run after this"
    )
    args = parser.parse_args(argv)
    if args.orders < 10 or args.repeat < 1 or not 1 <= args.due <= args.orders // 2:
        parser.error("--orders at least 10, --repeat at least 1, --due from 1 to --orders/2")
    return args


def quiet_logs(devnull: TextIO) -> None:
    """The daemon's real JSON log lines are produced (a real cost), then thrown away."""
    logs.configure("json")
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(file=devnull))


def one_repeat(
    args: argparse.Namespace, built: Built, work: Path, engine: Engine, results: Results
) -> None:
    """Each figure once; interleaved, so drift on a shared machine hits every figure alike."""
    timeout = args.run_timeout_s
    _check_state(engine, built)
    seconds, rows = ceiling_select(engine, built.t)
    results.select.values.append(seconds)
    results.rows = rows

    daemon = daemon_at(built.url, work, built.t)
    try:
        seconds, counts = planning(daemon, built.t, perf_counter() + timeout)
    finally:
        daemon.store.close()
    results.planning.values.append(seconds)
    results.counts = counts
    restore(engine)
    _check_state(engine, built)

    results.probe.values.append(probe(engine, built.idle_at))
    daemon = daemon_at(built.url, work, built.idle_at)
    try:
        results.idle.values.append(asyncio.run(idle_pass(daemon)))
    finally:
        daemon.store.close()

    env = worker_env(built.url, work)
    results.imports.values.append(imports_only(env, timeout).peak_mb)
    idle = worker_run(built.url, work, built.idle_at, 9, timeout)
    if idle.out != "pass: nothing due":
        raise SystemExit(f"worker run --once at the idle moment printed {idle.out!r}; void")
    results.idle_rss.values.append(idle.peak_mb)


def due_with_sends(
    built: Built, work: Path, engine: Engine, results: Results, timeout: float
) -> None:
    """Once: ``worker run --once --now T`` sending everything due to ``worker sink``."""
    _check_state(engine, built)
    try:
        with sink(work, built.url) as port:
            done = worker_run(built.url, work, built.t, port, timeout)
    finally:
        restore(engine)
    results.due_rss.values.append(done.peak_mb)
    results.due_run = f"{done.out} in {done.seconds:.0f} s"
    _check_state(engine, built)


def measure(args: argparse.Namespace, work: Path) -> None:
    built = build(args, work)
    results = Results.empty(built.due)
    engine = sqlalchemy.create_engine(built.url)
    try:
        for _ in range(args.repeat):
            one_repeat(args, built, work, engine, results)
        if not args.no_send:
            due_with_sends(built, work, engine, results, args.run_timeout_s)
    finally:
        restore(engine)
        engine.dispose()
    print_report(args, built, results)
    spent, elapsed = breakdown(built, work, perf_counter() + args.run_timeout_s)
    print_breakdown(spent, elapsed, built.due)
    if args.profile:
        profile_planning(built, work, perf_counter() + args.run_timeout_s)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with contextlib.ExitStack() as stack:
        devnull = stack.enter_context(open(os.devnull, "w"))
        quiet_logs(devnull)
        if args.workdir is None:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-")))
        else:
            work = args.workdir.resolve()
            work.mkdir(parents=True, exist_ok=True)
        try:
            measure(args, work)
        except RunTimeout as exc:
            print(exc, file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
