"""Importing files end to end: real files, the import command's handler, a real database (a
SQLite file, a PostgreSQL database).

Which import wins: a row the feed dates (Amazon's last-updated-date, the generic updated_at)
is as new as that; any other row is as new as its import. An older row changes nothing.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.conftest import Importer
from worker.errors import FeedError
from worker.store import Store

FEEDS = Path(__file__).parent.parent / "fixtures" / "feeds"
AMAZON_HEADER = (
    "amazon-order-id\tpurchase-date\tlast-updated-date\torder-status\tsales-channel\t"
    "product-name\tship-country\tbuyer-email\tbuyer-name\n"
)


def _amazon(path: Path, last_updated: str, country: str, name: str) -> Path:
    path.write_text(
        AMAZON_HEADER + f"302-1\t2026-02-20T08:00:00+00:00\t{last_updated}\tShipped\tAmazon.de\t"
        f"Kettle\t{country}\tabc@marketplace.amazon.de\t{name}\n",
        encoding="utf-8",
    )
    return path


def test_an_older_amazon_report_never_overwrites_the_newer_one(
    tmp_path: Path, run_import: Importer, store: Store
) -> None:
    march = _amazon(tmp_path / "march.txt", "2026-03-05T10:00:00+00:00", "AT", "Klaus Becker")
    february = _amazon(tmp_path / "february.txt", "2026-02-21T09:00:00+00:00", "DE", "K. Becker")
    assert run_import("orders", march, "--format", "amazon").code == 0
    done = run_import("orders", february, "--format", "amazon")
    assert done.code == 0
    assert done.out.startswith(
        f"{february}: 0 new, 0 updated, 0 rejected; 1 older than what is stored, left as they are"
    )
    [history] = store.histories()
    assert (history.order.country, history.order.buyer_name) == ("AT", "Klaus Becker")
    assert history.customer.country == "AT", "the buyer's newer address stays"

    forced = run_import("orders", february, "--format", "amazon", "--replace")
    assert forced.out == f"{february}: 0 new, 1 updated, 0 rejected\n"
    assert store.order("302-1").country == "DE"


def _generic(path: Path, header: str, *rows: str) -> Path:
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return path


def test_a_delivery_date_typed_in_the_future_is_corrected_by_the_next_file(
    tmp_path: Path, run_import: Importer, store: Store
) -> None:
    header = "order_id,marketplace,buyer_email,delivered_at"
    typo = _generic(tmp_path / "typo.csv", header, "G-1,shop,gina@example.com,2062-03-02")
    fixed = _generic(tmp_path / "fixed.csv", header, "G-1,shop,gina@example.com,2026-03-02")
    names = _generic(
        tmp_path / "names.csv", "order_id,marketplace,buyer_email,buyer_name",
        "G-1,shop,gina@example.com,Gina",
    )  # fmt: skip
    undelivered = _generic(tmp_path / "undelivered.csv", header, "G-1,shop,gina@example.com,")
    run_import("orders", typo)
    assert "0 new, 1 updated" in run_import("orders", fixed).out
    assert store.order("G-1").delivered_at is not None
    assert store.order("G-1").delivered_at.isoformat() == "2026-03-02T00:00:00+00:00"
    run_import("orders", names)
    assert store.order("G-1").buyer_name == "Gina"
    assert store.order("G-1").delivered_at is not None, "a file without the column keeps it"
    run_import("orders", undelivered)
    assert store.order("G-1").delivered_at is None, "an empty value in a newer file clears it"


def test_the_generic_updated_at_column_decides_whatever_the_import_order(
    tmp_path: Path, run_import: Importer, store: Store
) -> None:
    header = "order_id,marketplace,buyer_email,country,updated_at"
    newer = _generic(tmp_path / "a.csv", header, "U-1,shop,u@example.com,DE,2026-03-05T10:00Z")
    older = _generic(tmp_path / "b.csv", header, "U-1,shop,u@example.com,FR,2026-03-01T10:00Z")
    run_import("orders", newer)
    assert "1 older than what is stored" in run_import("orders", older).out
    assert store.order("U-1").country == "DE"


def test_a_shopify_export_imported_again_keeps_the_delivery_date_from_a_generic_file(
    tmp_path: Path, run_import: Importer, store: Store
) -> None:
    shopify = tmp_path / "shopify.csv"
    shutil.copy(FEEDS / "shopify_orders.csv", shopify)
    run_import("orders", shopify, "--format", "shopify")
    delivered = _generic(
        tmp_path / "delivered.csv", "order_id,marketplace,buyer_email,delivered_at",
        "#1001,shop,emma.rossi@example.it,2026-02-14",
    )  # fmt: skip
    run_import("orders", delivered)
    assert "0 new, 2 updated" in run_import("orders", shopify, "--format", "shopify").out
    order = store.order("#1001")
    assert order.delivered_at is not None and order.delivered_at.day == 14
    assert order.shipped_at is not None, "what the export has, it gives again"


def test_a_byte_that_is_not_utf8_late_in_a_file_imports_nothing_of_it(
    tmp_path: Path, run_import: Importer, store: Store
) -> None:
    path = tmp_path / "orders.csv"
    header = "order_id,marketplace,buyer_email,buyer_name"
    _generic(path, header, "A-1,shop,a@example.com,Ann", "A-2,shop,not-an-address,Bob")
    run_import("orders", path)
    rejects = tmp_path / "orders.rejects.csv"
    before = rejects.read_text(encoding="utf-8")

    rows = [f"B-{n},shop,b{n}@example.com,Buyer {n}" for n in range(3000)]
    rows.insert(10, "B-x,shop,still-not-an-address,Eve")
    data = "\n".join([header, *rows, "B-y,shop,j@example.com,J\udcfcrgen", "B-z,shop,z@x.com,Z"])
    path.write_bytes(data.encode("utf-8", "surrogateescape") + b"\n")
    with pytest.raises(FeedError) as caught:
        run_import("orders", path)
    assert caught.value.where == f"{path}:{len(rows) + 2}"
    assert "byte 0xFC at byte offset" in caught.value.detail
    assert caught.value.detail.endswith("; nothing was imported")
    assert [h.order.order_id for h in store.histories()] == ["A-1"]
    assert rejects.read_text(encoding="utf-8") == before, "the last good import's rejects stay"
    assert sorted(p.name for p in tmp_path.glob("orders*")) == ["orders.csv", "orders.rejects.csv"]


def test_a_disputes_file_that_fails_half_way_stores_no_dispute(
    tmp_path: Path, run_import: Importer, store: Store
) -> None:
    orders = _generic(
        tmp_path / "orders.csv", "order_id,marketplace,buyer_email", "D-1,shop,d@x.com"
    )
    run_import("orders", orders)
    disputes = tmp_path / "disputes.csv"
    rows = [f"D-1,damaged,2026-03-01T{n // 60:02d}:{n % 60:02d}:00Z," for n in range(600)]
    text = "\n".join(["order_id,kind,opened_at,closed_at", *rows, "D-1,damaged,caf\udce9,"])
    disputes.write_bytes(text.encode("utf-8", "surrogateescape") + b"\n")
    with pytest.raises(FeedError, match="not UTF-8"):
        run_import("disputes", disputes)
    assert store.histories()[0].disputes == ()


def test_a_fixed_rejects_file_imports_the_values_as_they_were(
    tmp_path: Path, run_import: Importer, store: Store
) -> None:
    """The ' that keeps a spreadsheet from running a formula is not imported."""
    path = _generic(
        tmp_path / "orders.csv", "order_id,marketplace,buyer_email,buyer_name,product,delivered_at",
        '"R-1",shop,-bob@example.com,"=HYPERLINK(""http://evil.example"")",+ Lid | @home,soon',
    )  # fmt: skip
    assert run_import("orders", path).code == 1
    rejects = tmp_path / "orders.rejects.csv"
    text = rejects.read_text(encoding="utf-8")
    assert "'-bob@example.com" in text and "'=HYPERLINK" in text and "'+ Lid | @home" in text
    rejects.write_text(text.replace(",soon,", ",2026-03-02,"), encoding="utf-8")
    assert run_import("orders", rejects).out.startswith(f"{rejects}: 1 new, 0 updated, 0 rejected")
    order = store.order("R-1")
    assert order.buyer_email == "-bob@example.com"
    assert order.buyer_name == '=HYPERLINK("http://evil.example")'
    assert order.products == ("+ Lid", "@home")


@pytest.mark.parametrize(
    ("fixture", "fmt", "order_id", "stored"),
    [
        (
            "ebay_orders_report.csv", "ebay", "14-09215-66302",
            (None, "deutsche-post", "LX123456785DE", "Deutsche Post Warenpost International",
             "2026-03-11T00:00:00+00:00", ("Silicone baking mat", "Herb scissors, 5 blades")),
        ),
        (
            "shopify_orders_export.csv", "shopify", "#1041",
            (None, "dhl", None, "DHL Paket", None,
             ("Bamboo cutting board", "Herb scissors, 5 blades", "Oil dispenser")),
        ),
        (
            "amazon_order_report.txt", "amazon", "028-3349201-5566743",
            ("amazon.de", None, None, "Standard", "2026-03-07T22:59:59+00:00",
             ("Edelstahl Knoblauchpresse", "Silikon Backpinsel")),
        ),
        (
            "amazon_fulfilled_shipments.txt", "amazon", "302-7712093-4455120",
            ("amazon.de", "dhl", "JJD000390007745612345", "Standard",
             "2026-02-27T20:00:00+00:00", ("Magnetleiste für Messer", "Tee-Ei aus Edelstahl")),
        ),
        (
            "aliexpress_orders.csv", "aliexpress", "8191234567890456",
            ("aliexpress.com", "cainiao", "LP00987654321098", "Cainiao Super Economy Global", None,
             ("Tea infuser ball", "Vegetable peeler")),
        ),
    ],
)  # fmt: skip
def test_a_real_export_stores_site_carrier_tracking_estimate_and_every_item(
    tmp_path: Path,
    run_import: Importer,
    store: Store,
    fixture: str,
    fmt: str,
    order_id: str,
    stored: tuple[object, ...],
) -> None:
    path = tmp_path / fixture
    shutil.copy(FEEDS / fixture, path)
    assert run_import("orders", path, "--format", fmt).code in (0, 1)  # 1: some rows rejected
    order = store.order(order_id)
    expected = order.expected_delivery_at.isoformat() if order.expected_delivery_at else None
    assert (
        order.site, order.carrier, order.tracking_number, order.shipping_service, expected,
        order.products,
    ) == stored  # fmt: skip
    assert order.delivered_at is None, "no export has a delivery date"


def test_importing_an_export_again_keeps_a_tracking_number_a_shopify_export_lacks(
    tmp_path: Path, run_import: Importer, store: Store
) -> None:
    """Shopify's export has no tracking column: a tracking number given by a generic file
    stays when the export is imported again, while the export's own columns are retaken."""
    shopify = tmp_path / "shopify.csv"
    shutil.copy(FEEDS / "shopify_orders_export.csv", shopify)
    run_import("orders", shopify, "--format", "shopify")
    tracked = _generic(
        tmp_path / "tracked.csv", "order_id,marketplace,buyer_email,tracking_number",
        "#1041,shop,sophie.mueller@example.de,00340434161094042557",
    )  # fmt: skip
    run_import("orders", tracked)
    run_import("orders", shopify, "--format", "shopify")
    order = store.order("#1041")
    assert (order.tracking_number, order.carrier) == ("00340434161094042557", "dhl")


def test_the_amazon_all_orders_report_imports_nothing(
    tmp_path: Path, run_import: Importer, store: Store
) -> None:
    path = tmp_path / "all-orders.txt"
    shutil.copy(FEEDS / "amazon_all_orders_report.txt", path)
    with pytest.raises(FeedError, match="Order Report"):
        run_import("orders", path, "--format", "amazon")
    assert store.histories() == []


def test_the_example_ebay_export_imports_every_order(
    tmp_path: Path, run_import: Importer, store: Store
) -> None:
    example = tmp_path / "ebay-orders.csv"  # a rejects file would go beside it
    shutil.copy(Path(__file__).parents[2] / "examples" / "ebay-orders.csv", example)
    done = run_import("orders", example, "--format", "ebay")
    assert done.code == 0 and ", 0 rejected" in done.out
    orders = [history.order for history in store.histories()]
    assert len(orders) >= 36 and all(o.tracking_number for o in orders)
