"""Reading order, dispute and review feeds: mappings, line numbers, rejects, streaming."""

from __future__ import annotations

import csv
import json
import shutil
import tracemalloc
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import pytest

from worker.domain import Dispute, DisputeKind, Order, Review
from worker.errors import FeedError
from worker.feeds import (
    ORDER_FIELDS,
    Format,
    OrderRow,
    RejectedRow,
    RejectsFile,
    carrier_of,
    normalise_email,
    parse_aliexpress_date,
    parse_dispute_kind,
    parse_ebay_date,
    parse_instant,
    read_disputes,
    read_order_rows,
    read_orders,
    read_reviews,
)

FEEDS = Path(__file__).parent.parent / "fixtures" / "feeds"
EXAMPLES = Path(__file__).parents[2] / "examples"


def at(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0, us: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, us, tzinfo=UTC)


T = TypeVar("T")


def split(items: Iterable[T | RejectedRow]) -> tuple[list[T], list[RejectedRow]]:
    good: list[T] = []
    bad: list[RejectedRow] = []
    for item in items:
        if isinstance(item, RejectedRow):
            bad.append(item)
        else:
            good.append(item)
    return good, bad


def orders_by_id(path: Path, fmt: Format = Format.GENERIC) -> dict[str, Order]:
    good, _ = split(read_orders(path, fmt))
    return {order.order_id: order for order in good}


# Generic format ------------------------------------------------------------------------------


def test_generic_csv_maps_every_column() -> None:
    order = orders_by_id(FEEDS / "generic.csv")["E-1001"]
    assert order == Order(
        order_id="E-1001",
        marketplace="ebay",
        buyer_email="anna.schmidt@example.com",
        buyer_name="Anna Schmidt",
        products=("Garlic press", "Silicone spatula"),
        locale="de-DE",
        country="DE",
        ordered_at=at(2026, 2, 1, 8, 15),
        shipped_at=at(2026, 2, 2),
        delivered_at=at(2026, 2, 5, 14),
        review_url=None,
        timezone="Europe/Berlin",
    )


def test_bad_rows_carry_physical_line_numbers_after_a_multiline_field() -> None:
    good, bad = split(read_orders(FEEDS / "generic.csv"))
    assert [o.order_id for o in good] == ["E-1001", "S-1002", "X-1003"]
    reasons = {row.line: row.reason for row in bad}
    assert list(reasons) == [6, 7, 8, 9, 11, 12, 14]
    assert "delivered_at" in reasons[6] and "before shipped_at" in reasons[6]
    assert "exactly one @" in reasons[7]
    assert "etsy" in reasons[8]
    assert "buyer_name" in reasons[9] and "line break" in reasons[9]
    assert "DEU" in reasons[11]
    assert "ordered_at" in reasons[12]
    assert reasons[14] == "order_id is empty"


def test_multiline_field_is_kept_in_the_good_row() -> None:
    order = orders_by_id(FEEDS / "generic.csv")["S-1002"]
    assert order.review_url == "https://shop.example.com/review/S-1002"
    assert order.delivered_at == at(2026, 2, 9)


def test_tsv_is_read_by_extension() -> None:
    orders = orders_by_id(FEEDS / "generic.tsv")
    assert orders["T-1"].products == ("USB-C cable, 2 m",)
    assert orders["T-2"].delivered_at == at(2026, 3, 2, 23, 30)


def test_semicolon_csv_with_bom_and_crlf() -> None:
    orders = orders_by_id(FEEDS / "semicolon_bom.csv")
    assert list(orders) == ["M-1", "M-2"]
    assert orders["M-1"].products == ("Moulin à poivre, acier",)
    assert orders["M-2"].buyer_email == "jürgen@xn--bcher-kva.example"
    assert (orders["M-2"].locale, orders["M-2"].country) == ("de-AT", "AT")


def test_jsonl_reports_bad_lines_by_number() -> None:
    good, bad = split(read_orders(FEEDS / "orders.jsonl"))
    assert [o.order_id for o in good] == ["J-1", "1004"]
    assert good[0].products == ("Rice cooker", "Rice paddle")
    assert good[0].delivered_at == at(2026, 3, 1, 1)
    assert [(r.line, r.reason.split(":")[0]) for r in bad] == [
        (3, "not valid JSON"),
        (4, 'a JSON line must be an object like {"order_id"'),
        (6, "buyer_name must be text or a number, not True"),
    ]
    assert bad[0].raw.startswith('{"order_id": "J-2"')


def test_tab_separated_txt_is_sniffed(tmp_path: Path) -> None:
    path = tmp_path / "orders.txt"
    path.write_text("order_id\tmarketplace\tbuyer_email\nQ-1\tshop\tq@example.com\n")
    assert list(orders_by_id(path)) == ["Q-1"]


# Marketplace formats ------------------------------------------------------------------------


def test_amazon_flat_file_with_buyer_columns_merges_items_and_skips_cancelled() -> None:
    good, bad = split(read_orders(FEEDS / "amazon_all_orders.txt", Format.AMAZON))
    first, second = good
    assert first == Order(
        order_id="302-1234567-1234567",
        marketplace="amazon",
        buyer_email="abc123xyz@marketplace.amazon.de",
        buyer_name="Klaus Becker",
        products=("Edelstahl Knoblauchpresse", "Silikon Backpinsel"),
        locale="de-DE",
        country="DE",
        ordered_at=at(2026, 2, 20, 8, 12, 45),
        site="amazon.de",
        shipping_service="Standard",
    )
    assert (second.locale, second.ordered_at) == ("en-GB", at(2026, 2, 22, 19, 30))
    assert second.delivered_at is None
    assert [(r.line, "cancelled" in r.reason) for r in bad] == [(4, True)]


def test_amazon_flat_file_quotes_are_plain_text(tmp_path: Path) -> None:
    source = tmp_path / "amazon.txt"
    source.write_text(
        "amazon-order-id\torder-status\tproduct-name\tbuyer-email\n"
        '1\tShipped\t"Best" garlic press 7"\ta@example.com\n'
        '2\tCancelled\t"Pro" whisk\tb@example.com\n'
    )
    with RejectsFile(source, fmt=Format.AMAZON) as rejects:
        good, bad = split(read_orders(source, Format.AMAZON))
        rejects.add(bad[0])
    assert good[0].products == ('"Best" garlic press 7"',)
    lines = rejects.path.read_text().splitlines()
    assert lines[1].startswith('2\tCancelled\t"Pro" whisk\tb@example.com\tline 3: ')


def test_shopify_merges_line_item_rows_into_one_order() -> None:
    good, bad = split(read_orders(FEEDS / "shopify_orders.csv", Format.SHOPIFY))
    assert [o.order_id for o in good] == ["#1001", "#1002"]
    assert good[0] == Order(
        order_id="#1001",
        marketplace="shop",
        buyer_email="emma.rossi@example.it",
        buyer_name="Emma Rossi",
        products=("Bamboo cutting board", "Herb scissors, 5 blades", "Oil dispenser"),
        country="IT",
        ordered_at=at(2026, 2, 10, 9, 4, 58),
        shipped_at=at(2026, 2, 11, 15, 40),
        delivered_at=None,
    )
    assert good[1].buyer_name == "Sam Lee"  # Shipping Name empty: Billing Name
    assert [(r.line, "cancelled" in r.reason) for r in bad] == [(6, True)]


def test_ebay_report_with_title_lines_footer_and_multi_item_order() -> None:
    good, bad = split(read_orders(FEEDS / "ebay_orders.csv", Format.EBAY))
    assert [o.order_id for o in good] == ["12-11111-22222", "12-33333-44444"]
    single, multi = good
    assert single == Order(
        order_id="12-11111-22222",
        marketplace="ebay",
        buyer_email="hans.keller@example.de",
        buyer_name="Hans Keller",
        products=("Digital kitchen scale",),
        country="AT",
        ordered_at=at(2026, 3, 3),
        shipped_at=at(2026, 3, 4),
        tracking_number="00340434",
    )
    assert multi.products == ("Car phone holder", "Cable organiser")
    assert (multi.country, multi.ordered_at) == ("US", at(2026, 3, 3))
    assert [(r.line, r.reason) for r in bad] == [(8, "buyer email is empty")]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Mar-03-26", at(2026, 3, 3)),
        ("Dec-31-2025", at(2025, 12, 31)),
        ("03-Mar-26", at(2026, 3, 3)),
        ("03.03.2026", at(2026, 3, 3)),
        ("3.3.26", at(2026, 3, 3)),
        ("03.03.2026 14:05", at(2026, 3, 3, 14, 5)),
        ("2026-03-03T10:00:00+01:00", at(2026, 3, 3, 9)),
        ("", None),
    ],
)
def test_ebay_dates(text: str, expected: datetime | None) -> None:
    assert parse_ebay_date(text) == expected


@pytest.mark.parametrize("text", ["Foo-03-26", "31.02.2026", "03/03/2026", "03-04-2026"])
def test_bad_ebay_dates(text: str) -> None:
    with pytest.raises(ValueError, match="date"):
        parse_ebay_date(text)


# Real exports' shipping columns --------------------------------------------------------------


def test_ebay_orders_report_gives_tracking_service_carrier_and_ebays_latest_estimate() -> None:
    """A German buyer (no locale column: the country is what the language rules get)."""
    orders = orders_by_id(FEEDS / "ebay_orders_report.csv", Format.EBAY)
    assert orders["12-08831-47710"] == Order(
        order_id="12-08831-47710",
        marketplace="ebay",
        buyer_email="jonas.weber@example.de",
        buyer_name="Jonas Weber",
        products=("Edelstahl Knoblauchpresse",),
        country="DE",
        ordered_at=at(2026, 3, 2),
        shipped_at=at(2026, 3, 3),
        carrier="dhl",
        tracking_number="00340434161094042557",
        shipping_service="DHL Paket",
        expected_delivery_at=at(2026, 3, 5),  # Maximum Estimated Delivery Date, not the minimum
    )
    taiwan = orders["21-10442-90817"]
    assert (taiwan.country, taiwan.buyer_name, taiwan.locale) == ("TW", "陳怡君", None)
    assert (taiwan.carrier, taiwan.expected_delivery_at) == ("dhl-express", None)
    assert orders["17-11203-55419"].shipped_at is None, "sold, not yet shipped"


def test_ebay_multi_item_order_summary_and_item_rows_are_one_order_with_every_item() -> None:
    good, bad = split(read_orders(FEEDS / "ebay_orders_report.csv", Format.EBAY))
    assert bad == [] and len(good) == 4, "footer lines skipped, item rows merged"
    multi = next(o for o in good if o.order_id == "14-09215-66302")
    assert multi.products == ("Silicone baking mat", "Herb scissors, 5 blades")
    assert multi.tracking_number == "LX123456785DE", "on the item rows, not the summary row"
    assert (multi.carrier, multi.country) == ("deutsche-post", "FR")


def test_ebay_report_rows_know_they_have_shipping_columns_but_no_delivery_date() -> None:
    rows, _ = split(read_order_rows(FEEDS / "ebay_orders_report.csv", Format.EBAY))
    fields = rows[0].fields
    assert {"carrier", "tracking_number", "shipping_service", "expected_delivery_at"} <= fields
    assert "delivered_at" not in fields and "site" not in fields and "locale" not in fields


def test_the_example_ebay_export_imports_whole() -> None:
    good, bad = split(read_orders(EXAMPLES / "ebay-orders.csv", Format.EBAY))
    assert bad == [] and len(good) >= 36
    assert {o.country for o in good} == {"DE", "FR", "ES", "IT", "JP", "TW", "US", "GB", "AT"}
    assert all(o.delivered_at is None and o.shipped_at is not None for o in good)
    shipped = sorted(o.shipped_at for o in good if o.shipped_at is not None)
    assert (shipped[0], shipped[-1]) == (at(2026, 2, 14), at(2026, 3, 19))
    assert sum(len(o.products) > 1 for o in good) >= 3
    anna = [o for o in good if o.buyer_email == "anna.schmidt@example.de"]
    assert len(anna) == 3 and len({o.ordered_at for o in anna}) == 1, "three orders, one day"


def test_shopify_export_shipping_method_gives_service_and_carrier_and_no_tracking() -> None:
    good, bad = split(read_order_rows(FEEDS / "shopify_orders_export.csv", Format.SHOPIFY))
    first, japan = (row.order for row in good)
    assert first.products == ("Bamboo cutting board", "Herb scissors, 5 blades", "Oil dispenser")
    assert (first.shipping_service, first.carrier, first.country) == ("DHL Paket", "dhl", "DE")
    assert (japan.carrier, japan.shipped_at) == ("japan-post", at(2026, 3, 4, 14, 30))
    assert "tracking_number" not in good[0].fields, "the orders export has no tracking column"
    assert [(r.line, "cancelled" in r.reason) for r in bad] == [(6, True)]


def test_amazon_order_report_reads_order_id_site_and_latest_delivery_date() -> None:
    good, bad = split(read_order_rows(FEEDS / "amazon_order_report.txt", Format.AMAZON))
    germany, japan = (row.order for row in good)
    assert germany.order_id == "028-3349201-5566743"
    assert germany.products == ("Edelstahl Knoblauchpresse", "Silikon Backpinsel")
    assert (germany.site, germany.locale) == ("amazon.de", "de-DE")
    assert germany.expected_delivery_at == at(2026, 3, 7, 22, 59, 59), "latest-delivery-date"
    assert (germany.shipping_service, germany.carrier, germany.shipped_at) == (
        "Standard",
        None,
        None,
    )
    assert (japan.site, japan.expected_delivery_at) == ("amazon.co.jp", at(2026, 3, 6, 14, 59, 59))
    assert {"site", "expected_delivery_at"} <= good[0].fields
    assert "tracking_number" not in good[0].fields
    assert [(r.line, r.reason) for r in bad] == [(5, "buyer-email is empty")]


def test_amazon_fulfilled_shipments_gives_carrier_tracking_and_estimated_arrival() -> None:
    orders = orders_by_id(FEEDS / "amazon_fulfilled_shipments.txt", Format.AMAZON)
    germany = orders["302-7712093-4455120"]
    assert germany.products == ("Magnetleiste für Messer", "Tee-Ei aus Edelstahl")
    assert (germany.carrier, germany.tracking_number) == ("dhl", "JJD000390007745612345")
    assert germany.shipped_at == at(2026, 2, 25, 16, 20, 11)
    assert germany.expected_delivery_at == at(2026, 2, 27, 20)
    assert orders["204-5566778-9900112"].carrier == "royal-mail"
    assert orders["113-2233445-6677889"].carrier == "amazon-logistics", "AMZN_US"


def test_amazon_all_orders_report_is_refused_naming_what_to_export() -> None:
    path = FEEDS / "amazon_all_orders_report.txt"
    with pytest.raises(FeedError) as caught:
        list(read_orders(path, Format.AMAZON))
    assert caught.value.where == f"{path}:1"
    assert "All Orders report" in caught.value.detail and "no buyer e-mail" in caught.value.detail
    assert "Order Report" in caught.value.detail and "Fulfilled Shipments" in caught.value.detail


def test_aliexpress_export_in_english_merges_items_and_skips_closed_orders() -> None:
    good, bad = split(read_orders(FEEDS / "aliexpress_orders.csv", Format.ALIEXPRESS))
    first, spain = good
    assert first == Order(
        order_id="8191234567890123",
        marketplace="aliexpress",
        buyer_email="emily.carter@example.com",
        buyer_name="Emily Carter",
        products=("Silicone spatula set",),
        country="US",
        ordered_at=at(2026, 3, 1, 10, 12, 33),
        shipped_at=at(2026, 3, 2, 9),
        site="aliexpress.com",
        carrier="cainiao",
        tracking_number="LP00123456789012",
        shipping_service="AliExpress Standard Shipping",
    )
    assert spain.products == ("Tea infuser ball", "Vegetable peeler")
    assert (spain.country, spain.ordered_at) == ("ES", at(2026, 3, 2, 21, 40))
    assert [(r.line, "cancelled" in r.reason) for r in bad] == [(5, True)]


def test_aliexpress_export_with_chinese_headers() -> None:
    [order] = orders_by_id(FEEDS / "aliexpress_orders_zh.csv", Format.ALIEXPRESS).values()
    assert (order.order_id, order.country, order.products) == (
        "8192000011112222",
        "DE",
        ("不锈钢压蒜器",),
    )
    assert (order.carrier, order.tracking_number) == ("yanwen", "UG123456789YP")


@pytest.mark.parametrize(
    ("service", "carrier"),
    [
        ("DHL Paket", "dhl"),
        ("DE_DHLPaket", "dhl"),
        ("DHL Express Worldwide", "dhl-express"),
        ("Deutsche Post Warenpost", "deutsche-post"),
        ("USPS Priority Mail", "usps"),
        ("Royal Mail Tracked 48", "royal-mail"),
        ("Parcelforce 48", "parcelforce"),
        ("Colissimo", "colissimo"),
        ("Chronopost", "chronopost"),
        ("China Post Registered Air Mail", "china-post"),
        ("Cainiao", "cainiao"),
        ("AliExpress Standard Shipping", "cainiao"),
        ("Japan Post EMS", "japan-post"),
        ("Yamato", "yamato"),
        ("SF Express", "sf-express"),
        ("燕文专线追踪小包", "yanwen"),
        ("Österreichische Post", "austrian-post"),
        ("Evri", "hermes"),
        ("UPS Standard", "ups"),
        ("AMZN_UK", "amazon-logistics"),
        ("Standard", None),
        ("Economy Shipping from outside US", None),
        ("Groups of four", None),
    ],
)
def test_the_carrier_is_known_from_the_shipping_service(service: str, carrier: str | None) -> None:
    assert carrier_of(service) == carrier


@pytest.mark.parametrize(
    ("name", "code"),
    [
        ("Germany", "DE"),
        ("Deutschland", "DE"),
        ("Allemagne", "DE"),
        ("德国", "DE"),
        ("Taiwan", "TW"),
        ("台灣", "TW"),
        ("日本", "JP"),
        ("Österreich", "AT"),
        ("United Kingdom", "GB"),
        ("Korea, Republic of", "KR"),
    ],
)
def test_country_names_in_the_markets_languages(tmp_path: Path, name: str, code: str) -> None:
    path = tmp_path / "report.csv"
    path.write_text(f'Order Number,Buyer Email,Ship To Country\n1,a@example.com,"{name}"\n')
    assert orders_by_id(path, Format.EBAY)["1"].country == code


def _ebay_file(tmp_path: Path, **cells: str) -> Path:
    header = ["Order Number", "Buyer Email", *cells]
    path = tmp_path / "report.csv"
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerow(["1", "a@example.com", *cells.values()])
    return path


@pytest.mark.parametrize(
    ("cells", "reason"),
    [
        ({"Tracking Number": "AB123\nBcc: x@example.com"}, "line break or control character"),
        ({"Tracking Number": "X" * 65}, "longer than 64"),
        ({"Tracking Number": "<script>"}, "other than letters, digits"),
        ({"Shipping Service": "DHL\x1b[31m"}, "control character"),
        ({"Maximum Estimated Delivery Date": "soon"}, "maximum estimated delivery date"),
    ],
)
def test_hostile_shipping_cells_refuse_the_row_naming_its_line(
    tmp_path: Path, cells: dict[str, str], reason: str
) -> None:
    good, bad = split(read_orders(_ebay_file(tmp_path, **cells), Format.EBAY))
    assert good == [] and bad[0].line == 2 and reason in bad[0].reason


def test_shipping_cells_are_tidied_not_refused(tmp_path: Path) -> None:
    path = _ebay_file(
        tmp_path,
        **{"Tracking Number": " 1Z 999 AA1 0123 4567 84, 1Z999AA2 ", "Shipping Service": "S" * 80},
    )
    [order] = orders_by_id(path, Format.EBAY).values()
    assert order.tracking_number == "1Z999AA10123456784", "the first of a list, spaces gone"
    assert order.shipping_service is not None and len(order.shipping_service) == 64


def test_a_service_that_names_no_carrier_leaves_the_stored_carrier_alone(tmp_path: Path) -> None:
    path = tmp_path / "report.csv"
    path.write_text(
        "Order Number,Buyer Email,Shipping Service\n"
        "1,a@example.com,DHL Paket\n2,b@example.com,SpeedPAK Standard\n"
    )
    dhl, speedpak = split(read_order_rows(path, Format.EBAY))[0]
    assert "carrier" in dhl.fields and dhl.order.carrier == "dhl"
    assert "carrier" not in speedpak.fields, "a re-import must not blank a known carrier"
    assert "shipping_service" in speedpak.fields


def test_a_carrier_column_names_the_carrier_even_when_unknown(tmp_path: Path) -> None:
    path = tmp_path / "orders.csv"
    path.write_text(
        "order_id,marketplace,buyer_email,carrier,shipping_service\n"
        "1,shop,a@example.com,DHL,Paket\n2,shop,b@example.com,Kangaroo Couriers,\n"
        "3,shop,c@example.com,,Royal Mail 1st Class\n"
    )
    orders = orders_by_id(path)
    assert [orders[k].carrier for k in "123"] == ["dhl", "Kangaroo Couriers", "royal-mail"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-03-03 14:05:11", at(2026, 3, 3, 14, 5, 11)),
        ("2026/03/03 14:05", at(2026, 3, 3, 14, 5)),
        ("2026.3.3", at(2026, 3, 3)),
        ("2026-03-03T14:05:00+08:00", at(2026, 3, 3, 6, 5)),
        ("", None),
    ],
)
def test_aliexpress_dates(text: str, expected: datetime | None) -> None:
    assert parse_aliexpress_date(text) == expected


# File-level errors --------------------------------------------------------------------------


def test_missing_required_column_names_file_and_column() -> None:
    path = FEEDS / "missing_column.csv"
    with pytest.raises(FeedError) as caught:
        list(read_orders(path))
    assert caught.value.where == f"{path}:1"
    assert "marketplace" in caught.value.detail and "buyer_email" in caught.value.detail


def test_missing_file_and_not_utf8_and_empty(tmp_path: Path) -> None:
    with pytest.raises(FeedError, match="cannot read"):
        list(read_orders(tmp_path / "nope.csv"))
    latin = tmp_path / "latin.csv"
    latin.write_bytes(
        b"order_id,marketplace,buyer_email,buyer_name\n1,shop,a@example.com,J\xfcrgen\n"
    )
    with pytest.raises(FeedError, match="not UTF-8"):
        list(read_orders(latin))
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(FeedError, match="no header row found"):
        list(read_orders(empty))


def test_eof_header_search_for_ebay_names_the_column(tmp_path: Path) -> None:
    path = tmp_path / "ebay.csv"
    path.write_text("Orders report\nSales Record Number,Buyer Email\n1,a@example.com\n")
    with pytest.raises(FeedError, match="'order number'"):
        list(read_orders(path, Format.EBAY))


def test_progress_bar_stays_off_without_a_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    assert len(split(read_orders(FEEDS / "generic.tsv", progress=True))[0]) == 2
    assert capsys.readouterr().err == ""


def test_unknown_extension_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "orders.xlsx"
    path.write_bytes(b"PK")
    with pytest.raises(FeedError, match=r"\.csv, \.tsv"):
        list(read_orders(path))


# Values -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", None),
        ("  ", None),
        ("2026-03-03", at(2026, 3, 3)),
        ("2026-03-03T14:05", at(2026, 3, 3, 14, 5)),
        ("2026-03-03T14:05:00Z", at(2026, 3, 3, 14, 5)),
        ("2026-03-03T14:05:00+01:00", at(2026, 3, 3, 13, 5)),
        ("2026-03-03 14:05:00 -0500", at(2026, 3, 3, 19, 5)),
        ("2026-03-03T14:05:00.250+09:00", at(2026, 3, 3, 5, 5, 0, 250000)),
    ],
)
def test_parse_instant(text: str, expected: datetime | None) -> None:
    parsed = parse_instant(text)
    assert parsed == expected
    assert parsed is None or parsed.tzinfo is UTC


@pytest.mark.parametrize("text", ["03/03/2026", "2026-02-30", "tomorrow", "2026-03-03T25:00"])
def test_parse_instant_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="ISO 8601"):
        parse_instant(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("  Anna.Schmidt@Example.COM ", "anna.schmidt@example.com"),
        ("jürgen@bücher.example", "jürgen@xn--bcher-kva.example"),
        ("kunde@STRASSE.de", "kunde@strasse.de"),
        ("kunde@straße.de", "kunde@xn--strae-oqa.de"),
        ("a+tag@example.org.", "a+tag@example.org"),
    ],
)
def test_normalise_email(text: str, expected: str) -> None:
    assert normalise_email(text) == expected


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty"),
        ("no-at.example.com", "exactly one @"),
        ("a@b@example.com", "exactly one @"),
        ("anna schmidt@example.com", "spaces"),
        ("anna@example.com\r\nBcc: x@example.net", "spaces"),
        ("@example.com", "before the @"),
        ("a..b@example.com", "before the @"),
        ("<a@example.com>", "bad character"),
        ("a@localhost", "needs a dot"),
        ("a@exa_mple.com", "bad domain label"),
        ("a@-example.com", "bad domain label"),
    ],
)
def test_normalise_email_refuses(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        normalise_email(text)


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("INR", DisputeKind.NOT_RECEIVED),
        ("item not received", DisputeKind.NOT_RECEIVED),
        ("Not_Received", DisputeKind.NOT_RECEIVED),
        ("snad", DisputeKind.NOT_AS_DESCRIBED),
        ("A-to-Z", DisputeKind.A_TO_Z),
        ("a_to_z", DisputeKind.A_TO_Z),
        ("eBay case", DisputeKind.EBAY_CASE),
        ("CHARGEBACK", DisputeKind.CHARGEBACK),
    ],
)
def test_dispute_kind_aliases(text: str, kind: DisputeKind) -> None:
    assert parse_dispute_kind(text) is kind


def test_disputes_file() -> None:
    good, bad = split(read_disputes(FEEDS / "disputes.csv"))
    assert [d.kind for d in good] == [
        DisputeKind.NOT_RECEIVED,
        DisputeKind.NOT_AS_DESCRIBED,
        DisputeKind.A_TO_Z,
        DisputeKind.NOT_RECEIVED,
        DisputeKind.NOT_RECEIVED,
        DisputeKind.CHARGEBACK,
    ]
    assert good[1] == Dispute(
        "D-2", DisputeKind.NOT_AS_DESCRIBED, at(2026, 3, 1, 10), at(2026, 3, 5, 10)
    )
    assert all(d.source == "import" for d in good)
    assert [(r.line, r.reason.split()[0]) for r in bad] == [
        (8, "unknown"),
        (9, "closed_at"),
        (10, "opened_at"),
    ]


def test_reviews_file_checks_rating_range() -> None:
    good, bad = split(read_reviews(FEEDS / "reviews.csv"))
    assert good == [
        Review("R-1", 5, at(2026, 3, 1, 11), "import"),
        Review("R-2", 1, at(2026, 3, 1), "amazon"),
    ]
    assert [r.line for r in bad] == [4, 5, 6, 7]
    assert all("1 to 5" in r.reason for r in bad[:3])


def test_header_injection_in_product_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "orders.jsonl"
    row = {"order_id": "P-1", "marketplace": "shop", "buyer_email": "p@example.com"}
    path.write_text(
        json.dumps({**row, "product": "Mug\r\nBcc: x@example.net"})
        + "\n"
        + json.dumps({**row, "buyer_name": "Ann\u0000"})
        + "\n"
    )
    _, bad = split(read_orders(path))
    assert [(r.line, r.reason.split()[0]) for r in bad] == [(1, "product"), (2, "buyer_name")]


def test_unclosed_quote_reports_the_lines_it_swallowed(tmp_path: Path) -> None:
    path = tmp_path / "orders.csv"
    path.write_text(
        "order_id,marketplace,buyer_email,note\n"
        "1,shop,a@example.com,ok\n"
        '2,shop,b@example.com,"x"y\n'
        "3,shop,c@example.com,ok\n"
        '4,shop,d@example.com,"gift\n'
        "5,shop,e@example.com,ok\n"
    )
    good, bad = split(read_orders(path))
    assert [o.order_id for o in good] == ["1", "3"]
    assert [r.reason.split(" (")[0] for r in bad] == [
        "unreadable CSV at lines 3-3",
        "unreadable CSV at lines 5-6",
    ]


def test_same_day_date_may_follow_a_timed_event(tmp_path: Path) -> None:
    path = tmp_path / "orders.csv"
    path.write_text(
        "order_id,marketplace,buyer_email,ordered_at,delivered_at\n"
        "1,shop,a@example.com,2026-03-03T15:00:00Z,2026-03-03\n"
        "2,shop,a@example.com,2026-03-03T15:00:00Z,2026-03-03T14:00:00Z\n"
    )
    good, bad = split(read_orders(path))
    assert [o.order_id for o in good] == ["1"]
    assert [r.line for r in bad] == [3]


# Rejects file -------------------------------------------------------------------------------


def write_rejects(source: Path, fmt: Format = Format.GENERIC) -> RejectsFile:
    with RejectsFile(source, fmt=fmt) as rejects:
        for item in read_orders(source, fmt):
            if isinstance(item, RejectedRow):
                rejects.add(item)
    return rejects


def test_rejects_file_beside_csv_with_header_and_error_column(tmp_path: Path) -> None:
    source = tmp_path / "orders.csv"
    shutil.copy(FEEDS / "generic.csv", source)
    rejects = write_rejects(source)
    assert rejects.path == tmp_path / "orders.rejects.csv"
    assert rejects.count == 7
    with rejects.path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    header = (FEEDS / "generic.csv").read_text().splitlines()[0].split(",")
    assert rows[0] == [*header, "error"]
    assert [r[0] for r in rows[1:]] == ["B-1", "B-2", "B-3", "B-4", "B-5", "B-6", ""]
    assert rows[4][3] == "Eve\nBcc: victim@example.net"
    assert rows[1][-1].startswith("line 6: delivered_at")
    # The rejects file reads back as a feed: same rows rejected, the error column ignored.
    again, _ = split(read_orders(rejects.path))
    assert again == []


def test_rejects_file_keeps_the_delimiter_and_finds_ebay_header(tmp_path: Path) -> None:
    source = tmp_path / "report.csv"
    shutil.copy(FEEDS / "ebay_orders.csv", source)
    rejects = write_rejects(source, Format.EBAY)
    lines = rejects.path.read_text().splitlines()
    assert lines[0].startswith("Sales Record Number,Order Number,") and lines[0].endswith(",error")
    assert lines[1].startswith("1205,12-55555-66666,")
    assert lines[1].endswith(",line 8: buyer email is empty")


def test_rejects_file_for_jsonl_adds_error_and_line(tmp_path: Path) -> None:
    source = tmp_path / "orders.jsonl"
    shutil.copy(FEEDS / "orders.jsonl", source)
    rejects = write_rejects(source)
    objects = [json.loads(line) for line in rejects.path.read_text().splitlines()]
    assert [(o["_line"], "_raw" in o) for o in objects] == [(3, True), (4, True), (6, False)]
    assert objects[2]["order_id"] == "J-5"
    assert objects[2]["_error"].startswith("buyer_name must be text")


def test_no_rejects_file_without_rejects(tmp_path: Path) -> None:
    source = tmp_path / "orders.tsv"
    shutil.copy(FEEDS / "generic.tsv", source)
    rejects = write_rejects(source)
    assert rejects.count == 0
    assert not rejects.path.exists()


def test_rejects_file_with_explicit_header(tmp_path: Path) -> None:
    source = tmp_path / "disputes.csv"
    with RejectsFile(source, "order_id;kind;opened_at") as rejects:
        rejects.add(RejectedRow(4, "unknown dispute kind 'x'", "D-1;x;2026-03-01"))
    assert rejects.path.read_text() == (
        "order_id;kind;opened_at;error\nD-1;x;2026-03-01;line 4: unknown dispute kind 'x'\n"
    )


# Streaming ----------------------------------------------------------------------------------


def test_large_file_streams_in_constant_memory(tmp_path: Path) -> None:
    """Held rows would cost far more than the file; streaming costs a few buffers."""
    path = tmp_path / "big.csv"
    with path.open("w", encoding="utf-8", newline="") as out:
        out.write("order_id,marketplace,buyer_email,buyer_name,product,country,delivered_at\n")
        for n in range(10_000):
            out.write(f"O-{n},ebay,buyer{n}@example.com,Buyer {n},Pepper mill,DE,2026-03-01\n")
    assert path.stat().st_size > 700_000
    split(read_orders(FEEDS / "generic.csv"))  # load lookup tables before measuring
    tracemalloc.start()
    try:
        count = sum(1 for item in read_orders(path) if isinstance(item, Order))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == 10_000
    assert peak < 300_000, f"peak {peak} bytes: rows are being held"


# Files are read in chunks: a row reads the same wherever a chunk ends --------------------------


def _note(n: int) -> str:
    """Quoted line breaks, and characters other readers break lines at (the csv module and
    JSON do not)."""
    return ['"two\nlines"', "vt\x0bff\x0c", "ls\u2028ps\u2029", "nel\x85fs\x1c", "plain"][n % 5]


@pytest.mark.parametrize("end", ["\n", "\r\n", "\r"])
def test_rows_and_line_numbers_are_the_same_across_chunks(tmp_path: Path, end: str) -> None:
    lines = ["order_id,marketplace,buyer_email,note"]
    lines += [f"O-{n},shop,b{n}@example.com,{_note(n)}" for n in range(6000)]
    lines[5001] = "O-5000,shop,not-an-address,late"
    text = end.join(lines) + end
    path = tmp_path / "orders.csv"
    path.write_bytes(text.encode("utf-8"))
    assert path.stat().st_size > 6 * 2**15, "several chunks"
    good, bad = split(read_orders(path))
    assert [o.order_id for o in good] == [f"O-{n}" for n in range(6000) if n != 5000]
    before = text[: text.index("O-5000,")]
    physical = before.count("\n") + before.count("\r") - before.count("\r\n") + 1
    assert [(r.line, r.cells[0][2]) for r in bad] == [(physical, "not-an-address")]


def test_jsonl_lines_are_the_same_across_chunks(tmp_path: Path) -> None:
    rows = [
        json.dumps({"order_id": f"J-{n}", "marketplace": "shop", "buyer_email": f"j{n}@x.com",
                    "note": _note(n)}, ensure_ascii=False)
        for n in range(4000)
    ]  # fmt: skip
    rows[100] = rows[100].replace(', "marketplace"', ',\r "marketplace"')  # JSON white space
    rows[3500] = rows[3500].replace("j3500@x.com", "not-an-address")
    path = tmp_path / "orders.jsonl"
    path.write_text("\n".join(rows) + "\n", encoding="utf-8", newline="")
    assert path.stat().st_size > 4 * 2**15, "several chunks"
    good, bad = split(read_orders(path))
    assert len(good) == 3999 and good[100].order_id == "J-100"
    assert [r.line for r in bad] == [3501]


# Encoding errors name their own line ---------------------------------------------------------


@pytest.mark.parametrize(
    ("suffix", "end", "expected_line"),
    [
        (".csv", "\n", 4002),
        (".csv", "\r\n", 4002),
        (".csv", "\r", 4002),  # old Mac line ends: a bare CR ends a line for the csv module
        (".jsonl", "\n", 4001),  # no header line
    ],
)
def test_a_byte_that_is_not_utf8_is_named_at_its_line_and_offset_however_late(
    tmp_path: Path, suffix: str, end: str, expected_line: int
) -> None:
    """Far past the reader's buffer; the rows before it were fine."""
    path = tmp_path / f"orders{suffix}"
    if suffix == ".jsonl":
        lines = [
            json.dumps({"order_id": f"O-{n}", "marketplace": "shop", "buyer_email": "a@x.com"})
            for n in range(4000)
        ]
        lines.append('{"order_id": "BAD", "buyer_name": "J\udcfcrgen"}')
    else:
        lines = ["order_id,marketplace,buyer_email,buyer_name"]
        lines += [f"O-{n},shop,b{n}@example.com,Buyer {n}" for n in range(4000)]
        lines.append("BAD,shop,j@example.com,J\udcfcrgen")
    lines.append("LAST,shop,l@example.com,Last")
    data = end.join(lines).encode("utf-8", "surrogateescape")
    path.write_bytes(data)
    with pytest.raises(FeedError) as caught:
        list(read_orders(path))
    assert caught.value.where == f"{path}:{expected_line}"
    offset = data.index(b"\xfc")
    assert f"byte 0xFC at byte offset {offset}" in caught.value.detail
    assert data[:offset].count(end.encode()) + 1 == expected_line, "the fixture's own count"


def test_a_bom_and_a_cut_multibyte_character_at_the_end(tmp_path: Path) -> None:
    path = tmp_path / "orders.csv"
    data = b"\xef\xbb\xbforder_id,marketplace,buyer_email\n1,shop,a@x.com,\xc3"
    path.write_bytes(data)
    with pytest.raises(FeedError, match="unexpected end of data") as caught:
        list(read_orders(path))
    assert caught.value.where == f"{path}:2"
    assert "offset 51" in caught.value.detail and data[51:] == b"\xc3", "the BOM counts"


def test_jsonl_lines_end_at_line_feeds_only(tmp_path: Path) -> None:
    """U+2028 and U+0085 are text inside a JSON string, a CR is JSON white space: split
    there, the first object would be broken JSON."""
    path = tmp_path / "orders.jsonl"
    row = {"order_id": "J-1", "marketplace": "shop", "buyer_email": "j@example.com"}
    path.write_text(
        json.dumps({**row, "note": "Mug\u2028Lid\x85Box\u2029"}, ensure_ascii=False)
        + "\r\n"
        + '{"order_id": "J-2",\r "marketplace": "shop", "buyer_email": "k@example.com"}\n'
        + json.dumps({**row, "order_id": "J-3", "buyer_email": "bad"})
        + "\n",
        encoding="utf-8",
        newline="",
    )
    good, bad = split(read_orders(path))
    assert [o.order_id for o in good] == ["J-1", "J-2"]
    assert [r.line for r in bad] == [3]


# Rejects files read back exactly -------------------------------------------------------------

HOSTILE = [
    "a\rb",
    "a\nb",
    "a\r\nb",
    "x\u2028y",
    "x\u2029y",
    "x\x85y",
    "x\x0by\x0cz\x1c",
    "a,b",
    "a;b",
    "a\tb",
    'say "hi"',
    '"',
    "=1+1",
    '=HYPERLINK("http://evil.example","click")',
    "+49 30 1234",
    "-5",
    "@SUM(A1:A2)",
    "\t=1",
    "\r=1",
    "'quoted",
    "'=1",
    "''",
    "plain",
    "",
]


def _neutral(value: str) -> str:
    """The documented rule: a leading ' before = + - @ TAB CR (and before a leading ')."""
    return "'" + value if value[:1] in ("=", "+", "-", "@", "\t", "\r", "'") else value


@pytest.mark.parametrize(("suffix", "delimiter"), [(".csv", ","), (".tsv", "\t"), (".csv", ";")])
def test_rejects_read_back_with_the_same_rows_and_fields(
    tmp_path: Path, suffix: str, delimiter: str
) -> None:
    source = tmp_path / f"orders{suffix}"
    header = ["order_id", "marketplace", "buyer_email", "note"]
    rows = [[f"H-{n}", "shop", "not-an-address", value] for n, value in enumerate(HOSTILE)]
    with source.open("w", encoding="utf-8", newline="") as out:
        writer = csv.writer(out, delimiter=delimiter, quoting=csv.QUOTE_ALL)
        writer.writerows([header, *rows])
    rejects = write_rejects(source)
    assert rejects.count == len(HOSTILE)

    with rejects.path.open(encoding="utf-8", newline="") as handle:
        read_back = list(csv.reader(handle, delimiter=delimiter, strict=True))
    assert read_back[0] == [*header, "error"]
    assert [r[:4] for r in read_back[1:]] == [[*r[:3], _neutral(r[3])] for r in rows]
    assert all(r[4].startswith("line ") for r in read_back[1:])

    # Our own reader gives the values back as they were, without the added '.
    again = [r for r in read_orders(rejects.path) if isinstance(r, RejectedRow)]
    assert [r.cells[0][:4] for r in again] == [tuple(r) for r in rows]


def test_rejects_neutralise_formulas_in_every_column_and_the_header(tmp_path: Path) -> None:
    source = tmp_path / "orders.csv"
    source.write_text("order_id,marketplace,buyer_email,=cmd\n=1+1,shop,@x,-2\n")
    rejects = write_rejects(source)
    with rejects.path.open(encoding="utf-8", newline="") as handle:
        lines = list(csv.reader(handle))
    assert lines == [
        ["order_id", "marketplace", "buyer_email", "'=cmd", "error"],
        ["'=1+1", "shop", "'@x", "'-2", "line 2: buyer_email: '@x' is not an e-mail address: "
         "bad part before the @"],
    ]  # fmt: skip


def test_jsonl_rejects_are_one_line_per_object_for_every_reader(tmp_path: Path) -> None:
    source = tmp_path / "orders.jsonl"
    row = {"order_id": "J-1", "marketplace": "shop", "buyer_email": "bad", "note": "a\u2028b\x85c"}
    source.write_text(json.dumps(row, ensure_ascii=False) + "\nnot json \u2029 at all\n")
    rejects = write_rejects(source)
    text = rejects.path.read_text(encoding="utf-8")
    assert len(text.splitlines()) == 2 == text.count("\n")
    first, second = (json.loads(line) for line in text.splitlines())
    assert first["note"] == "a\u2028b\x85c" and first["_line"] == 1
    assert second["_raw"] == "not json \u2029 at all"


def test_a_failed_import_keeps_the_previous_rejects_file(tmp_path: Path) -> None:
    source = tmp_path / "orders.csv"
    source.write_text("order_id,marketplace,buyer_email\n1,shop,bad\n")
    before = write_rejects(source).path.read_text()
    with pytest.raises(FeedError), RejectsFile(source) as rejects:
        rejects.add(RejectedRow(3, "another reason", "2,shop,worse"))
        raise FeedError("not UTF-8 text", where=f"{source}:9")
    assert rejects.path.read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["orders.csv", "orders.rejects.csv"]


# What a row says about its own age -------------------------------------------------------------


def test_order_rows_carry_the_columns_their_file_has(tmp_path: Path) -> None:
    path = tmp_path / "orders.csv"
    path.write_text(
        "order_id,marketplace,buyer_email,delivered_at,updated_at\n"
        "1,shop,a@example.com,,2026-03-05T10:00:00+01:00\n"
        "2,shop,b@example.com,2026-03-01\n"
    )
    first, second = split(read_order_rows(path))[0]
    assert first.fields == {"order_id", "marketplace", "buyer_email", "delivered_at"}
    assert (first.updated_at, second.updated_at) == (at(2026, 3, 5, 9), None)
    assert first.order.delivered_at is None, "present and empty: a re-import clears it"


def test_jsonl_fields_are_the_keys_of_each_object(tmp_path: Path) -> None:
    path = tmp_path / "orders.jsonl"
    row = {"order_id": "J-1", "marketplace": "shop", "buyer_email": "j@example.com"}
    path.write_text(json.dumps({**row, "delivered_at": None}) + "\n" + json.dumps(row) + "\n")
    with_null, without = split(read_order_rows(path))[0]
    assert "delivered_at" in with_null.fields and "delivered_at" not in without.fields


def test_marketplace_rows_know_what_their_export_has() -> None:
    amazon, _ = split(read_order_rows(FEEDS / "amazon_all_orders.txt", Format.AMAZON))
    assert amazon[0].updated_at == at(2026, 2, 20, 8, 12, 45), "last-updated-date"
    assert "delivered_at" not in amazon[0].fields and "locale" in amazon[0].fields
    shopify, _ = split(read_order_rows(FEEDS / "shopify_orders.csv", Format.SHOPIFY))
    assert shopify[0].updated_at is None
    assert shopify[0].fields == {
        "order_id", "marketplace", "buyer_email", "buyer_name", "products", "country",
        "ordered_at", "shipped_at",
    }  # fmt: skip
    generic, _ = split(read_order_rows(FEEDS / "generic.csv"))
    events = {"delivery_event_at", "shipment_status", "shipment_status_at"}  # shipments file
    shipping = {"site", "carrier", "tracking_number", "shipping_service", "expected_delivery_at"}
    assert generic[0].fields == ORDER_FIELDS - events - shipping  # the file has no such column


def test_a_bad_last_updated_time_refuses_the_row(tmp_path: Path) -> None:
    path = tmp_path / "orders.csv"
    path.write_text("order_id,marketplace,buyer_email,updated_at\n1,shop,a@example.com,soon\n")
    good, bad = split(read_order_rows(path))
    assert good == [] and bad[0].reason.startswith("updated_at: 'soon' is not an ISO 8601")


def test_read_orders_gives_plain_orders() -> None:
    assert all(not isinstance(o, OrderRow) for o in read_orders(FEEDS / "generic.tsv"))
