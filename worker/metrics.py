"""The daemon's Prometheus metrics, in a registry of its own (not the process-wide one).

Counters are incremented where the daemon records what happened: a send's outcome, a skip,
an inbound message stored. Gauges are read when scraped: from the store (cheap aggregate
reads) and from the mailbox readers and the loop's heartbeat. Label values are bounded:
campaigns and steps come from the campaign files, outcomes and kinds from fixed sets, and a
skip reason is cut to its code (the part before ``:``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from worker.health import Heartbeat, Reader
from worker.store_figures import Figures

_LABEL_MAX = 64
_NOT_CODE = re.compile(r"[^a-z0-9_.-]+")


def reason_code(reason: str) -> str:
    """``suppressed: unsubscribe (one-click)`` -> ``suppressed``: one label per kind of
    reason, however many addresses or dates the full reasons hold."""
    code = _NOT_CODE.sub("_", reason.split(":", 1)[0].strip().lower()).strip("_")
    return code[:_LABEL_MAX] or "unknown"


def _label(value: str) -> str:
    return value[:_LABEL_MAX]


class Metrics:
    """Counters the daemon feeds, and the gauges read when ``/metrics`` is asked."""

    def __init__(
        self,
        figures: Callable[[datetime], Figures],
        clock: Callable[[], datetime],
        readers: Sequence[Reader] = (),
        heartbeat: Heartbeat | None = None,
        started: datetime | None = None,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.sends = Counter(
            "worker_sends",
            "Sends by campaign, step and outcome, as the daemon recorded them.",
            ["campaign", "step", "outcome"],
            registry=self.registry,
        )
        self.skips = Counter(
            "worker_skips",
            "Steps skipped by the planner, by reason code.",
            ["reason"],
            registry=self.registry,
        )
        self.inbound = Counter(
            "worker_inbound_messages",
            "Inbound messages stored, by kind (reply, bounce, unsubscribe, ...).",
            ["kind"],
            registry=self.registry,
        )
        self.registry.register(_Gauges(figures, clock, readers, heartbeat, started))

    def step_outcome(self, campaign: str, step: str, outcome: str) -> None:
        self.sends.labels(_label(campaign), _label(step), _label(outcome)).inc()

    def skipped(self, reason: str) -> None:
        self.skips.labels(reason_code(reason)).inc()

    def received(self, kind: str) -> None:
        self.inbound.labels(_label(kind)).inc()

    def exposition(self) -> bytes:
        """The text format Prometheus scrapes (reads the store: call off hot paths)."""
        return generate_latest(self.registry)


class _Gauges(Collector):
    def __init__(
        self,
        figures: Callable[[datetime], Figures],
        clock: Callable[[], datetime],
        readers: Sequence[Reader],
        heartbeat: Heartbeat | None,
        started: datetime | None,
    ) -> None:
        self.figures = figures
        self.clock = clock
        self.readers = readers
        self.heartbeat = heartbeat
        self.started = started

    def describe(self) -> Iterable[Metric]:
        """The families without values: registering reads nothing from the store."""
        return list(self._families())

    def collect(self) -> Iterable[Metric]:
        now = self.clock()
        figures = self.figures(now)
        lag, oldest, doubt, beat = self._families()
        for reader in self.readers:
            read = reader.last_read() or self.started
            if read is not None:
                lag.add_metric([_label(reader.name)], max(0.0, (now - read).total_seconds()))
        waited = 0.0 if figures.oldest_due is None else (now - figures.oldest_due).total_seconds()
        oldest.add_metric([], max(0.0, waited))
        doubt.add_metric([], figures.in_doubt)
        if self.heartbeat is not None:
            beat.add_metric([], max(0.0, (now - self.heartbeat.at).total_seconds()))
        return [lag, oldest, doubt, beat]

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, ...]:
        return (
            GaugeMetricFamily(
                "worker_mailbox_poll_lag_seconds",
                "Seconds since each mailbox was last read to the end (by any worker); since "
                "start-up for one not read yet.",
                labels=["mailbox"],
            ),
            GaugeMetricFamily(
                "worker_oldest_due_unsent_seconds",
                "Seconds the longest-waiting due send has waited; 0 when none is due.",
            ),
            GaugeMetricFamily("worker_sends_in_doubt", "Sends in_doubt, awaiting an operator."),
            GaugeMetricFamily(
                "worker_loop_heartbeat_age_seconds", "Seconds since the run loop last beat."
            ),
        )
