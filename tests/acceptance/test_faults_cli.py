"""The real CLI stopped with signals mid-pass: nothing lost, nothing sent twice.

A slow relay (a real aiosmtpd server in a thread, each message held a little) keeps sends in
flight while the test sends SIGTERM or SIGKILL. Counted afterwards: the relay's copies by
Message-ID and the worker's own records. Bounded in count and time; loopback only.
"""

from __future__ import annotations

import asyncio
import random
import signal
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from tests.acceptance.test_cli import HEADER, Workdir, _free_port, wait_until
from worker.daemon import CLAIM_BATCH

DUE = "2026-03-09T12:00:00Z"


class _SlowRelay:
    """Takes each message after ``hold_s``; counts what it took by Message-ID."""

    def __init__(self, hold_s: float) -> None:
        self.hold_s = hold_s
        self.lock = threading.Lock()
        self.taken: Counter[str] = Counter()

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        await asyncio.sleep(self.hold_s)  # the relay's own pace: sends stay in flight
        content = envelope.original_content or b""
        message_id = next(
            (
                line.split(b":", 1)[1].strip().decode()
                for line in content.splitlines()
                if line.lower().startswith(b"message-id:")
            ),
            "",
        )
        with self.lock:
            self.taken[message_id] += 1
        return "250 2.0.0 Ok"

    @property
    def count(self) -> int:
        with self.lock:
            return sum(self.taken.values())


@pytest.fixture
def relay_port() -> int:
    return _free_port()


def _relay(port: int, hold_s: float) -> Iterator[_SlowRelay]:
    relay = _SlowRelay(hold_s)
    controller = Controller(relay, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield relay
    finally:
        controller.stop()


@pytest.fixture
def slow_relay(relay_port: int) -> Iterator[_SlowRelay]:
    yield from _relay(relay_port, hold_s=0.2)


@pytest.fixture
def quick_relay(relay_port: int) -> Iterator[_SlowRelay]:
    yield from _relay(relay_port, hold_s=0.002)


def _seller(tmp_path: Path, port: int, orders: int, **smtp: Any) -> Workdir:
    work = Workdir(tmp_path, port)
    rows = "".join(
        f"SHOP-{n},shop,buyer{n}@example.com,Buyer {n},Kettle,en,GB,,,2026-03-02T11:00:00Z\n"
        for n in range(1, orders + 1)
    )
    (tmp_path / "orders.csv").write_text(HEADER + "delivered_at\n" + rows, encoding="utf-8")
    work.run("db", "upgrade", check=True)
    work.run("import", "orders", "orders.csv", check=True)
    for name, value in smtp.items():
        work.env[f"WORKER_SMTP_{name.upper()}"] = str(value)
    return work


def _states(work: Workdir) -> Counter[str]:
    with sqlite3.connect(work.path / "var" / "worker.db") as db:
        return Counter(state for (state,) in db.execute("SELECT state FROM send"))


def _sent_ids(work: Workdir) -> list[str]:
    with sqlite3.connect(work.path / "var" / "worker.db") as db:
        return [mid for (mid,) in db.execute("SELECT message_id FROM send WHERE state = 'sent'")]


@pytest.mark.parametrize("mode", [("run", "--once", "--now", DUE), ("run", "--now", DUE)])
def test_sigterm_mid_pass_drains_and_exits_0_with_nothing_in_doubt(
    tmp_path: Path, relay_port: int, slow_relay: _SlowRelay, mode: tuple[str, ...]
) -> None:
    work = _seller(tmp_path, relay_port, 40, concurrency=2)
    worker = work.start(*mode)
    try:
        wait_until(lambda: slow_relay.count >= 4, 30, "a few sends in flight")
    finally:
        worker.send_signal(signal.SIGTERM)
        started = time.monotonic()
        out, err = worker.communicate(timeout=30)
    assert worker.returncode == 0, out + err
    assert time.monotonic() - started < 10  # shutdown_timeout_s is 10 in the Workdir config
    states = _states(work)
    assert states["in_doubt"] == 0 and states["sending"] == 0, states
    assert 0 < states["sent"] < 40, states  # stopped mid-pass, not at its end
    assert sorted(slow_relay.taken) == sorted(_sent_ids(work))  # every taken message recorded
    assert set(slow_relay.taken.values()) == {1}


def test_sigkill_at_random_moments_loses_nothing_and_sends_nothing_twice(
    tmp_path: Path, relay_port: int, quick_relay: _SlowRelay
) -> None:
    orders, kills, concurrency = 1000, 5, 4
    work = _seller(tmp_path, relay_port, orders, concurrency=concurrency)
    work.env["WORKER_SMTP_MESSAGE_DEADLINE_S"] = "5"  # claims of a killed worker expire soon
    chance = random.Random(20261202)
    in_doubt_allowed = 0
    for _ in range(kills):
        moment = quick_relay.count + chance.randint(1, orders // (2 * kills))
        worker = work.start("run", "--once", "--now", DUE)
        wait_until(lambda m=moment: quick_relay.count >= m, 60, "a random moment in the pass")
        worker.kill()
        worker.communicate(timeout=30)
        in_doubt_allowed += concurrency * CLAIM_BATCH  # each task's claimed, unsent rows
    final = work.run("run", "--once", "--now", "2026-03-09T12:30:00Z")
    assert final.returncode in (0, 1), final.stderr  # 1: in_doubt rows were found

    states = _states(work)
    assert sum(states.values()) == orders, states  # one row per order, none lost
    assert states["sending"] == 0 and states["scheduled"] == 0, states
    assert states["in_doubt"] <= in_doubt_allowed, states
    assert states["sent"] + states["in_doubt"] == orders, states
    duplicates = {mid: n for mid, n in quick_relay.taken.items() if n > 1}
    assert duplicates == {}
    assert set(_sent_ids(work)) <= set(quick_relay.taken)
