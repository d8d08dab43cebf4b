"""The mail rules file: what the classifier looks for, kept as data operators can extend.

``config/mail-rules.yaml`` holds order-number patterns, marketplace notification rules and
keywords per language. It is validated once, at start-up, with every regular expression
compiled, so a typo stops the worker with the file, line and key path instead of
misfiling mail later. The meaning of each section is in ``docs/mail-rules.md``.

Patterns are RE2, not Python ``re``: mail is written by strangers, and RE2 runs in time
linear in the text whatever the pattern and the text say, where a backtracking engine can
take minutes on one crafted subject. RE2 has no lookarounds and no backreferences, so the
boundaries they would express (whole words, order numbers not inside longer numbers) are
built here from what RE2 has.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import re2
import yaml
from pydantic import (
    AfterValidator,
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
from worker.tracking import CARRIERS

# re2's compiled pattern: generic in its stubs only, so pydantic sees the plain class.
if TYPE_CHECKING:
    from typing import TypeAlias

    Pattern: TypeAlias = re2._Regexp[str]
else:
    Pattern = re2._Regexp

MAX_ORDER_NUMBERS = 32
"""Order numbers returned per text; the threader looks each one up, and no buyer names more."""

_NOT_LETTER_OR_DIGIT = r"[^\pL\pN]"
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'"})
_NO_RE2 = "patterns are RE2 syntax: lookarounds and backreferences are not supported"
_NEGATION_BEFORE_CHARS = 40
_NEGATION_AFTER_CHARS = 20


def _options() -> re2.Options:
    options = re2.Options()
    options.case_sensitive = False
    options.log_errors = False
    return options


_OPTIONS = _options()


def normalise(text: str) -> str:
    """NFKC with straight apostrophes: the form every pattern is written against.

    A lone surrogate (a stray escape in a header) becomes ``?``: RE2 reads UTF-8 only.
    """
    readable = text.encode("utf-8", "replace").decode("utf-8")
    return unicodedata.normalize("NFKC", readable).translate(_APOSTROPHES)


def _compiled(source: str) -> Pattern:
    try:
        return re2.compile(source, _OPTIONS)
    except re2.error as exc:
        said = exc.args[0] if exc.args else exc
        reason = said.decode("utf-8", "replace") if isinstance(said, bytes) else str(said)
        raise ValueError(f"bad regex {source!r}: {reason} ({_NO_RE2})") from None


def _checked(value: Any) -> Any:
    if isinstance(value, str):
        _compiled(value)
    return value


def _regex(value: Any) -> Any:
    return _compiled(value) if isinstance(value, str) else value


_CJK = _compiled(r"[\x{2e80}-\x{9fff}\x{ac00}-\x{d7af}\x{f900}-\x{faff}\x{ff66}-\x{ff9f}]")


def _keyword(value: Any) -> Any:
    """Latin-script keywords match whole words; Japanese and Chinese ones match anywhere.

    Group 1 is the keyword. A whole word is one with no letter or digit on either side: the
    sides are matched, not looked around, so the engine still backtracks into a shorter
    match ("doesn't heat" in "doesn't heat upstairs").
    """
    if not isinstance(value, str):
        return value
    _compiled(value)
    if _CJK.search(value):
        return _compiled(f"((?:{value}))")
    edge = _NOT_LETTER_OR_DIGIT
    return _compiled(f"(?:^|{edge})((?:{value}))(?:{edge}|$)")


def _multiline(value: Any) -> Any:
    return _compiled(f"(?m){_checked(value)}") if isinstance(value, str) else value


def _dotall(value: Any) -> Any:
    return _compiled(f"(?s){_checked(value)}") if isinstance(value, str) else value


Regex = Annotated[Pattern, BeforeValidator(_regex)]
DotAllRegex = Annotated[Pattern, BeforeValidator(_dotall)]
MultilineRegex = Annotated[Pattern, BeforeValidator(_multiline)]
KeywordRegex = Annotated[Pattern, BeforeValidator(_keyword)]
RegexSource = Annotated[str, AfterValidator(_checked)]
Language = Annotated[str, StringConstraints(pattern=r"^[a-z]{2,3}$")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)


class OrderNumberRule(_Strict):
    """An order number pattern, and the characters it must not touch on either side."""

    name: str
    pattern: Regex
    not_after: Regex | None = None
    """One character: a match right after such a character is part of something longer."""
    not_before: Regex | None = None
    """One character: a match right before such a character is part of something longer."""

    def numbers_in(self, text: str) -> Iterator[str]:
        """Each match standing alone, checked after the match: RE2 has no lookarounds, and
        a match's neighbours left unconsumed may start the next ("#1001 #1002")."""
        for found in self.pattern.finditer(text):
            start, end = found.span()
            if not (
                _one_of(self.not_after, text[start - 1 : start] if start else "")
                or _one_of(self.not_before, text[end : end + 1])
            ):
                yield found.group(1) if self.pattern.groups else found.group(0)


def _one_of(chars: Pattern | None, char: str) -> bool:
    return chars is not None and bool(char) and chars.fullmatch(char) is not None


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


class AutoReplyHeader(HeaderRule):
    notification: bool = False
    """Marketplace notifications carry it too: a matching marketplace rule wins."""


class BulkHeader(HeaderRule):
    mailing_list: bool = False
    """Added by a mailing list: not counted when the list is one of the seller's own, which
    passes buyers' mail on (a Google Group as the support address)."""


class Negation(_Strict):
    before: tuple[RegexSource, ...] = ()
    after: tuple[RegexSource, ...] = ()


class _AutoReply(_Strict):
    headers: tuple[AutoReplyHeader, ...] = ()
    subjects: dict[Language, tuple[Regex, ...]] = {}


class _Bulk(_Strict):
    headers: tuple[BulkHeader, ...] = ()


class _Unsubscribe(_Strict):
    max_lines: int = Field(4, ge=1)
    phrases: dict[Language, tuple[Regex, ...]] = {}


class _CarrierMail(_Strict):
    senders: dict[str, tuple[Regex, ...]] = {}
    """Carrier id (``worker.tracking.CARRIERS``) -> patterns of its senders' addresses."""
    delivered: dict[Language, tuple[KeywordRegex, ...]] = {}

    @model_validator(mode="after")
    def _known_carriers(self) -> _CarrierMail:
        unknown = sorted(set(self.senders) - set(CARRIERS))
        if unknown:
            raise ValueError(f"unknown carrier ids {unknown}: use those of worker/tracking.py")
        return self


class _RulesFile(_Strict):
    order_numbers: tuple[OrderNumberRule, ...] = ()
    relays: dict[str, tuple[Regex, ...]] = {}
    marketplace: tuple[MarketplaceRule, ...] = ()
    rating_words: dict[str, Annotated[int, Field(ge=1, le=5)]] = {}
    auto_reply: _AutoReply = _AutoReply()
    bulk: _Bulk = _Bulk()
    unsubscribe: _Unsubscribe = _Unsubscribe()
    quote_starts: tuple[MultilineRegex, ...] = ()
    reply_prefixes: Regex = _compiled(r"^\s*(?:re\s*:\s*)+")
    client_lines: tuple[Regex, ...] = ()
    complaint_priority: tuple[DisputeKind, ...] = ()
    complaints: dict[Language, dict[DisputeKind, tuple[KeywordRegex, ...]]] = {}
    negations: dict[Language, Negation] = {}
    carrier_mail: _CarrierMail = _CarrierMail()

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
    pattern: Pattern


@dataclass(frozen=True, slots=True)
class ComplaintKeyword:
    kind: DisputeKind
    language: str
    pattern: Pattern
    """Group 1 is the keyword; see ``_keyword``."""

    def spans(self, text: str) -> Iterator[tuple[int, int]]:
        """Where the keyword stands in the text, as a whole word if it is Latin-script."""
        return (found.span(1) for found in self.pattern.finditer(text))


@dataclass(frozen=True, slots=True, eq=False)
class MailRules:
    """The validated rules; built by :func:`load_rules`."""

    source: str
    order_number_rules: tuple[OrderNumberRule, ...]
    relays: tuple[tuple[str, Pattern], ...]
    marketplace: tuple[MarketplaceRule, ...]
    rating_words: Mapping[str, int]
    auto_reply_headers: tuple[AutoReplyHeader, ...]
    auto_reply_subjects: tuple[Keyword, ...]
    bulk_headers: tuple[BulkHeader, ...]
    unsubscribe_phrases: tuple[Keyword, ...]
    unsubscribe_max_lines: int
    quote_starts: tuple[Pattern, ...]
    reply_prefixes: Pattern
    client_lines: Pattern | None
    """Lines a mail program adds under the buyer's words ("Sent from my iPhone"), as one
    pattern; a whole line it matches is not the buyer's."""
    complaints: tuple[ComplaintKeyword, ...]
    """In the order they are tried: kinds by ``complaint_priority``, then file order."""
    negation_before: Pattern | None
    """Every language's ``before`` negations as one pattern, anchored at the window's end."""
    negation_after: Pattern | None
    carrier_senders: tuple[tuple[str, Pattern], ...] = ()
    """(carrier id, sender pattern), in the file's order."""
    delivered_phrases: tuple[Keyword, ...] = ()
    """A carrier's words for "your parcel was delivered"; group 1 is the phrase."""

    def carrier_of(self, sender: str) -> str | None:
        """The carrier whose sender pattern matches this address, if any."""
        return next((cid for cid, p in self.carrier_senders if p.search(sender)), None)

    def order_numbers_in(self, text: str) -> tuple[str, ...]:
        """Every order number in the text, first pattern first, without repeats."""
        found: dict[str, None] = {}
        for rule in self.order_number_rules:
            for number in rule.numbers_in(text):
                found[number] = None
                if len(found) == MAX_ORDER_NUMBERS:
                    return tuple(found)
        return tuple(found)

    def relay_marketplace(self, address: str) -> str | None:
        """The marketplace whose relay sent this address's mail, if any."""
        return next((name for name, p in self.relays if p.search(address.lower())), None)

    def marketplace_rule(self, sender: str, subject: str, text: str) -> MarketplaceRule | None:
        return next((r for r in self.marketplace if r.matches(sender, subject, text)), None)

    def without_reply_prefixes(self, subject: str) -> str:
        return self.reply_prefixes.sub("", subject, count=1).strip()

    def quote_start(self, text: str) -> int:
        """Where the first configured quote marker starts; the text's length if none does."""
        starts = (found.start() for p in self.quote_starts if (found := p.search(text)))
        return min(starts, default=len(text))

    def negated(self, text: str, start: int, end: int) -> bool:
        """A negation right before (or, for Japanese, after) the keyword turns it around.

        Every language's negations are tried: Japanese and Chinese share characters, so a
        keyword may match in a text of the other language.
        """
        before = text[max(0, start - _NEGATION_BEFORE_CHARS) : start]
        after = text[end : end + _NEGATION_AFTER_CHARS]
        return bool(
            (self.negation_before is not None and self.negation_before.search(before))
            or (self.negation_after is not None and self.negation_after.search(after))
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


def _keywords(table: Mapping[str, tuple[Pattern, ...]]) -> tuple[Keyword, ...]:
    return tuple(Keyword(lang, p) for lang, patterns in table.items() for p in patterns)


def _any_of(sources: list[str], *, before: bool) -> Pattern | None:
    """One pattern for many, so a keyword costs two searches whatever the languages."""
    if not sources:
        return None
    either = "|".join(f"(?:{source})" for source in sources)
    return _compiled(rf"(?:{either})\s*$" if before else rf"^\s*(?:{either})")


def _one_of_lines(patterns: tuple[Pattern, ...]) -> Pattern | None:
    if not patterns:
        return None
    return _compiled("|".join(f"(?:{p.pattern})" for p in patterns))


def _build(data: _RulesFile, source: str) -> MailRules:
    negations = data.negations.values()
    return MailRules(
        source=source,
        order_number_rules=data.order_numbers,
        relays=tuple((name, p) for name, patterns in data.relays.items() for p in patterns),
        marketplace=data.marketplace,
        rating_words={k.lower(): v for k, v in data.rating_words.items()},
        auto_reply_headers=data.auto_reply.headers,
        auto_reply_subjects=_keywords(data.auto_reply.subjects),
        bulk_headers=data.bulk.headers,
        unsubscribe_phrases=_keywords(data.unsubscribe.phrases),
        unsubscribe_max_lines=data.unsubscribe.max_lines,
        quote_starts=data.quote_starts,
        reply_prefixes=data.reply_prefixes,
        client_lines=_one_of_lines(data.client_lines),
        complaints=_complaint_keywords(data),
        negation_before=_any_of([p for n in negations for p in n.before], before=True),
        negation_after=_any_of([p for n in negations for p in n.after], before=False),
        carrier_senders=tuple(
            (cid, p) for cid, patterns in data.carrier_mail.senders.items() for p in patterns
        ),
        delivered_phrases=_keywords(data.carrier_mail.delivered),
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
