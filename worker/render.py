"""Turn an operator's per-locale template into a subject, a text part and an HTML part.

Templates are edited by operators, so they run in Jinja's sandbox; buyer data is escaped in
the HTML part; a misspelt variable fails at start-up (``check``) instead of mailing "Hello ,".
Every failure becomes a :class:`~worker.errors.TemplateError` naming the file and line.
"""

from __future__ import annotations

import re
import traceback
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jinja2
from jinja2.sandbox import SandboxedEnvironment
from markupsafe import Markup

from worker.config import SellerSettings
from worker.domain import Order, Review
from worker.errors import ConfigError, TemplateError, WorkerError

BLOCKS = frozenset({"subject", "text", "html"})
LAYOUT = "layout.html.jinja"
_TAG = re.compile(r"[A-Za-z]{2,3}(?:-[A-Za-z0-9]{1,8})*")
_TEMPLATE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True, slots=True)
class RenderedMessage:
    subject: str
    """One line: whitespace collapsed, no CR/LF."""
    text: str
    html: str
    """The full HTML document: the template's fragment wrapped in the layout."""
    locale: str
    """The locale whose file was used."""
    source: str
    """Path of the template file used, for logs and errors."""


# What templates see. Attribute objects rather than dicts, so ``order.items`` is an error
# instead of a dict method.


@dataclass(frozen=True, slots=True)
class BuyerView:
    name: str


@dataclass(frozen=True, slots=True)
class OrderView:
    number: str
    marketplace: str
    product: str
    products: list[str] = field(default_factory=list)
    review_url: str | None = None


@dataclass(frozen=True, slots=True)
class ReviewView:
    rating: int | None
    """``None`` when the review notification did not give the stars."""


@dataclass(frozen=True, slots=True)
class SellerView:
    name: str
    signature: str


def normalise_locale(tag: str | None) -> str | None:
    """``de_at``, ``DE-at``, ``de_AT.UTF-8`` -> ``de-AT``; empty or malformed -> None.

    Malformed tags fall back to the default locale rather than failing a send, and can never
    name a path outside the template folder.
    """
    if tag is None:
        return None
    core = tag.strip().split(".")[0].split("@")[0].replace("_", "-")
    if not _TAG.fullmatch(core):
        return None
    first, *rest = core.split("-")
    return "-".join([first.lower(), *(_subtag(part) for part in rest)])


def _subtag(part: str) -> str:
    if len(part) == 4 and part.isalpha():
        return part.title()
    if len(part) == 2 and part.isalpha():
        return part.upper()
    return part.lower()


def locale_chain(tag: str | None, default: str) -> list[str]:
    """Most specific first, then the default: ``de-AT`` -> ``["de-AT", "de", "en"]``."""
    chain: list[str] = []
    for candidate in (normalise_locale(tag), normalise_locale(default) or default):
        parts = candidate.split("-") if candidate else []
        for size in range(len(parts), 0, -1):
            prefix = "-".join(parts[:size])
            if prefix not in chain:
                chain.append(prefix)
    return chain


class Renderer:
    """Renders ``templates_dir/<template>/<locale>.jinja`` files; Jinja caches compiled ones."""

    def __init__(self, templates_dir: Path, default_locale: str = "en") -> None:
        default = normalise_locale(default_locale)
        if default is None:
            raise ConfigError(
                f"{default_locale!r} is not a locale tag like en or de-AT", where="default_locale"
            )
        self.templates_dir = templates_dir
        self.default_locale = default
        loader = jinja2.FileSystemLoader(templates_dir)
        self._text_env = _environment(loader, autoescape=False)
        self._html_env = _environment(loader, autoescape=True)

    def render(
        self, template: str, locale: str | None, context: Mapping[str, Any]
    ) -> RenderedMessage:
        """Render the best file for ``locale``; ``context["locale"]`` becomes the one chosen."""
        chosen = self._resolve(template, locale)
        name = f"{template}/{chosen}.jinja"
        values = {**context, "locale": chosen}
        subject = " ".join(_CONTROL.sub(" ", self._block(False, name, "subject", values)).split())
        if not subject:
            raise TemplateError("the subject block is empty", where=self._path(name))
        text = self._block(False, name, "text", values).strip()
        fragment = self._block(True, name, "html", values).strip()
        if not text or not fragment:
            raise TemplateError(
                "the text and html blocks must not be empty", where=self._path(name)
            )
        html = self._layout(Markup(fragment), chosen, subject)
        return RenderedMessage(subject, text + "\n", html, chosen, self._path(name))

    def locales(self, template: str) -> list[str]:
        """Locales that have a file for ``template`` (file names, as written)."""
        folder = self.templates_dir / _checked_name(template)
        return sorted(p.stem for p in folder.glob("*.jinja") if p.is_file())

    def check(self, templates: Iterable[str], sample: Mapping[str, Any]) -> None:
        """Render every locale file of every template once, so mistakes stop the start-up.

        Raises the first problem as a TemplateError naming the file (and line, if known).
        """
        for template in templates:
            found = self.locales(template)
            if self.default_locale not in found:
                raise TemplateError(
                    f"no {self.default_locale}.jinja: every other locale falls back to it",
                    where=str(self.templates_dir / template),
                )
            for locale in found:
                self._check_file_name(template, locale)
                self.render(template, locale, sample)
            self.render(template, None, sample)

    def _check_file_name(self, template: str, locale: str) -> None:
        if normalise_locale(locale) != locale:
            fix = normalise_locale(locale)
            hint = f"rename it to {fix}.jinja" if fix else "name it like de.jinja or de-AT.jinja"
            raise TemplateError(
                f"the file name is not a locale tag, so it is never chosen; {hint}",
                where=self._path(f"{template}/{locale}.jinja"),
            )

    def _resolve(self, template: str, locale: str | None) -> str:
        chain = locale_chain(locale, self.default_locale)
        folder = self.templates_dir / _checked_name(template)
        for candidate in chain:
            if (folder / f"{candidate}.jinja").is_file():
                return candidate
        raise TemplateError(f"no template file for {', '.join(chain)}", where=str(folder))

    def _path(self, name: str) -> str:
        return str(self.templates_dir / name)

    def _template(self, html: bool, name: str) -> jinja2.Template:
        env = self._html_env if html else self._text_env
        template = env.get_template(name)
        found = set(template.blocks)
        if found != BLOCKS and name != LAYOUT:
            missing, extra = sorted(BLOCKS - found), sorted(found - BLOCKS)
            raise TemplateError(
                f"needs exactly the blocks subject, text and html (missing: {missing or '-'}, "
                f"unexpected: {extra or '-'})",
                where=self._path(name),
            )
        return template

    def _block(self, html: bool, name: str, block: str, context: dict[str, Any]) -> str:
        with _template_errors(self._path(name)):
            template = self._template(html, name)
            try:
                return "".join(template.blocks[block](template.new_context(context)))
            except Exception:
                # Rewrites the traceback so frames carry template file names and lines.
                template.environment.handle_exception()

    def _layout(self, content: Markup, lang: str, subject: str) -> str:
        with _template_errors(self._path(LAYOUT)):
            layout = self._template(True, LAYOUT)
            return layout.render(content=content, lang=lang, subject=subject)


def _environment(loader: jinja2.BaseLoader, *, autoescape: bool) -> SandboxedEnvironment:
    return SandboxedEnvironment(
        loader=loader,
        autoescape=autoescape,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def _checked_name(template: str) -> str:
    if not _TEMPLATE_NAME.fullmatch(template):
        raise TemplateError(
            "a template name is a folder name of letters, digits, '_' and '-'",
            where=f"template {template!r}",
        )
    return template


@contextmanager
def _template_errors(path: str) -> Iterator[None]:
    """Any failure inside a template is the operator's to fix: say where and what."""
    try:
        yield
    except WorkerError:
        raise
    except jinja2.TemplateSyntaxError as exc:
        where = f"{exc.filename or path}:{exc.lineno}"
        raise TemplateError(f"syntax error: {exc.message}", where=where) from exc
    except jinja2.TemplateNotFound as exc:
        raise TemplateError(f"template file not found: {exc.name}", where=path) from exc
    except OSError as exc:
        raise TemplateError(f"cannot read the file: {exc.strerror}", where=path) from exc
    except Exception as exc:
        raise TemplateError(_describe(exc), where=_template_line(exc) or path) from exc


def _describe(exc: Exception) -> str:
    if isinstance(exc, jinja2.UndefinedError):
        return f"undefined variable: {exc.message}"
    if isinstance(exc, jinja2.exceptions.SecurityError):
        return f"not allowed in a template: {exc.message}"
    return f"{type(exc).__name__}: {exc}"


def _template_line(exc: BaseException) -> str | None:
    """The innermost template frame, as ``path:line``."""
    frames = [
        f"{frame.f_code.co_filename}:{line}"
        for frame, line in traceback.walk_tb(exc.__traceback__)
        if frame.f_code.co_filename.endswith(".jinja")
    ]
    return frames[-1] if frames else None


def _web_url(url: str | None) -> str | None:
    """Only http(s) links reach a template: a ``javascript:`` URL from a feed must not."""
    if url and url.lower().startswith(("https://", "http://")):
        return url
    return None


def message_context(
    order: Order, seller: SellerSettings, review: Review | None, locale: str
) -> dict[str, Any]:
    """The variables every template gets (see the template format spec)."""
    return {
        "buyer": BuyerView(name=order.buyer_name.strip()),
        "order": OrderView(
            number=order.order_id,
            marketplace=order.marketplace,
            product=order.products[0] if order.products else "",
            products=list(order.products),
            review_url=_web_url(order.review_url),
        ),
        "review": ReviewView(rating=review.rating) if review is not None else None,
        "seller": SellerView(name=seller.name, signature=seller.signature),
        "locale": locale,
    }


def sample_context(seller: SellerSettings, locale: str) -> dict[str, Any]:
    """A realistic order for start-up checks; it has a 5-star review so review_thanks renders."""
    order = Order(
        order_id="028-1234567-7654321",
        marketplace="shop",
        buyer_email="alex.sample@example.com",
        buyer_name="Alex Sample",
        products=("Stainless steel water bottle, 750 ml", "Bottle brush"),
        locale=locale,
        delivered_at=datetime(2024, 5, 6, 10, 0, tzinfo=UTC),
        review_url="https://shop.example/products/water-bottle#reviews",
    )
    review = Review(order.order_id, rating=5, reviewed_at=datetime(2024, 6, 1, 9, 0, tzinfo=UTC))
    return message_context(order, seller, review, locale)
