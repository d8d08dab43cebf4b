"""Several `worker run` processes on one PostgreSQL database: each due send goes out once.

Three real CLI processes, started together with ``run --once --now`` at the moment 10,000
check-ins fall due, share one throwaway PostgreSQL database and one SMTP relay (aiosmtpd in a
thread of the test, counting what it takes by Message-ID and by order/step). Their claims
(``FOR UPDATE SKIP LOCKED``, each move guarded by the state it expects) must split the work
with no message twice, also when one of them is SIGKILLed halfway. PostgreSQL only: SQLite
takes one worker per database. Loopback only; every wait bounded.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple

import pytest
import sqlalchemy
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from tests.acceptance.test_cli import HEADER, ROOT, _free_port, wait_until
from tests.postgres import Postgres
from worker.daemon import CLAIM_BATCH
from worker.store import Store

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

ORDERS = 10_000
WORKERS = 3
CONCURRENCY = 4
"""Delivery tasks per worker: each holds at most CLAIM_BATCH claimed rows at a time."""
DUE = "2026-03-09T12:00:00Z"  # check-in day (a Monday, in the window) for every order
BEFORE = "2026-03-03T12:00:00Z"  # the day after delivery: nothing due
LATER = "2026-03-09T12:30:00Z"  # past any claim made at DUE: 2 * message_deadline_s + 60 s
RUN_DEADLINE_S = 240
CAMPAIGN, STEP = "review-follow-up", "check-in"


class Taken(NamedTuple):
    message_id: str
    order_id: str
    step: str


def _headers(content: bytes) -> dict[str, str]:
    """The header block, unfolded, names lower-cased: cheap enough for 10,000 messages on a
    machine whose two cores are busy with the workers."""
    found: dict[str, str] = {}
    name = ""
    for line in content.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and name:
            found[name] += " " + line.strip().decode("utf-8", "replace")
            continue
        head, _, value = line.partition(b":")
        name = head.strip().lower().decode("ascii", "replace")
        found[name] = value.strip().decode("utf-8", "replace")
    return found


class _Relay:
    """Accepts everything at once; counts each message by Message-ID, order and step."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.taken: Counter[Taken] = Counter()

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        headers = _headers(envelope.original_content or b"")
        key = Taken(
            headers.get("message-id", ""),
            headers.get("x-worker-order", ""),
            headers.get("x-worker-step", ""),
        )
        with self.lock:
            self.taken[key] += 1
        return "250 2.0.0 Ok"

    @property
    def count(self) -> int:
        with self.lock:
            return sum(self.taken.values())

    def snapshot(self) -> Counter[Taken]:
        with self.lock:
            return Counter(self.taken)


@pytest.fixture
def relay_port() -> int:
    return _free_port()


@pytest.fixture
def relay(relay_port: int) -> Iterator[_Relay]:
    counting = _Relay()
    controller = Controller(counting, hostname="127.0.0.1", port=relay_port)
    controller.start()
    try:
        yield counting
    finally:
        controller.stop()


@pytest.fixture
def fresh_database(postgres: Postgres) -> Iterator[str]:
    """A new, empty PostgreSQL database: `worker db upgrade` migrates it as an operator would."""
    name = postgres.create_database()
    yield postgres.url(name)
    postgres.drop_database(name)


@dataclass
class Shop:
    """The seller's work directory: config, 10,000 delivered orders, the workers' logs."""

    path: Path
    env: dict[str, str]
    database_url: str

    def command(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "worker", *args]

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.command(*args),
            cwd=self.path,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=RUN_DEADLINE_S,
        )

    def start(self, number: int, *args: str) -> subprocess.Popen[str]:
        """Output to files (thousands of log lines would fill a pipe), in a session of its
        own so the teardown can end its render process too."""
        with (
            (self.path / f"worker{number}.out").open("w") as out,
            (self.path / f"worker{number}.err").open("w") as err,
        ):
            return subprocess.Popen(
                self.command(*args),
                cwd=self.path,
                env=self.env,
                stdout=out,
                stderr=err,
                text=True,
                start_new_session=True,
            )

    def output(self, number: int) -> str:
        path = self.path / f"worker{number}"
        return path.with_suffix(".out").read_text() + path.with_suffix(".err").read_text()[-3000:]

    def states(self) -> Counter[str]:
        rows = self._query("SELECT state, count(*) FROM send GROUP BY state")
        return Counter({state: count for state, count in rows})

    def sends(self, state: str) -> list[tuple[str, str, str, str]]:
        """(message_id, order_id, step, claimed_by) of every send in ``state``."""
        query = "SELECT message_id, order_id, step, claimed_by FROM send WHERE state = :state"
        return [(m, o, s, c) for m, o, s, c in self._query(query, state=state)]

    def _query(self, sql: str, **params: str) -> list[tuple[str, ...]]:
        engine = sqlalchemy.create_engine(self.database_url)
        try:
            with engine.connect() as connection:
                return [tuple(row) for row in connection.execute(sqlalchemy.text(sql), params)]
        finally:
            engine.dispose()


def _check(done: subprocess.CompletedProcess[str]) -> None:
    assert done.returncode == 0, f"{done.args} -> {done.returncode}\n{done.stdout}{done.stderr}"


@pytest.fixture
def shop(tmp_path: Path, relay_port: int, fresh_database: str) -> Shop:
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "worker.yaml").write_text(
        'from: "Kettle & Co <service@shop.example>"\n'
        "seller: {name: Kettle & Co, signature: Anna}\n"
        f"smtp: {{host: 127.0.0.1, port: {relay_port}, tls: none, attempts: 1, "
        f"backoff_initial_s: 0, timeout_s: 20, concurrency: {CONCURRENCY}}}\n"
        f"campaigns_dir: {ROOT / 'campaigns'}\ntemplates_dir: {ROOT / 'templates'}\n"
        "log_format: json\nhttp: {port: 0}\n",
        encoding="utf-8",
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("WORKER_")}
    env["WORKER_DATABASE_URL"] = fresh_database  # the password stays out of the file
    rows = "".join(
        f"SHOP-{n},shop,buyer{n}@example.com,Buyer {n},Kettle,en,GB,,,2026-03-02T11:00:00Z\n"
        for n in range(1, ORDERS + 1)
    )
    (tmp_path / "orders.csv").write_text(HEADER + "delivered_at\n" + rows, encoding="utf-8")
    work = Shop(tmp_path, env, fresh_database)
    _check(work.run("db", "upgrade"))
    _check(work.run("import", "orders", "orders.csv"))
    return work


@contextlib.contextmanager
def _workers(shop: Shop, count: int, *args: str) -> Iterator[list[subprocess.Popen[str]]]:
    """``count`` workers started together; whatever happens, none outlives the test."""
    processes: list[subprocess.Popen[str]] = []
    try:
        processes = [shop.start(number, *args) for number in range(count)]
        yield processes
    finally:
        for process in processes:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)  # no-op for a finished worker's group
            process.wait(timeout=30)


def _worker_id(process: subprocess.Popen[str]) -> str:
    """What the worker writes in ``claimed_by``: host:pid (worker/daemon.py)."""
    return f"{socket.gethostname()}:{process.pid}"


def _wait_all(processes: list[subprocess.Popen[str]]) -> None:
    deadline = time.monotonic() + RUN_DEADLINE_S
    for process in processes:
        process.wait(timeout=max(deadline - time.monotonic(), 1))


def _sent_in_report(output: str) -> int:
    """The ``sent N`` of a worker's ``pass:`` line (absent when it sent nothing)."""
    found = re.search(r"^pass: .*\bsent (\d+)", output, re.MULTILINE)
    return int(found[1]) if found else 0


def _expected() -> set[tuple[str, str]]:
    return {(f"SHOP-{n}", STEP) for n in range(1, ORDERS + 1)}


def test_three_workers_send_every_due_message_exactly_once(shop: Shop, relay: _Relay) -> None:
    started = time.monotonic()
    with _workers(shop, WORKERS, "run", "--once", "--now", DUE) as workers:
        _wait_all(workers)
        ids = {_worker_id(w) for w in workers}
    elapsed = time.monotonic() - started

    for number, worker in enumerate(workers):
        assert worker.returncode == 0, shop.output(number)
    taken = relay.snapshot()
    assert {(t.order_id, t.step) for t in taken} == _expected()  # every due check-in arrived
    assert max(taken.values()) == 1  # ... once: no Message-ID twice
    assert len({t.message_id for t in taken}) == ORDERS  # one Message-ID per order
    assert shop.states() == Counter(sent=ORDERS)
    sent = shop.sends("sent")
    assert {m for m, _, _, _ in sent} == {t.message_id for t in taken}
    claimants = Counter(claimed_by for _, _, _, claimed_by in sent)
    assert set(claimants) == ids, claimants  # all three took a share, no one else did
    reported = [_sent_in_report(shop.output(n)) for n in range(WORKERS)]
    assert sum(reported) == ORDERS, reported  # the workers' own counts agree
    print(f"{ORDERS} sends by {WORKERS} workers in {elapsed:.1f}s: {sorted(claimants.values())}")


def test_a_worker_killed_midway_loses_nothing_and_sends_nothing_twice(
    shop: Shop, relay: _Relay
) -> None:
    started = time.monotonic()
    with _workers(shop, WORKERS, "run", "--once", "--now", DUE) as workers:
        victim, survivors = workers[0], workers[1:]
        wait_until(
            lambda: relay.count >= ORDERS // 3 or any(w.poll() is not None for w in workers),
            RUN_DEADLINE_S,
            "a third of the mail at the relay",
        )
        ended = [shop.output(n) for n, w in enumerate(workers) if w.poll() is not None]
        assert not ended, f"a worker ended before the kill: {ended}"
        victim.kill()  # the worker alone, as the OOM killer would; _workers() ends the rest
        at_kill = relay.count
        victim.wait(timeout=30)
        _wait_all(survivors)
        killed = _worker_id(victim)
    assert victim.returncode == -signal.SIGKILL
    assert ORDERS // 3 <= at_kill < ORDERS
    for number, survivor in enumerate(survivors, 1):
        assert survivor.returncode == 0, shop.output(number)
    assert shop.states()["sending"] <= CONCURRENCY * CLAIM_BATCH  # the victim's claims, held

    # A later pass moves the victim's expired claims to in_doubt and sends anything left.
    final = shop.run("run", "--once", "--now", LATER)
    elapsed = time.monotonic() - started

    states = shop.states()
    in_doubt = shop.sends("in_doubt")
    assert final.returncode == (1 if in_doubt else 0), final.stdout + final.stderr
    assert states["sending"] == 0 and states["scheduled"] == 0, states  # none left behind
    assert states["sent"] + states["in_doubt"] == ORDERS == sum(states.values()), states
    assert len(in_doubt) <= CONCURRENCY * CLAIM_BATCH  # at most what the victim held
    assert {claimed_by for _, _, _, claimed_by in in_doubt} <= {killed}  # and only its claims
    taken = relay.snapshot()
    assert max(taken.values()) == 1  # no Message-ID twice, even across the kill
    assert len({(t.order_id, t.step) for t in taken}) == len(taken)  # nor an order's step
    arrived = {(t.order_id, t.step) for t in taken}
    doubtful = {(o, s) for _, o, s, _ in in_doubt}
    assert arrived | doubtful == _expected()  # every send arrived, or is in doubt
    sent_ids = {m for m, _, _, _ in shop.sends("sent")}
    assert sent_ids <= {t.message_id for t in taken}  # recorded sent: the relay has it
    assert {t.message_id for t in taken} - sent_ids <= {m for m, _, _, _ in in_doubt}
    print(f"killed at {at_kill}; {len(in_doubt)} in doubt; {elapsed:.1f}s with the final pass")


def test_workers_making_the_first_pass_together_both_succeed(
    postgres: Postgres, postgres_template: str
) -> None:
    """The first pass of two workers on a fresh database, made to overlap deterministically:
    the test holds the one buyer's row, so one pass waits on it and the other on the first
    pass's plan-inputs row; then it lets them go. Each must return, and exactly one must say
    the inputs changed."""
    name = postgres.create_database(postgres_template)
    url = postgres.url(name)
    holder = sqlalchemy.create_engine(url)
    stores = [Store.open(url), Store.open(url)]
    results: list[object] = [None, None]

    def first_pass(number: int) -> None:
        try:
            results[number] = stores[number].plan_inputs_changed("digest", datetime.now(UTC))
        except Exception as error:  # what the worker would die of
            results[number] = error

    threads = [threading.Thread(target=first_pass, args=(n,)) for n in range(2)]
    try:
        with holder.begin() as setup:
            setup.execute(
                sqlalchemy.text(
                    "INSERT INTO customer (email, updated_at, next_due_at) "
                    "VALUES ('ann@example.com', now(), now())"
                )
            )
        with holder.begin() as held:
            held.execute(sqlalchemy.text("SELECT email FROM customer FOR UPDATE"))
            for thread in threads:
                thread.start()
            waiting = sqlalchemy.text(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = :name AND wait_event_type = 'Lock'"
            )

            def both_wait() -> bool:
                # A transaction of its own each time: pg_stat_activity is a snapshot per
                # transaction.
                with holder.connect() as watcher:
                    return bool(watcher.execute(waiting, {"name": name}).scalar() == 2)

            wait_until(both_wait, 30, "both passes waiting on a lock")
        for thread in threads:
            thread.join(timeout=30)
        assert not any(thread.is_alive() for thread in threads)
        assert sorted(map(repr, results)) == ["False", "True"], results
    finally:
        for store in stores:
            store.close()
        holder.dispose()
        postgres.drop_database(name)
