"""Render: locale fallback, both parts, escaping, and errors that name file and line."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from worker.config import SellerSettings
from worker.domain import Order, Review
from worker.errors import ConfigError, TemplateError
from worker.render import Renderer, locale_chain, message_context, normalise_locale, sample_context

FIXTURES = Path(__file__).parent.parent / "fixtures" / "templates"
LAYOUT = Path(__file__).parent.parent.parent / "templates" / "layout.html.jinja"
SELLER = SellerSettings(name="Beispiel Shop", signature="Anna, Kundenservice")


@pytest.fixture
def templates_dir(tmp_path: Path) -> Path:
    """The fixture templates plus the shipped layout, in a folder a test may break."""
    target = tmp_path / "templates"
    shutil.copytree(FIXTURES, target)
    shutil.copy(LAYOUT, target / "layout.html.jinja")
    return target


@pytest.fixture
def renderer(templates_dir: Path) -> Renderer:
    return Renderer(templates_dir)


def context(buyer_name: str = "Alex", order_id: str = "028-1234567-7654321") -> dict[str, Any]:
    order = Order(
        order_id=order_id,
        marketplace="shop",
        buyer_email="alex@example.com",
        buyer_name=buyer_name,
        products=("Water bottle", "Brush"),
        review_url="https://shop.example/bottle#reviews",
    )
    return message_context(order, SELLER, None, "en")


def write(templates_dir: Path, name: str, body: str) -> Path:
    path = templates_dir / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(body, encoding="utf-8")
    return path


GOOD = (
    "{% block subject %}Hi{% endblock %}\n"
    "{% block text %}Hello{% endblock %}\n"
    "{% block html %}<p>Hello</p>{% endblock %}\n"
)


@pytest.mark.parametrize(
    ("tag", "expected"),
    [
        ("de_at", "de-AT"),
        ("DE-at", "de-AT"),
        ("de", "de"),
        ("zh_hans_cn", "zh-Hans-CN"),
        ("de_DE.UTF-8", "de-DE"),
        (" fr ", "fr"),
        ("", None),
        (None, None),
        ("../etc", None),
    ],
)
def test_normalise_locale(tag: str | None, expected: str | None) -> None:
    assert normalise_locale(tag) == expected


@pytest.mark.parametrize(
    ("tag", "expected"),
    [
        ("de-AT", ["de-AT", "de", "en"]),
        ("de_at", ["de-AT", "de", "en"]),
        ("en-GB", ["en-GB", "en"]),
        (None, ["en"]),
        ("", ["en"]),
    ],
)
def test_locale_chain(tag: str | None, expected: list[str]) -> None:
    assert locale_chain(tag, "en") == expected


def test_regional_locale_falls_back_to_language_file(
    renderer: Renderer, templates_dir: Path
) -> None:
    message = renderer.render("greeting", "de_AT", context())

    assert message.locale == "de"
    assert message.source == str(templates_dir / "greeting" / "de.jinja")
    assert "locale=de" in message.text


@pytest.mark.parametrize("locale", ["pt-BR", "xx", None, "not a tag"])
def test_unknown_locale_falls_back_to_default(renderer: Renderer, locale: str | None) -> None:
    message = renderer.render("greeting", locale, context())

    assert message.locale == "en"
    assert "locale=en" in message.text


def test_renders_text_and_html_document(renderer: Renderer) -> None:
    message = renderer.render("greeting", "en", context())

    assert message.subject == "Your order 028-1234567-7654321"
    assert message.text.startswith("Hello Alex,\n\nthank you for buying Water bottle.")
    assert message.text.endswith("Anna, Kundenservice\n")
    assert message.html.startswith("<!DOCTYPE html>")
    assert '<html lang="en">' in message.html
    assert "<title>Your order 028-1234567-7654321</title>" in message.html
    assert "<li>Yes, all good.</li>" in message.html
    assert '<a href="https://shop.example/bottle#reviews">' in message.html


def test_empty_buyer_name_reads_naturally(renderer: Renderer) -> None:
    message = renderer.render("greeting", "en", context(buyer_name=""))

    assert message.text.startswith("Hello,\n")


def test_buyer_data_is_escaped_in_html_only(renderer: Renderer) -> None:
    message = renderer.render("greeting", "en", context(buyer_name="<b>Bob</b> & Co"))

    assert "Hello &lt;b&gt;Bob&lt;/b&gt; &amp; Co," in message.html
    assert "<b>Bob" not in message.html
    assert "Hello <b>Bob</b> & Co," in message.text


def test_subject_is_one_collapsed_line(renderer: Renderer) -> None:
    message = renderer.render("greeting", "de", context(order_id="028-1\r\nBcc: x@evil.example"))

    assert message.subject == "Ihre Bestellung 028-1 Bcc: x@evil.example: wie läuft es?"


def test_undefined_variable_names_file_and_line(renderer: Renderer, templates_dir: Path) -> None:
    path = write(
        templates_dir,
        "greeting/fr.jinja",
        "{% block subject %}Bonjour{% endblock %}\n"
        "{% block text %}\n"
        "Commande {{ order.nubmer }}\n"
        "{% endblock %}\n"
        "{% block html %}<p>x</p>{% endblock %}\n",
    )

    with pytest.raises(TemplateError) as caught:
        renderer.render("greeting", "fr", context())

    assert caught.value.where == f"{path}:3"
    assert "nubmer" in caught.value.detail


def test_syntax_error_names_file_and_line(renderer: Renderer, templates_dir: Path) -> None:
    path = write(
        templates_dir,
        "greeting/fr.jinja",
        "{% block subject %}Bonjour{% endblock %}\n{% block text %}\n{% if %}\n{% endblock %}\n",
    )

    with pytest.raises(TemplateError) as caught:
        renderer.render("greeting", "fr", context())

    assert caught.value.where == f"{path}:3"
    assert "syntax error" in caught.value.detail


def test_sandbox_violation_is_a_template_error(renderer: Renderer, templates_dir: Path) -> None:
    path = write(
        templates_dir,
        "greeting/fr.jinja",
        GOOD.replace("<p>Hello</p>", "\n<p>{{ ''.__class__.__mro__ }}</p>"),
    )

    with pytest.raises(TemplateError) as caught:
        renderer.render("greeting", "fr", context())

    assert caught.value.where == f"{path}:4"
    assert "not allowed" in caught.value.detail


def test_missing_text_block_is_an_error(renderer: Renderer, templates_dir: Path) -> None:
    path = write(
        templates_dir,
        "greeting/fr.jinja",
        "{% block subject %}Hi{% endblock %}{% block html %}<p>Hello</p>{% endblock %}",
    )

    with pytest.raises(TemplateError) as caught:
        renderer.render("greeting", "fr", context())

    assert caught.value.where == str(path)
    assert "missing: ['text']" in caught.value.detail


def test_a_template_without_html_block_renders_plain_text_only(
    renderer: Renderer, templates_dir: Path
) -> None:
    write(
        templates_dir,
        "greeting/fr.jinja",
        "{% block subject %}Commande {{ order.number }}{% endblock %}"
        "{% block text %}Bonjour {{ buyer.name }}{% endblock %}",
    )

    message = renderer.render("greeting", "fr", context())

    assert message.subject == "Commande 028-1234567-7654321"
    assert message.text == "Bonjour Alex\n"
    assert message.html == ""


def test_an_empty_html_block_is_an_error(renderer: Renderer, templates_dir: Path) -> None:
    write(templates_dir, "greeting/fr.jinja", GOOD.replace("<p>Hello</p>", " "))

    with pytest.raises(TemplateError, match="leave it out to send plain text only"):
        renderer.render("greeting", "fr", context())


def test_empty_subject_is_an_error(renderer: Renderer, templates_dir: Path) -> None:
    write(templates_dir, "greeting/fr.jinja", GOOD.replace("Hi", "  \n "))

    with pytest.raises(TemplateError, match="subject block is empty"):
        renderer.render("greeting", "fr", context())


def test_unknown_template_is_an_error(renderer: Renderer) -> None:
    with pytest.raises(TemplateError, match="no template file for de, en"):
        renderer.render("nothing_here", "de", context())


def test_template_name_cannot_leave_the_folder(renderer: Renderer) -> None:
    with pytest.raises(TemplateError, match="folder name"):
        renderer.render("../greeting", "en", context())


def test_check_passes_on_good_templates(renderer: Renderer) -> None:
    renderer.check(["greeting", "thanks"], sample_context(SELLER, "en"))


def test_check_finds_error_in_non_default_locale(renderer: Renderer, templates_dir: Path) -> None:
    path = write(
        templates_dir, "greeting/it.jinja", GOOD.replace("Hello{%", "Ciao {{ buyer.nmae }}{%")
    )

    with pytest.raises(TemplateError) as caught:
        renderer.check(["greeting"], sample_context(SELLER, "en"))

    assert caught.value.where == f"{path}:2"
    assert "nmae" in caught.value.detail


def test_check_requires_default_locale_file(renderer: Renderer, templates_dir: Path) -> None:
    write(templates_dir, "only_german/de.jinja", GOOD)

    with pytest.raises(TemplateError, match=r"no en\.jinja") as caught:
        renderer.check(["only_german"], sample_context(SELLER, "en"))

    assert caught.value.where == str(templates_dir / "only_german")


def test_check_rejects_file_named_with_unnormalised_tag(
    renderer: Renderer, templates_dir: Path
) -> None:
    write(templates_dir, "greeting/de_at.jinja", GOOD)

    with pytest.raises(TemplateError, match=r"rename it to de-AT\.jinja"):
        renderer.check(["greeting"], sample_context(SELLER, "en"))


def test_locales_lists_files(renderer: Renderer) -> None:
    assert renderer.locales("greeting") == ["de", "en"]
    assert renderer.locales("missing") == []


def test_invalid_default_locale_is_a_config_error(templates_dir: Path) -> None:
    with pytest.raises(ConfigError):
        Renderer(templates_dir, default_locale="../x")


def test_message_context_shapes_order_and_review() -> None:
    order = Order(
        order_id="A-1",
        marketplace="ebay",
        buyer_email="b@example.com",
        products=("Lamp", "Bulb"),
        review_url="javascript:alert(1)",
    )
    review = Review("A-1", rating=4, reviewed_at=datetime(2024, 6, 1, tzinfo=UTC))

    values = message_context(order, SELLER, review, "fr")

    assert values["order"].product == "Lamp"
    assert values["order"].products == ["Lamp", "Bulb"]
    assert values["order"].review_url is None
    assert values["review"].rating == 4
    assert values["buyer"].name == ""
    assert values["seller"].signature == "Anna, Kundenservice"
    assert values["locale"] == "fr"


def test_source_names_the_file_render_would_use(renderer: Renderer, templates_dir: Path) -> None:
    assert renderer.source("greeting", "de_AT") == str(templates_dir / "greeting" / "de.jinja")
    assert renderer.source("greeting", None) == renderer.render("greeting", None, context()).source


def test_checked_locales_lists_every_file_then_the_fallback(renderer: Renderer) -> None:
    assert renderer.checked_locales("greeting") == ["de", "en", None]
