"""Is the daemon alive? The run loop beats; each mailbox reader is fresh or not.

``/healthz`` answers 200 while the loop beat within the time it announced and every mailbox
was read within its allowed staleness (:meth:`Ingest.fresh`, the rule that also holds
sending back); otherwise 503 naming what stalled. The clock is passed in.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol


class Reader(Protocol):
    """What health needs of a mailbox reader (:class:`worker.ingest.Ingest`)."""

    name: str
    last_read_at: datetime | None

    @property
    def lease_s(self) -> float: ...

    def fresh(self, now: datetime) -> bool: ...

    def last_read(self) -> datetime | None: ...


@dataclass
class Heartbeat:
    """The loop's last sign of life and how long it may stay silent after it: the wait it
    chose (up to the poll interval, longer while the relay is down) plus a grace."""

    at: datetime
    due_by: datetime

    def beat(self, now: datetime, within_s: float) -> None:
        self.at = now
        self.due_by = now + timedelta(seconds=within_s)

    def late_s(self, now: datetime) -> float:
        """Seconds past the announced next beat; 0 or less while alive."""
        return (now - self.due_by).total_seconds()


def stalls(
    now: datetime, heartbeat: Heartbeat, readers: Sequence[Reader], started: datetime
) -> list[str]:
    """What has stalled, one short phrase each; empty when healthy. A mailbox never read is
    forgiven for its first lease after start-up (the first read is under way)."""
    found: list[str] = []
    late = heartbeat.late_s(now)
    if late > 0:
        silent = (now - heartbeat.at).total_seconds()
        found.append(f"loop: no pass for {silent:.0f} s ({late:.0f} s longer than allowed)")
    for reader in readers:
        starting = (now - started).total_seconds() <= reader.lease_s
        if reader.fresh(now) or (reader.last_read_at is None and starting):
            continue
        read = reader.last_read_at
        since = "never read" if read is None else f"last read {read.isoformat()}"
        found.append(f"mailbox {reader.name}: {since}, allowed {reader.lease_s:.0f} s")
    return found
