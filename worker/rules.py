"""The mail rules file: what the classifier looks for, kept as data operators can extend.

``config/mail-rules.yaml`` holds order-number patterns, marketplace notification rules and
keywords per language. It is validated once, at start-up, with every regular expression
compiled, so a typo stops the worker with the file, line and key path instead of
misfiling mail later. The meaning of each section is in ``docs/mail-rules.md``.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    model_validator,
)

from worker.domain import DisputeKind, MessageKind
from worker.errors import RulesError

_FLAGS = re.IGNORECASE
_CJK = re.compile(r"[\u2e80-\u9fff\uac00-\ud7af\uf900-\ufaff\uff66-\uff9f]")
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'"})


def normalise(text: str) -> str:
    """NFKC with straight apostrophes: the form every pattern is written against."""
    return unicodedata.normalize("NFKC", text).translate(_APOSTROPHES)


def _compiled(source: str, flags: int = _FLAGS) -> re.Pattern[str]:
    try:
        return re.compile(source, flags)
    except re.error as exc:
        raise ValueError(f"bad regex {source!r}: {exc}") from None


def _regex(value: Any) -> Any:
    return _compiled(value) if isinstance(value, str) else value


def _keyword(value: Any) -> Any:
    """Latin-script keywords match whole words; Japanese and Chinese ones match anywhere."""
    if not isinstance(value, str):
        return value
    _compiled(value)
    return _compiled(value if _CJK.search(value) else rf"(?<!\w)(?:{value})(?!\w)")


def _multiline(value: Any) -> Any:
    return _compiled(value, _FLAGS | re.MULTILINE) if isinstance(value, str) else value


def _before(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    _compiled(value)
    return _compiled(rf"(?:{value})\s*$")


def _after(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    _compiled(value)
    return _compiled(rf"^\s*(?:{value})")


def _dotall(value: Any) -> Any:
    return _compiled(value, _FLAGS | re.DOTALL) if isinstance(value, str) else value


Regex = Annotated[re.Pattern[str], BeforeValidator(_regex)]
DotAllRegex = Annotated[re.Pattern[str], BeforeValidator(_dotall)]
KeywordRegex = Annotated[re.Pattern[str], BeforeValidator(_keyword)]
Language = Annotated[str, StringConstraints(pattern=r"^[a-z]{2,3}$")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class OrderNumberRule(_Strict):
    name: str
    pattern: Regex


_RuleKind = Literal["dispute_opened", "dispute_closed", "review", "reply"]


class MarketplaceRule(_Strict):
    """One kind of marketplace notification, recognised by sender, subject and text."""

    id: Annotated[str, StringConstraints(pattern=r"^[a-z0-9-]+$")]
    marketplace: str
    kind: _RuleKind
    dispute_kind: DisputeKind | None = None
    senders: tuple[Regex, ...] = Field(min_length=1)
    subjects: tuple[Regex, ...] = ()
    bodies: tuple[Regex, ...] = ()
    ratings: tuple[Regex, ...] = ()
    relayed: bool = False
    buyer_text: DotAllRegex | None = None

    @model_validator(mode="after")
    def _dispute_kind_fits(self) -> MarketplaceRule:
        disputes = self.kind in ("dispute_opened", "dispute_closed")
        if disputes != (self.dispute_kind is not None):
            need = "needs" if disputes else "must not have"
            raise ValueError(f"a rule of kind {self.kind} {need} a dispute_kind")
        return self

    @property
    def message_kind(self) -> MessageKind:
        return MessageKind(self.kind)

    def matches(self, sender: str, subject: str, text: str) -> bool:
        """Every given list must have a pattern that matches; senders are always given."""
        return (
            any(p.search(sender) for p in self.senders)
            and (not self.subjects or any(p.search(subject) for p in self.subjects))
            and (not self.bodies or any(p.search(text) for p in self.bodies))
        )

    def rating_in(self, text: str, words: Mapping[str, int]) -> int | None:
        """Stars (1-5) or a feedback word the notification states; ``None`` if it says none."""
        for pattern in self.ratings:
            found = pattern.search(text)
            if found is None:
                continue
            said = (found.group(1) if pattern.groups else found.group(0)).lower()
            rating = int(said) if said.isdigit() else words.get(said)
            if rating is not None and 1 <= rating <= 5:
                return rating
        return None


class HeaderRule(_Strict):
    header: str
    pattern: Regex
    notification: bool = False
    """Marketplace notifications carry it too: a matching marketplace rule wins."""


class Negation(_Strict):
    before: tuple[Annotated[re.Pattern[str], BeforeValidator(_before)], ...] = ()
    after: tuple[Annotated[re.Pattern[str], BeforeValidator(_after)], ...] = ()


class _AutoReply(_Strict):
    headers: tuple[HeaderRule, ...] = ()
    subjects: dict[Language, tuple[Regex, ...]] = {}


class _Unsubscribe(_Strict):
    max_lines: int = Field(4, ge=1)
    phrases: dict[Language, tuple[Regex, ...]] = {}


class _RulesFile(_Strict):
    order_numbers: tuple[OrderNumberRule, ...] = ()
    relays: dict[str, tuple[Regex, ...]] = {}
    marketplace: tuple[MarketplaceRule, ...] = ()
    rating_words: dict[str, Annotated[int, Field(ge=1, le=5)]] = {}
    auto_reply: _AutoReply = _AutoReply()
    unsubscribe: _Unsubscribe = _Unsubscribe()
    quote_starts: tuple[Annotated[re.Pattern[str], BeforeValidator(_multiline)], ...] = ()
    reply_prefixes: Regex = re.compile(r"^\s*(?:re\s*:\s*)+", _FLAGS)
    complaint_priority: tuple[DisputeKind, ...] = ()
    complaints: dict[Language, dict[DisputeKind, tuple[KeywordRegex, ...]]] = {}
    negations: dict[Language, Negation] = {}

    @model_validator(mode="after")
    def _unique_ids(self) -> _RulesFile:
        ids = [rule.id for rule in self.marketplace]
        repeated = sorted({i for i in ids if ids.count(i) > 1})
        if repeated:
            raise ValueError(f"marketplace rule ids must be unique; repeated: {repeated}")
        return self


@dataclass(frozen=True, slots=True)
class Keyword:
    """A configured pattern and the language it belongs to, for the evidence."""

    language: str
    pattern: re.Pattern[str]


@dataclass(frozen=True, slots=True)
class ComplaintKeyword:
    kind: DisputeKind
    language: str
    pattern: re.Pattern[str]


@dataclass(frozen=True, slots=True, eq=False)
class MailRules:
    """The validated rules; built by :func:`load_rules`."""

    source: str
    order_number_rules: tuple[OrderNumberRule, ...]
    relays: tuple[tuple[str, re.Pattern[str]], ...]
    marketplace: tuple[MarketplaceRule, ...]
    rating_words: Mapping[str, int]
    auto_reply_headers: tuple[HeaderRule, ...]
    auto_reply_subjects: tuple[Keyword, ...]
    unsubscribe_phrases: tuple[Keyword, ...]
    unsubscribe_max_lines: int
    quote_starts: tuple[re.Pattern[str], ...]
    reply_prefixes: re.Pattern[str]
    complaints: tuple[ComplaintKeyword, ...]
    """In the order they are tried: kinds by ``complaint_priority``, then file order."""
    negations: Mapping[str, Negation]

    def order_numbers_in(self, text: str) -> tuple[str, ...]:
        """Every order number in the text, first pattern first, without repeats."""
        found: dict[str, None] = {}
        for rule in self.order_number_rules:
            for match in rule.pattern.finditer(text):
                found[match.group(1) if rule.pattern.groups else match.group(0)] = None
        return tuple(found)

    def relay_marketplace(self, address: str) -> str | None:
        """The marketplace whose relay sent this address's mail, if any."""
        return next((name for name, p in self.relays if p.search(address.lower())), None)

    def marketplace_rule(self, sender: str, subject: str, text: str) -> MarketplaceRule | None:
        return next((r for r in self.marketplace if r.matches(sender, subject, text)), None)

    def without_reply_prefixes(self, subject: str) -> str:
        return self.reply_prefixes.sub("", subject, count=1).strip()

    def negated(self, text: str, start: int, end: int) -> bool:
        """A negation right before (or, for Japanese, after) the keyword turns it around.

        Every language's negations are tried: Japanese and Chinese share characters, so a
        keyword may match in a text of the other language.
        """
        before, after = text[max(0, start - 40) : start], text[end : end + 20]
        return any(
            any(p.search(before) for p in rules.before) or any(p.search(after) for p in rules.after)
            for rules in self.negations.values()
        )


def _complaint_keywords(data: _RulesFile) -> tuple[ComplaintKeyword, ...]:
    order = {kind: i for i, kind in enumerate(data.complaint_priority)}
    found = [
        ComplaintKeyword(kind, language, pattern)
        for language, kinds in data.complaints.items()
        for kind, patterns in kinds.items()
        for pattern in patterns
    ]
    return tuple(sorted(found, key=lambda k: order.get(k.kind, len(order))))


def _keywords(table: Mapping[str, tuple[re.Pattern[str], ...]]) -> tuple[Keyword, ...]:
    return tuple(Keyword(lang, p) for lang, patterns in table.items() for p in patterns)


def _build(data: _RulesFile, source: str) -> MailRules:
    return MailRules(
        source=source,
        order_number_rules=data.order_numbers,
        relays=tuple((name, p) for name, patterns in data.relays.items() for p in patterns),
        marketplace=data.marketplace,
        rating_words={k.lower(): v for k, v in data.rating_words.items()},
        auto_reply_headers=data.auto_reply.headers,
        auto_reply_subjects=_keywords(data.auto_reply.subjects),
        unsubscribe_phrases=_keywords(data.unsubscribe.phrases),
        unsubscribe_max_lines=data.unsubscribe.max_lines,
        quote_starts=data.quote_starts,
        reply_prefixes=data.reply_prefixes,
        complaints=_complaint_keywords(data),
        negations=data.negations,
    )


# Reading the file ---------------------------------------------------------------------------


def _key_path(loc: tuple[int | str, ...]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part != "[key]":
            path += f".{part}" if path else part
    return path


def _line_of(root: yaml.Node | None, loc: tuple[int | str, ...]) -> int | None:
    """The file line of the deepest node on the error's path (pydantic's ``loc``)."""
    node = root
    line = None if node is None else node.start_mark.line + 1
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            node = next((v for k, v in node.value if k.value == str(part)), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            node = node.value[part] if part < len(node.value) else None
        else:
            node = None
        if node is None:
            break
        line = node.start_mark.line + 1
    return line


def _message(error: Mapping[str, Any]) -> str:
    if error["type"] == "extra_forbidden":
        return "unknown key"
    message = str(error["msg"])
    return message.removeprefix("Value error, ")


def _invalid(exc: ValidationError, root: yaml.Node | None, path: Path) -> RulesError:
    first = exc.errors()[0]  # later ones often follow from it; fix and re-run shows the next
    loc = tuple(first["loc"])
    line = _line_of(root, loc)
    where = f"{path}:{line}" if line else str(path)
    key = _key_path(loc)
    return RulesError(f"{key + ': ' if key else ''}{_message(first)}", where=where)


def _read(path: Path) -> tuple[Any, yaml.Node | None]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RulesError(f"cannot read the file: {exc}", where=str(path)) from exc
    try:
        return yaml.safe_load(text), yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise RulesError(f"not valid YAML: {getattr(exc, 'problem', exc)}", where=where) from exc


def load_rules(path: Path) -> MailRules:
    """Read and check the rules file; any problem is a :class:`RulesError` naming where."""
    data, root = _read(path)
    if not isinstance(data, dict):
        raise RulesError("the top level must be a mapping of sections", where=str(path))
    try:
        checked = _RulesFile.model_validate(data)
    except ValidationError as exc:
        raise _invalid(exc, root, path) from exc
    return _build(checked, str(path))
