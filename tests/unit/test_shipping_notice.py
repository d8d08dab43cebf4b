"""The shipping notice: every shipped language, with and without tracking and a delivery
window, every item named; zh-Hant chosen for Taiwan and Hong Kong; `worker check` takes the
campaign once it is switched on."""

from __future__ import annotations

import os
import re
import shutil
from datetime import UTC, date, datetime
from html import unescape
from pathlib import Path
from typing import Any

import pytest

from tests.unit.test_template_content import UNSUBSCRIBE_WORD  # the words messages teach
from worker.cli import main
from worker.config import SellerSettings, Settings, TrackingSettings
from worker.daemon import load_checked_campaigns
from worker.delivery import TransitTable, delivery_of, expected_window
from worker.domain import Order
from worker.render import (
    RenderedMessage,
    Renderer,
    format_delivery_window,
    locale_chain,
    message_context,
)

ROOT = Path(__file__).resolve().parents[2]
TEMPLATES = ROOT / "templates"
LOCALES = ("en", "de", "fr", "es", "it", "ja", "zh", "zh-Hant")
SELLER = SellerSettings(name="Kettle & Co", signature="Anna, customer service")
NUMBER = "RR123456785CN"
ITEMS = ("Glass kettle 1.7 l", "Tea strainer", "Descaler", "Cosy", "Mug")
WINDOW = (date(2026, 3, 14), date(2026, 3, 18))
RENDERER = Renderer(TEMPLATES)


def order(
    items: int = 1,
    *,
    name: str = "Maria Beispiel",
    carrier: str | None = "China Post",
    number: str | None = NUMBER,
    country: str = "FR",
) -> Order:
    return Order(
        "SHOP-2001",
        "shop",
        "maria@example.com",
        name,
        ITEMS[:items],
        None,
        country,
        shipped_at=datetime(2026, 3, 2, 9, 0, tzinfo=UTC),
        carrier=carrier,
        tracking_number=number,
    )


def render(locale: str, shipped: Order, **context: Any) -> RenderedMessage:
    values = message_context(shipped, SELLER, None, locale, **context)
    return RENDERER.render("shipping_notice", locale, values)


def words_of_text(text: str) -> list[str]:
    return re.sub(r"^- ", "", text, flags=re.MULTILINE).split()


def words_of_html(html: str) -> list[str]:
    body = html.split("<body", 1)[1].split(">", 1)[1].rsplit("</body>", 1)[0]
    inline = re.sub(r"</?a\b[^>]*>", "", body)
    return unescape(re.sub(r"<[^>]+>", " ", inline)).split()


VARIANTS = [
    pytest.param({"tracking": TrackingSettings(), "delivery_window": WINDOW}, id="all"),
    pytest.param({"tracking": TrackingSettings()}, id="no-window"),
    pytest.param({"delivery_window": WINDOW, "ship_from_country": "FR"}, id="domestic"),
    pytest.param({}, id="defaults"),
]


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("locale", LOCALES)
def test_renders_with_tracking_in_every_language(locale: str, variant: dict[str, Any]) -> None:
    shipped = order()
    message = render(locale, shipped, **variant)
    assert message.locale == locale
    tracking_link = "https://t.17track.net/en#nums=RR123456785CN&fc=3011"
    local_link = "https://www.laposte.fr/outils/suivre-vos-envois?code=RR123456785CN"
    for part in (message.text, message.html):
        assert NUMBER in part
        assert "China Post" in part
        assert ITEMS[0] in part
        assert "SHOP-2001" in part
    assert tracking_link in message.text
    assert f'<a href="{tracking_link.replace("&", "&amp;")}">' in message.html
    if variant.get("ship_from_country") == "FR":
        assert "laposte" not in message.text, "a domestic parcel has no second post"
    else:
        assert local_link in message.text
        assert f'<a href="{local_link}">' in message.html
    window = format_delivery_window(*WINDOW, locale)
    assert (window in message.text) == ("delivery_window" in variant)
    assert (unescape(window) in unescape(message.html)) == ("delivery_window" in variant)
    assert words_of_text(message.text) == words_of_html(message.html)


@pytest.mark.parametrize("locale", LOCALES)
@pytest.mark.parametrize(
    ("carrier", "number"), [(None, None), ("DHL Paket", None), (None, "not a number!")]
)
def test_renders_without_tracking_and_promises_no_link(
    locale: str, carrier: str | None, number: str | None
) -> None:
    message = render(locale, order(carrier=carrier, number=number), delivery_window=WINDOW)
    for part in (message.subject, message.text, message.html):
        assert "http" not in part
        assert "None" not in part
        assert "not a number" not in part
    assert "<a " not in message.html
    assert ("DHL" in message.text) == (carrier is not None)
    assert format_delivery_window(*WINDOW, locale) in message.text
    assert words_of_text(message.text) == words_of_html(message.html)


@pytest.mark.parametrize("locale", LOCALES)
@pytest.mark.parametrize("items", [0, 1, 2, 3, 5])
def test_every_item_is_named_or_counted(locale: str, items: int) -> None:
    message = render(locale, order(items), delivery_window=WINDOW)
    for part in (message.text, message.html):
        if items <= 3:
            assert all(item in part for item in ITEMS[:items])
        else:
            assert not any(item in part for item in ITEMS), "more than three: a count"
            assert re.search(rf"(?<![\d-]){items}(?!\d)", part)
    assert message.html.count("<li>") == (items if items in (2, 3) else 0)
    assert words_of_text(message.text) == words_of_html(message.html)


@pytest.mark.parametrize("locale", LOCALES)
@pytest.mark.parametrize("name", ["Maria Beispiel", ""])
def test_greets_and_signs_off_like_the_other_messages(locale: str, name: str) -> None:
    message = render(locale, order(name=name), tracking=TrackingSettings())
    lines = [line for line in message.text.splitlines() if line]
    assert (name in lines[0]) if name else not re.search(r"\s[,:，：]|\s{2}|^\W", lines[0])
    assert lines[-2:] == [SELLER.signature, SELLER.name]
    assert UNSUBSCRIBE_WORD[locale] in "\n".join(lines[-5:])
    assert "\n\n\n" not in message.text
    assert "\n" not in message.subject and len(message.subject) <= 100
    assert "SHOP-2001" in message.subject


@pytest.mark.parametrize("locale", LOCALES)
def test_buyer_data_is_escaped_in_the_html_part(locale: str) -> None:
    evil = "<img src=x onerror=alert(1)>"
    shipped = Order(
        "SHOP-2002", "shop", "e@example.com", evil, (evil, "Mug"), carrier=evil, country="DE"
    )
    message = render(locale, shipped)
    assert "<img" not in message.html
    assert "&lt;img" in message.html


@pytest.mark.parametrize(
    ("tag", "chosen"),
    [
        ("zh-TW", "zh-Hant"),
        ("zh_HK", "zh-Hant"),
        ("zh-MO", "zh-Hant"),
        ("zh-Hant", "zh-Hant"),
        ("zh-Hant-TW", "zh-Hant"),
        ("zh-CN", "zh"),
        ("zh-Hans", "zh"),
        ("zh", "zh"),
        ("de-AT", "de"),
    ],
)
def test_traditional_chinese_buyers_get_the_zh_hant_file(tag: str, chosen: str) -> None:
    assert RENDERER.render("shipping_notice", tag, message_context(order(), SELLER, None, tag))
    assert RENDERER.source("shipping_notice", tag).endswith(f"/{chosen}.jinja")


def test_locale_chain_reads_zh_tw_as_traditional_and_never_as_simplified() -> None:
    assert locale_chain("zh-TW", "en") == ["zh-TW", "zh-Hant-TW", "zh-Hant", "en"]
    assert locale_chain("zh-Hant", "en") == ["zh-Hant", "en"]
    assert locale_chain("zh-CN", "en") == ["zh-CN", "zh-Hans-CN", "zh-Hans", "zh", "en"]


THIN = "\u2009"  # CLDR puts thin spaces around the dash in some languages


@pytest.mark.parametrize(
    ("locale", "expected"),
    [
        ("de", "14.–18. März"),
        ("fr", f"14{THIN}–{THIN}18 mars"),
        ("en-GB", f"14{THIN}–{THIN}18 March"),
        ("ja", "3月14日～18日"),
        ("zh-Hant", "3月14日–18日"),
        ("xx-invalid", f"March 14{THIN}–{THIN}18"),
        (None, f"March 14{THIN}–{THIN}18"),
    ],
)
def test_delivery_window_is_written_the_local_way(locale: str | None, expected: str) -> None:
    assert format_delivery_window(*WINDOW, locale) == expected


def test_delivery_window_edges() -> None:
    assert format_delivery_window(date(2026, 3, 14), date(2026, 3, 14), "de") == "14. März"
    assert format_delivery_window(date(2026, 3, 18), date(2026, 3, 14), "de") == "14.–18. März"
    across = format_delivery_window(date(2026, 12, 29), date(2027, 1, 4), "en")
    assert "2026" in across and "2027" in across


def test_the_marketplace_estimate_is_a_window_of_one_day_and_ours_its_last_quarter() -> None:
    table = TransitTable(ship_from="CN")
    marketplace = Order(
        "A", "shop", "a@example.com", expected_delivery_at=datetime(2026, 3, 18, 23, 0, tzinfo=UTC)
    )
    day = date(2026, 3, 18)
    assert expected_window(delivery_of(marketplace, None, table)) == (day, day)
    shipped = Order(
        "B", "shop", "b@example.com", country="DE", shipped_at=datetime(2026, 3, 2, tzinfo=UTC)
    )
    assert expected_window(delivery_of(shipped, None, table)) == (
        date(2026, 3, 12),
        date(2026, 3, 16),
    ), "14 days cross-border: from day 10.5 to day 14"
    arrived = Order("C", "shop", "c@example.com", delivered_at=datetime(2026, 3, 5, tzinfo=UTC))
    assert expected_window(delivery_of(arrived, None, table)) is None
    unshipped = Order("D", "shop", "d@example.com", country="DE")
    assert expected_window(delivery_of(unshipped, None, table)) is None


def test_hostile_tracking_numbers_reach_no_template() -> None:
    shipped = order(number='1234"><a href="https://evil.example">')
    view = message_context(shipped, SELLER, None, "en", tracking=TrackingSettings())["order"]
    assert view.tracking_number is None
    assert view.tracking_url is None and view.local_tracking_url is None


def enabled_copy(tmp_path: Path) -> Path:
    campaigns = tmp_path / "campaigns"
    shutil.copytree(ROOT / "campaigns", campaigns)
    notice = campaigns / "shipping-notice.yaml"
    text = notice.read_text(encoding="utf-8")
    assert "enabled: false" in text
    notice.write_text(text.replace("enabled: false", "enabled: true"), encoding="utf-8")
    return campaigns


def test_start_up_check_takes_the_enabled_campaign(tmp_path: Path) -> None:
    settings = Settings.model_validate(
        {"campaigns_dir": str(enabled_copy(tmp_path)), "templates_dir": str(TEMPLATES)}
    )
    campaigns = {c.name: c for c in load_checked_campaigns(settings, RENDERER)}
    assert campaigns["shipping-notice"].enabled


def test_worker_check_accepts_the_enabled_campaign(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in [n for n in os.environ if n.startswith("WORKER_")]:
        monkeypatch.delenv(name)
    config = tmp_path / "worker.yaml"
    config.write_text(
        f"database_url: sqlite:///{tmp_path / 'worker.db'}\n"
        f"campaigns_dir: {enabled_copy(tmp_path)}\n"
        f"templates_dir: {TEMPLATES}\n"
        f"bounces: {{secret_file: {tmp_path / 'secret'}}}\n"
        "log_format: json\n",
        encoding="utf-8",
    )
    assert main(["--config", str(config), "db", "upgrade"]) == 0
    assert main(["--config", str(config), "check"]) == 0
    assert "4 campaigns with 6 steps, every template renders" in capsys.readouterr().out
