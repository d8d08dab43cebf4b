"""Order, dispute and review feeds: read sellers' export files row by row.

Files are streamed, so memory stays flat whatever their size. A bad row never stops an import:
it comes back as a :class:`RejectedRow` naming its physical line (1-based, the header is line 1)
and the reason, so an operator can fix it in the rejects file and import that file again. Only
problems with the file as a whole (missing, not UTF-8, no header, missing columns) raise
:class:`~worker.errors.FeedError`. Column mappings are documented in ``docs/order-feeds.md``.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import itertools
import json
import os
import re
import sys
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from functools import cache, lru_cache
from importlib import resources
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from babel import Locale
from tqdm import tqdm

from worker.domain import MARKETPLACES, Dispute, DisputeKind, Order, Review
from worker.errors import FeedError


class Format(StrEnum):
    """Whose column names an orders file uses."""

    GENERIC = "generic"
    AMAZON = "amazon"
    SHOPIFY = "shopify"
    EBAY = "ebay"
    ALIEXPRESS = "aliexpress"


@dataclass(frozen=True, slots=True)
class RejectedRow:
    """A row that was not imported, with what an operator needs to fix it."""

    line: int
    reason: str
    raw: str
    """The original line (JSONL) or the row re-serialised in the input's dialect (CSV/TSV)."""
    cells: tuple[tuple[str, ...], ...] = ()
    """The cells of each physical row (CSV/TSV), so the rejects file holds them as read."""


ORDER_FIELDS = frozenset(f.name for f in dataclasses.fields(Order))


@dataclass(frozen=True, slots=True)
class OrderRow:
    """An order as one file states it, with what the store needs to weigh it against its own."""

    order: Order
    fields: frozenset[str] = ORDER_FIELDS
    """The fields the file has columns for; a re-import leaves the others as they are stored."""
    updated_at: datetime | None = None
    """The feed's own last-updated time of the order, when the format has one."""


# Values -------------------------------------------------------------------------------------


def parse_instant(text: str) -> datetime | None:
    """ISO 8601 date or date-time as tz-aware UTC; naive values are UTC, empty means unknown."""
    value = text.strip()
    if not value:
        return None
    try:
        return _as_utc(datetime.fromisoformat(value))
    except (ValueError, OverflowError):
        raise ValueError(
            f"{value!r} is not an ISO 8601 date or date-time (like 2026-03-03 or "
            "2026-03-03T14:05:00+01:00)"
        ) from None


def _as_utc(moment: datetime) -> datetime:
    if moment.tzinfo is UTC:  # "Z" and "+00:00" parse to this very object
        return moment
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


_MONTHS = {m: i for i, m in enumerate("jan feb mar apr may jun jul aug sep oct nov dec".split(), 1)}
_EBAY_DATE = re.compile(
    r"(?:(?P<mon>[a-z]{3})-(?P<day>\d{1,2})-"  # Mar-03-26 (US sites)
    r"|(?P<day2>\d{1,2})-(?P<mon2>[a-z]{3})-"  # 03-Mar-26 (UK sites)
    r"|(?P<day3>\d{1,2})\.(?P<mon3>\d{1,2})\.)"  # 03.03.2026 (DE, AT, FR... sites)
    r"(?P<year>\d{4}|\d{2})(?:[ T](?P<h>\d{1,2}):(?P<m>\d{2})(?::(?P<s>\d{2}))?)?",
    re.IGNORECASE,
)


def parse_ebay_date(text: str) -> datetime | None:
    """eBay's report dates (``Mar-03-26``, ``03-Mar-26``, ``03.03.2026``) or ISO 8601, as UTC."""
    value = text.strip()
    match = _EBAY_DATE.fullmatch(value)
    if match is None:
        return parse_instant(value)
    month_text = (match["mon"] or match["mon2"] or match["mon3"]).lower()
    month = int(month_text) if month_text.isdigit() else _MONTHS.get(month_text, 0)
    year = int(match["year"]) + (2000 if len(match["year"]) == 2 else 0)
    hour, minute, second = (int(match[k] or 0) for k in ("h", "m", "s"))
    day = int(match["day"] or match["day2"] or match["day3"])
    try:
        return datetime(year, month, day, hour, minute, second, tzinfo=UTC)
    except ValueError:
        raise ValueError(f"{value!r} is not a valid date") from None


_NOT_IN_LOCAL_PART = re.compile(r'[<>()\[\]\\,;:"]')
_SPACE_OR_CONTROL = re.compile(r"[\s\x00-\x1f\x7f-\x9f]")
_HEADER_BREAKERS = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")


def normalise_email(text: str) -> str:
    """One canonical spelling per buyer, so orders, suppressions and replies meet on one key."""
    address = text.strip()
    if not address:
        raise ValueError("the e-mail address is empty")
    if _SPACE_OR_CONTROL.search(address):
        raise ValueError(f"{address!r} is not an e-mail address: it contains spaces")
    if address.count("@") != 1:
        raise ValueError(f"{address!r} is not an e-mail address: it needs exactly one @")
    local, domain = address.split("@")
    if not local or local.startswith(".") or local.endswith(".") or ".." in local:
        raise ValueError(f"{address!r} is not an e-mail address: bad part before the @")
    if _NOT_IN_LOCAL_PART.search(local):
        raise ValueError(f"{address!r} is not an e-mail address: bad character before the @")
    try:
        return f"{local.lower()}@{_ascii_domain(domain)}"
    except ValueError as exc:
        raise ValueError(f"{address!r} is not an e-mail address: {exc}") from None


_ASCII_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?")


@lru_cache(maxsize=4096)
def _ascii_domain(domain: str) -> str:
    """IDNA 2008 style (NFC, lower case, Punycode per label); stdlib's codec is IDNA 2003.

    Buyers share few domains: the answer is kept (a bounded cache; a refusal is not kept)."""
    labels = unicodedata.normalize("NFC", domain.removesuffix(".")).lower().split(".")
    if len(labels) < 2:
        raise ValueError("the domain needs a dot")
    encoded = ".".join(_ascii_label(label) for label in labels)
    if len(encoded) > 253:
        raise ValueError("the domain is too long")
    return encoded


def _ascii_label(label: str) -> str:
    if not label.isascii():
        if not all(unicodedata.category(ch)[0] in "LMN" or ch == "-" for ch in label):
            raise ValueError(f"bad character in domain label {label!r}")
        label = "xn--" + label.encode("punycode").decode("ascii")
    if len(label) > 63 or _ASCII_LABEL.fullmatch(label) is None:
        raise ValueError(f"bad domain label {label!r}")
    return label


_LOCALE = re.compile(r"([a-z]{2,3})(?:[-_]([a-z]{4}))?(?:[-_]([a-z]{2}|\d{3}))?", re.IGNORECASE)


def normalise_locale(text: str) -> str | None:
    """BCP 47 case conventions (``de_at`` -> ``de-AT``, ``zh_hans_cn`` -> ``zh-Hans-CN``)."""
    value = text.strip()
    if not value:
        return None
    return _locale_tag(value)


@lru_cache(maxsize=1024)
def _locale_tag(value: str) -> str:
    match = _LOCALE.fullmatch(value)
    if match is None:
        raise ValueError(f"locale {value!r} is not a language tag like de, de-AT or zh-Hans-CN")
    language, script, region = match.groups()
    parts = [language.lower(), script and script.title(), region and region.upper()]
    return "-".join(p for p in parts if p)


_NAME_LOCALES = (
    "en", "de", "fr", "es", "it", "nl", "pt", "pl", "sv", "da", "fi", "cs", "tr", "ru", "ja",
    "ko", "zh", "zh_Hant",
)  # fmt: skip
"""Languages whose CLDR country names are recognised: the shipped markets' and AliExpress's."""


@cache
def _country_names() -> dict[str, str]:
    """Country names to ISO 3166 alpha-2: CLDR's names (babel) in the languages of the markets
    we ship to, the ISO names in tzdata's table, and a few spellings exports use besides."""
    table = resources.files("tzdata").joinpath("zoneinfo/iso3166.tab").read_text("utf-8")
    rows = [line.split("\t") for line in table.splitlines() if line and line[0] != "#"]
    codes = {code for code, _ in rows}
    names = {_name_key(name): code for code, name in rows}
    for tag in _NAME_LOCALES:
        for code, name in Locale.parse(tag).territories.items():
            if code in codes:  # not the regions ("001"), unions ("EU") or "unknown" ("ZZ")
                names.setdefault(_name_key(name), code)
    names.update({_name_key(alias): code for alias, code in _COUNTRY_ALIASES.items()})
    return names


_COUNTRY_ALIASES = {
    "Great Britain": "GB",
    "UK": "GB",
    "USA": "US",
    "United States of America": "US",
    "Korea, Republic of": "KR",
    "Russian Federation": "RU",
    "The Netherlands": "NL",
    "China Mainland": "CN",
    "Taiwan, Province of China": "TW",
    "Vatican": "VA",
}


@cache
def _country_codes() -> frozenset[str]:
    return frozenset(_country_names().values())


def _name_key(name: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", name).replace("&", " and ").casefold().split())


def normalise_country(text: str) -> str | None:
    """ISO 3166 alpha-2, upper case; empty means unknown."""
    value = text.strip().upper()
    if not value:
        return None
    if value not in _country_codes():
        raise ValueError(f"country {text.strip()!r} is not an ISO 3166 alpha-2 code like DE")
    return value


def _country_by_name(text: str) -> str | None:
    """eBay and AliExpress write country names ("Germany", "Deutschland", "德国"): accept those,
    in any of the languages of ``_NAME_LOCALES``, and alpha-2 codes."""
    value = text.strip()
    if not value or (len(value) == 2 and value.isascii()):
        return normalise_country(value)
    if len(value) > 80:
        raise ValueError("country is longer than 80 characters")
    code = _country_names().get(_name_key(value))
    if code is None:
        raise ValueError(f"country {value!r} is not a known country name or alpha-2 code")
    return code


# Carriers ---------------------------------------------------------------------------------

_CARRIER_PATTERNS = (
    # Most specific first: "DHL Express" before "DHL", "Parcelforce" before "Royal Mail"...
    ("dhl-express", r"dhl[\s_-]*express|dhl[\s_-]*worldwide"),
    ("deutsche-post", r"deutsche[\s_-]*post|warenpost|warensendung|b(?:ü|ue)chersendung"),
    ("dhl", r"(?<![a-z0-9])dhl"),
    ("parcelforce", r"parcel[\s_-]*force"),
    ("royal-mail", r"royal[\s_-]*mail"),
    ("chronopost", r"chronopost"),
    ("colissimo", r"colissimo"),
    ("la-poste", r"la[\s_-]*poste|lettre[\s_-]*suivie"),
    ("correos", r"correos"),
    ("poste-italiane", r"poste[\s_-]*italiane|poste[\s_-]*delivery|postacelere"),
    ("brt", r"(?<![a-z0-9])brt(?![a-z0-9])|bartolini"),
    ("japan-post", r"japan[\s_-]*post|日本郵便|ゆうパック|yu[\s_-]*pack|click[\s_-]*post"),
    ("yamato", r"yamato|ヤマト|kuroneko|ta[\s_-]*q[\s_-]*bin"),
    ("sagawa", r"sagawa|佐川"),
    ("cainiao", r"cainiao|菜鸟|aliexpress[\s_-]*(?:standard|saver|premium|selection)"),
    ("china-post", r"china[\s_-]*post|中国邮政|中國郵政"),
    ("yanwen", r"yanwen|燕文"),
    ("4px", r"(?<![a-z0-9])4px|递四方"),
    ("yunexpress", r"yun[\s_-]*express|云途"),
    ("sf-express", r"sf[\s_-]*express|(?<![a-z0-9])s\.?f\.?(?![a-z0-9])|顺丰|順豐"),
    ("chunghwa-post", r"chunghwa[\s_-]*post|中華郵政|中华邮政"),
    ("hongkong-post", r"hong[\s_-]*kong[\s_-]*post|香港郵政|香港邮政"),
    ("canada-post", r"canada[\s_-]*post|postes[\s_-]*canada"),
    ("australia-post", r"australia[\s_-]*post|auspost"),
    ("postnl", r"post[\s_-]*nl"),
    ("bpost", r"(?<![a-z0-9])bpost"),
    ("austrian-post", r"austrian[\s_-]*post|(?:ö|oe)sterreichische[\s_-]*post|post\.at"),
    ("swiss-post", r"swiss[\s_-]*post|die[\s_-]*post|la[\s_-]*posta|postpac"),
    ("gls", r"(?<![a-z0-9])gls(?![a-z])"),
    ("dpd", r"(?<![a-z0-9])dpd(?![a-z])"),
    ("hermes", r"hermes|(?<![a-z0-9])evri(?![a-z])"),
    ("tnt", r"(?<![a-z0-9])tnt(?![a-z])"),
    ("ups", r"(?<![a-z0-9])ups(?![a-z])"),
    ("fedex", r"fed[\s_-]*ex"),
    ("usps", r"usps|priority[\s_-]*mail|first[\s_-]*class[\s_-]*(?:package|mail)|"
     r"ground[\s_-]*advantage|media[\s_-]*mail"),
    ("amazon-logistics", r"amazon[\s_-]*(?:logistics|shipping)|(?<![a-z0-9])amzn|amzl"),
)  # fmt: skip
_CARRIERS = tuple((carrier, re.compile(p, re.IGNORECASE)) for carrier, p in _CARRIER_PATTERNS)
CARRIERS = frozenset(carrier for carrier, _ in _CARRIER_PATTERNS)
"""The carrier ids an order's ``carrier`` holds when its export names a carrier we know."""


@lru_cache(maxsize=1024)
def carrier_of(text: str) -> str | None:
    """Our id of the carrier a carrier or shipping-service name belongs to ("DHL Paket" ->
    ``dhl``, "Royal Mail Tracked 48" -> ``royal-mail``, "Cainiao" -> ``cainiao``), or None.

    The patterns are tried in the order of ``_CARRIER_PATTERNS``, most specific first ("DHL
    Express" before "DHL"). A shop uses few services: the answer is kept (a bounded cache)."""
    if not text or text in CARRIERS:
        return text or None
    value = text.strip()[:200]
    return next((carrier for carrier, pattern in _CARRIERS if pattern.search(value)), None)


def _header_safe(label: str, value: str) -> str:
    """Refuse what could split or end a mail header: line breaks, NUL, other controls."""
    if _HEADER_BREAKERS.search(value):
        raise ValueError(f"{label} contains a line break or control character {value!r}")
    return value.strip()


_DISPUTE_ALIASES = {
    "item not received": DisputeKind.NOT_RECEIVED,
    "inr": DisputeKind.NOT_RECEIVED,
    "snad": DisputeKind.NOT_AS_DESCRIBED,
    "item not as described": DisputeKind.NOT_AS_DESCRIBED,
    "significantly not as described": DisputeKind.NOT_AS_DESCRIBED,
    "atoz": DisputeKind.A_TO_Z,
    "a to z claim": DisputeKind.A_TO_Z,
    "a z": DisputeKind.A_TO_Z,
    "returns": DisputeKind.RETURN,
    "return request": DisputeKind.RETURN,
    "refund request": DisputeKind.REFUND,
    "cancellation": DisputeKind.CANCEL,
    "cancellation request": DisputeKind.CANCEL,
    "case": DisputeKind.EBAY_CASE,
    "dispute": DisputeKind.ALIEXPRESS_DISPUTE,
}


def parse_dispute_kind(text: str) -> DisputeKind:
    """Our kinds, spelled with spaces, hyphens or underscores, or a common alias, any case."""
    key = " ".join(re.split(r"[\s_\-]+", text.strip().lower())).strip()
    kinds = {kind.value.replace("_", " "): kind for kind in DisputeKind}
    kind = kinds.get(key) or _DISPUTE_ALIASES.get(key)
    if kind is None:
        known = ", ".join(k.value for k in DisputeKind)
        raise ValueError(f"unknown dispute kind {text.strip()!r}; use one of {known}")
    return kind


# Reading files ------------------------------------------------------------------------------


@dataclass(slots=True)
class _Record:
    """One row: cells by lower-cased column name, the line it starts on, its raw text.

    Not frozen (a frozen dataclass pays for it on every row); nothing changes one."""

    line: int
    cells: dict[str, str]
    original: str | list[str]
    delimiter: str = ","
    quoted: bool = True

    @property
    def raw(self) -> str:
        """Only rejected rows need this, so a CSV row is re-serialised on demand."""
        if isinstance(self.original, str):
            return self.original
        return _joined(self.original, self.delimiter, self.quoted)


def _dialect(delimiter: str, quoted: bool) -> dict[str, Any]:
    """Amazon's flat files are never quoted: a leading '"' in a product name is just text."""
    if quoted:
        return {"delimiter": delimiter, "strict": True}
    return {"delimiter": delimiter, "quoting": csv.QUOTE_NONE, "quotechar": None}


_JSONL_SUFFIXES = frozenset({".jsonl", ".ndjson"})
_TABLE_SUFFIXES = {".csv": ",", ".txt": "\t", ".tsv": "\t"}
_DELIMITERS = (",", "\t", ";")
_HEADER_SEARCH_LINES = 30


def _check_suffix(path: Path) -> None:
    if path.suffix.lower() not in _JSONL_SUFFIXES | _TABLE_SUFFIXES.keys():
        raise FeedError(
            "unknown file type; name it .csv, .tsv, .txt (tab-separated), .jsonl or .ndjson",
            where=str(path),
        )


_BOM = b"\xef\xbb\xbf"
_BARE_CR = re.compile(r"(?<=\r)(?=[^\n])")
"""After a CR that is not followed by LF: a line ends there too, as the csv module reads it."""
_BARE_CR_BYTES = re.compile(rb"\r(?!\n)")


_CHUNK_BYTES = 1 << 15
_OTHER_BREAKS = re.compile("[\x0b\x0c\x1c-\x1e\x85\u2028\u2029]")
"""Where str.splitlines() breaks too, but neither the csv module nor JSONL does."""


class _Source:
    """UTF-8 lines (a BOM is dropped) over the byte stream whose position drives the progress bar.

    The file is read and decoded a chunk of whole lines at a time; a chunk that is not UTF-8 is
    gone through again line by line, so a byte that is not UTF-8 is reported at its own line
    and byte offset however far into the file it is, not where a chunk happened to start.
    """

    def __init__(self, path: Path, progress: bool) -> None:
        _check_suffix(path)
        try:
            self._binary = path.open("rb")
            size = path.stat().st_size
        except OSError as exc:
            raise FeedError(f"cannot read the file: {exc.strerror}", where=str(path)) from exc
        self.path = path
        shown = progress and sys.stderr.isatty()
        self._bar = tqdm(
            total=size, unit="B", unit_scale=True, desc=path.name, disable=not shown, leave=False
        )

    def lines(self, *, bare_cr: bool) -> Iterator[str]:
        """Decoded lines with their line ends.

        In delimited files a bare CR ends a line as well (as the csv module reads them); JSONL
        lines end at LF only, so nothing inside a JSON string (U+2028...) can split one.
        """
        return itertools.chain.from_iterable(self._chunks(bare_cr))

    def _chunks(self, bare_cr: bool) -> Iterator[Iterable[str]]:
        """The lines of each chunk of whole lines, split where the csv module's reader would
        (LF, CR LF, a bare CR) or, for JSONL, at LF only."""
        newline = "" if bare_cr else "\n"  # io.StringIO's, for the rare text with other breaks
        offset = number = 0
        while block := self._binary.read(_CHUNK_BYTES):
            if not block.endswith(b"\n"):
                block += self._binary.readline()  # to the end of its line
            start, offset = offset, offset + len(block)
            if start == 0 and block.startswith(_BOM):
                block, start = block[len(_BOM) :], len(_BOM)
            text = _decoded(block)
            if isinstance(text, UnicodeDecodeError):  # raises, naming the line
                lines = self._line_by_line(block, start, number, bare_cr)
                number += len(lines)
                yield lines
                continue
            number += text.count("\n") + (not text.endswith("\n"))
            carriage = "\r" in text
            if bare_cr and carriage:
                number += len(_BARE_CR.findall(text))
            if (bare_cr or not carriage) and not _OTHER_BREAKS.search(text):
                yield text.splitlines(keepends=True)
            else:
                yield io.StringIO(text, newline=newline)

    def _line_by_line(self, block: bytes, offset: int, number: int, bare_cr: bool) -> list[str]:
        """The chunk's lines, decoded one by one: the error names the line and the byte that
        are not UTF-8 (``number`` lines come before the chunk, which starts at ``offset``)."""
        lines: list[str] = []
        for raw in io.BytesIO(block):
            start, offset = offset, offset + len(raw)
            text = _decoded(raw)
            if isinstance(text, UnicodeDecodeError):
                breaks = len(_BARE_CR_BYTES.findall(raw, 0, text.start)) if bare_cr else 0
                raise self._not_utf8(number + breaks + 1, start, raw, text)
            pieces = _BARE_CR.split(text) if bare_cr and "\r" in text else [text]
            number += len(pieces)
            lines += pieces
        return lines

    def _not_utf8(self, line: int, start: int, raw: bytes, exc: UnicodeDecodeError) -> FeedError:
        bad = " ".join(f"0x{b:02X}" for b in raw[exc.start : exc.end])
        return FeedError(
            f"not UTF-8 text: {'byte' if exc.end - exc.start == 1 else 'bytes'} {bad} at byte "
            f"offset {start + exc.start} ({exc.reason}); save the file as UTF-8",
            where=f"{self.path}:{line}",
        )

    @property
    def shown(self) -> bool:
        return not self._bar.disable

    def tick(self) -> None:
        """The bar follows the bytes read: a chunk at a time, so most rows move nothing."""
        if not self._bar.disable and (read := self._binary.tell() - self._bar.n):
            self._bar.update(read)

    def close(self) -> None:
        self._bar.close()
        self._binary.close()


def _decoded(raw: bytes) -> str | UnicodeDecodeError:
    """The error is returned, not raised, so the FeedError made of it chains nothing misleading
    (its position counts from the start of the line)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return exc


def _first_lines(lines: Iterator[str]) -> list[str]:
    """Lines up to the first one with text, to sniff the delimiter from."""
    head: list[str] = []
    for line in lines:
        head.append(line)
        if line.strip(" \t\r\n,;") or len(head) >= _HEADER_SEARCH_LINES:
            break
    return head


class _Table:
    """A delimited file, read up to and including its header row."""

    def __init__(self, source: _Source, marker: str | None, quoted: bool = True) -> None:
        self.source = source
        lines = source.lines(bare_cr=True)
        head = _first_lines(lines)
        self.delimiter = _sniff(head[-1] if head else "", source.path)
        self.quoted = quoted
        self.reader = csv.reader(itertools.chain(head, lines), **_dialect(self.delimiter, quoted))
        self._last = 0
        header, self.header_line = self._find_header(marker)
        self.from_rejects = _is_rejects_header(header)
        self.header = [_unescaped(c) for c in header] if self.from_rejects else header
        self.columns = [name.strip().lower() for name in self.header]

    def _find_header(self, marker: str | None) -> tuple[list[str], int]:
        for line, cells in self.rows():
            if isinstance(cells, str):
                continue
            if marker is None or marker in (c.strip().lower() for c in cells):
                return cells, line
            if line >= _HEADER_SEARCH_LINES:
                break
        what = f"header row with a column {marker!r}" if marker else "header row"
        raise FeedError(
            f"no {what} found; is the file empty or in another format?", where=str(self.source.path)
        )

    def rows(self) -> Iterator[tuple[int, list[str] | str]]:
        """(first physical line, cells) per non-blank row; (line, reason) if unreadable."""
        reader = self.reader
        while True:
            try:
                for cells in reader:
                    start, self._last = self._last + 1, reader.line_num
                    if "".join(cells).strip():  # some cell is not blank
                        yield start, cells
                return
            except csv.Error as exc:
                start, self._last = self._last + 1, reader.line_num
                yield start, f"unreadable CSV at lines {start}-{self._last} ({exc}); a stray quote?"


def _sniff(line: str, path: Path) -> str:
    """The header line's most frequent delimiter; for .tsv, or when there is none, the default."""
    default = _TABLE_SUFFIXES[path.suffix.lower()]
    if path.suffix.lower() == ".tsv":
        return default
    counts = {d: line.count(d) for d in _DELIMITERS}
    best = max(_DELIMITERS, key=lambda d: counts[d])
    return best if counts[best] else default


def _table_records(source: _Source, layout: _Layout) -> Iterator[_Record | RejectedRow]:
    table = _Table(source, layout.header_marker, layout.quoted)
    columns = _canonical(table.columns, layout.aliases)
    where = f"{source.path}:{table.header_line}"
    if layout.refuse is not None and (reason := layout.refuse(columns)):
        raise FeedError(reason, where=where)
    missing = [name for name in layout.required if name not in columns]
    if missing:
        raise FeedError(f"missing required column(s): {', '.join(missing)}", where=where)
    width = len(columns)
    delimiter, quoted, from_rejects = table.delimiter, table.quoted, table.from_rejects
    tick = source.tick if source.shown else None
    for line, cells in table.rows():
        if tick is not None:
            tick()
        if isinstance(cells, str):
            yield RejectedRow(line, cells, "")
            continue
        if from_rejects:
            cells = [_unescaped(c) for c in cells]
        # A short row's missing cells are empty: the file has those columns. (A column named
        # twice holds its last cell, cells past the header are not read.)
        if len(cells) >= width:
            by_name = dict(zip(columns, cells, strict=False))
        else:
            by_name = dict(zip(columns, [*cells, *[""] * (width - len(cells))], strict=True))
        yield _Record(line, by_name, cells, delimiter, quoted)


def _canonical(columns: Sequence[str], aliases: Mapping[str, str]) -> list[str]:
    """The names the mapping reads; a column under its own name wins over an alias of it."""
    if not aliases:
        return list(columns)
    present = set(columns)
    return [
        name if (canonical := aliases.get(name)) is None or canonical in present else canonical
        for name in columns
    ]


def _jsonl_records(source: _Source) -> Iterator[_Record | RejectedRow]:
    for number, line in enumerate(source.lines(bare_cr=False), 1):
        source.tick()
        text = line.rstrip("\r\n")
        if text.strip():
            try:
                yield _Record(number, _json_cells(text), text)
            except ValueError as exc:
                yield RejectedRow(number, str(exc), text)


def _json_cells(text: str) -> dict[str, str]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON: {exc.msg} at column {exc.colno}") from None
    if not isinstance(value, dict):
        raise ValueError('a JSON line must be an object like {"order_id": ...}')
    return {str(key).strip().lower(): _json_text(key, item) for key, item in value.items()}


def _json_text(key: str, value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        raise ValueError(f"{key} must be text or a number, not {value!r}")
    if isinstance(value, int | float):
        return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return " | ".join(value)
    raise ValueError(f"{key} must be text, a number or a list of texts")


def _records(path: Path, layout: _Layout, progress: bool) -> Iterator[_Record | RejectedRow]:
    source = _Source(path, progress)
    try:
        if path.suffix.lower() in _JSONL_SUFFIXES:
            yield from _jsonl_records(source)
        else:
            yield from _table_records(source, layout)
    finally:
        source.close()


# Mapping rows to domain values --------------------------------------------------------------


Group = Sequence[_Record]


def _pick(group: Group, *names: str) -> str:
    """The first non-empty value of the first column that has one, across the group's rows."""
    for name in names:
        for record in group:
            value = record.cells.get(name)
            if value and (value := value.strip()):
                return value
    return ""


def _required(group: Group, name: str) -> str:
    value = _pick(group, name)
    if not value:
        raise ValueError(f"{name} is empty")
    return value


def _when(
    group: Group, name: str, parse: Callable[[str], datetime | None] = parse_instant
) -> datetime | None:
    try:
        return parse(_pick(group, name))
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from None


def _products(names: Iterable[str]) -> tuple[str, ...]:
    found = []
    for name in names:
        for part in name.split(" | "):
            if product := _header_safe("product", part):
                found.append(product)
    return tuple(found)


_MIDNIGHT = datetime.min.time()


def _check_sequence(*events: tuple[str, datetime | None]) -> None:
    """Ordered, shipped, delivered must not go back in time (a bare date may share a day)."""
    first, early = "", None
    for then, late in events:
        if late is None:
            continue
        if early is not None and late < early:
            same_day_date = late.date() == early.date() and late.time() == _MIDNIGHT
            if not same_day_date:
                raise ValueError(f"{then} {late.isoformat()} is before {first} {early.isoformat()}")
        first, early = then, late


def _order(
    *,
    order_id: str,
    marketplace: str,
    email: str,
    name: str,
    products: Iterable[str],
    locale: str = "",
    country: str | None = None,
    ordered_at: datetime | None = None,
    shipped_at: datetime | None = None,
    delivered_at: datetime | None = None,
    review_url: str = "",
    timezone: str | None = None,
    site: str = "",
    carrier: str = "",
    tracking_number: str = "",
    shipping_service: str = "",
    expected_delivery_at: datetime | None = None,
) -> Order:
    _check_sequence(
        ("ordered_at", ordered_at), ("shipped_at", shipped_at), ("delivered_at", delivered_at)
    )
    if marketplace not in MARKETPLACES:
        raise ValueError(
            f"unknown marketplace {marketplace!r}; use one of {', '.join(sorted(MARKETPLACES))}"
        )
    try:
        address = normalise_email(email)
    except ValueError as exc:
        raise ValueError(f"buyer_email: {exc}") from None
    return Order(
        order_id=_header_safe("order_id", order_id),
        marketplace=marketplace,
        buyer_email=address,
        buyer_name=_header_safe("buyer_name", name),
        products=_products(products),
        locale=normalise_locale(locale),
        country=country,
        ordered_at=ordered_at,
        shipped_at=shipped_at,
        delivered_at=delivered_at,
        review_url=_review_url(review_url),
        timezone=timezone,
        site=_site(site),
        carrier=_carrier(carrier, shipping_service),
        tracking_number=_tracking_number(tracking_number),
        shipping_service=_shipping_service(shipping_service),
        expected_delivery_at=expected_delivery_at,
    )


SHIPPING_TEXT_MAX = 64
"""The longest carrier, tracking number, shipping service or site kept (the columns' size)."""


def _carrier(text: str, service: str) -> str | None:
    """Our carrier id where the name (or else the shipping service) tells it; else the name as
    written, so an unknown carrier is still shown and a universal tracker can be offered."""
    name = _header_safe("carrier", text)
    if len(name) > SHIPPING_TEXT_MAX:
        raise ValueError(f"carrier is longer than {SHIPPING_TEXT_MAX} characters")
    if name:
        return carrier_of(name) or name
    return carrier_of(_header_safe("shipping_service", service))


_TRACKING = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]*")


def _tracking_number(text: str) -> str | None:
    """The first tracking number of a list ("A1, B2": a parcel per item), spaces removed
    ("1Z 999 AA1" is printed in groups). Only letters, digits and ``._/-``: it goes into links."""
    first = _header_safe("tracking_number", text).replace(";", ",").split(",")[0]
    value = "".join(first.split())
    if not value:
        return None
    if len(value) > SHIPPING_TEXT_MAX:
        raise ValueError(f"tracking number is longer than {SHIPPING_TEXT_MAX} characters")
    if not _TRACKING.fullmatch(value):
        raise ValueError(
            f"tracking number {value!r} has characters other than letters, digits and ._/-"
        )
    return value


def _shipping_service(text: str) -> str | None:
    """Shown to the buyer only as a hint: a longer name is shortened, not a reason to lose the
    order."""
    value = _header_safe("shipping_service", text)
    if len(value) > SHIPPING_TEXT_MAX:
        value = value[: SHIPPING_TEXT_MAX - 1].rstrip() + "\u2026"
    return value or None


_SITE = re.compile(r"(?:[a-z0-9](?:[a-z0-9-]*[a-z0-9])?\.)+[a-z]{2,}")


def _site(text: str) -> str | None:
    """A marketplace site as a bare host name: ``https://www.ebay.de/`` -> ``ebay.de``."""
    value = text.strip().lower()
    if not value:
        return None
    value = value.removeprefix("https://").removeprefix("http://").split("/", 1)[0]
    value = value.removeprefix("www.")
    if len(value) > SHIPPING_TEXT_MAX or not _SITE.fullmatch(value):
        raise ValueError(f"site {text.strip()!r} is not a host name like ebay.de")
    return value


_HTTP_URL = re.compile(r"https?://[^\s<>\"]+")


def _review_url(text: str) -> str | None:
    value = text.strip()
    if not value:
        return None
    if not _HTTP_URL.fullmatch(value):
        raise ValueError(f"review_url {value!r} is not an http(s) URL without spaces")
    return value


def _zone(text: str) -> str | None:
    if not text:
        return None
    return _known_zone(text)


@lru_cache(maxsize=1024)
def _known_zone(text: str) -> str:
    """The name, once ZoneInfo knows it (kept in a bounded cache; a refusal is not kept)."""
    try:
        ZoneInfo(text)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"unknown time zone {text!r}; use an IANA name like Europe/Berlin"
        ) from None
    return text


def _value(cells: Mapping[str, str], name: str) -> str:
    """What ``_pick`` gives for a group of one record: the stripped value, or empty."""
    value = cells.get(name)
    return value.strip() if value else ""


def _required_cell(cells: Mapping[str, str], name: str) -> str:
    value = cells.get(name)
    if value and (value := value.strip()):
        return value
    raise ValueError(f"{name} is empty")


def _cell_time(cells: Mapping[str, str], name: str) -> datetime | None:
    """What ``_when`` gives for a group of one record."""
    value = cells.get(name)
    if not value:
        return None
    try:
        return parse_instant(value)
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from None


def _generic_order(group: Group) -> Order:
    """One row per order: its cells are read directly."""
    [record] = group
    cells = record.cells
    return _order(
        order_id=_required_cell(cells, "order_id"),
        marketplace=_required_cell(cells, "marketplace").lower(),
        email=_required_cell(cells, "buyer_email"),
        name=_value(cells, "buyer_name"),
        products=[_value(cells, "product") or _value(cells, "products")],
        locale=_value(cells, "locale"),
        country=normalise_country(_value(cells, "country")),
        ordered_at=_cell_time(cells, "ordered_at"),
        shipped_at=_cell_time(cells, "shipped_at"),
        delivered_at=_cell_time(cells, "delivered_at"),
        review_url=_value(cells, "review_url"),
        timezone=_zone(_value(cells, "timezone")),
        site=_value(cells, "site"),
        carrier=_value(cells, "carrier"),
        tracking_number=_value(cells, "tracking_number"),
        shipping_service=_value(cells, "shipping_service"),
        expected_delivery_at=_cell_time(cells, "expected_delivery_at"),
    )


_AMAZON_LOCALES = {
    "amazon.com": "en-US",
    "amazon.ca": "en-CA",
    "amazon.co.uk": "en-GB",
    "amazon.de": "de-DE",
    "amazon.fr": "fr-FR",
    "amazon.es": "es-ES",
    "amazon.it": "it-IT",
    "amazon.nl": "nl-NL",
    "amazon.se": "sv-SE",
    "amazon.pl": "pl-PL",
    "amazon.com.tr": "tr-TR",
    "amazon.co.jp": "ja-JP",
    "amazon.com.mx": "es-MX",
    "amazon.com.au": "en-AU",
}


def _not_cancelled(group: Group, column: str, cancelled: Callable[[str], bool]) -> None:
    value = _pick(group, column)
    if value and cancelled(value):
        raise ValueError(f"the order is cancelled ({column} {value!r}); not imported")


def _amazon_order(group: Group) -> Order:
    """The Order Report (``order-id``, read as ``amazon-order-id``) and the Amazon Fulfilled
    Shipments report: a row per item (per shipped item), consecutive rows of an order merged."""
    _not_cancelled(group, "order-status", lambda status: status.lower() == "cancelled")
    channel = _pick(group, "sales-channel")
    return _order(
        order_id=_required(group, "amazon-order-id"),
        marketplace="amazon",
        email=_required(group, "buyer-email"),
        name=_pick(group, "buyer-name", "recipient-name"),
        products=[r.cells.get("product-name", "") for r in group],
        locale=_AMAZON_LOCALES.get(channel.lower(), ""),
        country=normalise_country(_pick(group, "ship-country")),
        ordered_at=_when(group, "purchase-date"),
        shipped_at=_when(group, "shipment-date"),
        delivered_at=_when(group, "delivery-date"),
        site=_amazon_site(channel),
        carrier=_pick(group, "carrier"),
        tracking_number=_pick(group, "tracking-number"),
        shipping_service=_pick(group, "ship-service-level"),
        expected_delivery_at=_first_time(group, "estimated-arrival-date", "latest-delivery-date"),
    )


def _amazon_site(channel: str) -> str:
    """``Amazon.de`` -> ``amazon.de``; ``Non-Amazon`` (multi-channel orders) is no site."""
    value = channel.strip().lower()
    return value if value.startswith("amazon.") else ""


def _first_time(
    group: Group, *names: str, parse: Callable[[str], datetime | None] = parse_instant
) -> datetime | None:
    """The time in the first of these columns that has one, in any row of the order."""
    for name in names:
        if when := _when(group, name, parse):
            return when
    return None


def _amazon_all_orders(columns: Sequence[str]) -> str | None:
    if "buyer-email" in columns or "amazon-order-id" not in columns:
        return None
    return (
        "this is Amazon's All Orders report, which has no buyer e-mail address, so no order of "
        "it could be written to; download the Order Report instead (Seller Central > Orders > "
        "Order Reports), or for orders Amazon ships, the Amazon Fulfilled Shipments report "
        "(Reports > Fulfillment > Sales > Amazon Fulfilled Shipments)"
    )


def _shopify_order(group: Group) -> Order:
    _not_cancelled(group, "cancelled at", lambda _: True)
    return _order(
        order_id=_required(group, "name"),
        marketplace="shop",
        email=_required(group, "email"),
        name=_pick(group, "shipping name", "billing name"),
        products=[r.cells.get("lineitem name", "") for r in group],
        country=normalise_country(_pick(group, "shipping country", "billing country")),
        ordered_at=_when(group, "created at"),
        shipped_at=_when(group, "fulfilled at"),
        shipping_service=_pick(group, "shipping method"),
    )


def _ebay_order(group: Group) -> Order:
    """A multi-item order is a summary row (buyer, totals, no item) and a row per item, all
    with its Order Number: they are merged, every item kept, each field from the first row
    that has it (tracking may be on an item's row)."""
    return _order(
        order_id=_required(group, "order number"),
        marketplace="ebay",
        email=_required(group, "buyer email"),
        name=_pick(group, "buyer name", "ship to name"),
        products=[r.cells.get("item title", "") for r in group],
        country=_country_by_name(_pick(group, "ship to country", "buyer country")),
        ordered_at=_when(group, "sale date", parse_ebay_date),
        shipped_at=_when(group, "shipped on date", parse_ebay_date),
        site=_ebay_site(_pick(group, "ebay site")),
        tracking_number=_pick(group, "tracking number"),
        shipping_service=_pick(group, "shipping service"),
        expected_delivery_at=_when(group, "maximum estimated delivery date", parse_ebay_date),
    )


_EBAY_MARKETPLACES = {
    "EBAY_US": "ebay.com", "EBAY_GB": "ebay.co.uk", "EBAY_DE": "ebay.de", "EBAY_AT": "ebay.at",
    "EBAY_CH": "ebay.ch", "EBAY_FR": "ebay.fr", "EBAY_IT": "ebay.it", "EBAY_ES": "ebay.es",
    "EBAY_NL": "ebay.nl", "EBAY_BE": "ebay.be", "EBAY_IE": "ebay.ie", "EBAY_PL": "ebay.pl",
    "EBAY_AU": "ebay.com.au", "EBAY_CA": "ebay.ca", "EBAY_HK": "ebay.com.hk",
}  # fmt: skip
"""eBay's marketplace ids (its order reports' ``channelID``) and their sites."""


def _ebay_site(text: str) -> str:
    """A site column is not in every report and its values are not documented: a host name
    (``ebay.de``) or a marketplace id (``EBAY_DE``) is taken, anything else is left out rather
    than refusing the order."""
    value = text.strip()
    if value.upper() in _EBAY_MARKETPLACES:
        return _EBAY_MARKETPLACES[value.upper()]
    host = value.lower().removeprefix("https://").removeprefix("www.").split("/")[0]
    return host if host.startswith("ebay.") and _SITE.fullmatch(host) else ""


def _ebay_footer(record: _Record) -> bool:
    """eBay ends its report with lines like "12 record(s) downloaded" and "Seller ID: x"."""
    return (
        not record.cells.get("order number", "").strip()
        and sum(bool(v.strip()) for v in record.cells.values()) <= 1
    )


_ALIEXPRESS_DATE = re.compile(
    r"(\d{4})[/.-](\d{1,2})[/.-](\d{1,2})(?:[ T](\d{1,2}):(\d{2})(?::(\d{2}))?)?"
)


def parse_aliexpress_date(text: str) -> datetime | None:
    """``2026-03-03 14:05:11`` or ``2026/03/03 14:05`` (as UTC: the export gives no zone), or
    ISO 8601 with an offset."""
    value = text.strip()
    match = _ALIEXPRESS_DATE.fullmatch(value)
    if match is None:
        return parse_instant(value)
    year, month, day, hour, minute, second = (int(part or 0) for part in match.groups())
    try:
        return datetime(year, month, day, hour, minute, second, tzinfo=UTC)
    except ValueError:
        raise ValueError(f"{value!r} is not a valid date") from None


_ALIEXPRESS_CLOSED = frozenset({"closed", "order closed", "cancelled", "交易关闭", "订单关闭"})


def _aliexpress_order(group: Group) -> Order:
    _not_cancelled(group, "order status", lambda status: status.lower() in _ALIEXPRESS_CLOSED)
    return _order(
        order_id=_required(group, "order id"),
        marketplace="aliexpress",
        email=_required(group, "buyer email"),
        name=_pick(group, "buyer name", "receiver name"),
        products=[r.cells.get("product name", "") for r in group],
        country=_country_by_name(_pick(group, "country")),
        ordered_at=_when(group, "order time", parse_aliexpress_date),
        shipped_at=_when(group, "shipping time", parse_aliexpress_date),
        site="aliexpress.com",
        tracking_number=_pick(group, "tracking number"),
        shipping_service=_pick(group, "logistics service"),
    )


_ALIEXPRESS_COLUMNS = {
    "order no.": "order id",
    "order number": "order id",
    "订单号": "order id",
    "订单编号": "order id",
    "order status": "order status",
    "订单状态": "order status",
    "buyer email(if any)": "buyer email",
    "buyer email (if any)": "buyer email",
    "buyer e-mail": "buyer email",
    "买家邮箱": "buyer email",
    "买家名称": "buyer name",
    "买家姓名": "buyer name",
    "buyer": "buyer name",
    "收货人": "receiver name",
    "收货人姓名": "receiver name",
    "country/region": "country",
    "收货国家": "country",
    "国家": "country",
    "product title": "product name",
    "商品名称": "product name",
    "产品名称": "product name",
    "order date": "order time",
    "下单时间": "order time",
    "订单创建时间": "order time",
    "发货时间": "shipping time",
    "delivery time": "shipping time",
    "物流单号": "tracking number",
    "运单号": "tracking number",
    "logistics number": "tracking number",
    "物流服务": "logistics service",
    "物流方式": "logistics service",
    "shipping method": "logistics service",
}
"""AliExpress's other spellings of the columns, English and Chinese (guessed: see the docs)."""


@dataclass(frozen=True, slots=True)
class _Layout:
    """How one kind of file is read: its required columns and how rows become a value."""

    required: tuple[str, ...]
    build: Callable[[Group], Any]
    group_by: str | None = None
    header_marker: str | None = None
    skip: Callable[[_Record], bool] | None = None
    quoted: bool = True
    fields: Mapping[str, tuple[str, ...]] | None = None
    """Orders: the optional fields and their columns; a field whose columns a file lacks is
    left as stored when the order is imported again."""
    updated: str | None = None
    """Orders: the column with the feed's own last-updated time of the order, if any."""
    aliases: Mapping[str, str] = dataclasses.field(default_factory=dict)
    """Other names of a column (lower case) -> the name the mapping reads, where a report
    spells it otherwise (Amazon's Order Report ``order-id``; AliExpress in Chinese)."""
    refuse: Callable[[Sequence[str]], str | None] | None = None
    """A file this layout must not take, told by its columns: why, and what to export instead."""
    field_sets: dict[Iterable[str], frozenset[str]] = dataclasses.field(
        default_factory=dict, compare=False, repr=False
    )
    """Orders: the fields of each set of columns seen (see ``_fields_of``)."""


_KEY_FIELDS = frozenset({"order_id", "marketplace", "buyer_email"})
_GENERIC_FIELDS = {
    "buyer_name": ("buyer_name",),
    "products": ("product", "products"),
    "locale": ("locale",),
    "country": ("country",),
    "ordered_at": ("ordered_at",),
    "shipped_at": ("shipped_at",),
    "delivered_at": ("delivered_at",),
    "review_url": ("review_url",),
    "timezone": ("timezone",),
    "site": ("site",),
    "carrier": ("carrier",),
    "tracking_number": ("tracking_number",),
    "shipping_service": ("shipping_service",),
    "expected_delivery_at": ("expected_delivery_at",),
}
_AMAZON_FIELDS = {
    "buyer_name": ("buyer-name", "recipient-name"),
    "products": ("product-name",),
    "locale": ("sales-channel",),
    "country": ("ship-country",),
    "ordered_at": ("purchase-date",),
    "shipped_at": ("shipment-date",),
    "delivered_at": ("delivery-date",),
    "site": ("sales-channel",),
    "carrier": ("carrier",),
    "tracking_number": ("tracking-number",),
    "shipping_service": ("ship-service-level",),
    "expected_delivery_at": ("estimated-arrival-date", "latest-delivery-date"),
}
_SHOPIFY_FIELDS = {
    "buyer_name": ("shipping name", "billing name"),
    "products": ("lineitem name",),
    "country": ("shipping country", "billing country"),
    "ordered_at": ("created at",),
    "shipped_at": ("fulfilled at",),
    "shipping_service": ("shipping method",),
}
_EBAY_FIELDS = {
    "buyer_name": ("buyer name", "ship to name"),
    "products": ("item title",),
    "country": ("ship to country", "buyer country"),
    "ordered_at": ("sale date",),
    "shipped_at": ("shipped on date",),
    "site": ("ebay site",),
    "tracking_number": ("tracking number",),
    "shipping_service": ("shipping service",),
    "expected_delivery_at": ("maximum estimated delivery date",),
}
_ALIEXPRESS_FIELDS = {
    "buyer_name": ("buyer name", "receiver name"),
    "products": ("product name",),
    "country": ("country",),
    "ordered_at": ("order time",),
    "shipped_at": ("shipping time",),
    "site": ("order id",),  # always aliexpress.com
    "tracking_number": ("tracking number",),
    "shipping_service": ("logistics service",),
}

_ORDER_LAYOUTS = {
    Format.GENERIC: _Layout(
        ("order_id", "marketplace", "buyer_email"),
        _generic_order,
        fields=_GENERIC_FIELDS,
        updated="updated_at",
    ),
    Format.AMAZON: _Layout(
        ("amazon-order-id", "buyer-email"),
        _amazon_order,
        "amazon-order-id",
        quoted=False,
        fields=_AMAZON_FIELDS,
        updated="last-updated-date",
        aliases={"order-id": "amazon-order-id"},
        refuse=_amazon_all_orders,
    ),
    Format.SHOPIFY: _Layout(("name", "email"), _shopify_order, "name", fields=_SHOPIFY_FIELDS),
    Format.EBAY: _Layout(
        ("order number", "buyer email"),
        _ebay_order,
        "order number",
        "order number",
        _ebay_footer,
        fields=_EBAY_FIELDS,
        aliases={
            "min estimated delivery date": "minimum estimated delivery date",
            "max estimated delivery date": "maximum estimated delivery date",
            "site": "ebay site",
        },
    ),
    Format.ALIEXPRESS: _Layout(
        ("order id", "buyer email"),
        _aliexpress_order,
        "order id",
        fields=_ALIEXPRESS_FIELDS,
        aliases=_ALIEXPRESS_COLUMNS,
    ),
}


def _order_row(group: Group, layout: _Layout, order: Order) -> OrderRow:
    if len(group) == 1:  # a row per order: the file's columns (a JSONL object's keys)
        cells = group[0].cells
        fields = _with_carrier(_fields_of(layout, tuple(cells)), order)
        updated = _cell_time(cells, layout.updated) if layout.updated else None
        return OrderRow(order, fields, updated)
    fields = _fields_of(layout, frozenset(name for record in group for name in record.cells))
    stamps = [_when([record], layout.updated) for record in group] if layout.updated else []
    updated = max((s for s in stamps if s is not None), default=None)
    return OrderRow(order, _with_carrier(fields, order), updated)


def _with_carrier(fields: frozenset[str], order: Order) -> frozenset[str]:
    """A carrier read from the shipping service counts as the file's; a service that names
    none ("Standard") says nothing of the carrier, so it never blanks one a shipments file
    gave. (A carrier column, even empty, is the file's like any other.)"""
    if order.carrier is None or "carrier" in fields:
        return fields
    return fields | {"carrier"}


_FIELD_SETS = 256


def _fields_of(layout: _Layout, columns: Iterable[str]) -> frozenset[str]:
    """The order fields these columns give; kept per layout, as a file's rows share their
    columns (a bounded cache: JSONL objects may each have their own keys)."""
    known = layout.field_sets.get(columns)
    if known is not None:
        return known
    assert layout.fields is not None
    present = frozenset(columns)
    fields = _KEY_FIELDS.union(
        field for field, names in layout.fields.items() if not present.isdisjoint(names)
    )
    if len(layout.field_sets) >= _FIELD_SETS:
        layout.field_sets.clear()
    layout.field_sets[columns] = fields
    return fields


def _grouped(
    records: Iterable[_Record | RejectedRow], column: str
) -> Iterator[list[_Record] | RejectedRow]:
    """Consecutive rows with the same key are one order (exports write a row per line item)."""
    group: list[_Record] = []
    for record in records:
        if isinstance(record, RejectedRow):
            yield record
            continue
        key = record.cells.get(column, "").strip()
        if group and not (key and key == group[0].cells.get(column, "").strip()):
            yield group
            group = []
        group.append(record)
    if group:
        yield group


Check = Callable[[Any], str | None]
"""A check the caller adds (e.g. "is the order known?"): a reason rejects the row."""


def _read(path: Path, layout: _Layout, progress: bool, check: Check | None = None) -> Iterator[Any]:
    records: Iterable[_Record | RejectedRow] = _records(path, layout, progress)
    if layout.skip is not None:
        skip = layout.skip
        records = (r for r in records if isinstance(r, RejectedRow) or not skip(r))
    groups: Iterable[_Record | list[_Record] | RejectedRow] = records
    if layout.group_by is not None:
        groups = _grouped(records, layout.group_by)
    for item in groups:
        if isinstance(item, RejectedRow):
            yield item
            continue
        group = [item] if isinstance(item, _Record) else item
        try:
            value = layout.build(group)
            if layout.fields is not None:
                value = _order_row(group, layout, value)
            reason = check(value) if check is not None else None
        except ValueError as exc:
            reason = str(exc)
        if reason is None:
            yield value
        else:
            raw = "\n".join(r.raw for r in group)
            cells = tuple(tuple(r.original) for r in group if not isinstance(r.original, str))
            yield RejectedRow(group[0].line, reason, raw, cells)


def read_order_rows(
    path: Path, fmt: Format = Format.GENERIC, *, progress: bool = False
) -> Iterator[OrderRow | RejectedRow]:
    """Orders with which fields the file has and the feed's own last-updated time, for the
    store to decide whether a row is newer than what it holds; FeedError if unreadable."""
    return _read(path, _ORDER_LAYOUTS[Format(fmt)], progress)


def read_orders(
    path: Path, fmt: Format = Format.GENERIC, *, progress: bool = False
) -> Iterator[Order | RejectedRow]:
    """Orders from a generic or marketplace export; FeedError (when iterated) if unreadable."""
    rows = read_order_rows(path, fmt, progress=progress)
    return (row.order if isinstance(row, OrderRow) else row for row in rows)


def _dispute(group: Group) -> Dispute:
    opened, closed = _when(group, "opened_at"), _when(group, "closed_at")
    if opened is None:
        raise ValueError("opened_at is empty")
    _check_sequence(("opened_at", opened), ("closed_at", closed))
    return Dispute(
        order_id=_header_safe("order_id", _required(group, "order_id")),
        kind=parse_dispute_kind(_required(group, "kind")),
        opened_at=opened,
        closed_at=closed,
    )


def _review(group: Group) -> Review:
    rating_text = _required(group, "rating")
    if not re.fullmatch(r"\d+", rating_text) or not 1 <= int(rating_text) <= 5:
        raise ValueError(f"rating {rating_text!r} is not a whole number from 1 to 5")
    reviewed = _when(group, "reviewed_at")
    if reviewed is None:
        raise ValueError("reviewed_at is empty")
    return Review(
        order_id=_header_safe("order_id", _required(group, "order_id")),
        rating=int(rating_text),
        reviewed_at=reviewed,
        source=_pick(group, "source") or "import",
    )


_DISPUTES = _Layout(("order_id", "kind", "opened_at"), _dispute)
_REVIEWS = _Layout(("order_id", "rating", "reviewed_at"), _review)


def read_disputes(
    path: Path, *, progress: bool = False, check: Check | None = None
) -> Iterator[Dispute | RejectedRow]:
    """Disputes (``order_id, kind, opened_at, closed_at``); kind aliases such as "INR" accepted."""
    return _read(path, _DISPUTES, progress, check)


def read_reviews(
    path: Path, *, progress: bool = False, check: Check | None = None
) -> Iterator[Review | RejectedRow]:
    """Reviews (``order_id, rating, reviewed_at`` and optional ``source``)."""
    return _read(path, _REVIEWS, progress, check)


def read_cells(
    path: Path,
    required: Sequence[str],
    build: Callable[[Mapping[str, str]], Any],
    *,
    progress: bool = False,
    check: Check | None = None,
) -> Iterator[Any]:
    """Another kind of file (``worker import shipments``), read as the feeds are: CSV, TSV
    or JSONL, one row per value; ``build`` gets a row's cells by lower-cased column name
    (only the columns the file has) and raises ValueError to reject it."""
    return _read(
        path, _Layout(tuple(required), lambda group: build(group[0].cells)), progress, check
    )


# Rejects ------------------------------------------------------------------------------------


_LINE_BREAKS = frozenset("\r\n\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029")
"""Every character str.splitlines() breaks at: a field holding one is quoted."""
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_ESCAPE = "'"


def _neutral(value: str) -> str:
    """Spreadsheets run a cell that starts with = + - @ as a formula (OWASP "CSV injection"):
    a leading ' makes it text. A value that starts with ' gets one more, so reading the rejects
    file back removes exactly one."""
    return _ESCAPE + value if value.startswith((*_FORMULA_START, _ESCAPE)) else value


def _unescaped(value: str) -> str:
    """The value :func:`_neutral` was given (a ' typed by hand before other text is kept)."""
    if value[:1] == _ESCAPE and value[1:2] and value[1] in (*_FORMULA_START, _ESCAPE):
        return value[1:]
    return value


def _is_rejects_header(header: Sequence[str]) -> bool:
    return bool(header) and header[-1].strip().lower() == "error"


def _cell(value: str, delimiter: str, quoted: bool) -> str:
    if not quoted:  # Amazon's flat files cannot quote; only an error text could hold these
        return value.replace(delimiter, " ").replace("\r", " ").replace("\n", " ")
    if '"' in value or delimiter in value or not _LINE_BREAKS.isdisjoint(value):
        return '"' + value.replace('"', '""') + '"'
    return value


def _joined(cells: Iterable[str], delimiter: str, quoted: bool) -> str:
    """One row, quoted wherever a reader could split it (a bare CR, U+2028...)."""
    return delimiter.join(_cell(value, delimiter, quoted) for value in cells)


def _json_line(value: dict[str, Any]) -> str:
    """JSON allows U+2028, U+2029 and U+0085 unescaped inside strings, but readers that split
    on every Unicode line break would cut the object in two."""
    text = json.dumps(value, ensure_ascii=False)
    for char in ("\u2028", "\u2029", "\x85"):
        text = text.replace(char, f"\\u{ord(char):04x}")
    return text + "\n"


class RejectsFile:
    """Rejected rows beside the input (``orders.csv`` -> ``orders.rejects.csv``), ready to fix.

    Same dialect as the input, header first plus a trailing ``error`` column (for JSONL, each
    original object plus ``_error`` and ``_line``), so the fixed file can be imported as is.
    Fields that could split a row are quoted and fields a spreadsheet would run as a formula get
    a leading ``'``, which reading a rejects file back removes. Written beside the target and
    moved into place by :meth:`close`, only when there is a reject; :meth:`discard` (or leaving
    the ``with`` block on an exception) keeps the previous rejects file. ``header`` is the
    input's header line; when None it is read from ``source`` (``fmt`` tells where eBay's
    header starts).
    """

    def __init__(
        self, source: Path, header: str | None = None, *, fmt: Format = Format.GENERIC
    ) -> None:
        self.source = source
        self.path = source.with_name(f"{source.stem}.rejects{source.suffix}")
        self._partial = self.path.with_name(f"{self.path.name}.partial")
        self.count = 0
        self._header = header
        self._layout = _ORDER_LAYOUTS[Format(fmt)]
        self._out: IO[str] | None = None
        self._dialect: dict[str, Any] = {}
        self._delimiter = ","
        self._width = 0

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.discard()

    def close(self) -> None:
        """Put the rejects file in place (if there was a reject), replacing an older one."""
        if self._out is not None:
            self._out.close()
            self._out = None
            os.replace(self._partial, self.path)

    def discard(self) -> None:
        """The import failed as a whole: leave the previous rejects file as it was."""
        if self._out is not None:
            self._out.close()
            self._out = None
            self._partial.unlink(missing_ok=True)

    @property
    def _jsonl(self) -> bool:
        return self.source.suffix.lower() in _JSONL_SUFFIXES

    def add(self, row: RejectedRow) -> None:
        out = self._out or self._open()
        self.count += 1
        if self._jsonl:
            for line in row.raw.split("\n"):
                out.write(_json_line(_json_reject(line, row)))
            return
        error = f"line {row.line}: {row.reason}"
        for cells in row.cells or self._rows_of(row.raw):
            padding = [""] * (self._width - len(cells))
            self._write(out, [*cells, *padding, error])

    def _write(self, out: IO[str], cells: Sequence[str]) -> None:
        neutral = (_neutral(value) for value in cells)
        out.write(_joined(neutral, self._delimiter, self._layout.quoted) + "\n")

    def _rows_of(self, raw: str) -> list[Sequence[str]]:
        try:
            return list(csv.reader(io.StringIO(raw, newline=""), **self._dialect)) or [[]]
        except csv.Error:  # written in another dialect (wrong ``fmt``): keep it whole
            return [[raw]]

    def _open(self) -> IO[str]:
        header, delimiter = (None, ",") if self._jsonl else self._header_cells()
        try:
            out = self._partial.open("w", encoding="utf-8", newline="")
        except OSError as exc:
            raise FeedError(
                f"cannot write the rejects file: {exc.strerror}", where=str(self.path)
            ) from exc
        self._out = out
        if header is not None:
            self._dialect = _dialect(delimiter, self._layout.quoted)
            self._delimiter = delimiter
            self._write(out, [*header, "error"])
            self._width = len(header)
        return out

    def _header_cells(self) -> tuple[list[str], str]:
        if self._header is not None:
            delimiter = _sniff(self._header, self.source)
            header = csv.reader([self._header], **_dialect(delimiter, self._layout.quoted))
            return next(header, []), delimiter
        source = _Source(self.source, progress=False)
        try:
            table = _Table(source, self._layout.header_marker, self._layout.quoted)
            return table.header, table.delimiter
        finally:
            source.close()


def _json_reject(line: str, row: RejectedRow) -> dict[str, Any]:
    try:
        original = json.loads(line)
    except ValueError:
        original = None
    base = original if isinstance(original, dict) else {"_raw": line}
    return {**base, "_error": row.reason, "_line": row.line}
