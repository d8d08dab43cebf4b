"""The buyer's local time: which zone they live in and when a send window is open there.

Mail that lands at 3 a.m. or on a Sunday reads like spam, so windows are kept in the buyer's
wall-clock time. Pure functions; datetimes in and out are tz-aware UTC.

On a given local day a window is one stretch of real time: from the first instant the wall
clock reads ``start`` to the first instant it reads ``end``. A reading the clock skips (the
missing hour when clocks go forward, or a whole day, as Samoa skipped 30 December 2011)
stands for the instant the clock jumps past it; a reading it shows twice (clocks going back)
counts from its first occurrence. So a window opening in a missing hour opens when the hour
ends, one lying wholly inside it does not open that day, and a window open across a repeated
hour stays open through it, once.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from functools import cache, lru_cache
from importlib import resources
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from worker.domain import SendWindow

SEARCH_DAYS = 7 * 53
"""How far ahead :func:`next_open` looks. A window with one weekday opens within 14 days even
when a skipped hour or day swallows one of them; only a window that never opens reaches this."""

ZONE_OVERRIDES: dict[str, str] = {
    "AR": "America/Argentina/Buenos_Aires",
    "AU": "Australia/Sydney",
    "BR": "America/Sao_Paulo",
    "CA": "America/Toronto",
    "CL": "America/Santiago",
    "CN": "Asia/Shanghai",
    "DE": "Europe/Berlin",
    "ES": "Europe/Madrid",
    "ID": "Asia/Jakarta",
    "KZ": "Asia/Almaty",
    "MX": "America/Mexico_City",
    "PT": "Europe/Lisbon",
    "RU": "Europe/Moscow",
    "UA": "Europe/Kyiv",
    "US": "America/New_York",
    "UZ": "Asia/Tashkent",
}
"""Countries spanning several zones, mapped to where most of their buyers live.

zone.tab lists Lord Howe Island first for Australia, Noronha for Brazil, St John's for
Canada, Kaliningrad for Russia, Simferopol for Ukraine and Samarkand for Uzbekistan; the
others are pinned so a reordering of zone.tab cannot move millions of buyers.
"""


@cache
def _country_zones() -> dict[str, str]:
    """The first zone zone.tab lists per country, then the overrides."""
    text = resources.files("tzdata").joinpath("zoneinfo", "zone.tab").read_text("utf-8")
    zones: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        country, _coordinates, zone = line.split("\t")[:3]
        zones.setdefault(country, zone)
    return zones | ZONE_OVERRIDES


def _named_zone(key: str) -> ZoneInfo | None:
    try:
        return ZoneInfo(key)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return None


def zone_for(country: str | None, timezone: str | None, default: ZoneInfo) -> ZoneInfo:
    """The buyer's zone: an explicit IANA name wins, then the country, then ``default``.

    Feed data is messy, so an unknown name or country falls back instead of raising.
    """
    explicit = _named_zone(timezone.strip()) if timezone and timezone.strip() else None
    if explicit is not None:
        return explicit
    key = _country_zones().get((country or "").strip().upper())
    return (_named_zone(key) if key else None) or default


def _require_aware(moment: datetime) -> datetime:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{moment!r} is naive; pass a tz-aware UTC datetime")
    return moment.astimezone(UTC)


def _transition(before: datetime, after: datetime, zone: ZoneInfo) -> datetime:
    """The instant the UTC offset changes between ``before`` and ``after`` (to the second)."""
    low, high = int(before.timestamp()), int(after.timestamp())
    offset = before.astimezone(zone).utcoffset()
    while high - low > 1:
        middle = (low + high) // 2
        if datetime.fromtimestamp(middle, zone).utcoffset() == offset:
            low = middle
        else:
            high = middle
    return datetime.fromtimestamp(high, UTC)


@lru_cache(maxsize=8192)
def _reading(day: date, wall: time, zone: ZoneInfo) -> datetime:
    """The first instant on ``day`` the clock in ``zone`` reads ``wall``, or, if the clock
    skips that reading, the instant it jumps past it. Cached: every order of a pass in the
    same zone asks about the same few days.
    """
    naive = datetime.combine(day, wall)
    first = naive.replace(tzinfo=zone).astimezone(UTC)  # fold=0: the earlier of two readings
    if first.astimezone(zone).replace(tzinfo=None) == naive:
        return first
    # A skipped reading: fold=0 read it with the offset before the jump, fold=1 after it.
    after = naive.replace(tzinfo=zone, fold=1).astimezone(UTC)
    return _transition(min(first, after), max(first, after), zone)


def _opening(day: date, window: SendWindow, zone: ZoneInfo) -> tuple[datetime, datetime] | None:
    """The window on local ``day`` as [opens, closes) in UTC; None if it does not open then."""
    if day.weekday() not in window.days:
        return None
    opens, closes = _reading(day, window.start, zone), _reading(day, window.end, zone)
    return (opens, closes) if opens < closes else None


def in_window(moment: datetime, window: SendWindow | None, zone: ZoneInfo) -> bool:
    """Whether ``moment`` falls inside the window on the buyer's clock (end exclusive)."""
    moment = _require_aware(moment)
    if window is None:
        return True
    local = moment.astimezone(zone)
    # Only inside a repeated hour can the clock still show yesterday's date after today's
    # window has opened, so only then is the next day's window worth asking.
    days = (local.date(), local.date() + timedelta(days=1)) if local.fold else (local.date(),)
    for day in days:
        opening = _opening(day, window, zone)
        if opening is not None and opening[0] <= moment < opening[1]:
            return True
    return False


def next_open(moment: datetime, window: SendWindow | None, zone: ZoneInfo) -> datetime:
    """The first instant at or after ``moment`` inside the window in ``zone``, in UTC."""
    moment = _require_aware(moment)
    if window is None:
        return moment
    today = moment.astimezone(zone).date()
    for offset in range(SEARCH_DAYS + 1):
        opening = _opening(today + timedelta(days=offset), window, zone)
        if opening is not None and moment < opening[1]:
            return max(opening[0], moment)
    raise ValueError(f"{window} does not open within {SEARCH_DAYS} days in {zone.key}")
