"""Buyer zones and send windows on the buyer's wall clock, across DST changes."""

from __future__ import annotations

from datetime import UTC, datetime, time
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
        pytest.param(
            utc(2024, 11, 3, 5, 50),
            REPEATED_HOUR,
            NEW_YORK,
            utc(2024, 11, 3, 6, 30),
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
