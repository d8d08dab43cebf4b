"""The shipped templates say what the sellers' handbooks prescribe, in every locale.

Rendered with plain Jinja2 configured as the format spec says (sandboxed, StrictUndefined,
trim/lstrip blocks; subject and text without autoescape, html with it, plus the documented
filters), so these checks hold whatever worker.render does around them.
"""

from __future__ import annotations

import re
from html import unescape
from pathlib import Path
from typing import Any

import pytest
from jinja2 import FileSystemLoader, StrictUndefined, Template, meta
from jinja2.sandbox import SandboxedEnvironment

from worker.render import BuyerView, OrderView, ReviewView, SellerView, add_filters

TEMPLATES_DIR = Path(__file__).resolve().parents[2] / "templates"
TEMPLATES = ("check_in", "review_request", "review_reminder", "review_thanks")
LOCALES = ("en", "de", "fr", "es", "it", "ja", "zh", "zh-Hant")
CONTEXT_NAMES = {"buyer", "order", "review", "seller", "locale"}
PRODUCT = "Kaffeemühle Pro 2"
REVIEW_URL = "https://shop.example/p/42/reviews"
SIGNATURE = "Anna, customer service"
SELLER = "Example Shop"

# Asks that marketplaces forbid: a review must be honest, never steered to a rating.
FORBIDDEN = {
    "en": ("positive review", "5-star", "five-star", "5 stars", "five stars", "good review"),
    "de": ("positive bewertung", "5 sterne", "fünf sterne", "gute bewertung"),
    "fr": ("avis positif", "5 étoiles", "cinq étoiles", "bon avis"),
    "es": ("reseña positiva", "opinión positiva", "5 estrellas", "cinco estrellas"),
    "it": ("recensione positiva", "5 stelle", "cinque stelle", "recensione favorevole"),
    "ja": ("高評価", "星5", "★5", "五つ星", "良いレビュー"),
    "zh": ("好评", "五星", "5星", "满分"),
    "zh-Hant": ("好評", "五星", "5星", "滿分"),
}
# The word each locale tells the buyer to reply with to stop the messages.
UNSUBSCRIBE_WORD = {
    "en": "unsubscribe",
    "de": "Abmelden",
    "fr": "désabonner",
    "es": "baja",
    "it": "cancellami",
    "ja": "配信停止",
    "zh": "退订",
    "zh-Hant": "取消訂閱",
}
# check_in comes before any review talk; this word must not appear in it.
REVIEW_WORD = {
    "en": "review",
    "de": "Bewertung",
    "fr": "avis",
    "es": "opinión",
    "it": "recensione",
    "ja": "レビュー",
    "zh": "评价",
    "zh-Hant": "評價",
}
FILES = [(t, loc) for t in TEMPLATES for loc in LOCALES]


def _env(*, autoescape: bool) -> SandboxedEnvironment:
    env = SandboxedEnvironment(
        loader=FileSystemLoader(TEMPLATES_DIR),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=autoescape,
    )
    add_filters(env)
    return env


PLAIN = _env(autoescape=False)
ESCAPED = _env(autoescape=True)


def _context(
    locale: str,
    *,
    name: str = "Maria Beispiel",
    review_url: str | None = REVIEW_URL,
    rating: int = 5,
    product: str = PRODUCT,
) -> dict[str, Any]:
    return {
        "buyer": BuyerView(name=name),
        "order": OrderView(
            number="302-1234567-7654321",
            marketplace="shop",
            product=product,
            products=[product, "Filter"],
            review_url=review_url,
        ),
        "review": ReviewView(rating=rating),
        "seller": SellerView(name=SELLER, signature=SIGNATURE),
        "locale": locale,
    }


def _block(env: SandboxedEnvironment, path: str, block: str, ctx: dict[str, Any]) -> str:
    template: Template = env.get_template(path)
    return "".join(template.blocks[block](template.new_context(ctx)))


def _render(template: str, locale: str, **kwargs: Any) -> tuple[str, str, str]:
    """(subject, text, html) the way the renderer builds them."""
    path = f"{template}/{locale}.jinja"
    ctx = _context(locale, **kwargs)
    subject = " ".join(_block(PLAIN, path, "subject", ctx).split())
    return subject, _block(PLAIN, path, "text", ctx), _block(ESCAPED, path, "html", ctx)


VARIANTS = [
    pytest.param({}, id="name+url"),
    pytest.param({"name": ""}, id="no-name"),
    pytest.param({"review_url": None}, id="no-url"),
    pytest.param({"name": "", "review_url": None, "rating": 2}, id="bare"),
]


@pytest.mark.parametrize(("template", "locale"), FILES)
def test_file_defines_exactly_the_three_blocks(template: str, locale: str) -> None:
    blocks = PLAIN.get_template(f"{template}/{locale}.jinja").blocks
    assert set(blocks) == {"subject", "text", "html"}


@pytest.mark.parametrize(("template", "locale"), FILES)
def test_file_uses_only_the_documented_context(template: str, locale: str) -> None:
    source = (TEMPLATES_DIR / template / f"{locale}.jinja").read_text(encoding="utf-8")
    assert meta.find_undeclared_variables(PLAIN.parse(source)) <= CONTEXT_NAMES


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize(("template", "locale"), FILES)
def test_subject_is_one_short_line(template: str, locale: str, variant: dict[str, Any]) -> None:
    subject, _, _ = _render(template, locale, **variant)
    assert subject
    assert "\n" not in subject


@pytest.mark.parametrize(("template", "locale"), FILES)
def test_subject_stays_short_for_a_long_product_name(template: str, locale: str) -> None:
    subject, text, _ = _render(template, locale, product="Gadget " * 30)
    assert len(subject) <= 100
    assert "Gadget " * 30 in text


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize(("template", "locale"), FILES)
def test_product_is_named_in_both_parts(
    template: str, locale: str, variant: dict[str, Any]
) -> None:
    _, text, html = _render(template, locale, **variant)
    assert PRODUCT in text
    assert PRODUCT in html


@pytest.mark.parametrize(("template", "locale"), FILES)
def test_buyer_name_greets_when_present(template: str, locale: str) -> None:
    _, text, html = _render(template, locale, name="Maria Beispiel")
    assert "Maria Beispiel" in text.splitlines()[0]
    assert "Maria Beispiel" in html


@pytest.mark.parametrize(("template", "locale"), FILES)
def test_greeting_reads_cleanly_without_a_name(template: str, locale: str) -> None:
    _, text, _ = _render(template, locale, name="")
    greeting = text.splitlines()[0]
    assert greeting.strip() == greeting
    assert not re.search(r"\s[,:，]|\s{2}", greeting)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize(("template", "locale"), FILES)
def test_text_part_is_clean_plain_text(template: str, locale: str, variant: dict[str, Any]) -> None:
    _, text, _ = _render(template, locale, **variant)
    assert not text.startswith("\n")
    assert "\n\n\n" not in text
    assert "<" not in text
    assert "None" not in text


def _words_of_text(text: str) -> list[str]:
    return re.sub(r"^\d\. ", "", text, flags=re.MULTILINE).split()


def _words_of_html(html: str) -> list[str]:
    inline = re.sub(r"</?a\b[^>]*>", "", html)
    return unescape(re.sub(r"<[^>]+>", " ", inline)).split()


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize(("template", "locale"), FILES)
def test_both_parts_say_the_same(template: str, locale: str, variant: dict[str, Any]) -> None:
    _, text, html = _render(template, locale, **variant)
    assert _words_of_text(text) == _words_of_html(html)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize(("template", "locale"), FILES)
def test_both_parts_offer_the_same_numbered_options(
    template: str, locale: str, variant: dict[str, Any]
) -> None:
    _, text, html = _render(template, locale, **variant)
    numbered = re.findall(r"^\d\. ", text, flags=re.MULTILINE)
    assert len(numbered) == html.count("<li>")
    if template == "check_in":
        assert len(numbered) >= 3


@pytest.mark.parametrize("locale", LOCALES)
@pytest.mark.parametrize("template", ["review_request", "review_reminder"])
def test_review_url_is_linked_when_known(template: str, locale: str) -> None:
    _, text, html = _render(template, locale, review_url=REVIEW_URL)
    assert REVIEW_URL in text
    assert f'<a href="{REVIEW_URL}">' in html


@pytest.mark.parametrize(("template", "locale"), FILES)
def test_no_links_images_or_addresses_without_review_url(template: str, locale: str) -> None:
    subject, text, html = _render(template, locale, review_url=None)
    for part in (subject, text, html):
        assert "http" not in part
        assert "@" not in part
    assert "<a " not in html
    assert "<img" not in html


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize(("template", "locale"), FILES)
def test_never_asks_for_a_good_rating(template: str, locale: str, variant: dict[str, Any]) -> None:
    rendered = " ".join(_render(template, locale, **variant)).lower()
    for phrase in FORBIDDEN[locale]:
        assert phrase.lower() not in rendered


@pytest.mark.parametrize("locale", LOCALES)
def test_check_in_does_not_mention_reviews(locale: str) -> None:
    rendered = " ".join(_render("check_in", locale)).lower()
    assert REVIEW_WORD[locale].lower() not in rendered


@pytest.mark.parametrize("locale", LOCALES)
def test_thanks_asks_for_nothing_further(locale: str) -> None:
    _, text, html = _render("review_thanks", locale)
    assert REVIEW_URL not in text
    assert "<a " not in html


@pytest.mark.parametrize("locale", LOCALES)
@pytest.mark.parametrize("rating", [1, 3, 4, 5])
def test_thanks_renders_for_any_rating(locale: str, rating: int) -> None:
    _, text, html = _render("review_thanks", locale, rating=rating)
    assert PRODUCT in text
    assert PRODUCT in html


@pytest.mark.parametrize(("template", "locale"), FILES)
def test_ends_with_unsubscribe_line_and_signature(template: str, locale: str) -> None:
    _, text, html = _render(template, locale)
    lines = [line for line in text.splitlines() if line]
    assert lines[-2:] == [SIGNATURE, SELLER]
    tail = "\n".join(lines[-5:])
    assert UNSUBSCRIBE_WORD[locale] in tail
    assert html.rstrip().endswith(f"{SIGNATURE}<br>\n{SELLER}</p>")
    assert UNSUBSCRIBE_WORD[locale] in html


@pytest.mark.parametrize(("template", "locale"), FILES)
def test_buyer_name_is_escaped_in_html_only(template: str, locale: str) -> None:
    evil = "<script>alert(1)</script>"
    _, text, html = _render(template, locale, name=evil)
    assert evil in text
    assert "<script>" not in html
    assert "&lt;script&gt;" in html
