"""The seller's name and signature in the buyer's language (``seller.locales``)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from pydantic import ValidationError

from worker.config import SellerSettings, load_settings
from worker.domain import Order
from worker.errors import ConfigError
from worker.render import Renderer, message_context

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "templates"
LAYOUT = Path(__file__).resolve().parents[2] / "templates" / "layout.html.jinja"

SELLER = SellerSettings.model_validate(
    {
        "name": "Kettle & Co",
        "signature": "Anna, customer service",
        "locales": {
            "de": {"name": "Kessel & Co", "signature": "Anna, Kundenservice"},
            "de_AT": {"signature": "Anna vom Kundenservice"},
            "zh-hant": {"name": "水壺公司", "signature": "安娜，客服"},
        },
    }
)
ORDER = Order("A-1", "ebay", "jonas@example.de", "Jonas", ("Milchaufschäumer",))


def seller_in(locale: str, default: str = "en") -> tuple[str, str]:
    view = message_context(ORDER, SELLER, None, locale, default)["seller"]
    return view.name, view.signature


def test_keys_are_normalised_locale_tags() -> None:
    assert set(SELLER.locales) == {"de", "de-AT", "zh-Hant"}


def test_the_chosen_locale_gives_name_and_signature() -> None:
    assert seller_in("de") == ("Kessel & Co", "Anna, Kundenservice")
    assert seller_in("zh-Hant") == ("水壺公司", "安娜，客服")


def test_a_regional_locale_falls_back_to_its_language_field_by_field() -> None:
    # de-AT sets only the signature: the name comes from de.
    assert seller_in("de-AT") == ("Kessel & Co", "Anna vom Kundenservice")


def test_traditional_chinese_region_uses_zh_hant() -> None:
    assert seller_in("zh-TW") == ("水壺公司", "安娜，客服")


def test_then_the_default_locale_then_the_plain_values() -> None:
    assert seller_in("fr", default="de") == ("Kessel & Co", "Anna, Kundenservice")
    assert seller_in("fr") == ("Kettle & Co", "Anna, customer service")
    assert seller_in("zh") == ("Kettle & Co", "Anna, customer service"), "zh is Simplified"


def test_without_locales_nothing_changes() -> None:
    plain = SellerSettings(name="Kettle & Co", signature="Anna")
    view = message_context(ORDER, plain, None, "de", "en")["seller"]
    assert (view.name, view.signature) == ("Kettle & Co", "Anna")


@pytest.mark.parametrize(
    "entry",
    [
        {"name": "Kessel\r\nBcc: x@evil.example"},
        {"signature": "Anna\nKundenservice"},
        {"name": "x" * 201},
        {"nickname": "Anna"},
    ],
)
def test_values_are_checked_like_name_and_signature(entry: dict[str, str]) -> None:
    with pytest.raises(ValidationError):
        SellerSettings.model_validate({"locales": {"de": entry}})


@pytest.mark.parametrize("key", ["../../etc", "deutsch-language-long-tag-x", "d", "a" * 300])
def test_a_key_that_is_no_locale_tag_is_refused(key: str) -> None:
    with pytest.raises(ValidationError, match="not a locale tag"):
        SellerSettings.model_validate({"locales": {key: {"name": "x"}}})


def test_the_same_locale_twice_is_refused() -> None:
    with pytest.raises(ValidationError, match="given twice"):
        SellerSettings.model_validate({"locales": {"de-AT": {}, "de_at": {}}})


def test_read_from_the_config_file(tmp_path: Path) -> None:
    config = tmp_path / "worker.yaml"
    config.write_text(
        "seller:\n  name: Kettle & Co\n  locales:\n    de: {name: Kessel & Co}\n",
        encoding="utf-8",
    )
    settings = load_settings(config, environ={})
    assert settings.seller.signed(["de", "en"]) == ("Kessel & Co", "Customer service")


def test_a_bad_entry_in_the_file_names_the_file_and_the_setting(tmp_path: Path) -> None:
    config = tmp_path / "worker.yaml"
    config.write_text('seller:\n  locales:\n    de: {name: "a\\r\\nb"}\n', encoding="utf-8")
    with pytest.raises(ConfigError) as raised:
        load_settings(config, environ={})
    assert "seller.locales.de.name" in str(raised.value)
    assert str(config) in str(raised.value)


def test_rendered_mail_signs_in_the_buyers_language(tmp_path: Path) -> None:
    shutil.copytree(FIXTURES, tmp_path / "templates")
    shutil.copy(LAYOUT, tmp_path / "templates" / "layout.html.jinja")
    renderer = Renderer(tmp_path / "templates", "en")
    message = renderer.render("greeting", "de", message_context(ORDER, SELLER, None, "de", "en"))
    assert "Anna, Kundenservice" in message.text
    assert "Anna, customer service" not in message.text
