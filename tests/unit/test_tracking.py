"""Tracking links: carrier ids and aliases, UPU S10 numbers, and numbers that must not link."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from worker import tracking
from worker.config import Settings, TrackingSettings, load_settings
from worker.errors import ConfigError
from worker.tracking import (
    carrier_id,
    carrier_name,
    clean_number,
    is_s10,
    local_tracking_url,
    s10_country,
    tracking_url,
)

CARRIER_IDS = (
    "dhl dhl-express deutsche-post ups fedex usps royal-mail parcelforce la-poste colissimo "
    "chronopost correos poste-italiane brt japan-post yamato sagawa china-post cainiao yanwen "
    "4px yunexpress sf-express chunghwa-post hongkong-post canada-post australia-post postnl "
    "bpost austrian-post swiss-post gls dpd hermes tnt amazon-logistics"
).split()
"""The canonical ids every part of the worker shares (issue 10)."""
MARKETS = "DE FR ES IT GB US JP CN TW HK AT CH NL BE CA AU".split()
NUMBER = "1Z999AA10123456784"
S10 = "AA473124829GB"  # UPU S10 example: 4*8+7*6+3*4+1*2+2*3+4*5+8*9+2*7 = 200, 11 - 2 = 9
DEFAULTS = TrackingSettings()


@pytest.mark.parametrize("cid", CARRIER_IDS)
def test_every_carrier_id_has_a_pattern_and_a_name(cid: str) -> None:
    assert tracking.pattern_problem(tracking.CARRIERS[cid]) is None
    assert tracking.NAMES[cid]
    url = tracking_url(cid, NUMBER, DEFAULTS)
    assert url is not None and url.startswith("https://") and NUMBER in url
    assert url != tracking.UNIVERSAL_TRACKER.format(number=NUMBER)


def test_no_carrier_beyond_the_shared_ids() -> None:
    assert set(tracking.CARRIERS) == set(CARRIER_IDS) == set(tracking.NAMES)
    assert set(tracking.ALIASES.values()) <= set(CARRIER_IDS)
    assert set(tracking.LOCAL_POSTS.values()) <= set(CARRIER_IDS)


def test_every_shipped_market_has_a_national_post() -> None:
    assert set(tracking.local_post_defaults()) == set(MARKETS)
    for pattern in tracking.local_post_defaults().values():
        assert tracking.pattern_problem(pattern) is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("DHL", "dhl"),
        ("dhl", "dhl"),
        ("DHL Paket", "dhl"),
        ("dhl-paket", "dhl"),
        ("  DHL   PAKET ", "dhl"),
        ("Deutsche Post DHL", "dhl"),
        ("Deutsche Post", "deutsche-post"),
        ("deutsche_post", "deutsche-post"),
        ("DHL Express", "dhl-express"),
        ("La Poste", "la-poste"),
        ("LA-POSTE", "la-poste"),
        ("Colissimo", "colissimo"),
        ("Japan Post", "japan-post"),
        ("日本郵便", "japan-post"),
        ("ヤマト運輸", "yamato"),
        ("中国邮政", "china-post"),
        ("中華郵政", "chunghwa-post"),
        ("顺丰速运", "sf-express"),
        ("Royal Mail", "royal-mail"),
        ("U.S. Postal Service", "usps"),
        ("USPS", "usps"),
        ("Evri", "hermes"),
        ("Österreichische Post", "austrian-post"),
        ("ＤＨＬ", "dhl"),  # full-width letters, as Japanese exports write them
        ("4PX", "4px"),
        ("Amazon Logistics", "amazon-logistics"),
    ],
)
def test_aliases_fold_case_space_and_punctuation(text: str, expected: str) -> None:
    assert carrier_id(text) == expected
    assert carrier_id(text, DEFAULTS) == expected


@pytest.mark.parametrize("text", [None, "", "   ", "---", "Acme Couriers", "x" * 500])
def test_unknown_carriers_have_no_id(text: str | None) -> None:
    assert carrier_id(text) is None


def test_an_unknown_carrier_gets_the_universal_tracker() -> None:
    assert tracking_url("Acme Couriers", NUMBER) == f"https://parcelsapp.com/en/tracking/{NUMBER}"
    assert tracking_url(None, NUMBER) == f"https://parcelsapp.com/en/tracking/{NUMBER}"


def test_without_a_fallback_an_unknown_carrier_gets_no_link() -> None:
    settings = TrackingSettings(fallback=None)
    assert tracking_url("Acme Couriers", NUMBER, settings) is None
    assert tracking_url("UPS", NUMBER, settings) == f"https://www.ups.com/track?tracknum={NUMBER}"


def test_operators_add_carriers_and_aliases_and_replace_patterns() -> None:
    settings = TrackingSettings(
        carriers={
            "acme": "https://track.acme.example/{country}/{number}",
            "dhl": "https://www.dhl.de/verfolgen?piececode={number}",
        },
        aliases={"Acme Couriers Ltd.": "acme"},
    )
    assert carrier_id("ACME couriers ltd", settings) == "acme"
    assert carrier_id("acme", settings) == "acme"
    assert (
        tracking_url("Acme Couriers Ltd", "AB-12", settings, country="NL")
        == "https://track.acme.example/nl/AB-12"
    )
    # {country} unknown: the universal tracker rather than a half-filled link
    assert tracking_url("acme", "AB-12", settings) == "https://parcelsapp.com/en/tracking/AB-12"
    assert tracking_url("DHL Paket", NUMBER, settings) == (
        f"https://www.dhl.de/verfolgen?piececode={NUMBER}"
    )
    assert carrier_id("Japan Post", settings) == "japan-post", "the built-in aliases remain"


@pytest.mark.parametrize(
    ("carriers", "problem"),
    [
        ({"x": "http://track.example/{number}"}, "https://"),
        ({"x": "https://track.example/"}, "{number}"),
        ({"x": "https://track.example/{number}/{zip}"}, "unknown placeholders"),
        ({"x": "https://track.example/{number} now"}, "spaces"),
        ({"x": 'https://track.example/"{number}'}, "quotes"),
        ({"x": "https://track.example/{number"}, "placeholder"),
        ({"x": "javascript:alert(1)//{number}"}, "https://"),
        ({"Bad Id": "https://track.example/{number}"}, "not a carrier id"),
    ],
)
def test_bad_patterns_are_refused_at_load(carriers: dict[str, str], problem: str) -> None:
    with pytest.raises(ValidationError, match=problem):
        TrackingSettings(carriers=carriers)


def test_other_tracking_settings_are_checked_too() -> None:
    with pytest.raises(ValidationError, match="no carrier 'acme'"):
        TrackingSettings(aliases={"Acme": "acme"})
    with pytest.raises(ValidationError, match="country code"):
        TrackingSettings(local_posts={"de": "https://post.example/{number}"})
    with pytest.raises(ValidationError, match="https://"):
        TrackingSettings(fallback="http://17track.net/{number}")


def test_a_bad_pattern_in_the_config_file_names_the_file_and_key(tmp_path: Path) -> None:
    config = tmp_path / "worker.yaml"
    config.write_text(
        "tracking:\n  carriers:\n    acme: http://track.acme.example/{number}\n", encoding="utf-8"
    )
    with pytest.raises(ConfigError) as caught:
        load_settings(config, {})
    assert caught.value.where == str(config)
    assert "tracking.carriers" in caught.value.detail and "https://" in caught.value.detail


def test_the_shipped_config_file_loads_with_the_defaults() -> None:
    root = Path(__file__).resolve().parents[2]
    assert load_settings(root / "config" / "worker.yaml", {}).tracking == Settings().tracking


@pytest.mark.parametrize(
    "number",
    [S10, "RR123456785DE", "rr123456785de", "RR 123 456 785 DE", "EE000000005CN"],
)
def test_s10_numbers_with_the_right_check_digit(number: str) -> None:
    assert is_s10(number)


def test_check_digits_10_and_11_are_written_0_and_5() -> None:
    # 02000000: 6 * 2 = 12, 12 % 11 = 1, 11 - 1 = 10 -> 0.  00000000: 11 - 0 = 11 -> 5.
    assert is_s10("CP020000000DE")
    assert not is_s10("CP020000001DE")
    assert is_s10("CP000000005DE")
    assert not is_s10("CP000000000DE")


@pytest.mark.parametrize(
    "number",
    [
        "AA473124828GB",  # wrong check digit
        "AA47312482GB",  # 8 digits
        "A1473124829GB",
        "AA473124829G",
        "AA473124829GB1",
        "1Z999AA10123456784",
        "",
        None,
    ],
)
def test_not_s10_numbers(number: str | None) -> None:
    assert not is_s10(number)
    assert local_tracking_url(number, "FR", "CN") is None


def test_s10_country_is_the_accepting_post() -> None:
    assert s10_country(S10) == "GB"
    assert s10_country("RR123456785CN") == "CN"


def test_a_cross_border_s10_parcel_links_the_buyers_own_post() -> None:
    assert local_tracking_url("RR123456785CN", "FR", "CN", DEFAULTS) == (
        "https://www.laposte.fr/outils/suivre-vos-envois?code=RR123456785CN"
    )
    assert local_tracking_url("rr 123 456 785 cn", "jp", None, DEFAULTS) == (
        "https://trackings.post.japanpost.jp/services/srv/search/direct?"
        "reqCodeNo1=RR123456785CN&searchKind=S002&locale=ja"
    )
    assert "dhl.de" in (local_tracking_url("RR123456785CN", "DE", "CN") or "")


def test_no_local_post_link_for_a_domestic_parcel_or_an_unknown_country() -> None:
    assert local_tracking_url("RR123456785DE", "DE", "DE") is None
    assert local_tracking_url("RR123456785DE", "DE", None) is None, "the number's own country"
    assert local_tracking_url("RR123456785CN", "BR", "CN") is None, "no post configured for BR"
    assert local_tracking_url("RR123456785CN", None, "CN") is None
    assert local_tracking_url("RR123456785CN", "D\nE", "CN") is None


def test_operators_set_the_local_post_of_a_country() -> None:
    settings = TrackingSettings(
        local_posts={"BR": "https://rastreamento.correios.example/{number}?pais={country}"}
    )
    assert local_tracking_url("RR123456785CN", "br", "CN", settings) == (
        "https://rastreamento.correios.example/RR123456785CN?pais=br"
    )


HOSTILE = [
    '"><script>alert(1)</script>',
    "javascript:alert(1)",
    "123456\r\nBcc: victim@example.com",
    "123456\nX",
    "../../../etc/passwd",
    "1234?x=1",
    "1234#frag",
    "1234&redirect=https://evil.example",
    "1234%0d%0a",
    "1234/../5678",
    "１２３４５６７８",  # full-width digits
    "12345678\u202e",
    "RR123456785CN\x00",
    "A" * (tracking.MAX_NUMBER_LENGTH + 1),
    "abc",
    "",
    "    ",
]


@pytest.mark.parametrize("number", HOSTILE)
def test_hostile_numbers_give_no_link(number: str) -> None:
    assert clean_number(number) is None
    for carrier in ("dhl", "Acme Couriers", None):
        assert tracking_url(carrier, number, DEFAULTS) is None
    assert local_tracking_url(number, "FR", "CN", DEFAULTS) is None


def test_numbers_lose_their_spaces_and_keep_their_dashes() -> None:
    assert clean_number(" 1Z 999 AA1 0123 456 784 ") == NUMBER
    assert clean_number("JD-0146-0000-0123") == "JD-0146-0000-0123"
    assert tracking_url("ups", "1Z 999 AA1") == "https://www.ups.com/track?tracknum=1Z999AA1"


def test_carrier_names_are_brands_or_the_exports_own_words_on_one_line() -> None:
    assert carrier_name("DHL Paket") == "DHL"
    assert carrier_name("日本郵便") == "Japan Post"
    assert carrier_name("  Acme   Couriers ") == "Acme Couriers"
    assert carrier_name("Tōkyō Kyūbin (Express)") == "Tōkyō Kyūbin (Express)"
    assert carrier_name("宅配便") == "宅配便"


@pytest.mark.parametrize(
    "text",
    [
        "Acme\r\nBcc: x@example.com",
        "Track at www.evil.example",
        "https://evil.example",
        "evil.example",
        "mail me: a@b.example",
        "<b>Acme</b>",
        "Z" * 61,
        "-- Acme",
        "",
        "\x00\x01",
        "Acme\u202eCouriers",
    ],
)
def test_carrier_names_that_could_become_links_or_markup_are_not_shown(text: str) -> None:
    assert carrier_name(text) is None
