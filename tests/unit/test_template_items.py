"""Multi-item orders: every shipped template names all of an order's items, or their count.

Rendered through the real Renderer on the shipped templates folder, with orders of 1, 2, 3
and 5 items, in every shipped locale; plus the ``item_list`` filter on its own, and the
lookup that sends Taiwanese and Hong Kong buyers to the Traditional Chinese files.
"""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path

import jinja2
import pytest
from jinja2.sandbox import SandboxedEnvironment

from worker.config import SellerSettings
from worker.domain import Order, Review
from worker.errors import TemplateError
from worker.render import (
    RenderedMessage,
    Renderer,
    add_filters,
    locale_chain,
    message_context,
)

SHIPPED = Path(__file__).resolve().parents[2] / "templates"
TEMPLATES = ("check_in", "review_request", "review_reminder", "review_thanks")
LOCALES = ("en", "de", "fr", "es", "it", "ja", "zh", "zh-Hant")
NAMES = ("Teapot", "Kettle", "Strainer", "Cosy", "Tray")
SELLER = SellerSettings(name="Example Shop", signature="Anna")
# How each locale names five items: "your 5 items".
COUNT = {
    "en": "5 items",
    "de": "5 Artikel",
    "fr": "5 articles",
    "es": "5 artículos",
    "it": "5 articoli",
    "ja": "ご注文の商品5点",
    "zh": "5件商品",
    "zh-Hant": "5件商品",
}
NBSP = "\u00a0"
# Three items, joined the language's way (babel's CLDR list patterns), in the text part.
LIST_OF_THREE = {
    "en": "Teapot, Kettle and Strainer",
    "de": "„Teapot“, „Kettle“ und „Strainer“",
    "fr": f"«{NBSP}Teapot{NBSP}», «{NBSP}Kettle{NBSP}» et «{NBSP}Strainer{NBSP}»",
    "es": "«Teapot», «Kettle» y «Strainer»",
    "it": "«Teapot», «Kettle» e «Strainer»",
    "ja": "「Teapot」「Kettle」「Strainer」",
    "zh": "“Teapot”、“Kettle”和“Strainer”",
    "zh-Hant": "「Teapot」、「Kettle」和「Strainer」",
}


@pytest.fixture(scope="module")
def renderer() -> Renderer:
    return Renderer(SHIPPED)


def render(
    renderer: Renderer, template: str, locale: str, products: tuple[str, ...]
) -> RenderedMessage:
    order = Order(
        order_id="A-1",
        marketplace="shop",
        buyer_email="buyer@example.com",
        buyer_name="Maria",
        products=products,
        review_url="https://shop.example/r",
    )
    review = Review(order.order_id, 4, datetime(2026, 3, 1, 9, 0, tzinfo=UTC))
    return renderer.render(template, locale, message_context(order, SELLER, review, locale))


def parts(message: RenderedMessage) -> dict[str, str]:
    return {"subject": message.subject, "text": message.text, "html": message.html}


FILES = [(t, loc) for t in TEMPLATES for loc in LOCALES]


@pytest.mark.parametrize("count", [1, 2, 3])
@pytest.mark.parametrize(("template", "locale"), FILES)
def test_up_to_three_items_are_each_named_in_every_part(
    renderer: Renderer, template: str, locale: str, count: int
) -> None:
    message = render(renderer, template, locale, NAMES[:count])

    assert message.locale == locale
    for part, content in parts(message).items():
        for name in NAMES[:count]:
            assert name in content, f"{name} missing from the {part}"
        assert COUNT[locale] not in content


@pytest.mark.parametrize(("template", "locale"), FILES)
def test_five_items_are_counted_and_none_is_named_alone(
    renderer: Renderer, template: str, locale: str
) -> None:
    message = render(renderer, template, locale, NAMES)

    for part, content in parts(message).items():
        assert COUNT[locale] in content, f"no count in the {part}"
        named = [name for name in NAMES if name in content]
        assert named == [], f"the {part} names {named} of five items"


@pytest.mark.parametrize("locale", LOCALES)
def test_three_items_are_joined_the_languages_way(renderer: Renderer, locale: str) -> None:
    for template in TEMPLATES:
        message = render(renderer, template, locale, NAMES[:3])
        assert LIST_OF_THREE[locale] in message.text


@pytest.mark.parametrize(
    ("locale", "one", "several"),
    [
        ("en", "does your Teapot work", "do your Teapot and Kettle work"),
        ("de", "funktioniert Ihr Artikel „Teapot“", "funktionieren Ihre Artikel „Teapot“ und"),
        ("fr", "fonctionne-t-il", "fonctionnent-ils"),
        ("es", "funciona su artículo «Teapot»", "funcionan sus artículos «Teapot» y «Kettle»"),
        ("it", "l'articolo «Teapot» funzioni", "gli articoli «Teapot» e «Kettle» funzionino"),
    ],
)
def test_check_in_verbs_agree_with_the_number_of_items(
    renderer: Renderer, locale: str, one: str, several: str
) -> None:
    single = render(renderer, "check_in", locale, NAMES[:1]).text
    double = render(renderer, "check_in", locale, NAMES[:2]).text

    assert one in single and several not in single
    assert several in double and one not in double


@pytest.mark.parametrize(("template", "locale"), FILES)
def test_an_order_without_items_reads_cleanly(
    renderer: Renderer, template: str, locale: str
) -> None:
    message = render(renderer, template, locale, ())

    for content in (message.subject, message.text):
        for empty in ("„“", "« »", f"«{NBSP}{NBSP}»", "«»", "「」", "“”", "your  ", "None"):
            assert empty not in content


@pytest.mark.parametrize(("template", "locale"), FILES)
def test_item_names_are_escaped_in_html_and_never_break_the_subject(
    renderer: Renderer, template: str, locale: str
) -> None:
    hostile = ("<b>Lid</b> & Co", "Mug\r\nBcc: victim@example.com")
    message = render(renderer, template, locale, hostile)

    assert "&lt;b&gt;Lid&lt;/b&gt; &amp; Co" in message.html
    assert "<b>Lid</b>" not in message.html
    assert "<b>Lid</b> & Co" in message.text
    assert "\r" not in message.subject and "\n" not in message.subject


# The filter on its own ----------------------------------------------------------------------


def filtered(source: str, locale: str = "en", items: tuple[str, ...] = NAMES[:3]) -> str:
    env = SandboxedEnvironment(undefined=jinja2.StrictUndefined)
    add_filters(env)
    return env.from_string(source).render(items=list(items), locale=locale)


@pytest.mark.parametrize(
    ("locale", "expected"),
    [
        ("en", "Teapot, Kettle, and Strainer"),
        ("en-GB", "Teapot, Kettle and Strainer"),
        ("de", "Teapot, Kettle und Strainer"),
        ("de-AT", "Teapot, Kettle und Strainer"),
        ("zh-Hant", "Teapot、Kettle和Strainer"),
        ("xx", "Teapot, Kettle, and Strainer"),
    ],
)
def test_item_list_joins_with_the_template_locales_pattern(locale: str, expected: str) -> None:
    assert filtered("{{ items|item_list }}", locale) == expected


def test_item_list_counts_past_the_limit_and_names_none_for_an_empty_order() -> None:
    source = '{{ items|item_list("your {n} items", "your order") }}'

    assert filtered(source, items=NAMES) == "your 5 items"
    assert filtered(source, items=NAMES[:2]) == "Teapot and Kettle"
    assert filtered(source, items=()) == "your order"
    assert filtered('{{ items|item_list("{n}", limit=1) }}', items=NAMES[:2]) == "2"


def test_item_list_takes_a_single_name_as_one_item() -> None:
    env = SandboxedEnvironment(undefined=jinja2.StrictUndefined)
    add_filters(env)

    assert env.from_string("{{ 'Teapot'|item_list }}").render(locale="en") == "Teapot"


def test_item_list_quotes_each_name_and_can_join_with_nothing() -> None:
    source = '{{ items|item_list(quotes=("「", "」"), style="unit-narrow") }}'

    assert filtered(source, "ja") == "「Teapot」「Kettle」「Strainer」"


def test_item_list_width_cuts_long_names_and_leaves_short_ones_whole() -> None:
    long = "Stainless steel water bottle, 750 ml, with a bamboo lid"
    out = filtered("{{ items|item_list(width=40) }}", "en-GB", (long, "Brush"))

    assert out.endswith(" and Brush")
    assert len(out) <= 40 + len(" and ")
    assert out.startswith("Stainless steel") and "…" in out


def test_an_unknown_list_style_names_the_template_line(tmp_path: Path) -> None:
    folder = tmp_path / "templates" / "note"
    folder.mkdir(parents=True)
    shutil.copy(SHIPPED / "layout.html.jinja", tmp_path / "templates")
    (folder / "en.jinja").write_text(
        "{% block subject %}Hi{% endblock %}\n"
        "{% block text %}\n{{ order.items|item_list(style='no-such-style') }}\n{% endblock %}\n"
        "{% block html %}<p>x</p>{% endblock %}\n",
        encoding="utf-8",
    )
    with pytest.raises(TemplateError) as caught:
        render(Renderer(tmp_path / "templates"), "note", "en", NAMES[:2])

    assert "no-such-style" in str(caught.value)
    assert caught.value.where == f"{folder / 'en.jinja'}:3"


# Traditional Chinese lookup -----------------------------------------------------------------


@pytest.mark.parametrize("tag", ["zh-TW", "zh-HK", "zh-MO", "zh-Hant-TW", "zh_hant_hk", "zh-Hant"])
def test_taiwan_and_hong_kong_get_the_traditional_chinese_file(
    renderer: Renderer, tag: str
) -> None:
    message = render(renderer, "check_in", tag, NAMES[:1])

    assert message.locale == "zh-Hant"
    assert message.source.endswith("zh-Hant.jinja")
    assert "您好" in message.text and "訂單編號" in message.text


@pytest.mark.parametrize("tag", ["zh", "zh-CN", "zh-SG", "zh-Hans-CN"])
def test_mainland_and_singapore_get_the_simplified_file(renderer: Renderer, tag: str) -> None:
    assert render(renderer, "check_in", tag, NAMES[:1]).locale == "zh"


def test_traditional_chinese_never_falls_back_to_simplified(tmp_path: Path) -> None:
    target = tmp_path / "templates"
    shutil.copytree(SHIPPED, target)
    for path in target.glob("*/zh-Hant.jinja"):
        path.unlink()

    message = render(Renderer(target), "check_in", "zh-TW", NAMES[:1])

    assert message.locale == "en"


@pytest.mark.parametrize(
    ("tag", "expected"),
    [
        ("zh-TW", ["zh-TW", "zh-Hant-TW", "zh-Hant", "en"]),
        ("zh-Hant-HK", ["zh-Hant-HK", "zh-HK", "zh-Hant", "en"]),
        ("zh-CN", ["zh-CN", "zh-Hans-CN", "zh-Hans", "zh", "en"]),
        ("sr-Latn", ["sr-Latn", "en"]),
    ],
)
def test_locale_chain_keeps_to_the_script(tag: str, expected: list[str]) -> None:
    assert locale_chain(tag, "en") == expected


def test_zh_hant_file_name_passes_the_start_up_check(renderer: Renderer) -> None:
    for template in TEMPLATES:
        assert "zh-Hant" in renderer.checked_locales(template)
