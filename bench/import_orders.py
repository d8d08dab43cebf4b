"""How fast ``worker import orders`` stores a big generic CSV, against the csv module alone.

A generic orders file of N rows (repeat buyers, seven locales and countries, products, dates)
and a copy of its first N/10 rows are written once into a temporary folder. Then, per repeat,
interleaved: the ceiling (the stdlib ``csv`` module reading the big file, nothing else), a
real import of the small file and of the big file into a fresh migrated SQLite file (the
command's own handler, parsed from ``import orders FILE`` as the CLI parses it, each import
in a spawned process of its own), and a re-import of the big file into that database (every
order known: the update path). Prints rows/s (median, min, max of ``--repeat`` runs), the
ratio to the ceiling, and each import process's peak RSS and its growth while importing,
which stays flat from N/10 to N rows when the import streams. Asserts nothing about speed;
every loop is bounded and each import gives up after ``--run-timeout-s``.

    .venv/bin/python bench/import_orders.py [--rows 1000000] [--repeat 3]
        [--database-url postgresql+psycopg://user:pass@host/throwaway_db]

With ``--database-url`` the imports run there instead; every table of that database is
emptied before each fresh import, so give it a throwaway database. See bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import multiprocessing
import os
import platform
import random
import re
import shutil
import sqlite3
import statistics
import sys
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from multiprocessing.connection import Connection
from pathlib import Path
from time import perf_counter

import sqlalchemy
from sqlalchemy import make_url, text

from worker import schema
from worker.cli import build_parser
from worker.config import Settings
from worker.store import Store

SEED = 20261202
START = datetime(2025, 1, 1, tzinfo=UTC)
HEADER = (
    "order_id,marketplace,buyer_email,buyer_name,product,locale,country,ordered_at,"
    "shipped_at,delivered_at,review_url,timezone,updated_at"
)
# (locale, country, time zone, first names, last names, mail domain)
LOCALES = (
    ("en-GB", "GB", "Europe/London", ("James", "Olivia", "Harry"), ("Walker", "Smith"), "co.uk"),
    ("de-DE", "DE", "Europe/Berlin", ("Jürgen", "Lena", "Anna"), ("Hoffmann", "Müller"), "de"),
    ("fr-FR", "FR", "Europe/Paris", ("Claire", "Hélène", "Luc"), ("Bernard", "Lefèvre"), "fr"),
    ("es-ES", "ES", "Europe/Madrid", ("Lucía", "Mateo", "Sofía"), ("García", "Núñez"), "es"),
    ("it-IT", "IT", "Europe/Rome", ("Emma", "Luca", "Giulia"), ("Rossi", "Bianchi"), "it"),
    ("ja-JP", "JP", "Asia/Tokyo", ("Haruto", "Yui", "Sota"), ("佐藤", "鈴木"), "jp"),
    ("zh-CN", "CN", "Asia/Shanghai", ("Wei", "Fang", "Jing"), ("李", "王"), "cn"),
)
PRODUCTS = (
    "Glass kettle 1.7 l",
    "Edelstahl Knoblauchpresse",
    "Moulin à poivre électrique",
    "Silicone baking mat set",
    "Chef's knife 8\", steel",
    "Magnetic car phone mount",
    "Bamboo cutting board | Herb scissors, 5 blades",
    "Rice cooker | Rice paddle",
    "Oil dispenser",
    "Digital kitchen scale",
)
MARKETPLACES = ("amazon", "ebay", "shop", "aliexpress")
ORDERS_PER_BUYER = 1.3


# Inputs ---------------------------------------------------------------------------------------


def _stamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def write_orders(path: Path, rows: int, seed: int = SEED) -> int:
    """A generic export of ``rows`` orders; returns how many buyers it has. About 1.3 orders
    per buyer, a repeat order anywhere later in the file; some rows not yet shipped or
    delivered; web-shop orders with a review link; every row with its updated_at."""
    rng = random.Random(seed)
    buyers = 0
    with path.open("w", encoding="utf-8", newline="") as out:
        writer = csv.writer(out, lineterminator="\n")
        out.write(HEADER + "\n")
        for n in range(rows):
            if buyers == 0 or rng.random() < 1 / ORDERS_PER_BUYER:
                buyer = buyers
                buyers += 1
            else:
                buyer = rng.randrange(buyers)
            writer.writerow(_row(rng, n, buyer))
    return buyers


def _row(rng: random.Random, n: int, buyer: int) -> list[str]:
    locale, country, zone, firsts, lasts, tld = LOCALES[buyer % len(LOCALES)]
    first, last = firsts[buyer % len(firsts)], lasts[buyer // 7 % len(lasts)]
    marketplace = MARKETPLACES[n % len(MARKETPLACES)]
    ordered = START + timedelta(minutes=rng.randrange(600_000))
    shipped = ordered + timedelta(hours=rng.randrange(4, 72))
    delivered = shipped + timedelta(days=rng.randrange(1, 9), hours=rng.randrange(24))
    stage = rng.random()
    return [
        f"{marketplace[:2].upper()}-{n:08d}",
        marketplace.title() if n % 10 == 0 else marketplace,
        _address(buyer, first, last, tld, shouting=n % 5 == 0),
        f"{first} {last}",
        PRODUCTS[rng.randrange(len(PRODUCTS))],
        locale.replace("-", "_").lower() if n % 9 == 0 else locale,
        country,
        _stamp(ordered),
        _stamp(shipped) if stage > 0.05 else "",
        (_stamp(delivered) if n % 3 else delivered.date().isoformat()) if stage > 0.2 else "",
        f"https://shop.example/reviews/{n}" if marketplace == "shop" else "",
        zone if n % 4 == 0 else "",
        _stamp(max(ordered, shipped, delivered) + timedelta(hours=1)),
    ]


def _address(buyer: int, first: str, last: str, tld: str, *, shouting: bool) -> str:
    """One address per buyer, spelled in capitals now and then; some domains not ASCII."""
    domain = f"bücher.{tld}" if buyer % 50 == 0 else f"example.{tld}"
    local = f"{first}.{last}.{buyer}" if buyer % 3 else f"buyer{buyer}"
    return f"{local}@{domain.upper()}" if shouting else f"{local}@{domain}".lower()


def first_rows(source: Path, target: Path, rows: int) -> None:
    """The header and the first ``rows`` rows (the generator writes one line per row)."""
    with (
        source.open(encoding="utf-8", newline="") as read,
        target.open("w", encoding="utf-8", newline="") as out,
    ):
        for _, line in zip(range(rows + 1), read, strict=False):
            out.write(line)


# Runs -----------------------------------------------------------------------------------------

_STATUS = Path("/proc/self/status")
_SUMMARY = re.compile(r": (\d+) new, (\d+) updated, (\d+) rejected")


def _status_mb(name: str) -> float:
    """VmRSS, VmHWM... of this process in MB (Linux); NaN where /proc is not there."""
    try:
        found = re.search(rf"^{name}:\s+(\d+) kB", _STATUS.read_text(), re.MULTILINE)
    except OSError:
        return float("nan")
    return int(found[1]) / 1024 if found else float("nan")


@dataclass(frozen=True)
class Imported:
    seconds: float
    counts: tuple[int, ...]
    """(new, updated, rejected), from the command's summary line."""
    before_mb: float
    """The process's resident memory when the import starts (Python, SQLAlchemy, the worker)."""
    peak_mb: float
    """The process's peak resident memory while it imports (VmHWM)."""


def _import_in_child(url: str, path: str, results: Connection) -> None:
    """``worker import orders PATH`` as the CLI parses and runs it (its handler), in a process
    of its own, so its peak RSS is its own. The summary line and any reject lines are kept
    out of the table; the progress bar stays off, as when stderr is not a terminal."""
    settings = Settings.model_validate({"database_url": url})
    parsed = build_parser().parse_args(["import", "orders", path])
    out, err = io.StringIO(), io.StringIO()
    before = _status_mb("VmRSS")
    with contextlib.suppress(OSError):  # Linux resets VmHWM to the RSS now on "5"
        Path("/proc/self/clear_refs").write_text("5")
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        start = perf_counter()
        code = parsed.handler(parsed, settings)
        elapsed = perf_counter() - start
    peak = _status_mb("VmHWM")
    summary = _SUMMARY.search(out.getvalue())
    if code != 0 or summary is None:
        results.send(f"the import failed (exit {code}): {out.getvalue()} {err.getvalue()[:500]}")
    else:
        counts = tuple(int(n) for n in summary.groups())
        results.send(Imported(elapsed, counts, before, peak))
    results.close()


def worker_import(url: str, path: Path, timeout: float) -> Imported:
    """One real import in a fresh process (spawned: nothing inherited), at most ``timeout``
    seconds; a process stopped on time out leaves nothing behind (one transaction)."""
    context = multiprocessing.get_context("spawn")
    receive, send = context.Pipe(duplex=False)
    child = context.Process(target=_import_in_child, args=(url, str(path), send))
    child.start()
    send.close()
    try:
        if not receive.poll(timeout):
            raise RunTimeout(f"an import took longer than --run-timeout-s {timeout:g}")
        result = receive.recv()
    except EOFError:
        result = f"the import process died (exit {child.exitcode})"
    finally:
        child.join(5)
        if child.is_alive():
            child.kill()
            child.join()
    if not isinstance(result, Imported):
        raise SystemExit(f"{result}; figures void")
    return result


class RunTimeout(Exception):
    pass


def ceiling(path: Path) -> int:
    """The csv module reading every row, nothing else; how many rows it read."""
    with path.open(encoding="utf-8", newline="") as handle:
        return sum(1 for _ in csv.reader(handle)) - 1


@dataclass(frozen=True)
class Database:
    """Where the imports go: a fresh copy of a migrated SQLite file per run, or a given
    database (PostgreSQL) whose tables are emptied before each fresh import."""

    work: Path
    url: str | None

    def prepare(self) -> None:
        url = self.url or f"sqlite:///{self.work / 'template.db'}"
        store = Store.open(url)
        try:
            store.upgrade()
        finally:
            store.close()

    def fresh(self, name: str) -> str:
        if self.url is None:
            self.drop(name)
            target = self.work / f"{name}.db"
            shutil.copyfile(self.work / "template.db", target)
            return f"sqlite:///{target}"
        engine = sqlalchemy.create_engine(self.url)
        try:
            with engine.begin() as connection:
                tables = ", ".join(f'"{t.name}"' for t in schema.metadata.sorted_tables)
                connection.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
        finally:
            engine.dispose()
        return self.url

    def drop(self, name: str) -> None:
        if self.url is None:
            for old in self.work.glob(f"{name}.db*"):
                old.unlink()


def _check(counts: tuple[int, ...], expected: tuple[int, ...], what: str) -> None:
    if counts != expected:
        raise SystemExit(f"{what}: (new, updated, rejected) {counts}, not {expected}; void")


def commit_ms(work: Path, commits: int = 50) -> float:
    """One tiny SQLite commit in the bench's folder, WAL as the store sets it."""
    path = work / "commit-probe.db"
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as db:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE IF NOT EXISTS probe (n INTEGER)")
        start = perf_counter()
        for n in range(commits):
            db.execute("INSERT INTO probe VALUES (?)", (n,))
        return (perf_counter() - start) / commits * 1000


# Report ---------------------------------------------------------------------------------------


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
        return f"{self.label:<50}{self.median:>11.1f}{low:>11.1f}{high:>11.1f}  {self.unit}"


@dataclass
class Import:
    """The figures of one kind of import over the repeats."""

    rate: Figure
    growth: Figure
    peak: Figure

    @classmethod
    def named(cls, what: str, short: str) -> Import:
        return cls(
            Figure(what, "rows/s"),
            Figure(f"RSS growth while importing, {short}", "MB"),
            Figure(f"peak RSS of the import process, {short}", "MB"),
        )

    def add(self, rows: int, done: Imported) -> None:
        self.rate.values.append(rows / done.seconds)
        self.growth.values.append(done.peak_mb - done.before_mb)
        self.peak.values.append(done.peak_mb)


@dataclass
class Results:
    ceiling: Figure
    small: Import
    fresh: Import
    again: Import
    commits: Figure

    @classmethod
    def empty(cls, rows: int, small: int, where: str) -> Results:
        return cls(
            Figure(f"csv module reads {rows} rows (ceiling)", "rows/s"),
            Import.named(f"worker import, {small} rows, fresh {where}", f"{small} rows"),
            Import.named(f"worker import, {rows} rows, fresh {where}", f"{rows} rows"),
            Import.named(f"worker re-import, {rows} rows, all known", f"{rows} again"),
            Figure("one SQLite commit here (WAL, as the store)", "ms"),
        )

    def all(self) -> list[Figure]:
        imports = (self.small, self.fresh, self.again)
        return [
            self.ceiling,
            *(i.rate for i in imports),
            *(f for i in imports for f in (i.growth, i.peak)),
            self.commits,
        ]


def print_report(args: argparse.Namespace, inputs: Inputs, results: Results) -> None:
    print(
        f"import_orders: {args.rows} rows ({inputs.buyers} buyers, {inputs.size / 1e6:.0f} MB), "
        f"{args.repeat} runs each, {inputs.where}; {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, SQLAlchemy {sqlalchemy.__version__}, "
        f"SQLite {sqlite3.sqlite_version}"
    )
    print("machine noise: the cores may be shared, so compare medians, not single runs")
    print()
    print(f"{'figure':<50}{'median':>11}{'min':>11}{'max':>11}  unit")
    for figure in results.all():
        if figure.values:
            print(figure.row())
    print()
    top = results.ceiling.median
    for done in (results.small, results.fresh, results.again):
        print(f"{done.rate.label} = {done.rate.median / top:.3f}x the csv module, same run")
    small, big = results.small.growth.median, results.fresh.growth.median
    print(
        f"memory: RSS growth {small:.1f} MB importing {args.small_rows} rows, {big:.1f} MB "
        f"importing {args.rows} ({big - small:+.1f} MB for {args.rows / args.small_rows:.0f}x "
        f"the rows); process peak {results.small.peak.median:.0f} MB and "
        f"{results.fresh.peak.median:.0f} MB"
    )


# Main -----------------------------------------------------------------------------------------


@dataclass
class Inputs:
    """Written once, before any clock starts."""

    big: Path
    small: Path
    buyers: int
    size: int
    where: str


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows of the big file (N)")
    parser.add_argument(
        "--small-rows", type=int, help="rows of the small file (default N/10, at least 1)"
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure; medians shown")
    parser.add_argument(
        "--database-url",
        help="import there instead of fresh SQLite files (PostgreSQL: a THROWAWAY database; "
        "its tables are emptied before each fresh import)",
    )
    parser.add_argument(
        "--run-timeout-s", type=float, default=1800.0, help="give up on any one run after this"
    )
    args = parser.parse_args(argv)
    args.small_rows = args.small_rows or max(1, args.rows // 10)
    if args.rows < 1 or args.repeat < 1 or not 1 <= args.small_rows <= args.rows:
        parser.error("--rows and --repeat at least 1, --small-rows from 1 to --rows")
    return args


def prepare(args: argparse.Namespace, work: Path) -> Inputs:
    big, small = work / "orders.csv", work / "orders-small.csv"
    buyers = write_orders(big, args.rows)
    first_rows(big, small, args.small_rows)
    where = "SQLite"
    if args.database_url:
        where = make_url(args.database_url).get_backend_name()
    return Inputs(big, small, buyers, big.stat().st_size, where)


def one_repeat(
    args: argparse.Namespace, inputs: Inputs, database: Database, results: Results, n: int
) -> None:
    """Each figure once; interleaved, so drift on a shared machine hits every figure alike."""
    timeout = args.run_timeout_s
    start = perf_counter()
    count = ceiling(inputs.big)
    if count != args.rows:
        raise SystemExit(f"the csv module read {count} rows, not {args.rows}")
    results.ceiling.values.append(count / (perf_counter() - start))

    done = worker_import(database.fresh(f"small{n}"), inputs.small, timeout)
    database.drop(f"small{n}")
    _check(done.counts, (args.small_rows, 0, 0), "small import")
    results.small.add(args.small_rows, done)

    url = database.fresh(f"big{n}")
    done = worker_import(url, inputs.big, timeout)
    _check(done.counts, (args.rows, 0, 0), "import")
    results.fresh.add(args.rows, done)
    done = worker_import(url, inputs.big, timeout)
    _check(done.counts, (0, args.rows, 0), "re-import")
    results.again.add(args.rows, done)
    database.drop(f"big{n}")
    if args.database_url is None:
        results.commits.values.append(commit_ms(database.work))


def measure(args: argparse.Namespace, work: Path) -> None:
    inputs = prepare(args, work)
    database = Database(work, args.database_url)
    database.prepare()
    results = Results.empty(args.rows, args.small_rows, inputs.where)
    for n in range(args.repeat):
        one_repeat(args, inputs, database, results, n)
    print_report(args, inputs, results)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        try:
            measure(args, Path(tmp))
        except RunTimeout as exc:
            print(exc, file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
