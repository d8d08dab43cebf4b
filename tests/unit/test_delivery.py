"""Where an order's delivery time comes from, and the transit table behind the estimates."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from worker.config import load_settings
from worker.daemon import policy_from
from worker.delivery import (
    DEFAULT_CROSS_BORDER,
    DEFAULT_DOMESTIC,
    DEFAULT_REGIONS,
    DEFAULT_SAME_REGION,
    Delivery,
    TransitTable,
    carrier_key,
    delivery_of,
)
from worker.domain import Order
from worker.errors import ConfigError

SHIPPED = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
DAY = timedelta(days=1)
FROM_CN = TransitTable(ship_from="CN")
ORDER = Order("1001", "ebay", "ann@example.com", shipped_at=SHIPPED, country="DE")


def test_the_defaults_are_the_documented_ones():
    table = TransitTable()
    assert (table.domestic, table.same_region, table.cross_border) == (
        4 * DAY,
        7 * DAY,
        14 * DAY,
    )
    assert (DEFAULT_DOMESTIC, DEFAULT_SAME_REGION, DEFAULT_CROSS_BORDER) == (
        4 * DAY,
        7 * DAY,
        14 * DAY,
    )


def test_a_delivery_event_outranks_every_other_source():
    event = SHIPPED + 5 * DAY
    order = replace(
        ORDER,
        delivery_event_at=event,
        delivered_at=SHIPPED + 6 * DAY,
        expected_delivery_at=SHIPPED + 9 * DAY,
    )
    assert delivery_of(order, None, FROM_CN) == Delivery(event, "event")


def test_the_feeds_delivery_column_outranks_the_marketplaces_estimate():
    order = replace(ORDER, delivered_at=SHIPPED + 6 * DAY, expected_delivery_at=SHIPPED + 9 * DAY)
    assert delivery_of(order, None, FROM_CN) == Delivery(SHIPPED + 6 * DAY, "feed")


def test_the_marketplaces_estimate_outranks_ours():
    order = replace(ORDER, expected_delivery_at=SHIPPED + 9 * DAY)
    assert delivery_of(order, None, FROM_CN) == Delivery(SHIPPED + 9 * DAY, "marketplace")


def test_without_any_date_the_estimate_is_shipped_plus_the_routes_transit():
    found = delivery_of(ORDER, None, FROM_CN)
    assert found == Delivery(SHIPPED + 14 * DAY, "estimated", "CN->DE post, 14d", 14 * DAY)
    assert found.describe() == "delivered ~2026-03-16 (estimated: CN->DE post, 14d)"


def test_nothing_shipped_and_no_date_means_no_delivery():
    assert delivery_of(replace(ORDER, shipped_at=None), "DE", FROM_CN) is None


def test_the_buyers_country_comes_from_the_order_then_the_customer():
    domestic = TransitTable(ship_from="DE")
    assert delivery_of(ORDER, "FR", domestic) == Delivery(
        SHIPPED + 4 * DAY, "estimated", "DE->DE post, 4d", 4 * DAY
    )
    no_country = replace(ORDER, country=None)
    assert delivery_of(no_country, "FR", domestic) == Delivery(
        SHIPPED + 7 * DAY, "estimated", "DE->FR post, 7d", 7 * DAY
    )


def test_an_unknown_country_on_either_end_counts_as_cross_border():
    assert TransitTable().transit("DE") == (14 * DAY, "?->DE post")
    assert FROM_CN.transit(None) == (14 * DAY, "CN->? post")


@pytest.mark.parametrize(
    ("origin", "dest", "expected"),
    [
        ("DE", "DE", 4 * DAY),
        ("DE", "FR", 7 * DAY),  # both in the EU
        ("US", "CA", 7 * DAY),  # Northern America
        ("JP", "TW", 7 * DAY),  # Eastern Asia
        ("DE", "US", 14 * DAY),
        ("GB", "DE", 14 * DAY),  # not in the EU
    ],
)
def test_the_class_of_the_route(origin: str, dest: str, expected: timedelta):
    assert TransitTable(ship_from=origin).transit(dest)[0] == expected


def test_the_most_specific_route_wins():
    table = TransitTable(
        ship_from="CN",
        routes=(("CN->DE", 12 * DAY), ("CN->*", 20 * DAY), ("*->DE", 9 * DAY), ("*->FR", 8 * DAY)),
    )
    assert table.transit("DE") == (12 * DAY, "CN->DE post")
    assert table.transit("US") == (20 * DAY, "CN->US post")
    from_us = replace(table, ship_from="US")
    assert from_us.transit("DE") == (9 * DAY, "US->DE post")
    assert from_us.transit("IT") == (14 * DAY, "US->IT post")


def test_a_carrier_and_its_service_outrank_the_route():
    table = TransitTable(
        ship_from="CN",
        routes=(("CN->DE", 12 * DAY),),
        carriers=(("dhl", 6 * DAY), ("dhl-express", 3 * DAY)),
    )
    assert table.transit("DE", "DHL", "Express") == (3 * DAY, "CN->DE dhl-express")
    assert table.transit("DE", "DHL Express") == (3 * DAY, "CN->DE dhl-express")
    assert table.transit("DE", "dhl", "Paket") == (6 * DAY, "CN->DE dhl")
    assert table.transit("DE", "China Post", "ePacket") == (12 * DAY, "CN->DE post")


def test_a_carrier_is_matched_by_any_name_the_exports_give_it():
    table = TransitTable(ship_from="DE", carriers=(("deutsche-post", 2 * DAY),))
    for name in ("Deutsche Post", "deutsche post", "DEUTSCHE-POST"):
        assert table.transit("DE", name) == (2 * DAY, "DE->DE deutsche-post"), name
    assert table.transit("DE", "Hermes") == (4 * DAY, "DE->DE post")


def test_an_order_with_a_known_carrier_service_is_estimated_by_it():
    table = replace(FROM_CN, carriers=(("japan-post-ems", 6 * DAY),))
    order = replace(ORDER, carrier="Japan Post", shipping_service="EMS")
    found = delivery_of(order, None, table)
    assert found == Delivery(SHIPPED + 6 * DAY, "estimated", "CN->DE japan-post-ems, 6d", 6 * DAY)


@pytest.mark.parametrize(
    ("parts", "key"),
    [
        (("Japan Post", "EMS"), "japan-post-ems"),
        (("DHL", None), "dhl"),
        ((" Royal_Mail ", "Tracked 48"), "royal-mail-tracked-48"),
        (("UPS", ""), "ups"),
    ],
)
def test_carrier_keys_ignore_case_and_punctuation(parts: tuple[str, str | None], key: str):
    assert carrier_key(*parts) == key


def test_a_returned_parcel_has_no_delivery_whatever_the_dates_say():
    order = replace(ORDER, shipment_status="returned", delivery_event_at=SHIPPED + 5 * DAY)
    found = delivery_of(order, None, FROM_CN)
    assert found == Delivery(None, "returned")
    assert found.skip_reason == "parcel_returned"
    assert found.describe() == "parcel returned"


def test_an_exception_holds_the_guesses_but_not_a_stated_delivery():
    held = replace(ORDER, shipment_status="exception", expected_delivery_at=SHIPPED + 9 * DAY)
    found = delivery_of(held, None, FROM_CN)
    assert found == Delivery(None, "exception")
    assert found.wait_reason == "awaiting_delivered: parcel exception"
    delivered = replace(held, delivered_at=SHIPPED + 8 * DAY)
    assert delivery_of(delivered, None, FROM_CN) == Delivery(SHIPPED + 8 * DAY, "feed")


@pytest.mark.parametrize(
    ("source", "text"),
    [
        ("event", "delivered 2026-03-14 (event)"),
        ("feed", "delivered 2026-03-14 (feed)"),
        ("marketplace", "delivered ~2026-03-14 (marketplace estimate)"),
    ],
)
def test_describe_says_the_source(source: str, text: str):
    assert Delivery(datetime(2026, 3, 14, 9, tzinfo=UTC), source).describe() == text


def test_the_issues_own_example():
    delivery = Delivery(
        datetime(2026, 3, 14, tzinfo=UTC), "estimated", "CN->DE post, 12d", 12 * DAY
    )
    assert delivery.describe() == "delivered ~2026-03-14 (estimated: CN->DE post, 12d)"


# The ``delivery`` settings ----------------------------------------------------------------


def _settings(tmp_path: Path, text: str) -> TransitTable:
    path = tmp_path / "worker.yaml"
    path.write_text(text, encoding="utf-8")
    return policy_from(load_settings(path, {})).transit


def test_the_delivery_section_builds_the_policys_transit_table(tmp_path: Path):
    table = _settings(
        tmp_path,
        "delivery:\n"
        "  ship_from: cn\n"
        "  cross_border: 16d\n"
        "  routes: {CN->DE: 12d, 'CN->*': 20d, '*->US': 9d}\n"
        "  carriers: {DHL Express: 3d, japan-post-ems: 6d}\n"
        "  regions: {europe: [gb, de]}\n",
    )
    assert table.ship_from == "CN"
    assert table.transit("DE") == (12 * DAY, "CN->DE post")
    assert table.transit("DE", "DHL", "Express") == (3 * DAY, "CN->DE dhl-express")
    assert replace(table, ship_from="GB").transit("DE") == (7 * DAY, "GB->DE post")
    assert replace(table, ship_from="GB").transit("FR") == (16 * DAY, "GB->FR post")
    assert dict(table.regions)["eu"] == dict(DEFAULT_REGIONS)["eu"]  # the defaults stay


def test_without_a_delivery_section_the_defaults_apply(tmp_path: Path):
    assert _settings(tmp_path, "default_locale: en\n") == TransitTable()


def test_the_seller_country_comes_from_the_environment_too(tmp_path: Path):
    path = tmp_path / "worker.yaml"
    path.write_text("{}\n", encoding="utf-8")
    settings = load_settings(path, {"WORKER_DELIVERY_SHIP_FROM": "JP"})
    assert settings.delivery.transit_table().ship_from == "JP"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("ship_from: China", "delivery.ship_from: .*'China' is not an ISO 3166 country code"),
        ("routes: {CN-DE: 12d}", "'CN-DE' is not a route like 'CN->DE'"),
        ("routes: {'*->*': 12d}", r"'\*->\*' is not a route"),
        ("routes: {CN->DE: 0d}", "routes.CN->DE: '0d' is not a transit time"),
        ("domestic: soon", "delivery.domestic: .*'soon' is not a duration"),
        ("cross_border: 400d", "is not a transit time above 0 and up to 180d"),
        ("carriers: {'--': 2d}", "'--' is not a carrier name"),
        ("regions: {europe: []}", "regions.europe: list its countries"),
        ("regions: {europe: [DE, Germany]}", "regions.europe: 'Germany' is not an ISO 3166"),
        ("colour: blue", "delivery.colour"),
    ],
)
def test_bad_delivery_settings_are_refused_naming_the_file_and_setting(
    tmp_path: Path, text: str, message: str
):
    with pytest.raises(ConfigError, match=message) as caught:
        _settings(tmp_path, f"delivery:\n  {text}\n")
    assert caught.value.where == str(tmp_path / "worker.yaml")
