"""An import binds times itself, for speed: exactly as ``schema.UtcDateTime`` would."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect

from worker import schema
from worker.store_rows import _products_json, _time_binder, _time_reader

DIALECTS = [sqlite.dialect(), postgresql.psycopg.dialect()]
MOMENTS = [
    datetime(2026, 3, 2, 10, 0, tzinfo=UTC),
    datetime(2026, 3, 2, 23, 30, 0, 250, tzinfo=timezone(timedelta(hours=-5))),
    datetime(5, 1, 2, 3, 4, 5, 6, tzinfo=UTC),
    datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
    schema.EPOCH,
]


def _through_the_type(dialect: Dialect, moment: datetime) -> object:
    bound = schema.UtcDateTime().process_bind_param(moment, dialect)
    implementation = schema.UtcDateTime().dialect_impl(dialect).impl_instance
    processor = implementation.bind_processor(dialect)
    return processor(bound) if processor else bound


@pytest.mark.parametrize("dialect", DIALECTS, ids=lambda d: d.name)
@pytest.mark.parametrize("moment", MOMENTS, ids=str)
def test_times_are_bound_and_read_as_the_column_type_does(
    dialect: Dialect, moment: datetime
) -> None:
    bound = _time_binder(dialect)(moment)
    assert bound == _through_the_type(dialect, moment)
    assert _time_reader(dialect)(bound) == moment
    assert _time_binder(dialect)(None) is None and _time_reader(dialect)(None) is None


def test_the_epoch_is_bound_as_the_triggers_write_it() -> None:
    assert _time_binder(sqlite.dialect())(schema.EPOCH) == "1970-01-01 00:00:00.000000"


@pytest.mark.parametrize("dialect", DIALECTS, ids=lambda d: d.name)
def test_a_naive_time_is_refused(dialect: Dialect) -> None:
    with pytest.raises(ValueError, match="naive datetime"):
        _time_binder(dialect)(datetime(2026, 1, 1))  # noqa: DTZ001


def test_products_are_stored_as_a_json_list() -> None:
    assert _products_json(()) == "[]"
    assert _products_json(("Mug", 'Lid "XL"', "Moulin à poivre")) == (
        '["Mug", "Lid \\"XL\\"", "Moulin à poivre"]'
    )
