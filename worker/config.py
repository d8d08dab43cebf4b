"""Settings, validated once at start-up.

Read from ``config/worker.yaml`` (or ``--config``/``WORKER_CONFIG``); every leaf setting can be
overridden by an environment variable named ``WORKER_`` plus its path in upper case joined by
``_`` (``smtp.host`` -> ``WORKER_SMTP_HOST``, ``from`` -> ``WORKER_FROM``). Secrets
(``smtp.password``) are accepted from the environment only; the password of a mailbox named
under ``mailboxes`` comes from ``WORKER_MAILBOXES_<NAME>_PASSWORD`` (``de-shop`` ->
``WORKER_MAILBOXES_DE_SHOP_PASSWORD``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from datetime import timedelta
from email.headerregistry import Address
from email.utils import parseaddr
from enum import StrEnum
from functools import cache
from pathlib import Path
from typing import Any, Literal

import yaml
from babel import Locale
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from worker import tracking
from worker.delivery import (
    DEFAULT_CROSS_BORDER,
    DEFAULT_DOMESTIC,
    DEFAULT_REGIONS,
    DEFAULT_SAME_REGION,
    TransitTable,
    carrier_key,
)
from worker.errors import ConfigError
from worker.language import normalise_locale

DEFAULT_CONFIG_PATH = Path("config/worker.yaml")
SECRETS = frozenset({("smtp", "password"), ("imap", "password"), ("bounces", "secret")})
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})
_MAILBOX_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
_DURATION = re.compile(r"^\s*(?:(\d+)d)?\s*(?:(\d+)h)?\s*(?:(\d+)m)?\s*(?:(\d+)s)?\s*$")


def parse_duration(text: str) -> timedelta:
    """``7d``, ``12h``, ``1d12h``, ``90m``, ``30s`` -> timedelta."""
    match = _DURATION.match(text)
    if not text.strip() or match is None:
        raise ValueError(f"{text!r} is not a duration like 7d, 12h, 1d12h or 90m")
    days, hours, minutes, seconds = (int(g or 0) for g in match.groups())
    return timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)


def _duration_text(value: Any) -> Any:
    """Durations may be written ``7d`` (or ``0``) in YAML and the environment."""
    if isinstance(value, str):
        return timedelta(0) if value.strip() == "0" else parse_duration(value)
    return value


def _comma_list(value: Any) -> Any:
    """Lists may be written ``a, b`` in the environment."""
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


class TlsMode(StrEnum):
    NONE = "none"
    STARTTLS = "starttls"
    IMPLICIT = "implicit"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


def _no_crlf(value: str) -> str:
    if "\r" in value or "\n" in value:
        raise ValueError("must not contain a line break (it would reach a mail header)")
    return value


class SmtpSettings(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(8025, ge=1, le=65535)
    tls: TlsMode = TlsMode.NONE
    username: str | None = None
    password: str | None = None
    timeout_s: float = Field(30.0, gt=0, description="Per SMTP command.")
    message_deadline_s: float = Field(120.0, gt=0, description="Whole message, retries included.")
    concurrency: int = Field(4, ge=1, le=64, description="Parallel SMTP connections.")
    attempts: int = Field(4, ge=1, le=20, description="Tries per message within one pass.")
    retry_after_s: float = Field(900.0, ge=0, description="Wait before the next pass retries.")
    max_passes: int = Field(
        6, ge=1, description="Passes a transiently failing message is retried before failing."
    )
    backoff_initial_s: float = Field(1.0, ge=0)
    backoff_max_s: float = Field(30.0, ge=0)
    helo_name: str | None = None
    validate_certs: bool = True
    breaker_failures: int = Field(
        3,
        ge=1,
        description="Connection or greeting failures in a row after which the relay is taken "
        "as down: the pass's remaining messages wait for the next pass at once instead of "
        "each spending its deadline on a dead relay.",
    )

    _crlf = field_validator("host", "username", "helo_name")(
        lambda v: v if v is None else _no_crlf(v)
    )


class ImapSettings(_Strict):
    """The seller's mailbox. Without a host the worker reads no mail and only sends."""

    host: str | None = None
    port: int | None = Field(None, ge=1, le=65535, description="Default 993, or 143 without TLS.")
    tls: TlsMode = TlsMode.IMPLICIT
    username: str | None = None
    password: str | None = None
    folders: tuple[str, ...] = ("INBOX",)
    sent_folder: str | None = Field(None, description="Append every message sent here.")
    batch_size: int = Field(
        200, ge=1, le=1000, description="Messages fetched, read and stored together."
    )
    timeout_s: float = Field(30.0, gt=0, description="Per IMAP operation.")
    idle: bool = Field(True, description="Use IDLE when the server offers it.")
    idle_renew_s: float = Field(
        300.0, gt=0, le=1500, description="Re-issue IDLE well inside the server's 30 minutes."
    )
    poll_interval_s: float = Field(60.0, gt=0, description="Without IDLE, look this often.")
    reconnect_initial_s: float = Field(1.0, gt=0)
    reconnect_max_s: float = Field(300.0, gt=0)
    validate_certs: bool = True
    ca_file: Path | None = Field(None, description="Extra CA certificates (PEM) to trust.")

    _crlf = field_validator("host", "username", "sent_folder")(
        lambda v: v if v is None else _no_crlf(v)
    )

    @field_validator("folders", mode="before")
    @classmethod
    def _folders(cls, value: Any) -> Any:
        value = _comma_list(value)
        if not value:
            raise ValueError("name at least one folder, e.g. INBOX")
        return value

    @model_validator(mode="after")
    def _plain_only_on_loopback(self) -> ImapSettings:
        if self.host and self.tls is TlsMode.NONE and self.host not in LOOPBACK_HOSTS:
            raise ValueError(
                f"tls: none sends the mailbox password in clear; it is allowed only on "
                f"loopback, not {self.host!r}; use implicit (993) or starttls (143)"
            )
        return self

    @property
    def effective_port(self) -> int:
        if self.port is not None:
            return self.port
        return 993 if self.tls is TlsMode.IMPLICIT else 143


class InboxSettings(_Strict):
    """How inbound mail is classified, threaded and followed up."""

    rules_file: Path = Path("config/mail-rules.yaml")
    awaiting_after: timedelta = Field(
        timedelta(hours=24), description="A buyer's message unanswered this long is awaiting."
    )
    soft_bounce_limit: int = Field(3, ge=1, description="Soft bounces that suppress an address.")
    soft_bounce_window: timedelta = timedelta(days=30)
    buyer_match_window: timedelta = Field(
        timedelta(days=180), description="Match by address only to a single order this recent."
    )
    reply_tokens: bool = Field(
        False, description="Reply-To reply+TOKEN@...: replies thread even without headers."
    )
    act_within: timedelta = Field(
        timedelta(days=60),
        description="Older mail is stored and threaded, but only its unsubscribes and bounces "
        "act: connecting a mailbox with years of mail must not reopen old complaints.",
    )
    agent_addresses: tuple[str, ...] = Field(
        (), description="More addresses whose mail is the seller's (agents' own mailboxes)."
    )
    read_timeout_s: float = Field(
        10.0,
        gt=0,
        description="Time to parse and classify one message; past it the message is "
        "quarantined and the next one read.",
    )
    max_message_bytes: int = Field(
        25_000_000,
        ge=64 * 1024,
        description="A bigger message is fetched and read in part: its header and the start "
        "of its text, marked truncated. Bounds the memory one message can take.",
    )
    max_header_bytes: int = Field(
        256 * 1024, ge=4096, description="Header read of one message; past it, cut (marked)."
    )
    max_parts: int = Field(
        200,
        ge=1,
        description="MIME parts read of one message (attachments, attached messages); "
        "past it the rest is not read (marked truncated).",
    )
    max_depth: int = Field(
        20, ge=1, description="Nesting of multiparts and attached messages read; deeper, cut."
    )
    max_text_bytes: int = Field(
        256 * 1024,
        ge=1024,
        description="Decoded bytes read of the text part (or HTML part); past it, cut (marked).",
    )

    _lists = field_validator("agent_addresses", mode="before")(_comma_list)
    _durations = field_validator(
        "awaiting_after", "soft_bounce_window", "buyer_match_window", "act_within", mode="before"
    )(_duration_text)


class AuthenticationSettings(_Strict):
    """Which inbound mail is proven to come from a marketplace (see docs/mail-rules.md)."""

    authserv_ids: tuple[str, ...] = Field(
        (),
        description="The authserv-id your receiving server stamps on Authentication-Results "
        "(e.g. mx.shop.example); headers with any other id are ignored.",
    )
    verify_dkim: bool = Field(
        True,
        description="Without a trusted Authentication-Results header, check DKIM signatures "
        "of marketplace notices against DNS.",
    )
    dns_timeout_s: float = Field(5.0, gt=0, description="Per DKIM key lookup.")

    _lists = field_validator("authserv_ids", mode="before")(_comma_list)


class BounceSettings(_Strict):
    """The return path: bounces come back to a signed address tied to one send."""

    address: str | None = Field(
        None,
        description="Base address for the return path (VERP: local+TOKEN@domain); "
        "default: the reply address, whose mailbox the worker reads.",
    )
    secret: str | None = Field(
        None, description="HMAC key for return-path tokens and Message-IDs; environment only."
    )
    secret_file: Path = Field(
        Path("var/worker-secret"),
        description="Where the key is kept (created, mode 0600) when WORKER_BOUNCES_SECRET is "
        "not set.",
    )

    @field_validator("address")
    @classmethod
    def _address(cls, value: str | None) -> str | None:
        if value is None:
            return value
        _no_crlf(value)
        if parseaddr(value)[1] != value.strip() or value.count("@") != 1 or "+" in value:
            raise ValueError(f"{value!r} must be a bare address like bounces@shop.example, no '+'")
        return value.strip()


class SellerLocale(_Strict):
    """The seller's name and signature in one language; either may be left out."""

    name: str | None = Field(None, max_length=200)
    signature: str | None = Field(None, max_length=2000)

    _crlf = field_validator("name", "signature")(lambda v: v if v is None else _no_crlf(v))


class SellerSettings(_Strict):
    name: str = "Our shop"
    signature: str = "Customer service"
    locales: dict[str, SellerLocale] = Field(
        {},
        description="Per language (de, zh-Hant, de-AT): the name and signature a buyer "
        "written to in that language sees; see docs/languages.md.",
    )

    _crlf = field_validator("name", "signature")(_no_crlf)

    @field_validator("locales")
    @classmethod
    def _locale_tags(cls, value: dict[str, SellerLocale]) -> dict[str, SellerLocale]:
        tags: dict[str, SellerLocale] = {}
        for key, entry in value.items():
            tag = normalise_locale(key)
            if tag is None:
                raise ValueError(f"{key[:40]!r} is not a locale tag like de, de-AT or zh-Hant")
            if tag in tags:
                raise ValueError(f"{key!r} is given twice (as {tag})")
            tags[tag] = entry
        return tags

    def signed(self, chain: Sequence[str]) -> tuple[str, str]:
        """Name and signature for the first locale of ``chain`` that sets each (the chosen
        locale, its base language, the default), else the plain ``name``/``signature``."""
        entries = [self.locales[tag] for tag in chain if tag in self.locales]
        name = next((e.name for e in entries if e.name is not None), self.name)
        signature = next((e.signature for e in entries if e.signature is not None), None)
        return name, self.signature if signature is None else signature


class UnsubscribeSettings(_Strict):
    mailto: str | None = Field(None, description="Address for List-Unsubscribe mailto:")
    url: str | None = Field(
        None,
        description="https endpoint; enables List-Unsubscribe-Post. {token} is replaced by "
        "the message's signed one-click token, which the daemon's /unsubscribe/{token} checks.",
    )
    secret_env: str = Field(
        "WORKER_UNSUBSCRIBE_SECRET",
        description="The NAME of the environment variable holding the key that signs one-click "
        "tokens; the key itself is never written in a file.",
    )

    @field_validator("mailto", "url")
    @classmethod
    def _check(cls, value: str | None) -> str | None:
        if value is None:
            return value
        _no_crlf(value)
        if any(c in value for c in "<>, \t"):
            raise ValueError("must not contain '<', '>', ',' or spaces")
        return value

    @field_validator("secret_env")
    @classmethod
    def _secret_env(cls, value: str) -> str:
        if not _ENV_NAME.fullmatch(value):
            raise ValueError(
                "must be the NAME of an environment variable in capitals (like "
                "WORKER_UNSUBSCRIBE_SECRET), not the key itself"
            )
        return value

    @property
    def one_click(self) -> bool:
        """The URL carries each message's signed token, checked by the daemon."""
        return self.url is not None and "{token}" in self.url


class HttpSettings(_Strict):
    """The daemon's small HTTP server: /metrics, /healthz, /unsubscribe/{token}."""

    enabled: bool = True
    bind: str = Field(
        "127.0.0.1",
        description="Loopback by default; any other address is the operator's choice (put a "
        "reverse proxy with TLS in front for /unsubscribe).",
    )
    port: int = Field(8787, ge=0, le=65535, description="0: any free port (tests).")
    request_timeout_s: float = Field(
        10.0, gt=0, le=300, description="One request, body read and answer, at most."
    )
    max_body_bytes: int = Field(
        4096, ge=64, le=1_000_000, description="A bigger request body is refused (413)."
    )

    _crlf = field_validator("bind")(_no_crlf)


_COUNTRY = re.compile(r"[A-Z]{2}")
_ROUTE = re.compile(r"([A-Z]{2}|\*)->([A-Z]{2}|\*)")
_LONGEST_TRANSIT = timedelta(days=180)


def _transit_time(where: str, value: Any) -> timedelta:
    time = _duration_text(value)
    if not isinstance(time, timedelta) or not timedelta(0) < time <= _LONGEST_TRANSIT:
        raise ValueError(
            f"{where}: {value!r} is not a transit time above 0 and up to 180d, like 12d"
        )
    return time


@cache
def _countries() -> frozenset[str]:
    """ISO 3166 alpha-2 codes, from CLDR (babel)."""
    codes = (str(code) for code in Locale("en").territories)
    return frozenset(code for code in codes if _COUNTRY.fullmatch(code))


def _country(where: str, value: Any) -> str:
    text = str(value).strip().upper()
    if text not in _countries():
        raise ValueError(f"{where}: {value!r} is not an ISO 3166 country code like DE")
    return text


class DeliverySettings(_Strict):
    """Transit times for estimating when a parcel arrives, when no date says it (see
    docs/delivery.md). Durations are written like ``12d`` or ``1d12h``."""

    ship_from: str | None = Field(
        None, description="The seller's country (ISO 3166, like CN): where parcels leave from."
    )
    domestic: timedelta = DEFAULT_DOMESTIC
    same_region: timedelta = Field(
        DEFAULT_SAME_REGION, description="Both countries in one of the regions (e.g. the EU)."
    )
    cross_border: timedelta = DEFAULT_CROSS_BORDER
    routes: dict[str, timedelta] = Field(
        {}, description="By route: 'CN->DE', 'CN->*' or '*->DE'; the most specific wins."
    )
    carriers: dict[str, timedelta] = Field(
        {},
        description="By carrier, or carrier and service: 'dhl', 'dhl-express', 'japan-post-ems'; "
        "outranks the routes.",
    )
    regions: dict[str, tuple[str, ...]] = Field(
        {},
        description="More groups of countries (or a default one, by name, replaced): a route "
        "inside one is same_region. Defaults: eu, northern-america, eastern-asia, "
        "australia-new-zealand.",
    )

    @field_validator("ship_from", mode="before")
    @classmethod
    def _ship_from(cls, value: Any) -> Any:
        return None if value is None or value == "" else _country("ship_from", value)

    @field_validator("domestic", "same_region", "cross_border", mode="before")
    @classmethod
    def _times(cls, value: Any) -> timedelta:
        return _transit_time("transit time", value)

    @field_validator("routes", mode="before")
    @classmethod
    def _routes(cls, value: Any) -> Any:
        if not isinstance(value, Mapping):
            return value
        routes: dict[str, timedelta] = {}
        for key, time in value.items():
            route = str(key).replace(" ", "").upper()
            match = _ROUTE.fullmatch(route)
            if match is None or route == "*->*":
                raise ValueError(
                    f"{key!r} is not a route like 'CN->DE', 'CN->*' or '*->DE' (ISO 3166 codes)"
                )
            routes[route] = _transit_time(f"routes.{key}", time)
        return routes

    @field_validator("carriers", mode="before")
    @classmethod
    def _carriers(cls, value: Any) -> Any:
        if not isinstance(value, Mapping):
            return value
        carriers: dict[str, timedelta] = {}
        for key, time in value.items():
            name = carrier_key(str(key))
            if not name or len(name) > 64:
                raise ValueError(f"{key!r} is not a carrier name like dhl or japan-post-ems")
            carriers[name] = _transit_time(f"carriers.{key}", time)
        return carriers

    @field_validator("regions", mode="before")
    @classmethod
    def _regions(cls, value: Any) -> Any:
        if not isinstance(value, Mapping):
            return value
        regions: dict[str, tuple[str, ...]] = {}
        for name, members in value.items():
            listed = _comma_list(members)
            if not isinstance(listed, list | tuple) or not listed:
                raise ValueError(f"regions.{name}: list its countries, like [DE, AT, CH]")
            regions[str(name)] = tuple(_country(f"regions.{name}", c) for c in listed)
        return regions

    def transit_table(self) -> TransitTable:
        """What the planner reads: the defaults' regions, with these added or replaced."""
        regions = dict(DEFAULT_REGIONS) | {k: frozenset(v) for k, v in self.regions.items()}
        return TransitTable(
            ship_from=self.ship_from,
            domestic=self.domestic,
            same_region=self.same_region,
            cross_border=self.cross_border,
            routes=tuple(sorted(self.routes.items())),
            carriers=tuple(sorted(self.carriers.items())),
            regions=tuple(sorted(regions.items())),
        )


class TrackingSettings(_Strict):
    """Tracking links in messages (see docs/tracking.md). Entries here are added to, or
    replace, the defaults in worker/tracking.py; a pattern is an https URL with
    ``{number}`` and optionally ``{country}`` (the buyer's, lower case)."""

    carriers: dict[str, str] = Field(
        {}, description="Carrier id -> tracking page pattern, over the built-in ones."
    )
    aliases: dict[str, str] = Field(
        {}, description="How your exports name a carrier -> its id (case, spaces ignored)."
    )
    local_posts: dict[str, str] = Field(
        {},
        description="Buyer's country (DE) -> their national post's tracking page, for "
        "cross-border parcels with a UPU S10 number.",
    )
    fallback: str | None = Field(
        tracking.UNIVERSAL_TRACKER,
        description="Universal tracker for carriers without a pattern; null for no link.",
    )

    @field_validator("carriers")
    @classmethod
    def _carriers(cls, value: dict[str, str]) -> dict[str, str]:
        for cid, pattern in value.items():
            if not tracking.CARRIER_ID.fullmatch(cid):
                raise ValueError(f"{cid!r} is not a carrier id: lower-case letters, digits, -")
            _pattern(f"carriers.{cid}", pattern)
        return value

    @field_validator("aliases")
    @classmethod
    def _aliases(cls, value: dict[str, str]) -> dict[str, str]:
        for alias, cid in value.items():
            if not tracking.carrier_key(alias) or len(alias) > 200:
                raise ValueError(f"aliases: {alias!r} has no letters or digits to match on")
            if not tracking.CARRIER_ID.fullmatch(cid):
                raise ValueError(f"aliases.{alias}: {cid!r} is not a carrier id")
        return value

    @field_validator("local_posts")
    @classmethod
    def _local_posts(cls, value: dict[str, str]) -> dict[str, str]:
        for country, pattern in value.items():
            if not re.fullmatch(r"[A-Z]{2}", country):
                raise ValueError(f"local_posts: {country!r} is not a country code like DE")
            _pattern(f"local_posts.{country}", pattern)
        return value

    @field_validator("fallback")
    @classmethod
    def _fallback(cls, value: str | None) -> str | None:
        if value:
            _pattern("fallback", value)
        return value or None

    @model_validator(mode="after")
    def _known_ids(self) -> TrackingSettings:
        for alias, cid in self.aliases.items():
            if cid not in self.carrier_patterns:
                raise ValueError(f"aliases.{alias}: no carrier {cid!r}; add it under carriers")
        return self

    @property
    def carrier_patterns(self) -> dict[str, str]:
        return {**tracking.CARRIERS, **self.carriers}

    @property
    def local_post_patterns(self) -> dict[str, str]:
        return {**tracking.local_post_defaults(), **self.local_posts}


def _pattern(where: str, pattern: str) -> None:
    problem = tracking.pattern_problem(pattern)
    if problem is not None:
        raise ValueError(f"{where}: {pattern[:80]!r} {problem}")


_ENV_NAME = re.compile(r"[A-Z_][A-Z0-9_]{0,127}")
"""An environment variable's name, in capitals: a key pasted in its place is refused unshown."""


class IntentSettings(_Strict):
    """Who reads what a buyer's words want (see docs/intent-backend.md): the model in the
    package, or also an OpenAI-compatible endpoint of the operator's, which can only make
    the reading stricter and whose failures fall back to the model."""

    backend: Literal["local", "openai"] = "local"
    url: str | None = Field(
        None, description="Base URL of the endpoint; /chat/completions is added to it."
    )
    model: str | None = Field(None, description="The model name the endpoint is asked for.")
    api_key_env: str | None = Field(
        None,
        description="The NAME of the environment variable holding the endpoint's key; the "
        "key itself is never written in a file.",
    )
    timeout_s: float = Field(5.0, gt=0, le=60, description="One request, all of it.")
    max_chars: int = Field(
        2000, ge=100, le=20_000, description="Characters of the buyer's words sent, at most."
    )
    failures_before_pause: int = Field(
        5, ge=1, le=100, description="Failures in a row after which the endpoint is left alone."
    )
    pause_s: float = Field(300.0, ge=0, description="...for this long; the model reads alone.")

    _crlf = field_validator("url", "model")(lambda v: v if v is None else _no_crlf(v))

    @field_validator("api_key_env")
    @classmethod
    def _env_name(cls, value: str | None) -> str | None:
        if value is not None and not _ENV_NAME.fullmatch(value):
            raise ValueError(
                "must be the NAME of an environment variable in capitals (like "
                "OPENAI_API_KEY), not the key itself"
            )
        return value

    @model_validator(mode="after")
    def _endpoint(self) -> IntentSettings:
        if self.backend == "local":
            return self
        missing = [k for k in ("url", "model", "api_key_env") if not getattr(self, k)]
        if missing:
            raise ValueError(f"backend openai needs {', '.join(missing)}")
        problem = endpoint_problem(self.url or "")
        if problem is not None:
            raise ValueError(f"url: {problem}")
        if len(self.model or "") > 200 or not (self.model or "").isprintable():
            raise ValueError("model: at most 200 printable characters")
        return self


def endpoint_problem(url: str) -> str | None:
    """Why ``url`` cannot be the intent endpoint, or ``None``: https, or http on loopback
    only (the key and the buyer's words would cross the network in clear)."""
    from urllib.parse import urlsplit

    shown = repr(url[:80]) if "@" not in url else "the URL"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:
        return f"{shown} is not a URL like https://api.example/v1"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"{shown} is not an http(s) URL like https://api.example/v1"
    if parts.username is not None or parts.password is not None:
        return "must not carry a user or password; name the key's variable in api_key_env"
    if parts.query or parts.fragment:
        return f"{shown} must not have a query or fragment"
    if parts.scheme == "http" and parts.hostname not in LOOPBACK_HOSTS:
        return (
            f"http sends the key and the buyer's words in clear; it is allowed only on "
            f"loopback, not {parts.hostname!r}; use https"
        )
    return None


_PLAIN_ADDRESS = re.compile(r"^[A-Za-z0-9.!#$%&'*+/=^_`{|}~-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,63}$")
"""What compose writes into From and Reply-To: ASCII ``local@domain``, no quoting tricks."""


def _address(value: str) -> str:
    _no_crlf(value)
    name, addr = parseaddr(value)
    if not _PLAIN_ADDRESS.match(addr) or "=?" in addr:
        raise ValueError(
            f"{value!r} is not an address like 'Shop <service@shop.example>' "
            "(plain ASCII local@domain)"
        )
    Address(display_name=name, addr_spec=addr)  # raises on characters a header cannot carry
    return value


class Settings(_Strict):
    database_url: str = Field("sqlite:///var/worker.db", alias="database_url")
    sender: str = Field("Our shop <service@shop.example>", alias="from")
    reply_to: str | None = None
    seller: SellerSettings = SellerSettings()
    smtp: SmtpSettings = SmtpSettings()
    unsubscribe: UnsubscribeSettings = UnsubscribeSettings()
    http: HttpSettings = HttpSettings()
    imap: ImapSettings = ImapSettings()
    mailboxes: dict[str, ImapSettings] = Field(
        {},
        description="More mailboxes (one per storefront), each read by one worker at a time, "
        "by name: lower-case letters, digits, '-' and '_'.",
    )
    inbox: InboxSettings = InboxSettings()
    authentication: AuthenticationSettings = AuthenticationSettings()
    bounces: BounceSettings = BounceSettings()
    delivery: DeliverySettings = DeliverySettings()
    campaigns_dir: Path = Path("campaigns")
    templates_dir: Path = Path("templates")
    default_locale: str = "en"
    default_timezone: str = "UTC"
    dispute_cooldown: timedelta = timedelta(days=3)
    buyer_cap: timedelta = Field(
        timedelta(days=3),
        ge=timedelta(0),
        description="At most one message per buyer within this span, across every campaign "
        "and order (a campaign or step may set its own buyer_cap); 0: no cap.",
    )
    poll_interval_s: float = Field(60.0, gt=0)
    plan_batch: int = Field(
        500,
        ge=1,
        le=10_000,
        description="Buyers planned per transaction; a pass walks every due buyer in such "
        "batches, so memory stays flat whatever is stored.",
    )
    shutdown_timeout_s: float = Field(30.0, gt=0)
    render_timeout_s: float = Field(
        10.0,
        gt=0,
        description="Time one message may take to render; past it the rendering process is "
        "killed and the message fails with a TemplateError, so a template looping on some "
        "order's data cannot hang sending.",
    )
    render_max_bytes: int = Field(
        1_000_000,
        ge=1024,
        description="Size (UTF-8 bytes) of one rendered message, subject, text and HTML "
        "together; a template producing more is stopped as it writes and the message fails.",
    )
    log_format: Literal["auto", "json", "console"] = "auto"
    tracking: TrackingSettings = TrackingSettings()
    intents: IntentSettings = IntentSettings()

    _addresses = field_validator("sender")(_address)

    @field_validator("mailboxes")
    @classmethod
    def _mailboxes(cls, value: dict[str, ImapSettings]) -> dict[str, ImapSettings]:
        for name, mailbox in value.items():
            if not _MAILBOX_NAME.fullmatch(name):
                raise ValueError(
                    f"{name!r} is not a mailbox name: use lower-case letters, digits, - and _"
                )
            if not mailbox.host:
                raise ValueError(f"{name}: host is missing")
        return value

    @model_validator(mode="after")
    def _each_mailbox_once(self) -> Settings:
        seen: dict[str, str] = {}
        for name, mailbox in self.every_mailbox:
            key = mailbox_key(mailbox)
            if key in seen:
                raise ValueError(f"mailboxes {seen[key]} and {name} are the same mailbox ({key})")
            seen[key] = name
        return self

    @model_validator(mode="after")
    def _intents_within_read_budget(self) -> Settings:
        if self.intents.backend != "local" and self.intents.timeout_s >= self.inbox.read_timeout_s:
            raise ValueError(
                f"intents.timeout_s ({self.intents.timeout_s:g}) must be below "
                f"inbox.read_timeout_s ({self.inbox.read_timeout_s:g}), or every message "
                "waiting on a dead endpoint would be quarantined"
            )
        return self

    @property
    def every_mailbox(self) -> list[tuple[str, ImapSettings]]:
        """Every mailbox to read, by name: ``imap`` (named ``imap``) first, when it has a
        host, then ``mailboxes`` in the order written."""
        found = [("imap", self.imap)] if self.imap.host else []
        return found + list(self.mailboxes.items())

    @field_validator("reply_to")
    @classmethod
    def _reply_to(cls, value: str | None) -> str | None:
        return value if value is None else _address(value)

    _durations = field_validator("dispute_cooldown", "buyer_cap", mode="before")(_duration_text)

    @field_validator("default_timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {value!r}") from exc
        return value

    @property
    def sender_domain(self) -> str:
        return parseaddr(self.sender)[1].rpartition("@")[2]

    @property
    def reply_address(self) -> str:
        """Where buyers' replies go: ``reply_to``, else ``from``; the bare address."""
        return parseaddr(self.reply_to or self.sender)[1]

    @property
    def seller_addresses(self) -> frozenset[str]:
        """Addresses whose mail is the seller's own words, not a buyer's."""
        found = {self.sender, self.reply_to or "", self.unsubscribe.mailto or ""}
        found.update(self.inbox.agent_addresses)
        return frozenset(a.lower() for a in (parseaddr(v)[1] for v in found) if "@" in a)


def mailbox_key(mailbox: ImapSettings) -> str:
    """``user@host``: what the store keeps a mailbox's checkpoints and lease under."""
    return f"{mailbox.username or ''}@{mailbox.host}"


def mailbox_password_env(name: str) -> str:
    """The environment variable holding the password of the mailbox named ``name``."""
    return "WORKER_MAILBOXES_" + re.sub(r"[^A-Z0-9]", "_", name.upper()) + "_PASSWORD"


def _flatten_env_names(
    prefix: tuple[str, ...], model: type[BaseModel]
) -> dict[str, tuple[str, ...]]:
    names: dict[str, tuple[str, ...]] = {}
    for name, info in model.model_fields.items():
        key = info.alias or name
        path = (*prefix, key)
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            names.update(_flatten_env_names(path, annotation))
        else:
            names["WORKER_" + "_".join(path).upper()] = path
    return names


ENV_NAMES = _flatten_env_names((), Settings)
"""Every environment variable the worker reads, mapped to its settings path."""


def _set_path(data: dict[str, Any], path: tuple[str, ...], value: str) -> None:
    node = data
    for key in path[:-1]:
        child = node.get(key)
        if not isinstance(child, dict):
            child = {}
            node[key] = child
        node = child
    node[path[-1]] = value


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read the file: {exc.strerror}", where=str(path)) from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise ConfigError(f"not valid YAML: {getattr(exc, 'problem', exc)}", where=where) from exc
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError("the top level must be a mapping of settings", where=str(path))
    return loaded


def _refuse_secrets(data: Mapping[str, Any], path: Path) -> None:
    mailboxes = data.get("mailboxes")
    if isinstance(mailboxes, Mapping):
        for name, mailbox in mailboxes.items():
            if isinstance(mailbox, Mapping) and mailbox.get("password") is not None:
                raise ConfigError(
                    f"mailboxes.{name}.password must not be in a file; set "
                    f"{mailbox_password_env(str(name))} in the environment",
                    where=str(path),
                )
    for secret in SECRETS:
        node: Any = data
        for key in secret:
            node = node.get(key) if isinstance(node, Mapping) else None
        if node is not None:
            env = "WORKER_" + "_".join(secret).upper()
            raise ConfigError(
                f"{'.'.join(secret)} must not be in a file; set {env} in the environment",
                where=str(path),
            )


def load_settings(path: Path | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Read the file (if any), apply ``WORKER_*`` overrides, validate everything at once."""
    env = os.environ if environ is None else environ
    explicit = path is not None or "WORKER_CONFIG" in env
    config_path = path or Path(env.get("WORKER_CONFIG", DEFAULT_CONFIG_PATH))
    data: dict[str, Any] = {}
    if config_path.exists() or explicit:
        data = _read_yaml(config_path)
        _refuse_secrets(data, config_path)
    for name, settings_path in ENV_NAMES.items():
        if name in env:
            _set_path(data, settings_path, env[name])
    mailboxes = data.get("mailboxes")
    if isinstance(mailboxes, dict):
        for mailbox_name, mailbox in mailboxes.items():
            password = env.get(mailbox_password_env(str(mailbox_name)))
            if isinstance(mailbox, dict) and password is not None:
                mailbox["password"] = password
    try:
        settings = Settings.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(problems, where=str(config_path)) from exc
    key_env = settings.intents.api_key_env
    if settings.intents.backend != "local" and key_env and not env.get(key_env):
        raise ConfigError(
            f"intents.backend is {settings.intents.backend} but the environment variable "
            f"{key_env} (intents.api_key_env), which must hold the endpoint's key, is not set",
            where=str(config_path),
        )
    return settings
