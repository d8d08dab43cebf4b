"""Buyer zones and send windows on the buyer's wall clock, across DST changes."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest

from worker.domain import SendWindow
from worker.localtime import in_window, next_open, zone_for

UTC_ZONE = ZoneInfo("UTC")
BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")
TOKYO = ZoneInfo("Asia/Tokyo")

WEEKDAYS_9_TO_18 = SendWindow(time(9), time(18), frozenset(range(5)))
EVERY_DAY_9_TO_18 = SendWindow(time(9), time(18))
EARLY_0230 = SendWindow(time(2, 30), time(4))
REPEATED_HOUR = SendWindow(time(1, 30), time(1, 45))
INSIDE_GAP = SendWindow(time(2, 10), time(2, 20), frozenset({6}))


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


@pytest.mark.parametrize(
    ("country", "timezone", "expected"),
    [
        ("DE", None, "Europe/Berlin"),
        ("de", None, "Europe/Berlin"),
        (" JP ", None, "Asia/Tokyo"),
        ("FR", None, "Europe/Paris"),
        ("US", None, "America/New_York"),
        ("CA", None, "America/Toronto"),
        ("RU", None, "Europe/Moscow"),
        ("AU", None, "Australia/Sydney"),
        ("BR", None, "America/Sao_Paulo"),
        ("UA", None, "Europe/Kyiv"),
        ("ES", None, "Europe/Madrid"),
        ("US", "America/Los_Angeles", "America/Los_Angeles"),
        (None, "Asia/Tokyo", "Asia/Tokyo"),
        ("DE", "Not/A_Zone", "Europe/Berlin"),
        ("DE", "../etc/passwd", "Europe/Berlin"),
        ("DE", "America", "Europe/Berlin"),
        ("DE", "", "Europe/Berlin"),
        ("XX", None, "UTC"),
        (None, None, "UTC"),
        ("", "garbage", "UTC"),
    ],
)
def test_zone_for_prefers_timezone_then_country_then_default(
    country: str | None, timezone: str | None, expected: str
) -> None:
    assert zone_for(country, timezone, UTC_ZONE).key == expected


def test_zone_for_falls_back_to_the_given_default() -> None:
    assert zone_for("XX", "nonsense", TOKYO) is TOKYO


@pytest.mark.parametrize(
    ("moment", "window", "zone", "expected"),
    [
        pytest.param(utc(2024, 6, 12, 10), None, BERLIN, utc(2024, 6, 12, 10), id="no-window"),
        pytest.param(
            utc(2024, 6, 12, 10), WEEKDAYS_9_TO_18, BERLIN, utc(2024, 6, 12, 10), id="inside"
        ),
        pytest.param(
            utc(2024, 6, 12, 5), WEEKDAYS_9_TO_18, BERLIN, utc(2024, 6, 12, 7), id="before-opening"
        ),
        pytest.param(
            utc(2024, 6, 12, 7), WEEKDAYS_9_TO_18, BERLIN, utc(2024, 6, 12, 7), id="at-opening"
        ),
        pytest.param(
            utc(2024, 6, 12, 16), WEEKDAYS_9_TO_18, BERLIN, utc(2024, 6, 13, 7), id="at-close"
        ),
        pytest.param(
            utc(2024, 6, 12, 20), WEEKDAYS_9_TO_18, BERLIN, utc(2024, 6, 13, 7), id="after-close"
        ),
        pytest.param(
            utc(2024, 6, 14, 17), WEEKDAYS_9_TO_18, BERLIN, utc(2024, 6, 17, 7), id="friday-monday"
        ),
        pytest.param(
            utc(2024, 6, 15, 12), WEEKDAYS_9_TO_18, BERLIN, utc(2024, 6, 17, 7), id="saturday"
        ),
        pytest.param(
            utc(2024, 6, 14, 23), WEEKDAYS_9_TO_18, TOKYO, utc(2024, 6, 17, 0), id="tokyo-weekend"
        ),
        pytest.param(
            utc(2024, 6, 14, 9), WEEKDAYS_9_TO_18, TOKYO, utc(2024, 6, 17, 0), id="tokyo-close"
        ),
        pytest.param(
            utc(2024, 6, 13, 23, 59), WEEKDAYS_9_TO_18, TOKYO, utc(2024, 6, 14, 0), id="tokyo-open"
        ),
        # Spring forward: Berlin 2024-03-31 02:00 CET -> 03:00 CEST.
        pytest.param(
            utc(2024, 3, 30, 20), EVERY_DAY_9_TO_18, BERLIN, utc(2024, 3, 31, 7), id="berlin-spring"
        ),
        pytest.param(
            utc(2024, 3, 30, 20), EARLY_0230, BERLIN, utc(2024, 3, 31, 1), id="berlin-gap-opening"
        ),
        pytest.param(
            utc(2024, 3, 30, 20), INSIDE_GAP, BERLIN, utc(2024, 4, 7, 0, 10), id="berlin-whole-gap"
        ),
        # Fall back: Berlin 2024-10-27 03:00 CEST -> 02:00 CET.
        pytest.param(
            utc(2024, 10, 26, 20), EVERY_DAY_9_TO_18, BERLIN, utc(2024, 10, 27, 8), id="berlin-fall"
        ),
        pytest.param(
            utc(2024, 10, 26, 20), EARLY_0230, BERLIN, utc(2024, 10, 27, 0, 30), id="berlin-fold"
        ),
        # Spring forward: New York 2024-03-10 02:00 EST -> 03:00 EDT.
        pytest.param(
            utc(2024, 3, 10, 1), EVERY_DAY_9_TO_18, NEW_YORK, utc(2024, 3, 10, 13), id="ny-spring"
        ),
        pytest.param(
            utc(2024, 3, 9, 20), EARLY_0230, NEW_YORK, utc(2024, 3, 10, 7), id="ny-gap-opening"
        ),
        # Fall back: New York 2024-11-03 02:00 EDT -> 01:00 EST; 01:30 happens twice.
        pytest.param(
            utc(2024, 11, 3, 1), EVERY_DAY_9_TO_18, NEW_YORK, utc(2024, 11, 3, 14), id="ny-fall"
        ),
        pytest.param(
            utc(2024, 11, 2, 20), REPEATED_HOUR, NEW_YORK, utc(2024, 11, 3, 5, 30), id="ny-fold-1st"
        ),
        # The repeated 01:30 does not reopen the window: it opened at the first one.
        pytest.param(
            utc(2024, 11, 3, 5, 50),
            REPEATED_HOUR,
            NEW_YORK,
            utc(2024, 11, 4, 6, 30),
            id="ny-fold-2nd",
        ),
    ],
)
def test_next_open(
    moment: datetime, window: SendWindow | None, zone: ZoneInfo, expected: datetime
) -> None:
    opened = next_open(moment, window, zone)
    assert opened == expected
    assert opened.tzinfo is UTC
    assert in_window(opened, window, zone)


@pytest.mark.parametrize(
    ("moment", "zone", "inside"),
    [
        (utc(2024, 6, 12, 7), BERLIN, True),
        (utc(2024, 6, 12, 6, 59), BERLIN, False),
        (utc(2024, 6, 12, 16), BERLIN, False),
        (utc(2024, 6, 15, 10), BERLIN, False),
        (utc(2024, 6, 12, 0), TOKYO, True),
        (utc(2024, 6, 12, 13), NEW_YORK, True),
    ],
)
def test_in_window_uses_the_buyers_wall_clock(
    moment: datetime, zone: ZoneInfo, inside: bool
) -> None:
    assert in_window(moment, WEEKDAYS_9_TO_18, zone) is inside


def test_next_open_converts_other_offsets_to_utc() -> None:
    moment = datetime(2024, 6, 12, 10, tzinfo=TOKYO)
    assert next_open(moment, None, BERLIN) == utc(2024, 6, 12, 1)


def test_naive_datetimes_are_refused() -> None:
    with pytest.raises(ValueError, match="naive"):
        next_open(datetime(2024, 6, 12, 10), WEEKDAYS_9_TO_18, BERLIN)  # noqa: DTZ001


# Gaps and folds across real zones ---------------------------------------------------------
#
# A window is [first reading of start, first reading of end) on each local day; a reading
# the clock skips stands for the instant it jumps past it.

LORD_HOWE = ZoneInfo("Australia/Lord_Howe")  # +10:30, and +11 in summer: 30-minute changes
SANTIAGO = ZoneInfo("America/Santiago")  # changes at midnight: Saturday 24:00
TEHRAN = ZoneInfo("Asia/Tehran")  # DST until 2022, changing at midnight
APIA = ZoneInfo("Pacific/Apia")  # skipped Friday 30 December 2011 whole
ST_JOHNS = ZoneInfo("America/St_Johns")  # fell back at 00:01 until 2011: across midnight


def window(start: str, end: str, *days: int) -> SendWindow:
    opens, closes = time.fromisoformat(start), time.fromisoformat(end)
    return SendWindow(opens, closes, frozenset(days or range(7)))


@pytest.mark.parametrize(
    ("zone", "window", "moment", "expected"),
    [
        # Berlin 2024-03-31: 02:00 CET -> 03:00 CEST (01:00 UTC).
        pytest.param(
            BERLIN,
            window("02:30", "04:00"),
            utc(2024, 3, 30, 20),
            utc(2024, 3, 31, 1),
            id="berlin-start-in-gap-opens-at-the-jump",
        ),
        pytest.param(
            BERLIN,
            window("01:00", "02:30"),
            utc(2024, 3, 31, 1),
            utc(2024, 3, 31, 23),
            id="berlin-end-in-gap-closed-at-the-jump",
        ),
        pytest.param(
            BERLIN,
            window("02:10", "02:20", 6),
            utc(2024, 3, 29, 12),
            utc(2024, 4, 7, 0, 10),
            id="berlin-whole-gap-only-sunday-nine-days-on",
        ),
        # Berlin 2024-10-27: 03:00 CEST -> 02:00 CET (01:00 UTC).
        pytest.param(
            BERLIN,
            window("02:30", "04:00"),
            utc(2024, 10, 26, 20),
            utc(2024, 10, 27, 0, 30),
            id="berlin-start-in-fold-first-occurrence",
        ),
        pytest.param(
            BERLIN,
            window("02:30", "04:00"),
            utc(2024, 10, 27, 1, 10),
            utc(2024, 10, 27, 1, 10),
            id="berlin-open-through-the-repeated-hour",
        ),
        pytest.param(
            BERLIN,
            window("01:00", "02:30"),
            utc(2024, 10, 27, 1, 10),
            utc(2024, 10, 28, 0),
            id="berlin-end-in-fold-closes-at-first-occurrence",
        ),
        # New York 2024-03-10 02:00 EST -> 03:00 EDT; 2024-11-03 02:00 EDT -> 01:00 EST.
        pytest.param(
            NEW_YORK,
            window("02:15", "02:45"),
            utc(2024, 3, 9, 20),
            utc(2024, 3, 11, 6, 15),
            id="ny-whole-gap-next-day",
        ),
        pytest.param(
            NEW_YORK,
            window("01:30", "03:00"),
            utc(2024, 11, 3, 6, 10),
            utc(2024, 11, 3, 6, 10),
            id="ny-open-through-the-repeated-hour",
        ),
        # Lord Howe 2024-10-06 02:00 -> 02:30; 2024-04-07 02:00 -> 01:30.
        pytest.param(
            LORD_HOWE,
            window("02:00", "02:15"),
            utc(2024, 10, 5, 12),
            utc(2024, 10, 6, 15),
            id="lord-howe-whole-half-hour-gap",
        ),
        pytest.param(
            LORD_HOWE,
            window("02:15", "03:00"),
            utc(2024, 10, 5, 12),
            utc(2024, 10, 5, 15, 30),
            id="lord-howe-start-in-gap",
        ),
        pytest.param(
            LORD_HOWE,
            window("01:45", "03:00"),
            utc(2024, 4, 6, 12),
            utc(2024, 4, 6, 14, 45),
            id="lord-howe-start-in-fold",
        ),
        # Santiago 2024-09-08 00:00 -> 01:00; 2024-04-06 24:00 -> 23:00.
        pytest.param(
            SANTIAGO,
            window("00:00", "00:30"),
            utc(2024, 9, 7, 12),
            utc(2024, 9, 9, 3),
            id="santiago-whole-gap-at-midnight",
        ),
        pytest.param(
            SANTIAGO,
            window("00:30", "02:00"),
            utc(2024, 9, 7, 12),
            utc(2024, 9, 8, 4),
            id="santiago-start-in-gap-at-midnight",
        ),
        pytest.param(
            SANTIAGO,
            window("23:00", "23:59"),
            utc(2024, 4, 6, 12),
            utc(2024, 4, 7, 2),
            id="santiago-fold-before-midnight",
        ),
        pytest.param(
            SANTIAGO,
            window("23:00", "23:59"),
            utc(2024, 4, 7, 3, 30),
            utc(2024, 4, 8, 3),
            id="santiago-repeated-hour-does-not-reopen",
        ),
        # Tehran 2022-03-22 00:00 -> 01:00; 2022-09-22 00:00 -> 2022-09-21 23:00.
        pytest.param(
            TEHRAN,
            window("00:00", "00:30"),
            utc(2022, 3, 21, 12),
            utc(2022, 3, 22, 19, 30),
            id="tehran-whole-gap",
        ),
        pytest.param(
            TEHRAN,
            window("00:15", "02:00"),
            utc(2022, 3, 21, 12),
            utc(2022, 3, 21, 20, 30),
            id="tehran-start-in-gap",
        ),
        pytest.param(
            TEHRAN,
            window("23:30", "23:59"),
            utc(2022, 9, 21, 12),
            utc(2022, 9, 21, 19),
            id="tehran-fold",
        ),
        # Apia went from Thursday 29 December 2011 straight to Saturday 31 December.
        pytest.param(
            APIA,
            window("09:00", "18:00", 4),
            utc(2011, 12, 29, 22),
            utc(2012, 1, 5, 19),
            id="apia-friday-that-never-was",
        ),
        pytest.param(
            APIA,
            window("09:00", "18:00"),
            utc(2011, 12, 30, 6),
            utc(2011, 12, 30, 19),
            id="apia-skipped-day",
        ),
        # St John's 2010-11-07 00:01 NDT -> 2010-11-06 23:01 NST: Sunday's window, opened at
        # its 00:00, stays open while the clock shows Saturday again.
        pytest.param(
            ST_JOHNS,
            window("00:00", "01:00"),
            utc(2010, 11, 7, 3),
            utc(2010, 11, 7, 3),
            id="st-johns-fold-across-midnight",
        ),
        pytest.param(
            ST_JOHNS,
            window("00:00", "01:00", 6),
            utc(2010, 11, 6, 12),
            utc(2010, 11, 7, 2, 30),
            id="st-johns-opens-at-first-midnight",
        ),
    ],
)
def test_next_open_across_gaps_and_folds(
    zone: ZoneInfo, window: SendWindow, moment: datetime, expected: datetime
) -> None:
    opened = next_open(moment, window, zone)
    assert opened == expected
    assert opened.tzinfo is UTC
    assert in_window(opened, window, zone)
    assert in_window(moment, window, zone) is (opened == moment)


@pytest.mark.parametrize(
    ("zone", "window", "moment", "inside"),
    [
        (BERLIN, window("01:00", "02:30"), utc(2024, 3, 31, 0, 59), True),
        (BERLIN, window("01:00", "02:30"), utc(2024, 3, 31, 1), False),
        (BERLIN, window("02:30", "04:00"), utc(2024, 3, 31, 1), True),
        (BERLIN, window("02:30", "04:00"), utc(2024, 3, 31, 0, 59), False),
        (BERLIN, window("02:30", "04:00"), utc(2024, 10, 27, 1, 10), True),
        (BERLIN, window("02:30", "04:00"), utc(2024, 10, 27, 3), False),
        (BERLIN, window("01:00", "02:30"), utc(2024, 10, 27, 0, 29), True),
        (BERLIN, window("01:00", "02:30"), utc(2024, 10, 27, 1, 10), False),
        (LORD_HOWE, window("01:45", "03:00"), utc(2024, 4, 6, 15, 20), True),
        (LORD_HOWE, window("02:00", "02:15"), utc(2024, 10, 5, 15, 30), False),
        (SANTIAGO, window("23:00", "23:59"), utc(2024, 4, 7, 2, 30), True),
        (SANTIAGO, window("23:00", "23:59"), utc(2024, 4, 7, 3, 30), False),
        (ST_JOHNS, window("00:00", "01:00"), utc(2010, 11, 7, 2, 29), False),
        (ST_JOHNS, window("00:00", "01:00"), utc(2010, 11, 7, 4, 29), True),
        (ST_JOHNS, window("00:00", "01:00"), utc(2010, 11, 7, 4, 30), False),
    ],
)
def test_in_window_across_gaps_and_folds(
    zone: ZoneInfo, window: SendWindow, moment: datetime, inside: bool
) -> None:
    assert in_window(moment, window, zone) is inside


def _transitions(zone: ZoneInfo, year: int) -> list[datetime]:
    """The instants (to the hour) in ``year`` after which the zone's offset differs."""
    found: list[datetime] = []
    moment = utc(year, 1, 1)
    for _ in range(366 * 24):
        later = moment + timedelta(hours=1)
        if later.astimezone(zone).utcoffset() != moment.astimezone(zone).utcoffset():
            found.append(moment)
        moment = later
    return found


@pytest.mark.parametrize(
    ("zone", "year"),
    [(BERLIN, 2024), (NEW_YORK, 2024), (LORD_HOWE, 2024), (SANTIAGO, 2024), (TEHRAN, 2021)],
    ids=lambda value: getattr(value, "key", value),
)
def test_every_window_near_a_change_opens_and_agrees_with_in_window(
    zone: ZoneInfo, year: int
) -> None:
    """Whatever the window, next_open answers, lands inside it, and skips no open minute."""
    changes = _transitions(zone, year)
    assert changes
    for change in changes:
        day = change.astimezone(zone).weekday()
        for start_minute in range(0, 24 * 60 - 30, 15):
            for length in (10, 45, 150):
                end_minute = min(start_minute + length, 23 * 60 + 59)
                span = SendWindow(
                    time(*divmod(start_minute, 60)), time(*divmod(end_minute, 60)), frozenset({day})
                )
                moment = change - timedelta(hours=3)
                opened = next_open(moment, span, zone)
                assert opened >= moment and in_window(opened, span, zone), (span, moment)
                probe, steps = moment, 0
                while probe < opened and steps < 300:
                    assert not in_window(probe, span, zone), (span, probe, opened)
                    probe, steps = probe + timedelta(minutes=5), steps + 1
