"""Tracking links for a parcel: the carrier's own page, or the buyer's national post.

Pure: text in, text out. A carrier is named in many ways by exports and shipments files
("DHL Paket", "Deutsche Post DHL", "日本郵便"), so :func:`carrier_id` folds those to one
canonical id; :func:`tracking_url` fills that carrier's pattern (or a universal tracker's)
with the number. The number comes from a feed, so it is checked before it reaches a link:
only letters, digits and '-', at most :data:`MAX_NUMBER_LENGTH` characters; anything else
gives no link at all rather than an injected one.

A cross-border parcel with a UPU S10 number (``RR123456785DE``) is handed over to the
buyer's own post at the border, whose site tracks it in the buyer's language;
:func:`local_tracking_url` gives that site, as the sellers' handbooks advise.
"""

from __future__ import annotations

import functools
import re
import string
import unicodedata
from collections.abc import Mapping
from typing import TYPE_CHECKING
from urllib.parse import quote

if TYPE_CHECKING:
    from worker.config import TrackingSettings

MAX_NUMBER_LENGTH = 40
"""Longer than any carrier's number (UPS 18, FedEx 34 with its barcode prefix)."""
MAX_PATTERN_LENGTH = 500
_NUMBER = re.compile(rf"[A-Za-z0-9-]{{4,{MAX_NUMBER_LENGTH}}}")
_S10 = re.compile(r"([A-Z]{2})(\d{8})(\d)([A-Z]{2})")
_S10_WEIGHTS = (8, 6, 4, 2, 3, 5, 9, 7)
_COUNTRY = re.compile(r"[A-Z]{2}")
_PLAIN_NAME = re.compile(r"[^\W_][\w &'()+-]{0,59}")
CARRIER_ID = re.compile(r"[a-z0-9][a-z0-9-]{0,39}")
PLACEHOLDERS = frozenset({"number", "country"})

UNIVERSAL_TRACKER = "https://parcelsapp.com/en/tracking/{number}"
"""Follows numbers of nearly every carrier and post; the fallback when no carrier matches."""

CARRIERS: Mapping[str, str] = {
    "dhl": "https://www.dhl.com/global-en/home/tracking/tracking-parcel.html?submit=1&tracking-id={number}",
    "dhl-express": "https://www.dhl.com/global-en/home/tracking/tracking-express.html?submit=1&tracking-id={number}",
    "deutsche-post": "https://www.deutschepost.de/de/s/sendungsverfolgung/verfolgen.html?piececode={number}",
    "ups": "https://www.ups.com/track?tracknum={number}",
    "fedex": "https://www.fedex.com/fedextrack/?trknbr={number}",
    "usps": "https://tools.usps.com/go/TrackConfirmAction?tLabels={number}",
    "royal-mail": "https://www.royalmail.com/track-your-item#/tracking-results/{number}",
    "parcelforce": "https://www.parcelforce.com/track-trace?trackNumber={number}",
    "la-poste": "https://www.laposte.fr/outils/suivre-vos-envois?code={number}",
    "colissimo": "https://www.laposte.fr/outils/suivre-vos-envois?code={number}",
    "chronopost": "https://www.chronopost.fr/tracking-no-cms/suivi-page?listeNumerosLT={number}",
    "correos": "https://www.correos.es/es/es/herramientas/localizador/envios/detalle?tracking-number={number}",
    "poste-italiane": "https://www.poste.it/cerca/index.html#/risultati-spedizioni/{number}",
    "brt": "https://vas.brt.it/vas/sped_det_show.hsm?referer=sped_numspe_par.htm&Nspediz={number}",
    "japan-post": "https://trackings.post.japanpost.jp/services/srv/search/direct?reqCodeNo1={number}&searchKind=S002&locale=ja",
    "yamato": "https://toi.kuronekoyamato.co.jp/cgi-bin/tneko?number00=1&number01={number}",
    "sagawa": "https://k2k.sagawa-exp.co.jp/p/web/okurijosearch.do?okurijoNo={number}",
    "china-post": "https://t.17track.net/en#nums={number}&fc=3011",
    "cainiao": "https://global.cainiao.com/newDetail.htm?mailNoList={number}",
    "yanwen": "https://track.yw56.com.cn/en/querydel?nums={number}",
    "4px": "https://track.4px.com/#/result/0/{number}",
    "yunexpress": "https://www.yuntrack.com/parcelTracking?id={number}",
    "sf-express": "https://htm.sf-express.com/hk/en/dynamic_function/waybill/#search/bill-number/{number}",
    "chunghwa-post": "https://postserv.post.gov.tw/pstmail/main_mail.html?targetTxn=EB500200&MAILNO={number}",
    "hongkong-post": "https://www.hongkongpost.hk/en/mail_tracking/index.html?trackcode={number}",
    "canada-post": "https://www.canadapost-postescanada.ca/track-reperage/en#/details/{number}",
    "australia-post": "https://auspost.com.au/mypost/track/details/{number}",
    "postnl": "https://jouw.postnl.nl/track-and-trace/{number}",
    "bpost": "https://track.bpost.cloud/btr/web/#/search?itemCode={number}&lang=en",
    "austrian-post": "https://www.post.at/s/sendungsdetails?snr={number}",
    "swiss-post": "https://service.post.ch/ekp-web/ui/entry/search/{number}",
    "gls": "https://gls-group.com/GROUP/en/parcel-tracking?match={number}",
    "dpd": "https://tracking.dpd.de/status/en_US/parcel/{number}",
    "hermes": "https://www.myhermes.de/empfangen/sendungsverfolgung/sendungsinformation#{number}",
    "tnt": "https://www.tnt.com/express/en_gb/site/shipping-tools/tracking.html?searchType=con&cons={number}",
    "amazon-logistics": "https://track.amazon.com/tracking/{number}",
}
"""Canonical carrier id -> its public tracking page; ``{number}`` is the parcel's number."""

NAMES: Mapping[str, str] = {
    "dhl": "DHL",
    "dhl-express": "DHL Express",
    "deutsche-post": "Deutsche Post",
    "ups": "UPS",
    "fedex": "FedEx",
    "usps": "USPS",
    "royal-mail": "Royal Mail",
    "parcelforce": "Parcelforce",
    "la-poste": "La Poste",
    "colissimo": "Colissimo",
    "chronopost": "Chronopost",
    "correos": "Correos",
    "poste-italiane": "Poste Italiane",
    "brt": "BRT",
    "japan-post": "Japan Post",
    "yamato": "Yamato Transport",
    "sagawa": "Sagawa Express",
    "china-post": "China Post",
    "cainiao": "Cainiao",
    "yanwen": "Yanwen",
    "4px": "4PX",
    "yunexpress": "YunExpress",
    "sf-express": "SF Express",
    "chunghwa-post": "Chunghwa Post",
    "hongkong-post": "Hongkong Post",
    "canada-post": "Canada Post",
    "australia-post": "Australia Post",
    "postnl": "PostNL",
    "bpost": "bpost",
    "austrian-post": "Österreichische Post",
    "swiss-post": "Swiss Post",
    "gls": "GLS",
    "dpd": "DPD",
    "hermes": "Hermes",
    "tnt": "TNT",
    "amazon-logistics": "Amazon Logistics",
}
"""How a buyer knows each carrier: the brand as written on the parcel."""

ALIASES: Mapping[str, str] = {
    # DHL and the German post
    "DHL Paket": "dhl",
    "DHL Parcel": "dhl",
    "DHL eCommerce": "dhl",
    "DHL Germany": "dhl",
    "DHL Deutschland": "dhl",
    "Deutsche Post DHL": "dhl",
    "DHL Express Worldwide": "dhl-express",
    "Deutsche Post AG": "deutsche-post",
    "Warenpost": "deutsche-post",
    "Warenpost International": "deutsche-post",
    # North America
    "United Parcel Service": "ups",
    "FedEx Ground": "fedex",
    "FedEx Express": "fedex",
    "Federal Express": "fedex",
    "US Postal Service": "usps",
    "United States Postal Service": "usps",
    "Canada Post Corporation": "canada-post",
    "Postes Canada": "canada-post",
    # United Kingdom
    "Royal Mail Tracked": "royal-mail",
    "Royal Mail Tracked 24": "royal-mail",
    "Royal Mail Tracked 48": "royal-mail",
    "Parcel Force": "parcelforce",
    "Evri": "hermes",
    "Hermes UK": "hermes",
    # France, Spain, Italy
    "Colissimo International": "colissimo",
    "Chronopost International": "chronopost",
    "Correos Express": "correos",
    "Poste Italiane SpA": "poste-italiane",
    "Posteitaliane": "poste-italiane",
    "Bartolini": "brt",
    # Japan
    "日本郵便": "japan-post",
    "ゆうパック": "japan-post",
    "ゆうパケット": "japan-post",
    "JP Post": "japan-post",
    "Yu-Pack": "japan-post",
    "ヤマト運輸": "yamato",
    "クロネコヤマト": "yamato",
    "Yamato Transport": "yamato",
    "Kuroneko Yamato": "yamato",
    "佐川急便": "sagawa",
    "Sagawa Express": "sagawa",
    # China, Taiwan, Hong Kong
    "中国邮政": "china-post",
    "中國郵政": "china-post",
    "China Post Registered Air Mail": "china-post",
    "China EMS": "china-post",
    "EMS China": "china-post",
    "菜鸟": "cainiao",
    "菜鳥": "cainiao",
    "AliExpress Standard Shipping": "cainiao",
    "Cainiao Super Economy": "cainiao",
    "燕文": "yanwen",
    "燕文物流": "yanwen",
    "递四方": "4px",
    "4PX Express": "4px",
    "云途": "yunexpress",
    "云途物流": "yunexpress",
    "Yun Express": "yunexpress",
    "顺丰": "sf-express",
    "顺丰速运": "sf-express",
    "順豐": "sf-express",
    "SF": "sf-express",
    "中华邮政": "chunghwa-post",
    "中華郵政": "chunghwa-post",
    "Taiwan Post": "chunghwa-post",
    "香港郵政": "hongkong-post",
    "香港邮政": "hongkong-post",
    "Hong Kong Post": "hongkong-post",
    # Rest of Europe, Australia
    "Australia Post": "australia-post",
    "AusPost": "australia-post",
    "PostNL International": "postnl",
    "bpost international": "bpost",
    "Belgian Post": "bpost",
    "Österreichische Post": "austrian-post",
    "Post AT": "austrian-post",
    "Austria Post": "austrian-post",
    "Die Schweizerische Post": "swiss-post",
    "La Poste Suisse": "swiss-post",
    "Swiss Post": "swiss-post",
    "PostCH": "swiss-post",
    "General Logistics Systems": "gls",
    "DPD Germany": "dpd",
    "DPD UK": "dpd",
    "Hermes Germany": "hermes",
    "TNT Express": "tnt",
    "Amazon Shipping": "amazon-logistics",
    "Amazon": "amazon-logistics",
    "AMZL": "amazon-logistics",
}
"""How exports and shipments files name carriers; folded like :func:`carrier_key`.

Every id and every display name in :data:`NAMES` is an alias of itself as well."""

LOCAL_POSTS: Mapping[str, str] = {
    "DE": "dhl",  # DHL Paket delivers international parcels handed to the German post
    "AT": "austrian-post",
    "CH": "swiss-post",
    "FR": "la-poste",
    "BE": "bpost",
    "NL": "postnl",
    "ES": "correos",
    "IT": "poste-italiane",
    "GB": "royal-mail",
    "US": "usps",
    "CA": "canada-post",
    "AU": "australia-post",
    "JP": "japan-post",
    "CN": "china-post",
    "TW": "chunghwa-post",
    "HK": "hongkong-post",
}
"""Buyer's country -> the national post that delivers an S10 parcel there."""


def carrier_key(text: str) -> str:
    """``"Deutsche Post DHL"``, ``"deutsche-post dhl "`` -> ``"deutschepostdhl"``: case,
    width, spaces and punctuation do not tell carriers apart."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    return "".join(c for c in folded if c.isalnum())


@functools.lru_cache(maxsize=8)
def _alias_table(extra: frozenset[tuple[str, str]]) -> dict[str, str]:
    """Folded name -> id: the ids, the brands, the built-in aliases, then ``extra``."""
    table: dict[str, str] = {}
    for cid, name in NAMES.items():
        table[carrier_key(cid)] = cid
        table[carrier_key(name)] = cid
    for alias, cid in (*ALIASES.items(), *sorted(extra)):
        table[carrier_key(alias)] = cid
    return table


def carrier_id(text: str | None, settings: TrackingSettings | None = None) -> str | None:
    """The canonical id of a carrier as an export names it, or None when it is unknown."""
    if not text or len(text) > 200:
        return None
    key = carrier_key(text)
    if not key:
        return None
    if settings is not None:
        for cid in settings.carriers:
            if carrier_key(cid) == key:
                return cid
        return _alias_table(frozenset(settings.aliases.items())).get(key)
    return _alias_table(frozenset()).get(key)


def carrier_name(text: str | None, settings: TrackingSettings | None = None) -> str | None:
    """What to call the carrier in a message: its brand for a known one, else the export's
    own words if they are plainly a name, else None.

    A plain name is letters, digits, spaces and ``&'()+-``, at most 60 characters: no
    dots, slashes, colons or ``@``, so a mail client cannot turn it into a link or an
    address (``www.evil.example``), and no line break can reach a log or a header.
    """
    if not text:
        return None
    cid = carrier_id(text, settings)
    if cid is not None and cid in NAMES:
        return NAMES[cid]
    shown = " ".join(text.split())
    return shown if _PLAIN_NAME.fullmatch(shown) else None


def clean_number(number: str | None) -> str | None:
    """The number as a link may carry it (spaces removed), or None if it is not one: only
    letters, digits and '-', 4 to :data:`MAX_NUMBER_LENGTH` characters."""
    if not number or len(number) > 4 * MAX_NUMBER_LENGTH:
        return None
    compact = number.strip().replace(" ", "")
    return compact if _NUMBER.fullmatch(compact) else None


def is_s10(number: str | None) -> bool:
    """A UPU S10 item number (``RR123456785DE``) whose check digit is right."""
    return s10_country(number) is not None


def s10_country(number: str | None) -> str | None:
    """The issuing post's country of a valid S10 number, or None when it is not one."""
    cleaned = clean_number(number)
    if cleaned is None:
        return None
    match = _S10.fullmatch(cleaned.upper())
    if match is None:
        return None
    digits, check, country = match.group(2), int(match.group(3)), match.group(4)
    total = sum(int(d) * w for d, w in zip(digits, _S10_WEIGHTS, strict=True))
    expected = 11 - total % 11
    expected = {10: 0, 11: 5}.get(expected, expected)
    return country if check == expected else None


def fill(pattern: str, number: str, country: str | None = None) -> str | None:
    """``pattern`` with ``{number}`` (and ``{country}``, lower case) put in, quoted; None
    when the pattern needs a country and there is none."""
    if "{country}" in pattern:
        if country is None or not _COUNTRY.fullmatch(country.upper()):
            return None
        pattern = pattern.replace("{country}", quote(country.lower(), safe=""))
    return pattern.replace("{number}", quote(number, safe=""))


def tracking_url(
    carrier: str | None,
    number: str | None,
    settings: TrackingSettings | None = None,
    *,
    country: str | None = None,
) -> str | None:
    """The carrier's tracking page for ``number``; the universal tracker for an unknown
    carrier; None for a number that is not one (so no link is ever built from it)."""
    cleaned = clean_number(number)
    if cleaned is None:
        return None
    carriers = settings.carrier_patterns if settings is not None else CARRIERS
    fallback = settings.fallback if settings is not None else UNIVERSAL_TRACKER
    cid = carrier_id(carrier, settings)
    url = None
    if cid is not None and cid in carriers:
        url = fill(carriers[cid], cleaned, country)
    if url is None and fallback:
        url = fill(fallback, cleaned, country)
    return url


def local_tracking_url(
    number: str | None,
    buyer_country: str | None,
    ship_from: str | None,
    settings: TrackingSettings | None = None,
) -> str | None:
    """The buyer's national post's tracking page, for a cross-border S10 parcel only.

    Other numbers stay with the carrier that issued them, so the buyer's post cannot
    track them. Without ``ship_from`` the S10 number's own country (its last two letters,
    the post that accepted it) says where it comes from.
    """
    origin = s10_country(number)
    if origin is None or number is None or not buyer_country:
        return None
    destination = buyer_country.strip().upper()
    source = (ship_from or origin).strip().upper()
    if not _COUNTRY.fullmatch(destination) or destination == source:
        return None
    posts = settings.local_post_patterns if settings is not None else local_post_defaults()
    pattern = posts.get(destination)
    if pattern is None:
        return None
    return fill(pattern, number.strip().replace(" ", "").upper(), destination)


def local_post_defaults() -> dict[str, str]:
    """Buyer's country -> the built-in pattern of their national post's tracking page."""
    pages = {country: CARRIERS[cid] for country, cid in LOCAL_POSTS.items()}
    # A German buyer knows DHL's German page, which shows the inbound parcel in German.
    pages["DE"] = (
        "https://www.dhl.de/de/privatkunden/pakete-empfangen/verfolgen.html?piececode={number}"
    )
    return pages


def pattern_problem(pattern: str) -> str | None:
    """Why ``pattern`` cannot be a tracking link pattern, or None when it can."""
    if len(pattern) > MAX_PATTERN_LENGTH:
        return f"is longer than {MAX_PATTERN_LENGTH} characters"
    if not pattern.startswith("https://"):
        return "must start with https://"
    if any(c.isspace() or not c.isprintable() or c in "<>\"'\\" for c in pattern):
        return "must not contain spaces, control characters, quotes, '<', '>' or '\\'"
    try:
        fields = {name for _, name, _, _ in string.Formatter().parse(pattern) if name is not None}
    except ValueError as exc:
        return f"has a broken placeholder ({exc})"
    if "number" not in fields:
        return "must contain {number}"
    unknown = fields - PLACEHOLDERS
    if unknown:
        return f"has unknown placeholders {sorted(unknown)}; only {{number}} and {{country}}"
    return None
