"""Which language a buyer's mail is written in, and why.

Marketplace exports rarely carry a locale column, but they say where the order was placed
(``ebay.de``) and where it ships (``DE``). So the language comes, in this order, from: the
order's locale, the buyer's stored locale, the marketplace site, the buyer's country, then
the configured default. A rule only wins when a template file can serve its language, so a
Taiwanese buyer is never sent Simplified Chinese because only ``zh.jinja`` exists: they get
the default instead, until ``zh-Hant.jinja`` is written. Pure: data in, data out.

The country table is CLDR's (babel): a territory's official or de-facto languages, most
spoken first, with the overrides in :data:`COUNTRY_OVERRIDES` where the seller's market
differs from the census. See docs/languages.md.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache

from babel.core import get_global
from babel.languages import get_official_languages

from worker.domain import Customer, Order

MAX_TAG = 35
"""Longer than any sane language tag (BCP 47 asks 35 characters of implementations)."""
_TAG = re.compile(r"[A-Za-z]{2,3}(?:-[A-Za-z0-9]{1,8})*")
_HOST = re.compile(r"(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}")
_MAX_HOST = 253

ORDER_LOCALE = "order locale"
BUYER_LOCALE = "buyer locale"
SITE = "site"
COUNTRY = "country"
DEFAULT = "default"
RULES = (ORDER_LOCALE, BUYER_LOCALE, SITE, COUNTRY, DEFAULT)
"""The rules, in the order they are asked."""

COUNTRY_OVERRIDES: dict[str, tuple[str, ...]] = {
    # German-speaking markets: CLDR lists Swiss German (gsw) first for CH; sellers write de.
    "DE": ("de",),
    "AT": ("de",),
    "CH": ("de", "fr", "it"),
    # Belgium: the marketplaces' Belgian sites are French first (befr.ebay.be); a Flemish
    # buyer gets nl from the site benl.ebay.be or a locale column.
    "FR": ("fr",),
    "BE": ("fr", "nl", "de"),
    # Chinese: Traditional where it is written, never Simplified for TW/HK/MO.
    "TW": ("zh-Hant",),
    "HK": ("zh-Hant", "en"),
    "MO": ("zh-Hant", "pt"),
    "CN": ("zh-Hans",),
    "SG": ("zh-Hans", "en"),
    "JP": ("ja",),
    "IT": ("it",),
    "ES": ("es",),
    "MX": ("es",),
    "AR": ("es",),
    # CLDR has no official language for US/AU and puts Maori first for NZ.
    "US": ("en",),
    "GB": ("en",),
    "AU": ("en",),
    "CA": ("en", "fr"),
    "IE": ("en",),
    "NZ": ("en",),
}
"""Where the seller's market differs from CLDR's order of a territory's languages."""

US_MARKETPLACES = frozenset({"ebay", "amazon", "etsy", "walmart"})
"""Marketplaces whose ``.com`` site is their US one; another ``.com`` host says nothing."""

_TLD_COUNTRY = {"uk": "GB"}
"""Country-code top-level domains that are not the ISO 3166 code."""


@dataclass(frozen=True, slots=True)
class Language:
    """The locale a message is rendered in, the rule that chose it and what it went on."""

    locale: str
    rule: str
    """One of :data:`RULES`."""
    detail: str = ""
    """What the rule read, normalised (``ebay.de``, ``TW``, ``de-AT``); never raw input."""

    def __str__(self) -> str:
        """As ``worker plan`` shows it: ``de (site ebay.de)``."""
        reason = f"{self.rule} {self.detail}" if self.detail else self.rule
        return f"{self.locale} ({reason})"


def normalise_locale(tag: str | None) -> str | None:
    """``de_at``, ``DE-at``, ``de_AT.UTF-8`` -> ``de-AT``; empty, overlong or malformed -> None.

    Malformed tags fall back to the default locale rather than failing a send, and can never
    name a path outside the template folder.
    """
    if tag is None or len(tag) > 4 * MAX_TAG:
        return None
    core = tag.strip().split(".")[0].split("@")[0].replace("_", "-")
    if len(core) > MAX_TAG or not _TAG.fullmatch(core):
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
    """Most specific first, then the default: ``de-AT`` -> ``["de-AT", "de", "en"]``.

    Script-aware where a language is written in more than one script: ``zh-TW`` ->
    ``["zh-TW", "zh-Hant-TW", "zh-Hant", "en"]`` (never plain ``zh``, which is Simplified).
    """
    chain: list[str] = []
    for candidate in (*fallbacks(tag), *(fallbacks(default) or [default])):
        if candidate not in chain:
            chain.append(candidate)
    return chain


def fallbacks(tag: str | None) -> list[str]:
    """The template locales that may serve ``tag``, most specific first, no default."""
    norm = normalise_locale(tag)
    if norm is None:
        return []
    parts = norm.split("-")
    language = parts[0]
    if language not in _multi_script():
        return ["-".join(parts[:size]) for size in range(len(parts), 0, -1)]
    script = next((p for p in parts[1:] if len(p) == 4 and p.isalpha()), None)
    region = next((p for p in parts[1:] if len(p) == 2 or (len(p) == 3 and p.isdigit())), None)
    written = script or _likely_script(language, region)
    chain = [norm]
    if region:
        chain += [f"{language}-{written}-{region}", f"{language}-{region}"]
    chain.append(f"{language}-{written}")
    if written == _likely_script(language, None):
        chain.append(language)  # plain "zh" means Simplified: only for a Simplified reader
    return list(dict.fromkeys(chain))


def _likely_script(language: str, region: str | None) -> str | None:
    likely: Mapping[str, str] = get_global("likely_subtags")
    key = f"{language}_{region}" if region else language
    found = likely.get(key) or likely.get(language)
    if found is None:
        return None
    return next((p for p in found.split("_")[1:] if len(p) == 4), None)


@cache
def _multi_script() -> frozenset[str]:
    """Languages CLDR writes in more than one script depending on the region (zh, sr, ...)."""
    likely: Mapping[str, str] = get_global("likely_subtags")
    scripts: dict[str, set[str]] = {}
    for key, value in likely.items():
        language, *region = key.split("_")
        if len(region) > 1 or (region and len(region[0]) == 4) or language == "und":
            continue  # only "lang" and "lang_REGION": which script a region writes in
        scripts.setdefault(language, set()).update(p for p in value.split("_") if len(p) == 4)
    return frozenset(lang for lang, found in scripts.items() if len(found) > 1)


def country_languages(country: str | None) -> tuple[str, ...]:
    """The table: a territory's languages, most likely first (``TW`` -> ``("zh-Hant",)``)."""
    code = normalise_country(country)
    if code is None:
        return ()
    if code in COUNTRY_OVERRIDES:
        return COUNTRY_OVERRIDES[code]
    found = get_official_languages(code, de_facto=True)
    return tuple(tag for tag in (normalise_locale(lang) for lang in found) if tag)


def normalise_country(country: str | None) -> str | None:
    """An ISO 3166 alpha-2 code CLDR knows, upper case; anything else -> None."""
    if country is None or len(country) > 8:
        return None
    code = country.strip().upper()
    if len(code) != 2 or not code.isalpha() or code not in _territories():
        return None
    return code


@cache
def _territories() -> frozenset[str]:
    info: Mapping[str, object] = get_global("territory_languages")
    return frozenset(info)


def site_country(site: str | None) -> tuple[str, str | None] | None:
    """A marketplace host's country and, where the host names one, its language:
    ``ebay.de`` -> ``("DE", None)``, ``befr.ebay.be`` -> ``("BE", "fr")``,
    ``amazon.co.jp`` -> ``("JP", None)``, ``ebay.com`` -> ``("US", None)``."""
    host = _host(site)
    if host is None:
        return None
    labels = host.split(".")
    tld = labels[-1]
    if len(tld) == 2:
        country = normalise_country(_TLD_COUNTRY.get(tld, tld))
    elif tld == "com" and len(labels) == 2 and labels[0] in US_MARKETPLACES:
        country = "US"
    else:
        country = None
    if country is None:
        return None
    first = labels[0]
    language = None
    if len(labels) >= 3 and len(first) == 4 and first.isalpha() and first[:2] == country.lower():
        language = normalise_locale(first[2:])  # befr.ebay.be, cafr.ebay.ca
    return country, language


def _host(site: str | None) -> str | None:
    if site is None or len(site) > _MAX_HOST:
        return None
    host = site.strip().lower().removeprefix("www.")
    return host if _HOST.fullmatch(host) else None


def choose_language(
    order: Order, customer: Customer | None, available: Collection[str], default: str
) -> Language:
    """The first rule whose language a template in ``available`` can serve, else the default.

    ``available`` is the locales a template has files for (``Renderer.locales``); the
    returned locale is one of them, except for the default when nothing else fits.
    """
    have = {tag for tag in (normalise_locale(a) for a in available) if tag}
    for rule, detail, candidates in _rules(order, customer):
        for candidate in candidates:
            for locale in fallbacks(candidate):
                if locale in have:
                    return Language(locale, rule, detail)
    return Language(normalise_locale(default) or default, DEFAULT)


def _rules(order: Order, customer: Customer | None) -> Iterable[tuple[str, str, Sequence[str]]]:
    """Each rule with what it read and the locales it proposes, in order of precedence."""
    if ordered := normalise_locale(order.locale):
        yield ORDER_LOCALE, ordered, (ordered,)
    if customer is not None and (stored := normalise_locale(customer.locale)):
        yield BUYER_LOCALE, stored, (stored,)
    if found := site_country(order.site):
        country, language = found
        host = _host(order.site) or ""
        yield SITE, host, (*([language] if language else []), *country_languages(country))
    for shipped_to in (order.country, customer.country if customer is not None else None):
        if code := normalise_country(shipped_to):
            yield COUNTRY, code, country_languages(code)
            break
