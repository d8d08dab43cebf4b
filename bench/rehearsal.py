"""The 90-day rehearsal: a seeded shop's season replayed through the real command line.

A new user's first question is "what would this send, and would it ever misbehave?". This
script answers it the way they would find out: a fresh work directory, the feeds a seller
has (eBay orders as Seller Hub's Orders report, the other marketplaces as the generic file;
no delivery date anywhere), imported with ``worker import``; the carrier's delivery events
imported with ``worker import shipments`` every few days as they happen, the rest of the
orders counted from the estimated delivery (shipped + transit time for the route); the
bundled ``worker sink`` as the SMTP server and one ``worker run --once --now T`` per simulated
half-day. It then reads the Maildir and the database and checks the promises (exactly once,
no mail during a dispute, at most one message per buyer per 3 days, the campaign timeline
counted from the right delivery time) for every order. Exit status 0 only if every check
holds.

    .venv/bin/python bench/rehearsal.py --orders 1000 --disputes 50 --reviews 100 --days 90

With ``--database-url`` (a fresh, empty database: PostgreSQL, say) instead of the work
directory's SQLite file, and ``--workers N``, each pass is N such processes at once, as
several workers sharing one database would be; the checks are the same.
"""

from __future__ import annotations

import argparse
import csv
import mailbox
import os
import queue
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.parser import BytesHeaderParser
from email.policy import default as default_policy
from pathlib import Path
from random import Random
from typing import IO

import sqlalchemy
from sqlalchemy.exc import SQLAlchemyError

from worker.domain import DisputeKind

ROOT = Path(__file__).resolve().parent.parent
START = datetime(2026, 1, 5, tzinfo=UTC)  # a Monday
PASS_HOURS = (8, 14)
QUIET_HOURS = tuple(h for h in range(24) if h not in PASS_HOURS)
"""Events never fall in a pass's hour, so a pass (seconds long) never straddles one."""
COOLDOWN = timedelta(days=3)

FOLLOW_UP, THANKS = "review-follow-up", "review-thanks"
CHECK_IN, REQUEST, REMINDER, THANK_YOU = (
    "check-in",
    "review-request",
    "review-reminder",
    "thank-you",
)
BUYER_CAP = timedelta(days=3)
CHECK_IN_ROOM = timedelta(days=7 + 10 + 1)  # the delay, its max_lateness, a pass
REMINDER_ROOM = timedelta(days=15 + 10 + 1)  # the 10-15 day delay, its max_lateness, a pass
THANKS_ROOM = timedelta(days=2)

SHIP_FROM = "DE"
"""The seller's country (the ``delivery.ship_from`` setting written to the config)."""
SAME_REGION = frozenset({"AT", "FR", "ES", "IT"})
TRANSIT = {"domestic": timedelta(days=4), "same_region": timedelta(days=7)}
CROSS_BORDER = timedelta(days=14)
"""The documented default transit times (docs/delivery.md), written out here on purpose: the
rehearsal's expectations must not be computed by the code it checks."""
EVENT_SHARE = 0.7
"""Orders whose carrier reports the delivery; the others are counted from the estimate."""
EVENTS_EVERY = timedelta(days=3)
"""How often the seller imports the carrier's delivery events (those that happened since)."""
COUNTRY_NAMES = {
    "GB": "United Kingdom", "US": "United States", "DE": "Germany", "AT": "Austria",
    "FR": "France", "ES": "Spain", "IT": "Italy", "JP": "Japan", "CN": "China",
}  # fmt: skip
"""The eBay Orders report names countries in English."""
SERVICES = (
    ("DHL Paket", "dhl", "00340434{:012d}"),
    ("Deutsche Post Warenpost International", "deutsche-post", "LX{:09d}DE"),
    ("Hermes Paket", "hermes", "H10{:017d}"),
)

LOCALES = (
    ("en", "GB", "co.uk", ["Oliver Smith", "Amelia Jones", "Harry Taylor"]),
    ("en", "US", "com", ["Emma Johnson", "Liam Brown", "Ava Miller"]),
    ("de", "DE", "de", ["Jonas Müller", "Lena Schäfer", "Paul Weiß"]),
    ("de-AT", "AT", "at", ["Lukas Gruber", "Anna Huber", "Felix Wagner"]),
    ("fr", "FR", "fr", ["Léa Martin", "Hugo Bernard", "Chloé Dubois"]),
    ("es", "ES", "es", ["Lucía García", "Hugo Fernández", "Martina López"]),
    ("it", "IT", "it", ["Giulia Rossi", "Francesco Russo", "Sofia Ferrari"]),
    ("ja", "JP", "jp", ["山田 太郎", "佐藤 花子", "鈴木 一郎"]),
    ("zh", "CN", "cn", ["王 伟", "李 娜", "张 敏"]),
)
PRODUCTS = (
    "Glass kettle",
    "Milk frother",
    "Tea strainer",
    "Garlic press",
    "Silicone spatula",
    "Magnetic phone mount",
    "Bamboo cutting board",
)
ORDER_HEADER = (
    "order_id,marketplace,buyer_email,buyer_name,product,locale,country,"
    "ordered_at,shipped_at,delivered_at"
).split(",")


class RehearsalError(Exception):
    """The rehearsal could not run (as opposed to a check that failed)."""


# The simulated shop ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Buyer:
    email: str
    name: str
    locale: str
    country: str


def transit_to(country: str) -> timedelta:
    if country == SHIP_FROM:
        return TRANSIT["domestic"]
    return TRANSIT["same_region"] if country in SAME_REGION else CROSS_BORDER


@dataclass(frozen=True, slots=True)
class Order:
    order_id: str
    marketplace: str
    buyer: Buyer
    products: tuple[str, ...]
    shipped_at: datetime
    """As the export gives it: eBay's Orders report says the day only (midnight UTC)."""
    arrived_at: datetime
    """When the parcel really arrived."""
    reported: bool
    """The carrier's delivery event for it reaches the seller (the shipments file)."""
    service: int

    @property
    def delivered_at(self) -> datetime:
        """What the worker must count the delivered steps from: the reported delivery, else
        the estimate (shipped + the route's transit time)."""
        if self.reported:
            return self.arrived_at
        return self.shipped_at + transit_to(self.buyer.country)


@dataclass(frozen=True, slots=True)
class DisputeRow:
    order_id: str
    kind: DisputeKind
    opened_at: datetime
    closed_at: datetime | None

    def blocks(self, moment: datetime, cooldown: timedelta) -> bool:
        end = None if self.closed_at is None else self.closed_at + cooldown
        return self.opened_at <= moment and (end is None or moment < end)


@dataclass(frozen=True, slots=True)
class ReviewRow:
    order_id: str
    rating: int
    reviewed_at: datetime


@dataclass(frozen=True, slots=True)
class Shop:
    orders: list[Order]
    disputes: list[DisputeRow]
    reviews: list[ReviewRow]

    def _by_id(self) -> dict[str, Order]:
        return {o.order_id: o for o in self.orders}

    def disputes_of_buyer(self) -> dict[str, list[DisputeRow]]:
        by_id, found = self._by_id(), defaultdict(list)
        for dispute in self.disputes:
            found[by_id[dispute.order_id].buyer.email].append(dispute)
        return found

    def review_of(self) -> dict[str, ReviewRow]:
        return {r.order_id: r for r in self.reviews}


def _quiet_time(rng: Random, day: datetime) -> datetime:
    return day.replace(hour=rng.choice(QUIET_HOURS), minute=rng.randrange(60), second=0)


def _new_buyer(rng: Random, number: int) -> Buyer:
    locale, country, tld, names = rng.choice(LOCALES)
    return Buyer(f"buyer{number:05d}@mail.example.{tld}", rng.choice(names), locale, country)


def _order_id(rng: Random, marketplace: str, number: int) -> str:
    if marketplace == "ebay":
        return f"{rng.randint(10, 99)}-{10000 + number:05d}-{rng.randint(10000, 99999)}"
    if marketplace == "aliexpress":
        return str(8100000000000000 + number)
    if marketplace == "amazon":
        return f"{rng.randint(100, 999)}-{number:07d}-{rng.randint(1000000, 9999999)}"
    return f"S-{1000 + number}"


def make_orders(rng: Random, count: int, days: int) -> list[Order]:
    """~5% Amazon (one review request each, nothing else), ~10% from a returning buyer, a few
    orders of several items. Parcels arrive between half the route's transit time and two
    days after it, so the estimate is never far off and a reported delivery reaches the
    seller before the check-in the estimate would have sent."""
    buyers: list[Buyer] = []
    orders = []
    for number in range(count):
        if buyers and rng.random() < 0.1:
            buyer = rng.choice(buyers)
        else:
            buyer = _new_buyer(rng, len(buyers))
            buyers.append(buyer)
        marketplace = rng.choices(["ebay", "aliexpress", "shop", "amazon"], [32, 32, 31, 5])[0]
        day = START + timedelta(days=rng.randrange(days))
        shipped = day if marketplace == "ebay" else _quiet_time(rng, day)
        transit = transit_to(buyer.country)
        low = max(timedelta(days=1), transit / 2)
        span = transit + timedelta(days=2) - low
        arrived = shipped + low + timedelta(minutes=rng.randrange(int(span.total_seconds() // 60)))
        items = rng.sample(PRODUCTS, rng.choices([1, 2, 3], [85, 10, 5])[0])
        orders.append(
            Order(
                _order_id(rng, marketplace, number),
                marketplace,
                buyer,
                tuple(items),
                shipped,
                _quiet_time(rng, arrived),
                rng.random() < EVENT_SHARE,
                rng.randrange(len(SERVICES)),
            )
        )
    return sorted(orders, key=lambda o: o.delivered_at)


def make_disputes(rng: Random, orders: Sequence[Order], count: int) -> list[DisputeRow]:
    """Opened a few days after delivery; about half closed 5-30 days later."""
    disputes = []
    for order in rng.sample(list(orders), min(count, len(orders))):
        opened = _quiet_time(rng, order.delivered_at + timedelta(days=rng.randint(1, 6)))
        closed = None
        if rng.random() < 0.5:
            closed = _quiet_time(rng, opened + timedelta(days=rng.randint(5, 30)))
        disputes.append(DisputeRow(order.order_id, rng.choice(list(DisputeKind)), opened, closed))
    return disputes


def make_reviews(rng: Random, orders: Sequence[Order], count: int) -> list[ReviewRow]:
    """10-60 days after delivery, more good ratings than bad, as on real marketplaces."""
    reviews = []
    for order in rng.sample(list(orders), min(count, len(orders))):
        at = _quiet_time(rng, order.delivered_at + timedelta(days=rng.randint(10, 60)))
        rating = rng.choices([1, 2, 3, 4, 5], [1, 1, 2, 3, 5])[0]
        reviews.append(ReviewRow(order.order_id, rating, at))
    return reviews


def make_shop(seed: int, orders: int, disputes: int, reviews: int, days: int) -> Shop:
    rng = Random(seed)
    made = make_orders(rng, orders, days)
    return Shop(made, make_disputes(rng, made, disputes), make_reviews(rng, made, reviews))


def _iso(moment: datetime | None) -> str:
    return "" if moment is None else moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence[str]]) -> Path:
    with path.open("w", encoding="utf-8", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(header)
        writer.writerows(rows)
    return path


EBAY_HEADER = (
    "Sales Record Number,Order Number,Buyer Username,Buyer Name,Buyer Email,Buyer Note,Buyer "
    "Address 1,Buyer Address 2,Buyer City,Buyer State,Buyer Zip,Buyer Country,Buyer Tax "
    "Identifier Name,Buyer Tax Identifier Value,Ship To Name,Ship To Phone,Ship To Address "
    "1,Ship To Address 2,Ship To City,Ship To State,Ship To Zip,Ship To Country,Item "
    "Number,Item Title,Custom Label,Sold Via Promoted Listings,Quantity,Sold For,Shipping And"
    " Handling,Item Location,Item Zip Code,Item Country,eBay Collect And Remit Tax Rate,eBay "
    "Collect And Remit Tax Type,eBay Reference Name,eBay Reference Value,Tax Status,Seller "
    "Collected Tax,eBay Collected Tax,Electronic Waste Recycling Fee,Mattress Recycling "
    "Fee,Battery Recycling Fee,White Goods Disposal Tax,Tire Recycling Fee,Additional "
    "Fee,Lumber Fee,Prepaid Wireless Fee,Road Improvement And Food Delivery Fee,eBay "
    "Collected Charges,Total Price,eBay Collected Tax and Fees Included in Total,Payment "
    "Method,Sale Date,Paid On Date,Ship By Date,Minimum Estimated Delivery Date,Maximum "
    "Estimated Delivery Date,Shipped On Date,Feedback Left,Feedback Received,My Item "
    "Note,PayPal Transaction ID,Shipping Service,Tracking Number,Transaction ID,Variation "
    "Details,Global Shipping Program,Global Shipping Reference ID,Click And Collect,Click And"
    " Collect Reference Number,eBay Plus,Authenticity Verification Program,Authenticity "
    "Verification Status,Authenticity Verification Outcome Reason,PSA Vault Program,Vault "
    "Fulfillment Type,eBay Fulfillment Program,Tax City,Tax State,Tax Zip,Tax Country,eBay "
    "International Shipping"
).split(",")
"""Seller Hub's Orders report, as downloaded (docs/order-feeds.md)."""


def _ebay_day(moment: datetime) -> str:
    return moment.strftime("%b-%d-%y")  # Mar-03-26


def _ebay_rows(order: Order, record: int) -> Iterator[list[str]]:
    """An order's rows in the Orders report: one row for a single item; for several, a
    summary row with the buyer and shipping, then a row per item."""
    cells = dict.fromkeys(EBAY_HEADER, "")
    name, _carrier, number = SERVICES[order.service]
    country = COUNTRY_NAMES[order.buyer.country]
    ordered = order.shipped_at - timedelta(days=2)
    cells |= {
        "Sales Record Number": str(record),
        "Order Number": order.order_id,
        "Buyer Username": order.buyer.email.split("@")[0],
        "Buyer Name": order.buyer.name,
        "Buyer Email": order.buyer.email,
        "Buyer Country": country,
        "Ship To Name": order.buyer.name,
        "Ship To Country": country,
        "Quantity": str(len(order.products)),
        "Sale Date": _ebay_day(ordered),
        "Paid On Date": _ebay_day(ordered),
        "Shipped On Date": _ebay_day(order.shipped_at),
        "Shipping Service": name,
        "Tracking Number": number.format(record),
    }
    if len(order.products) == 1:
        yield [(cells | {"Item Title": order.products[0]})[c] for c in EBAY_HEADER]
        return
    yield [cells[c] for c in EBAY_HEADER]
    for offset, product in enumerate(order.products, 1):
        item = dict.fromkeys(EBAY_HEADER, "") | {
            "Sales Record Number": str(record + offset),
            "Order Number": order.order_id,
            "Buyer Username": cells["Buyer Username"],
            "Item Title": product,
            "Quantity": "1",
            "Sale Date": cells["Sale Date"],
            "Shipped On Date": cells["Shipped On Date"],
            "Tracking Number": cells["Tracking Number"],
        }
        yield [item[c] for c in EBAY_HEADER]


def write_ebay_report(orders: Sequence[Order], path: Path) -> Path:
    """eBay's layout to the letter: a blank line before the header and after it, and the
    download's two trailing lines."""
    with path.open("w", encoding="utf-8", newline="") as out:
        writer = csv.writer(out)
        out.write("\r\n")
        writer.writerow(EBAY_HEADER)
        out.write("\r\n")
        record = 1000
        for order in orders:
            writer.writerows(_ebay_rows(order, record))
            record += len(order.products) + 1
        out.write("\r\n")
        writer.writerow([f"{len(orders)} record(s) downloaded"])
        writer.writerow(["Seller ID : kettle_and_co"])
    return path


def write_feeds(shop: Shop, folder: Path) -> dict[str, Path]:
    """The orders a seller exports: no delivery dates. eBay's as its Orders report, the other
    marketplaces' in the generic file (shipped time, carrier, tracking)."""
    ebay = [o for o in shop.orders if o.marketplace == "ebay"]
    others = (
        [
            o.order_id,
            o.marketplace,
            o.buyer.email,
            o.buyer.name,
            " | ".join(o.products),
            o.buyer.locale,
            o.buyer.country,
            _iso(o.shipped_at - timedelta(days=2)),
            _iso(o.shipped_at),
            "",
            SERVICES[o.service][1],
        ]
        for o in shop.orders
        if o.marketplace != "ebay"
    )
    disputes = (
        [d.order_id, d.kind.value, _iso(d.opened_at), _iso(d.closed_at)] for d in shop.disputes
    )
    reviews = ([r.order_id, str(r.rating), _iso(r.reviewed_at)] for r in shop.reviews)
    return {
        "orders --format ebay": write_ebay_report(ebay, folder / "ebay-orders-report.csv"),
        "orders": _write_csv(folder / "orders.csv", [*ORDER_HEADER, "carrier"], others),
        "disputes": _write_csv(
            folder / "disputes.csv", ["order_id", "kind", "opened_at", "closed_at"], disputes
        ),
        "reviews": _write_csv(
            folder / "reviews.csv", ["order_id", "rating", "reviewed_at"], reviews
        ),
    }


SHIPMENTS_HEADER = ["order_id", "carrier", "tracking_number", "status", "at"]


def write_shipments(orders: Iterable[Order], path: Path) -> Path | None:
    """The carrier's delivery events of ``orders``, as ``worker import shipments`` reads them;
    None when there are none."""
    rows = [
        [o.order_id, SERVICES[o.service][1], "", "delivered", _iso(o.arrived_at)]
        for o in orders
        if o.reported
    ]
    return _write_csv(path, SHIPMENTS_HEADER, rows) if rows else None


# The real command line -------------------------------------------------------------------------


def _worker_command() -> list[str]:
    script = Path(sys.executable).parent / "worker"
    return [str(script)] if script.exists() else [sys.executable, "-m", "worker"]


class Cli:
    """``worker`` in a subprocess, in the work directory, deaf to the caller's WORKER_* variables
    (a WORKER_SMTP_HOST pointing at a real relay must not receive the rehearsal's mail).
    ``database_url`` goes in the environment, so its password is never written to a file."""

    def __init__(self, workdir: Path, database_url: str | None = None) -> None:
        self.workdir = workdir
        self.command = _worker_command()
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("WORKER_")}
        if database_url is not None:
            self.env["WORKER_DATABASE_URL"] = database_url

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.command, *args],
            cwd=self.workdir,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )

    def run_together(self, count: int, *args: str) -> list[subprocess.CompletedProcess[str]]:
        """``count`` processes started at once; their output goes to files, so a chatty one
        never blocks on a full pipe while another is waited for."""
        started: list[tuple[subprocess.Popen[bytes], IO[bytes]]] = []
        try:
            for _ in range(count):
                spool = tempfile.TemporaryFile()
                started.append((self._popen(args, spool), spool))
            deadline = time.monotonic() + 600
            done = []
            for process, output in started:
                code = process.wait(timeout=max(deadline - time.monotonic(), 1))
                output.seek(0)
                text = output.read().decode("utf-8", "replace")
                done.append(subprocess.CompletedProcess(process.args, code, text, ""))
            return done
        finally:
            for process, output in started:
                if process.poll() is None:
                    process.kill()
                    process.wait(timeout=30)
                output.close()

    def _popen(self, args: Sequence[str], output: IO[bytes]) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [*self.command, *args],
            cwd=self.workdir,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
        )

    def check(self, *args: str) -> str:
        done = self.run(*args)
        if done.returncode != 0:
            raise RehearsalError(
                f"`worker {' '.join(args)}` exited {done.returncode}:\n{done.stdout}{done.stderr}"
            )
        return done.stdout

    def start(self, *args: str, log: Path) -> subprocess.Popen[str]:
        with log.open("w", encoding="utf-8") as err:
            return subprocess.Popen(
                [*self.command, *args],
                cwd=self.workdir,
                env=self.env,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
            )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def write_config(workdir: Path, smtp_port: int, external_database: bool = False) -> None:
    """``external_database``: the URL comes from WORKER_DATABASE_URL (see :class:`Cli`)."""
    (workdir / "config").mkdir()
    database = (
        "# database_url: from WORKER_DATABASE_URL (--database-url)\n"
        if external_database
        else f"database_url: sqlite:///{workdir / 'var' / 'worker.db'}\n"
    )
    (workdir / "config" / "worker.yaml").write_text(
        f"{database}"
        'from: "Kettle & Co <service@shop.example>"\n'
        'reply_to: "Kettle & Co customer service <help@shop.example>"\n'
        "seller: {name: Kettle & Co, signature: Anna}\n"
        f"smtp: {{host: 127.0.0.1, port: {smtp_port}, tls: none, timeout_s: 10}}\n"
        f"campaigns_dir: {ROOT / 'campaigns'}\n"
        f"templates_dir: {ROOT / 'templates'}\n"
        f"dispute_cooldown: {COOLDOWN.days}d\n"
        f"buyer_cap: {BUYER_CAP.days}d\n"
        f"delivery: {{ship_from: {SHIP_FROM}}}\n"
        "log_format: json\n",
        encoding="utf-8",
    )


class SinkProcess:
    """``worker sink``; its stdout (one line per message) is drained so the pipe never fills."""

    def __init__(self, cli: Cli, port: int, maildir: Path) -> None:
        self.process = cli.start(
            "sink", "--port", str(port), "--maildir", str(maildir), log=cli.workdir / "sink.log"
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self._drainer = threading.Thread(target=self._drain, daemon=True)
        self._drainer.start()

    def _drain(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def wait_listening(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                raise RehearsalError(f"the sink exited {self.process.wait()} before listening")
            if line.startswith("sink listening"):
                return
        raise RehearsalError(f"no 'sink listening' line from the sink within {timeout_s:g}s")

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=30)
        self._drainer.join(timeout=5)
        if self.process.stdout is not None:
            self.process.stdout.close()
        return code


# Passes ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Mail:
    order_id: str
    campaign: str
    step: str
    recipient: str
    at: datetime
    """The ``--now`` of the pass that sent it."""


@dataclass
class Passes:
    times: list[datetime] = field(default_factory=list)
    durations_s: list[float] = field(default_factory=list)
    sent_by: dict[str, datetime] = field(default_factory=dict)
    """Maildir key -> the pass that produced it."""
    errors: list[str] = field(default_factory=list)


def pass_times(days: int) -> Iterator[datetime]:
    for day in range(days):
        for hour in PASS_HOURS:
            yield START + timedelta(days=day, hours=hour)


class CarrierEvents:
    """The seller's routine: every few days, import the delivery events the carrier reported
    since the last import (``worker import shipments``), before the pass."""

    def __init__(self, cli: Cli, orders: Sequence[Order]) -> None:
        self.cli = cli
        self.orders = sorted((o for o in orders if o.reported), key=lambda o: o.arrived_at)
        self.imported_to: datetime | None = None
        self.files = 0

    def before(self, moment: datetime) -> None:
        if self.imported_to is not None and moment - self.imported_to < EVENTS_EVERY:
            return
        since = self.imported_to
        new = [
            o
            for o in self.orders
            if (since is None or o.arrived_at > since) and o.arrived_at <= moment
        ]
        self.imported_to = moment
        path = write_shipments(new, self.cli.workdir / f"shipments-{moment:%Y%m%d%H}.csv")
        if path is not None:
            self.cli.check("import", "shipments", path.name)
            self.files += 1


def run_passes(
    cli: Cli,
    times: Sequence[datetime],
    maildir: Path,
    log: Path,
    workers: int = 1,
    events: CarrierEvents | None = None,
) -> Passes:
    """``workers`` concurrent ``worker run --once`` per time; files new in the Maildir once
    they have all exited belong to that pass."""
    box = mailbox.Maildir(maildir, factory=None, create=False)
    passes = Passes()
    with log.open("w", encoding="utf-8") as out:
        for number, moment in enumerate(times, 1):
            if events is not None:
                events.before(moment)
            started = time.monotonic()
            if workers == 1:
                each = [cli.run("run", "--once", "--now", _iso(moment))]
            else:
                each = cli.run_together(workers, "run", "--once", "--now", _iso(moment))
            passes.durations_s.append(time.monotonic() - started)
            passes.times.append(moment)
            for worker, done in enumerate(each, 1):
                name = f"{_iso(moment)}" + (f" worker {worker}" if workers > 1 else "")
                out.write(f"== {name} exit {done.returncode}\n{done.stdout}{done.stderr}")
                if done.returncode != 0:
                    output = (done.stderr or done.stdout).strip()
                    last = (output.splitlines() or ["(no output)"])[-1]
                    passes.errors.append(f"{name}: exit {done.returncode}: {last}")
            for key in set(box.keys()) - passes.sent_by.keys():
                passes.sent_by[key] = moment
            if number % 20 == 0 or number == len(times):
                print(f"  pass {number}/{len(times)} at {_iso(moment)}", file=sys.stderr)
    return passes


def read_mails(maildir: Path, sent_by: dict[str, datetime]) -> list[Mail]:
    box = mailbox.Maildir(maildir, factory=None, create=False)
    parser = BytesHeaderParser(policy=default_policy)
    mails = []
    for key in box.keys():
        headers = parser.parsebytes(box.get_bytes(key))
        mails.append(
            Mail(
                str(headers["X-Worker-Order"]),
                str(headers["X-Worker-Campaign"]),
                str(headers["X-Worker-Step"]),
                str(headers["Delivered-To"]).strip().lower(),
                sent_by[key],
            )
        )
    return sorted(mails, key=lambda m: (m.at, m.order_id, m.campaign, m.step))


# Checks ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    problems: list[str]


@dataclass(frozen=True, slots=True)
class World:
    """What happened, indexed for the checks."""

    shop: Shop
    mails: list[Mail]
    end: datetime
    by_key: dict[tuple[str, str, str], list[Mail]]

    @classmethod
    def of(cls, shop: Shop, mails: list[Mail], end: datetime) -> World:
        by_key: dict[tuple[str, str, str], list[Mail]] = defaultdict(list)
        for mail in mails:
            by_key[(mail.order_id, mail.campaign, mail.step)].append(mail)
        return cls(shop, mails, end, dict(by_key))

    def of_step(self, order_id: str, campaign: str, step: str) -> list[Mail]:
        return self.by_key.get((order_id, campaign, step), [])

    def followed_up(self) -> Iterator[Order]:
        """Orders the shipped campaigns apply to, whose buyer never had a dispute."""
        disputed = self.shop.disputes_of_buyer()
        for order in self.shop.orders:
            if order.marketplace != "amazon" and order.buyer.email not in disputed:
                yield order


def _times(mails: Sequence[Mail]) -> str:
    return ", ".join(_iso(m.at) for m in mails) or "never"


def check_exactly_once(world: World) -> Check:
    problems = [
        f"{'/'.join(key)}: {len(sent)} messages at {_times(sent)}"
        for key, sent in world.by_key.items()
        if len(sent) > 1
    ]
    return Check("every (order, campaign, step) at most once in the Maildir", problems)


def check_check_ins(world: World) -> Check:
    problems = []
    for order in world.followed_up():
        sent = world.of_step(order.order_id, FOLLOW_UP, CHECK_IN)
        if order.delivered_at + CHECK_IN_ROOM <= world.end and len(sent) != 1:
            problems.append(
                f"{order.order_id} delivered {_iso(order.delivered_at)}: check-in {_times(sent)}"
            )
    return Check(
        f"undisputed orders delivered {CHECK_IN_ROOM.days}+ days before the end: one check-in",
        problems,
    )


TIMELINE = {
    CHECK_IN: (timedelta(days=7), timedelta(days=10)),
    REQUEST: (timedelta(days=35), timedelta(days=10)),
}
"""Step -> (delay after delivery, max_lateness), as campaigns/review-follow-up.yaml says."""


def check_timeline(world: World) -> Check:
    """Counted from the right delivery time: the carrier's event where it reached the seller,
    else the estimate; never before it, nor later than the step's max_lateness allows (plus
    the weekend and the pass that may follow)."""
    slack = timedelta(days=3)
    problems = []
    for order in world.followed_up():
        for step, (delay, lateness) in TIMELINE.items():
            for mail in world.of_step(order.order_id, FOLLOW_UP, step):
                due = order.delivered_at + delay
                if not due <= mail.at <= due + lateness + slack:
                    source = "reported" if order.reported else "estimated"
                    problems.append(
                        f"{order.order_id} delivered {_iso(order.delivered_at)} ({source}): "
                        f"{step} at {_iso(mail.at)}"
                    )
    return Check("check-ins and requests counted from the event, else the estimate", problems)


def check_buyer_cap(world: World) -> Check:
    last: dict[str, Mail] = {}
    problems = []
    for mail in world.mails:  # in time order
        before = last.get(mail.recipient)
        answers = mail.campaign == THANKS  # buyer_cap: 0, it answers the buyer's review
        if before is not None and not answers and mail.at - before.at < BUYER_CAP:
            problems.append(
                f"{mail.recipient}: {before.order_id} {before.step} at {_iso(before.at)}, "
                f"then {mail.order_id} {mail.step} at {_iso(mail.at)}"
            )
        last[mail.recipient] = mail
    return Check(
        f"at most one message per buyer per {BUYER_CAP.days} days (a thank-you aside)", problems
    )


def check_reminders(world: World) -> Check:
    reviews = world.shop.review_of()
    problems = []
    for order in world.followed_up():
        requests = world.of_step(order.order_id, FOLLOW_UP, REQUEST)
        reminders = world.of_step(order.order_id, FOLLOW_UP, REMINDER)
        if reminders and not requests:
            problems.append(f"{order.order_id}: reminder at {_times(reminders)} without a request")
        if not requests or requests[0].at + REMINDER_ROOM > world.end:
            continue
        review = reviews.get(order.order_id)
        if review is not None and review.reviewed_at < requests[0].at + REMINDER_ROOM:
            continue  # reviewed in time: the reminder is rightly skipped (checked below)
        gap = reminders[0].at - requests[0].at if reminders else None
        if len(reminders) != 1 or gap is None or not timedelta(days=10) <= gap:
            problems.append(
                f"{order.order_id}: request {_times(requests)}, reminder {_times(reminders)}"
            )
    return Check("unreviewed requests with room left: one reminder 10+ days later", problems)


def check_reviewed(world: World) -> Check:
    problems = []
    for review in world.shop.reviews:
        for step in (REQUEST, REMINDER):
            late = [
                m
                for m in world.of_step(review.order_id, FOLLOW_UP, step)
                if m.at >= review.reviewed_at
            ]
            if late:
                problems.append(
                    f"{review.order_id} reviewed {_iso(review.reviewed_at)}: {step} {_times(late)}"
                )
    return Check("no review request or reminder after the order was reviewed", problems)


def check_thanks(world: World) -> Check:
    reviews = world.shop.review_of()
    wanted = {o.order_id for o in world.followed_up()}
    problems = []
    for order_id, review in reviews.items():
        sent = world.of_step(order_id, THANKS, THANK_YOU)
        good = review.rating >= 4
        room = review.reviewed_at + THANKS_ROOM <= world.end
        early = [m for m in sent if m.at < review.reviewed_at]
        if (not good and sent) or early or (good and room and order_id in wanted and not sent):
            problems.append(
                f"{order_id} rated {review.rating} at {_iso(review.reviewed_at)}: "
                f"thank-you {_times(sent)}"
            )
    unreviewed = [m for m in world.mails if m.campaign == THANKS and m.order_id not in reviews]
    problems += [f"{m.order_id}: thank-you at {_iso(m.at)} without a review" for m in unreviewed]
    return Check("4-5 stars: one thank-you after the review; 1-3 stars: none", problems)


def check_disputes(world: World, cooldown: timedelta, what: str) -> Check:
    disputes = world.shop.disputes_of_buyer()
    problems = []
    for mail in world.mails:
        for dispute in disputes.get(mail.recipient, []):
            if dispute.blocks(mail.at, cooldown):
                problems.append(
                    f"{mail.order_id} {mail.step} at {_iso(mail.at)} to {mail.recipient}: "
                    f"dispute on {dispute.order_id} opened {_iso(dispute.opened_at)}, "
                    f"closed {_iso(dispute.closed_at) or 'never'}"
                )
    return Check(what, problems)


AMAZON_REQUEST = ("amazon-review-request", "review-request")
AMAZON_WINDOW = (timedelta(days=5), timedelta(days=30))
"""Amazon's rules: one review request per order, 5 to 30 days after delivery, nothing else."""


def check_amazon(world: World) -> Check:
    problems = []
    low, high = AMAZON_WINDOW
    for order in world.shop.orders:
        if order.marketplace != "amazon":
            continue
        mails = [m for m in world.mails if m.order_id == order.order_id]
        for mail in mails:
            after = mail.at - order.delivered_at
            if (mail.campaign, mail.step) != AMAZON_REQUEST or not low <= after <= high:
                problems.append(
                    f"{order.order_id} delivered {_iso(order.delivered_at)}: "
                    f"{mail.campaign}/{mail.step} at {_iso(mail.at)}"
                )
        if len(mails) > 1:
            problems.append(f"{order.order_id}: {len(mails)} messages ({_times(mails)})")
    return Check("amazon orders: at most one review request, 5 to 30 days after delivery", problems)


def parse_summary(text: str) -> Counter[tuple[str, str, str]]:
    """``worker sends --summary`` rows: ``campaign/step  state  count  [reason]``, per reason."""
    counts: Counter[tuple[str, str, str]] = Counter()
    for line in text.splitlines():
        parts = line.split(maxsplit=3)
        if len(parts) < 3 or not parts[2].isdigit():
            continue  # the header
        campaign, _, step = parts[0].partition("/")
        counts[(campaign, step, parts[1])] += int(parts[2])
    return counts


def check_database(world: World, summary: Counter[tuple[str, str, str]]) -> Check:
    in_db = Counter({(c, s): n for (c, s, state), n in summary.items() if state == "sent"})
    in_maildir = Counter((m.campaign, m.step) for m in world.mails)
    problems = [
        f"{c}/{s}: {in_db[(c, s)]} sent in the database, {in_maildir[(c, s)]} in the Maildir"
        for c, s in sorted(in_db.keys() | in_maildir.keys())
        if in_db[(c, s)] != in_maildir[(c, s)]
    ]
    problems += [
        f"{c}/{s}: {n} {state}"
        for (c, s, state), n in sorted(summary.items())
        if state not in ("sent", "skipped") and n
    ]
    return Check("the database (worker sends --summary) agrees with the Maildir", problems)


def run_checks(world: World, summary: Counter[tuple[str, str, str]]) -> list[Check]:
    return [
        check_exactly_once(world),
        check_check_ins(world),
        check_timeline(world),
        check_buyer_cap(world),
        check_reminders(world),
        check_reviewed(world),
        check_thanks(world),
        check_disputes(world, timedelta(0), "no message to a buyer while a dispute is open"),
        check_disputes(world, COOLDOWN, f"nor in the {COOLDOWN.days}-day cool-down after it"),
        check_amazon(world),
        check_database(world, summary),
    ]


# Report ----------------------------------------------------------------------------------------


def parse_skips(text: str) -> Counter[tuple[str, str]]:
    """``worker sends --state skipped`` rows -> (step, reason without its detail) counts."""
    counts: Counter[tuple[str, str]] = Counter()
    for line in text.splitlines()[1:]:
        # id, state, order, campaign/step, due date, due time, reason
        parts = line.split(maxsplit=6)
        if len(parts) == 7:
            counts[(parts[3], parts[6].split(":")[0])] += 1
    return counts


@dataclass(frozen=True, slots=True)
class Figures:
    shop: Shop
    passes: Passes
    mails: list[Mail]
    skips: Counter[tuple[str, str]]
    setup_s: float
    total_s: float
    workers: int = 1
    database: str = "sqlite"


def print_report(figures: Figures, checks: Sequence[Check], shown: int = 10) -> None:
    for line in _figure_lines(figures):
        print(line)
    print("checks:")
    for check in checks:
        print(f"  {'ok  ' if not check.problems else 'FAIL'} {check.name}")
        for problem in check.problems[:shown]:
            print(f"         {problem}")
        if len(check.problems) > shown:
            print(f"         ... and {len(check.problems) - shown} more")
    failed = sum(1 for c in checks if c.problems)
    print(f"result: {'PASSED' if not failed else f'FAILED ({failed} of {len(checks)} checks)'}")


def _figure_lines(f: Figures) -> Iterator[str]:
    shop, passes = f.shop, f.passes
    markets = Counter(o.marketplace for o in shop.orders)
    buyers = len({o.buyer.email for o in shop.orders})
    still_open = sum(1 for d in shop.disputes if d.closed_at is None)
    yield (
        f"orders: {len(shop.orders)} ("
        + ", ".join(f"{k} {v}" for k, v in sorted(markets.items()))
        + f") from {buyers} buyers; disputes: {len(shop.disputes)} ({still_open} never closed); "
        f"reviews: {len(shop.reviews)}"
    )
    reported = sum(1 for o in shop.orders if o.reported)
    several = sum(1 for o in shop.orders if len(o.products) > 1)
    yield (
        f"feeds: eBay Orders report ({markets['ebay']} orders) and the generic file, no "
        f"delivery dates; {several} orders of several items; delivery reported by the carrier "
        f"for {reported} orders (worker import shipments every {EVENTS_EVERY.days} days), "
        f"estimated for {len(shop.orders) - reported}"
    )
    yield (
        f"passes: {len(passes.times)}, {_iso(passes.times[0])} .. {_iso(passes.times[-1])} "
        f"(at {' and '.join(f'{h:02d}:00Z' for h in PASS_HOURS)}), "
        f"{f.workers} worker{'s' if f.workers > 1 else ''} each on {f.database}; "
        f"exit codes other than 0: {len(passes.errors)}"
    )
    yield "messages per step:"
    for (campaign, step), count in sorted(Counter((m.campaign, m.step) for m in f.mails).items()):
        yield f"  {campaign + '/' + step:34} {count:5}"
    yield f"  {'total':34} {len(f.mails):5}"
    yield "skipped per reason:"
    for (step, reason), count in sorted(f.skips.items()):
        yield f"  {step:34} {count:5}  {reason}"
    durations = passes.durations_s
    yield (
        f"wall time: {f.total_s:.1f}s in total ({f.setup_s:.1f}s setup and import), "
        f"per pass median {statistics.median(durations):.2f}s, max {max(durations):.2f}s"
    )


# Main ------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--orders", type=int, default=1000)
    parser.add_argument("--disputes", type=int, default=50)
    parser.add_argument("--reviews", type=int, default=100)
    parser.add_argument("--days", type=int, default=90, help="days over which orders arrive")
    parser.add_argument(
        "--tail-days",
        type=int,
        default=60,
        help="days simulated after the last delivery, so late orders' reminders can happen",
    )
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--workdir", type=Path, help="a new or empty folder (default: a temp dir)")
    parser.add_argument(
        "--database-url",
        help="a fresh, empty database to use instead of the work directory's SQLite file "
        "(e.g. postgresql+psycopg://user:password@127.0.0.1/rehearsal)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="`worker run --once` processes per pass, started together (more than 1 needs "
        "--database-url: SQLite takes one worker per database)",
    )
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error("--workers must be 1 or more")
    if args.workers > 1 and (args.database_url is None or args.database_url.startswith("sqlite")):
        parser.error("--workers above 1 needs --database-url of a PostgreSQL database")
    return args


def check_fresh(url: str) -> str:
    """Refuse a database that has tables: its rows would spoil every check. Returns the URL
    for display, password hidden."""
    try:
        shown = sqlalchemy.make_url(url).render_as_string(hide_password=True)
        engine = sqlalchemy.create_engine(url)
    except (SQLAlchemyError, ValueError) as exc:
        raise RehearsalError(f"--database-url is not a usable URL: {exc}") from None
    try:
        tables = sqlalchemy.inspect(engine).get_table_names()
    except SQLAlchemyError as exc:
        raise RehearsalError(f"cannot read {shown}: {exc.__class__.__name__}") from None
    finally:
        engine.dispose()
    if tables:
        raise RehearsalError(
            f"{shown} already has tables ({', '.join(sorted(tables)[:5])}...); "
            "the rehearsal needs a fresh, empty database"
        )
    return shown


def _workdir(wanted: Path | None) -> Path:
    if wanted is None:
        return Path(tempfile.mkdtemp(prefix="worker-rehearsal-"))
    if wanted.exists() and any(wanted.iterdir()):
        raise RehearsalError(f"--workdir {wanted} is not empty; the rehearsal needs a fresh one")
    wanted.mkdir(parents=True, exist_ok=True)
    return wanted.resolve()


def prepare(args: argparse.Namespace, workdir: Path, shop: Shop) -> tuple[Cli, int]:
    cli, port = Cli(workdir, args.database_url), free_port()
    write_config(workdir, port, external_database=args.database_url is not None)
    cli.check("db", "upgrade")
    for what, path in write_feeds(shop, workdir).items():
        cli.check("import", *what.split(), path.name)
    return cli, port


def rehearse(args: argparse.Namespace) -> int:
    began = time.monotonic()
    database = "sqlite" if args.database_url is None else check_fresh(args.database_url)
    workdir = _workdir(args.workdir)
    shop = make_shop(args.seed, args.orders, args.disputes, args.reviews, args.days)
    times = list(pass_times(args.days + args.tail_days))
    print(
        f"rehearsal in {workdir}: {args.days} days of deliveries from {_iso(START)} "
        f"+ {args.tail_days} days after = {len(times)} passes (seed {args.seed})",
        file=sys.stderr,
    )
    cli, port = prepare(args, workdir, shop)
    maildir = workdir / "sink"
    sink = SinkProcess(cli, port, maildir)
    setup_s = time.monotonic() - began
    try:
        sink.wait_listening(timeout_s=30)
        events = CarrierEvents(cli, shop.orders)
        passes = run_passes(cli, times, maildir, workdir / "passes.log", args.workers, events)
    finally:
        sink_code = sink.stop()
    mails = read_mails(maildir, passes.sent_by)
    summary = parse_summary(cli.check("sends", "--summary"))
    skips = parse_skips(cli.check("sends", "--state", "skipped"))
    checks = [
        Check("every `worker run --once` pass exited 0", passes.errors),
        Check("the sink stopped with 0 on SIGTERM", [f"exit {sink_code}"] if sink_code else []),
        *run_checks(World.of(shop, mails, times[-1]), summary),
    ]
    total_s = time.monotonic() - began
    figures = Figures(shop, passes, mails, skips, setup_s, total_s, args.workers, database)
    print_report(figures, checks)
    return 1 if any(c.problems for c in checks) else 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return rehearse(args)
    except (RehearsalError, subprocess.TimeoutExpired) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
