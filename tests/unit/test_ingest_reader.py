"""The reader thread of ``worker.ingest``: a batch's items one after another off the event
loop, each within its budget; one past it is given up and the rest go on."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

import pytest

from worker.ingest import _each_in_time, _likely_senders, _Reader


def _work(release: threading.Event, started: list[str]) -> Callable[[str], str]:
    def work(item: str) -> str:
        started.append(item)
        if item == "slow":
            release.wait(timeout=10)
        if item == "bad":
            raise ValueError("broken")
        return item.upper()

    return work


async def test_each_item_is_read_in_turn_and_one_past_its_budget_is_given_up() -> None:
    release, started = threading.Event(), list[str]()
    try:
        reader = _Reader(_work(release, started), ["a", "slow", "b", "bad", "c"])
        begun = time.monotonic()
        done = await _each_in_time(reader, 0.3)
        elapsed = time.monotonic() - begun
    finally:
        release.set()
    assert [d.value for d in done] == ["A", None, "B", None, "C"]
    assert [d.timed_out for d in done] == [False, True, False, False, False]
    assert isinstance(done[3].error, ValueError)
    assert 0.3 <= elapsed < 3, "the runaway costs its budget, not its time"
    assert started == ["a", "slow", "b", "bad", "c"], "each item started once"


async def test_a_budget_counts_from_the_items_own_turn() -> None:
    def work(item: float) -> float:
        time.sleep(item)
        return item

    done = await _each_in_time(_Reader(work, [0.15, 0.15, 0.15, 0.15]), 0.5)
    assert [d.value for d in done] == [0.15] * 4, "the batch took longer than one budget"


async def test_preparing_has_no_budget_and_its_failure_is_no_items_failure() -> None:
    def slow(items: object) -> None:
        time.sleep(0.3)
        raise RuntimeError("the store is away")

    done = await _each_in_time(_Reader(str.upper, ["a", "b"], prepare=slow), 0.1)
    assert [d.value for d in done] == ["A", "B"]


async def test_a_cancelled_reading_starts_no_further_item() -> None:
    release, started = threading.Event(), list[str]()
    reader = _Reader(_work(release, started), ["slow", "a", "b"])
    task = asyncio.ensure_future(_each_in_time(reader, 10))
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    release.set()
    await asyncio.sleep(0.2)
    assert started == ["slow"]


def test_likely_senders_are_read_from_the_sender_fields_of_the_header_only() -> None:
    raw = (
        b"Return-Path: <Bounce@Relay.Example>\r\nFrom: Ann <Ann@Buyer.Example>\r\n"
        b"To: help@shop.example\r\nSubject: from: nobody@else.example\r\n\r\n"
        b"From: quoted@body.example\r\n"
    )
    assert _likely_senders(raw) == {"bounce@relay.example", "ann@buyer.example"}
    assert _likely_senders(b"\xff\xfe" * 100_000) == set()


async def test_the_first_items_budget_runs_from_the_end_of_preparing() -> None:
    release, started = threading.Event(), list[str]()
    try:
        reader = _Reader(_work(release, started), ["slow", "a"], prepare=lambda items: None)
        done = await _each_in_time(reader, 0.2)
    finally:
        release.set()
    assert [(d.value, d.timed_out) for d in done] == [(None, True), ("A", False)]
