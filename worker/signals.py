"""SIGTERM and SIGINT set a stop event; installed around the loop, previous handlers restored."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Iterator
from types import FrameType

from worker import logs

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
log = logs.get("worker.signals")


@contextlib.contextmanager
def on_stop(stop: asyncio.Event) -> Iterator[None]:
    loop = asyncio.get_running_loop()

    def handler(signum: int, _frame: FrameType | None) -> None:
        log.info("signal.received", signal=signal.Signals(signum).name)
        loop.call_soon_threadsafe(stop.set)

    previous = {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
