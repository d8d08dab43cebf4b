"""The buyer's local time: which zone they live in and when a send window is open there.

Mail that lands at 3 a.m. or on a Sunday reads like spam, so windows are kept in the buyer's
wall-clock time. Pure functions; datetimes in and out are tz-aware UTC.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from functools import cache
from importlib import resources
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from worker.domain import SendWindow

SEARCH_DAYS = 8

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


def in_window(moment: datetime, window: SendWindow | None, zone: ZoneInfo) -> bool:
    """Whether ``moment`` falls inside the window on the buyer's wall clock (end exclusive)."""
    moment = _require_aware(moment)
    if window is None:
        return True
    local = moment.astimezone(zone)
    return local.weekday() in window.days and window.start <= local.time() < window.end


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


def _openings(day: date, start: time, zone: ZoneInfo) -> list[datetime]:
    """Every instant the wall clock reads ``start`` on ``day``: two on a fall-back day, and
    on a spring-forward day that skips it, the change itself (the first valid instant after).
    """
    wall = datetime.combine(day, start)
    candidates = {wall.replace(tzinfo=zone, fold=fold).astimezone(UTC) for fold in (0, 1)}
    valid = sorted(c for c in candidates if c.astimezone(zone).replace(tzinfo=None) == wall)
    return valid or [_transition(min(candidates), max(candidates), zone)]


def next_open(moment: datetime, window: SendWindow | None, zone: ZoneInfo) -> datetime:
    """The first instant at or after ``moment`` inside the window in ``zone``, in UTC."""
    moment = _require_aware(moment)
    if window is None or in_window(moment, window, zone):
        return moment
    today = moment.astimezone(zone).date()
    for offset in range(SEARCH_DAYS + 1):
        day = today + timedelta(days=offset)
        if day.weekday() not in window.days:
            continue
        for opening in _openings(day, window.start, zone):
            if opening >= moment and in_window(opening, window, zone):
                return opening
    raise ValueError(f"{window} does not open within {SEARCH_DAYS} days in {zone.key}")
