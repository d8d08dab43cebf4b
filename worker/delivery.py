"""When an order's parcel reached the buyer, from whatever the seller actually has.

Sellers' exports rarely carry a delivery date, so the planner must not wait for one that never
comes. The delivery time is taken, in this order, from: a delivery event (``worker import
shipments``, a carrier's mail), the feed's own delivery column, the marketplace's estimated
delivery date, or an estimate: shipped time plus a transit time for the route (the seller's
country -> the buyer's), from a table operators can edit (see ``docs/delivery.md``).

Pure: data in, data out, no clock and no I/O, so ``worker plan`` and the daemon agree.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from worker.domain import Order
from worker.tracking import carrier_id

# The sources, best first. ``describe`` and ``worker plan`` show them.
EVENT = "event"
FEED = "feed"
MARKETPLACE = "marketplace"
ESTIMATED = "estimated"
RETURNED = "returned"
"""The parcel went back to the seller: it was not delivered, delivered-triggered steps skip."""
EXCEPTION = "exception"
"""The carrier reported a problem and nothing says it arrived: wait for news."""

DEFAULT_DOMESTIC = timedelta(days=4)
DEFAULT_SAME_REGION = timedelta(days=7)
DEFAULT_CROSS_BORDER = timedelta(days=14)
"""Post, not couriers: a check-in arriving before the parcel does more harm than one a few
days late, so the defaults lean long (see docs/delivery.md)."""

EU = frozenset(
    "AT BE BG CY CZ DE DK EE ES FI FR GR HR HU IE IT LT LU LV MT NL PL PT RO SE SI SK".split()
)
DEFAULT_REGIONS: tuple[tuple[str, frozenset[str]], ...] = (
    # By name. The EU's member states, and CLDR's territory containment (which babel does
    # not ship) for 053, 030 and 021.
    ("australia-new-zealand", frozenset({"AU", "NZ", "NF", "CC", "CX", "HM"})),
    ("eastern-asia", frozenset({"CN", "HK", "MO", "TW", "JP", "KR", "KP", "MN"})),
    ("eu", EU),
    ("northern-america", frozenset({"US", "CA", "BM", "GL", "PM"})),
)

_NOT_ALNUM = re.compile(r"[^a-z0-9]+")


def carrier_key(*parts: str | None) -> str:
    """``"Japan Post", "EMS"`` -> ``japan-post-ems``: how carriers and services are matched,
    whatever case or punctuation the export uses."""
    text = " ".join(p for p in parts if p)
    return _NOT_ALNUM.sub("-", text.lower()).strip("-")


def _days(delta: timedelta) -> str:
    """``12d``, ``1d12h``, ``6h``: the transit time as an operator writes it in config."""
    hours = int(delta.total_seconds() // 3600)
    days, hours = divmod(hours, 24)
    return (f"{days}d" if days else "") + (f"{hours}h" if hours or not days else "")


@dataclass(frozen=True, slots=True)
class TransitTable:
    """Transit times by route and carrier, from the ``delivery`` settings.

    The most specific entry wins: the carrier with its service (``dhl-express``), the carrier
    (``dhl``), the route (``CN->DE``, then ``CN->*``, then ``*->DE``), then the class of the
    route: domestic, same region (both countries in one of ``regions``) or cross-border.
    An unknown country on either end counts as cross-border, the longest guess.
    """

    ship_from: str | None = None
    """The seller's country (ISO 3166 alpha-2): where parcels leave from."""
    domestic: timedelta = DEFAULT_DOMESTIC
    same_region: timedelta = DEFAULT_SAME_REGION
    cross_border: timedelta = DEFAULT_CROSS_BORDER
    routes: tuple[tuple[str, timedelta], ...] = ()
    """``("CN->DE", 12d)``, ``("CN->*", 20d)``, ``("*->DE", 9d)``."""
    carriers: tuple[tuple[str, timedelta], ...] = ()
    """By :func:`carrier_key`: ``("dhl-express", 4d)``, ``("japan-post-ems", 6d)``."""
    regions: tuple[tuple[str, frozenset[str]], ...] = DEFAULT_REGIONS

    def transit(
        self, to: str | None, carrier: str | None = None, service: str | None = None
    ) -> tuple[timedelta, str]:
        """The transit time to country ``to`` and what chose it (``CN->DE post``)."""
        origin, dest = self.ship_from, to
        route = f"{origin or '?'}->{dest or '?'}"
        carriers = dict(self.carriers)
        if carrier:
            # "Deutsche Post DHL", "DHL Paket" and "dhl" are one carrier (worker/tracking.py).
            canonical = carrier_id(carrier) or carrier_key(carrier)
            for key in (carrier_key(canonical, service), canonical):
                if key in carriers:
                    return carriers[key], f"{route} {key}"
        routes = dict(self.routes)
        keys = [f"{origin}->{dest}"] if origin and dest else []
        keys += [f"{origin}->*"] if origin else []
        keys += [f"*->{dest}"] if dest else []
        for key in keys:
            if key in routes:
                return routes[key], f"{route} post"
        if origin is None or dest is None:
            return self.cross_border, f"{route} post"
        if origin == dest:
            return self.domestic, f"{route} post"
        if any(origin in members and dest in members for _, members in self.regions):
            return self.same_region, f"{route} post"
        return self.cross_border, f"{route} post"


@dataclass(frozen=True, slots=True)
class Delivery:
    """The chosen delivery time of one order and where it came from."""

    at: datetime | None
    """None: the parcel was returned, or is held by a carrier exception."""
    source: str
    """event, feed, marketplace, estimated; returned or exception when there is no time."""
    detail: str = ""
    """For an estimate, the route and transit time: ``CN->DE post, 12d``."""
    transit: timedelta | None = None
    """For an estimate, the transit time it added to the shipped time."""

    def describe(self) -> str:
        """``delivered ~2026-03-14 (estimated: CN->DE post, 12d)``: what ``worker plan``
        shows. A ``~`` marks a time that is a guess (the marketplace's or ours)."""
        if self.at is None:
            return f"parcel {self.source}" + (f": {self.detail}" if self.detail else "")
        approximate = self.source in (MARKETPLACE, ESTIMATED)
        day = ("~" if approximate else "") + self.at.strftime("%Y-%m-%d")
        if self.source == ESTIMATED:
            why = f"estimated: {self.detail}"
        elif self.source == MARKETPLACE:
            why = "marketplace estimate"
        else:
            why = self.source
        return f"delivered {day} ({why})"

    @property
    def skip_reason(self) -> str | None:
        """Why delivered-triggered steps never go out, if they never will."""
        return "parcel_returned" if self.source == RETURNED else None

    @property
    def wait_reason(self) -> str | None:
        """Why delivered-triggered steps wait for news, when there is no time to count from."""
        return "awaiting_delivered: parcel exception" if self.source == EXCEPTION else None


def delivery_of(
    order: Order, customer_country: str | None, transit: TransitTable
) -> Delivery | None:
    """The order's delivery time from the best source it has; None when nothing is known
    (not shipped, no dates): its delivered-triggered steps wait for an event.

    A returned parcel outranks everything (the buyer has nothing to review); a carrier
    exception outranks only the guesses, since a delivery date from the carrier or the
    feed says it arrived after all.
    """
    if order.shipment_status == RETURNED:
        return Delivery(None, RETURNED)
    if order.delivery_event_at is not None:
        return Delivery(order.delivery_event_at, EVENT)
    if order.delivered_at is not None:
        return Delivery(order.delivered_at, FEED)
    if order.shipment_status == EXCEPTION:
        return Delivery(None, EXCEPTION)
    if order.expected_delivery_at is not None:
        return Delivery(order.expected_delivery_at, MARKETPLACE)
    if order.shipped_at is None:
        return None
    country = order.country or customer_country
    time, rule = transit.transit(country, order.carrier, order.shipping_service)
    return Delivery(order.shipped_at + time, ESTIMATED, f"{rule}, {_days(time)}", time)


def expected_window(delivery: Delivery | None) -> tuple[date, date] | None:
    """The days a message may tell the buyer to expect the parcel: the marketplace's latest
    date as one day; our estimate as the last quarter of its transit time, since the table's
    times lean long. None when it arrived (an event or the feed says so) or nothing is known."""
    if delivery is None or delivery.at is None:
        return None
    end = delivery.at.date()
    if delivery.source == MARKETPLACE:
        return (end, end)
    if delivery.source == ESTIMATED and delivery.transit is not None:
        return ((delivery.at - delivery.transit / 4).date(), end)
    return None
