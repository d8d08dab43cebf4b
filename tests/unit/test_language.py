"""Which language a buyer's mail is written in: each rule, their order, and hostile input."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from worker.domain import Customer, Order
from worker.language import (
    Language,
    choose_language,
    country_languages,
    fallbacks,
    locale_chain,
    normalise_locale,
    site_country,
)
from worker.render import Renderer

ROOT = Path(__file__).resolve().parents[2]

SHIPPED = {"de", "en", "es", "fr", "it", "ja", "zh", "zh-Hant"}
"""The shipped templates' locales, with the Traditional Chinese files."""


def order(**fields: object) -> Order:
    return Order("A-1", "ebay", "buyer@example.com", **fields)  # type: ignore[arg-type]


def buyer(**fields: object) -> Customer:
    return Customer("buyer@example.com", **fields)  # type: ignore[arg-type]


def choose(o: Order, c: Customer | None = None, available: set[str] = SHIPPED) -> Language:
    return choose_language(o, c, available, "en")


def test_order_locale_wins_over_everything() -> None:
    chosen = choose(order(locale="fr_FR", site="ebay.de", country="DE"), buyer(locale="it"))
    assert chosen == Language("fr", "order locale", "fr-FR")


def test_buyer_locale_comes_next() -> None:
    chosen = choose(order(site="ebay.de", country="DE"), buyer(locale="it-IT", country="DE"))
    assert chosen == Language("it", "buyer locale", "it-IT")


def test_site_before_country() -> None:
    assert choose(order(site="ebay.de", country="FR")) == Language("de", "site", "ebay.de")


@pytest.mark.parametrize(
    ("site", "expected"),
    [
        ("ebay.de", "de"),
        ("amazon.co.jp", "ja"),
        ("ebay.com.au", "en"),
        ("amazon.com.mx", "es"),
        ("ebay.ch", "de"),
        ("befr.ebay.be", "fr"),
        ("ebay.co.uk", "en"),
        ("ebay.com", "en"),
        ("amazon.it", "it"),
        ("www.ebay.fr", "fr"),
    ],
)
def test_site_means_its_country_language(site: str, expected: str) -> None:
    chosen = choose(order(site=site, country="TW"))
    assert (chosen.locale, chosen.rule) == (expected, "site")


def test_a_site_that_names_no_country_says_nothing() -> None:
    # A shop's own .com domain is not the US; the buyer's country decides.
    chosen = choose(order(site="kettle-shop.com", country="DE"))
    assert chosen == Language("de", "country", "DE")
    assert site_country("aliexpress.com") is None


def test_belgian_site_in_dutch_when_the_host_says_so() -> None:
    chosen = choose(order(site="benl.ebay.be"), available=SHIPPED | {"nl"})
    assert chosen == Language("nl", "site", "benl.ebay.be")


@pytest.mark.parametrize(
    ("country", "expected"),
    [
        ("DE", "de"),
        ("AT", "de"),
        ("CH", "de"),
        ("FR", "fr"),
        ("BE", "fr"),
        ("TW", "zh-Hant"),
        ("HK", "zh-Hant"),
        ("MO", "zh-Hant"),
        ("CN", "zh"),
        ("SG", "zh"),
        ("JP", "ja"),
        ("ES", "es"),
        ("MX", "es"),
        ("AR", "es"),
        ("IT", "it"),
        ("US", "en"),
        ("GB", "en"),
        ("AU", "en"),
        ("CA", "en"),
        ("IE", "en"),
        ("NZ", "en"),
        ("at", "de"),
    ],
)
def test_country_table(country: str, expected: str) -> None:
    chosen = choose(order(country=country))
    assert chosen == Language(expected, "country", country.upper())


def test_buyer_country_when_the_order_has_none() -> None:
    assert choose(order(), buyer(country="TW")) == Language("zh-Hant", "country", "TW")


def test_country_from_cldr_where_no_override() -> None:
    # Not in the overrides: CLDR's official languages of Brazil and Poland.
    assert country_languages("BR") == ("pt",)
    assert country_languages("PL") == ("pl",)
    assert choose(order(country="BR"), available={"en", "pt"}) == Language("pt", "country", "BR")


def test_taiwan_never_gets_simplified_chinese() -> None:
    # Only zh.jinja (Simplified): a Taiwanese buyer gets the default, not the wrong script.
    chosen = choose(order(country="TW"), available={"en", "zh"})
    assert chosen == Language("en", "default")
    assert choose(order(locale="zh_TW"), available={"en", "zh"}) == Language("en", "default")
    assert choose(order(country="HK"), available={"en", "zh"}) == Language("en", "country", "HK")


@pytest.mark.parametrize("tag", ["zh-TW", "zh_HK", "zh-Hant", "zh-Hant-TW", "ZH_tw"])
def test_traditional_tags_resolve_to_zh_hant(tag: str) -> None:
    assert choose(order(locale=tag)).locale == "zh-Hant"
    assert "zh" not in locale_chain(tag, "en")


def test_simplified_tags_use_zh() -> None:
    assert choose(order(locale="zh-CN")).locale == "zh"
    assert choose(order(locale="zh-Hans")).locale == "zh"
    assert locale_chain("zh-CN", "en") == ["zh-CN", "zh-Hans-CN", "zh-Hans", "zh", "en"]


def test_regional_tag_falls_back_to_its_language() -> None:
    assert choose(order(locale="de-AT")) == Language("de", "order locale", "de-AT")
    assert choose(order(locale="de-AT"), available=SHIPPED | {"de-AT"}).locale == "de-AT"


def test_a_rule_wins_only_with_a_template_for_it() -> None:
    # Order locale pt has no template: the site decides.
    chosen = choose(order(locale="pt-BR", site="ebay.de"))
    assert chosen == Language("de", "site", "ebay.de")


def test_switzerland_falls_to_french_only_without_german() -> None:
    assert choose(order(country="CH")).locale == "de"
    assert choose(order(country="CH"), available={"en", "fr"}).locale == "fr"


@pytest.mark.parametrize("country", ["ZZ", "XX", "", "Germany", "D", "1", "A" * 300])
def test_unknown_country_means_default(country: str) -> None:
    assert choose(order(country=country)) == Language("en", "default")


@pytest.mark.parametrize(
    "hostile",
    [
        "../../etc",
        "../../etc/passwd",
        "de/../../x",
        "a" * 300,
        "de-" + "x" * 300,
        "-".join(["de"] * 150),
        "de\r\nBcc: x@evil.example",
        "de\x00",
        "\u202ede",
        "",
        " ",
    ],
)
def test_hostile_locale_strings_are_ignored(hostile: str) -> None:
    chosen = choose(order(locale=hostile, site=hostile, country=hostile), buyer(locale=hostile))
    assert chosen == Language("en", "default")
    assert normalise_locale(hostile) is None
    assert fallbacks(hostile) == []


def test_hostile_site_is_ignored_and_never_echoed() -> None:
    for site in ["ebay.de/../../etc", "ebay.de\nX: y", "x" * 300 + ".de", "ebay..de"]:
        chosen = choose(order(site=site, country="FR"))
        assert chosen == Language("fr", "country", "FR")


def test_default_when_nothing_is_known() -> None:
    assert choose(order()) == Language("en", "default")
    assert choose_language(order(), None, {"de"}, "de_de") == Language("de-DE", "default")


def test_shown_as_plan_prints_it() -> None:
    assert str(Language("de", "site", "ebay.de")) == "de (site ebay.de)"
    assert str(Language("zh-Hant", "country", "TW")) == "zh-Hant (country TW)"
    assert str(Language("en", "default")) == "en (default)"


def test_available_file_names_are_normalised() -> None:
    chosen = choose_language(order(country="TW"), None, ["en", "zh_hant"], "en")
    assert chosen == Language("zh-Hant", "country", "TW")


@pytest.mark.parametrize("tag", ["zh-Hant", "zh-TW", "zh-HK", "zh_tw", "zh-Hant-HK"])
def test_renderer_finds_the_zh_hant_file(tag: str, tmp_path: Path) -> None:
    """Tags reaching the renderer directly (a locale column) use zh-Hant.jinja, not zh.jinja."""
    folder = tmp_path / "templates" / "greeting"
    folder.mkdir(parents=True)
    shutil.copy(ROOT / "templates" / "layout.html.jinja", tmp_path / "templates")
    for locale, hello in [("en", "Hello"), ("zh", "你好"), ("zh-Hant", "您好")]:
        (folder / f"{locale}.jinja").write_text(
            f"{{% block subject %}}{hello}{{% endblock %}}"
            f"{{% block text %}}{hello}{{% endblock %}}"
            f"{{% block html %}}<p>{hello}</p>{{% endblock %}}",
            encoding="utf-8",
        )
    rendered = Renderer(tmp_path / "templates", "en").render("greeting", tag, {})
    assert (rendered.locale, rendered.subject) == ("zh-Hant", "您好")
    simplified = Renderer(tmp_path / "templates", "en").render("greeting", "zh-CN", {})
    assert (simplified.locale, simplified.subject) == ("zh", "你好")
    (folder / "zh-Hant.jinja").unlink()
    fallback = Renderer(tmp_path / "templates", "en").render("greeting", tag, {})
    assert (fallback.locale, fallback.subject) == ("en", "Hello"), "never Simplified for zh-TW"
