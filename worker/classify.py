"""Decide what an inbound message is, and say why.

Pure: the verdict depends only on the message, the rules file and the mail we sent, so every
case is a fixture in a table. The order of the checks is the precedence in
``docs/mail-rules.md``: the seller's own mail, bounces, automatic replies, carriers'
delivery notices, bulk mail,
unsubscribes, marketplace notifications, complaints, and everything else is a buyer's reply.
Complaints are looked for only in the buyer's own words, never in quoted or forwarded text
nor in lines of our own mail, since our check-in mail asks about damage.

Mail is hostile: every text is cut to a bounded size before anything reads it (Unicode
normalisation of a huge string is itself slow), and every pattern is RE2, linear in the text.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import quotequail
import re2

from worker.domain import Classification, Intent, MessageKind
from worker.dsn import classify_bounce
from worker.inbound import InboundMessage
from worker.intent import IntentReader, IntentReading, ReadsIntent
from worker.rules import (
    HeaderRule,
    Keyword,
    MailRules,
    MarketplaceRule,
    Pattern,
    normalise,
)
from worker.tracking import MAX_NUMBER_LENGTH, clean_number

SUBJECT_CHARS = 4 * 1024
TEXT_CHARS = 64 * 1024
"""Of the body, this much is read: far more than any buyer writes by hand."""
OURS_CHARS = 64 * 1024
"""Of the mail we sent the buyer (newest first), this much is compared with their lines."""
_HEADER_CHARS = 1024
_EVIDENCE_CHARS = 80
_PARSER_LINES = 200
_PARSER_COLUMNS = 128
"""What the reply parser is shown: its patterns backtrack within a line (cubic on a long
one), so lines are cut, and the lines past these are read by ``quote_starts`` only."""
_PIECE_CHARS = 20
_HEADER_LINES = 6
"""A reply header (attribution, or Outlook's and web.de's From/Sent block) is this many lines
at most: a ``>`` quote further down belongs to something else."""
_FORWARD = re.compile(
    r"(?i)forward|weitergeleitet|transf[ée]r|r[ée]exp[ée]di|reenviado|inoltrat|転送|转发|轉寄"
)
"""A forwarded message's header: what follows is another's mail, quoted or not."""
_NEXT_HEADER = re.compile(r"^-{5,}|^_{5,}\s*$")
"""Where an answer below a quote ends: a forward or Outlook separator."""
"""A line this long found anywhere in our mail is ours, as a client re-wrapped it."""
MAX_TRACKING_NUMBERS = 32
"""What may be tracking numbers, kept per carrier notice; each is looked up in the store."""
_MIN_TRACKING_CHARS = 8
"""Shorter runs of letters and digits are dates, times and house numbers, not parcels."""
_TRACKING_WORD = r"[A-Za-z0-9-]*[0-9][A-Za-z0-9-]*"
_TRACKING_RUN = re2.compile(f"{_TRACKING_WORD}(?: {_TRACKING_WORD})*")
"""Words with a digit, single spaces between them: a number alone (``1Z999AA10123456784``)
or printed in groups (``00340 43416 1234 5678 90``)."""


@dataclass(frozen=True, slots=True)
class _Ours:
    """The lines of the mail we sent this buyer: coming back, they are never the buyer's."""

    lines: frozenset[str]
    text: str

    @classmethod
    def of(cls, bodies: tuple[str, ...]) -> _Ours:
        """A ``>`` line of ours quotes someone else (the buyer, maybe), so it is not ours."""
        lines = normalise("\n".join(bodies)[:OURS_CHARS]).splitlines()
        keys = [_key(line) for line in lines if not line.lstrip().startswith(">")]
        kept = [key for key in keys if key]
        return cls(frozenset(kept), " ".join(kept))

    def echoes(self, line: str) -> bool:
        key = _key(line)
        return bool(key) and (key in self.lines or (len(key) >= _PIECE_CHARS and key in self.text))


_NONE_OF_OURS = _Ours(frozenset(), "")


def _key(line: str) -> str:
    return " ".join(line.lstrip(" \t>").split()).casefold()


# Many patterns, one pass --------------------------------------------------------------------
#
# The rules hold hundreds of patterns (auto-reply subjects, unsubscribe phrases, marketplace
# senders), and trying each in turn costs a call, and an encoding of the text, per pattern.
# Each list is also compiled as one alternation, which says in one pass whether any of them
# matches; only then are they tried, in the rules' order, exactly as before: the verdict and
# its evidence do not change, only the patterns that cannot match are skipped.

_OPTION_NAMES = (
    *("max_mem", "encoding", "posix_syntax", "longest_match", "log_errors", "literal"),
    *("never_nl", "dot_nl", "never_capture", "case_sensitive", "perl_classes"),
    *("word_boundary", "one_line"),
)


@dataclass(frozen=True, slots=True)
class _AnyOf:
    """Whether any of many RE2 patterns matches a text, in one pass. RE2 goes on with a
    slower automaton when the fast one runs out of memory, so it is never wrong."""

    any_of: re2._Regexp[bytes]

    def found_in(self, text: bytes) -> bool:
        return self.any_of.search(text) is not None

    def whole(self, text: bytes) -> bool:
        """Whether one of the patterns matches the whole of ``text``."""
        return self.any_of.fullmatch(text) is not None


def _any_of(patterns: Sequence[Pattern]) -> _AnyOf | None:
    """``None`` when the patterns cannot be read together: then each is tried, as before."""
    options = _shared_options(patterns)
    if options is None:
        return None
    try:
        return _AnyOf(re2.compile("|".join(f"(?:{p.pattern})" for p in patterns).encode(), options))
    except re2.error:
        return None


def _shared_options(patterns: Sequence[Pattern]) -> re2.Options | None:
    """The patterns' options, if they all have the same, with their groups not captured:
    whether (and where) a pattern matches does not depend on its groups, and RE2 answers
    several times faster without them."""
    values = {tuple(getattr(p.options, name) for name in _OPTION_NAMES) for p in patterns}
    if len(values) != 1:
        return None
    options = re2.Options()
    for name, value in zip(_OPTION_NAMES, values.pop(), strict=True):
        setattr(options, name, value)
    options.never_capture = True
    return options


@dataclass(frozen=True, slots=True)
class _Index:
    """The rules' pattern lists, each read in one pass; built once per rules object."""

    auto_subjects: _AnyOf | None
    unsubscribe: _AnyOf | None
    quote_starts: Pattern | None
    """The quote markers as one alternation: its first match starts where the first of
    theirs does."""
    senders: _AnyOf | None
    """Every marketplace rule's sender patterns: a sender none of them matches has no rule."""
    reply_prefixes: _AnyOf | None
    """Whether a subject has a reply prefix to take off at all (most have none)."""


def compile_index(rules: MailRules) -> None:
    """Compile the rules' combined patterns now, at start-up; else the first message does."""
    _index(rules)


@functools.lru_cache(maxsize=8)
def _index(rules: MailRules) -> _Index:
    senders = [p for rule in rules.marketplace for p in rule.senders]
    return _Index(
        auto_subjects=_any_of([k.pattern for k in rules.auto_reply_subjects])
        if rules.auto_reply_subjects
        else None,
        unsubscribe=_any_of([k.pattern for k in rules.unsubscribe_phrases])
        if rules.unsubscribe_phrases
        else None,
        quote_starts=_one_pattern(rules.quote_starts),
        senders=_any_of(senders) if senders else None,
        reply_prefixes=_any_of([rules.reply_prefixes]),
    )


def _one_pattern(patterns: Sequence[Pattern]) -> Pattern | None:
    options = _shared_options(patterns) if patterns else None
    if options is None:
        return None
    try:
        return re2.compile("|".join(f"(?:{p.pattern})" for p in patterns), options)
    except re2.error:
        return None


def _quote_start(rules: MailRules, text: str) -> int:
    """``rules.quote_start``, in one pass: the leftmost match of the alternation starts where
    the first of the markers' first matches does."""
    if not rules.quote_starts:
        return len(text)
    pattern = _index(rules).quote_starts
    if pattern is None:
        return rules.quote_start(text)
    found = pattern.search(text)
    return len(text) if found is None else found.start()


def _without_reply_prefixes(rules: MailRules, subject: str) -> str:
    """``rules.without_reply_prefixes``, which a subject without a prefix leaves stripped."""
    prefixes = _index(rules).reply_prefixes
    if prefixes is not None and not prefixes.found_in(subject.encode()):
        return subject.strip()
    return rules.without_reply_prefixes(subject)


def _marketplace_rule(rules: MailRules, mail: _Mail) -> MarketplaceRule | None:
    senders = _index(rules).senders
    if senders is not None and not senders.found_in(mail.sender.encode()):
        return None  # every rule needs one of its senders
    return rules.marketplace_rule(mail.sender, mail.subject, mail.text)


@dataclass(frozen=True, slots=True)
class _Mail:
    """The message as the rules read it: cut to size, normalised, and what we sent."""

    message: InboundMessage
    subject: str
    text: str
    sender: str
    ours: _Ours


def classify(
    message: InboundMessage,
    rules: MailRules,
    *,
    seller_addresses: frozenset[str],
    unsubscribe_addresses: frozenset[str] = frozenset(),
    ours: tuple[str, ...] = (),
    reader: ReadsIntent | None = None,
) -> Classification:
    """The verdict and its evidence; never raises on a broken or hostile message.

    ``unsubscribe_addresses`` should hold the List-Unsubscribe mailbox only when it is not
    also where buyers reply, or every reply would count as an unsubscribe. ``ours`` are the
    text bodies we sent this buyer, newest first: their lines are not the buyer's words.
    ``reader`` reads what the buyer's words want; by default the model in the package.
    """
    mail = _Mail(
        message,
        normalise(message.subject[:SUBJECT_CHARS]),
        normalise(message.text[:TEXT_CHARS]),
        _plain(message.sender),
        _Ours.of(ours) if ours else _NONE_OF_OURS,
    )
    if message.sender and message.sender in seller_addresses:
        words = _own_words(mail.text, rules, _NONE_OF_OURS)
        numbers = rules.order_numbers_in(f"{mail.subject}\n{words}")
        return Classification(MessageKind.SELLER, f"from={mail.sender}", order_numbers=numbers)
    cut = message
    if len(message.subject) > SUBJECT_CHARS or len(message.text) > TEXT_CHARS:
        cut = dataclasses.replace(
            message, subject=message.subject[:SUBJECT_CHARS], text=message.text[:TEXT_CHARS]
        )
    bounce = classify_bounce(cut)
    if bounce is not None:
        found = bounce.order_numbers or rules.order_numbers_in(f"{mail.subject}\n{mail.text}")
        return dataclasses.replace(bounce, order_numbers=found)
    delivered = _delivered(mail, rules)
    if delivered is not None and _auto_reply(mail, rules) is None:
        return delivered
    rule = _marketplace_rule(rules, mail)
    machine = _machine_made(mail, rules, rule, seller_addresses)
    if machine is not None:
        return dataclasses.replace(machine, order_numbers=rules.order_numbers_in(mail.subject))
    return _written(mail, rules, rule, unsubscribe_addresses, reader or IntentReader.shipped())


def _plain(value: str, limit: int = _HEADER_CHARS) -> str:
    """A header value cut to size and made UTF-8 (a lone surrogate becomes ``?``), as is:
    unlike text, an address is not normalised, or a full-width look-alike would pass."""
    return value[:limit].encode("utf-8", "replace").decode("utf-8")


def _written(
    mail: _Mail,
    rules: MailRules,
    rule: MarketplaceRule | None,
    unsubscribe: frozenset[str],
    reader: ReadsIntent,
) -> Classification:
    """Someone wrote it: an unsubscribe, a marketplace notification, or the buyer's words,
    read for what they want."""
    words = _buyer_words(rule, mail, rules)
    numbers = rules.order_numbers_in(f"{mail.subject}\n{words}")
    subject = _without_reply_prefixes(rules, mail.subject)
    request = _unsubscribe(mail.message, rules, subject, words, unsubscribe)
    if request is not None:
        return Classification(
            MessageKind.UNSUBSCRIBE,
            request,
            order_numbers=numbers,
            intent=Intent.UNSUBSCRIBE,
            confidence=1.0,
        )
    if rule is not None and not rule.relayed:
        return _marketplace(rule, rules, mail.subject, mail.text, words)
    reading = reader.read(_own_subject(mail.subject, subject, rule), words)
    if rule is not None:
        if reading.intent.dispute_kind is None:
            return dataclasses.replace(
                _marketplace(rule, rules, mail.subject, mail.text, words),
                intent=reading.intent,
                confidence=reading.confidence,
            )
        return _buyer_verdict(reading, numbers, rule=rule, rules=rules, mail=mail)
    return _buyer_verdict(reading, numbers)


def _own_subject(subject: str, stripped: str, rule: MarketplaceRule | None) -> str:
    """The subject, when the buyer wrote it: a reply's subject is ours (our check-in asks
    whether anything arrived damaged), a relay's is the marketplace's."""
    if rule is not None or stripped != subject.strip():
        return ""
    return stripped


def _buyer_verdict(
    reading: IntentReading,
    numbers: tuple[str, ...],
    *,
    rule: MarketplaceRule | None = None,
    rules: MailRules | None = None,
    mail: _Mail | None = None,
) -> Classification:
    """What the buyer's words do: a complaint pauses, a sure unsubscribe suppresses, the rest
    is a reply tagged with its intent. ``rule``: the marketplace that relayed the words."""
    kind = MessageKind.REPLY
    if reading.intent.dispute_kind is not None:
        kind = MessageKind.COMPLAINT
    elif reading.intent is Intent.UNSUBSCRIBE:
        kind = MessageKind.UNSUBSCRIBE
    evidence = reading.evidence
    marketplace = None
    if rule is not None and rules is not None and mail is not None:
        evidence = f"rule={rule.id} {evidence}"
        marketplace = rule.marketplace
        numbers = rules.order_numbers_in(f"{mail.subject}\n{mail.text}")
    return Classification(
        kind,
        evidence,
        dispute_kind=reading.intent.dispute_kind,
        marketplace=marketplace,
        relayed=rule is not None,
        order_numbers=numbers,
        intent=reading.intent,
        confidence=reading.confidence,
        needs_review=reading.needs_review and kind is MessageKind.COMPLAINT,
    )


def own_words(text: str, rules: MailRules, ours: tuple[str, ...] = ()) -> str:
    """What the buyer wrote: the text before the first quote or forward marker, without
    ``>`` lines and without lines of our own mail (``ours``) however they came back."""
    return _own_words(text, rules, _Ours.of(ours))


def _own_words(text: str, rules: MailRules, ours: _Ours) -> str:
    cut = min(_parser_quote_start(text), _quote_start(rules, text))
    above = [line for line in text[:cut].splitlines() if not _quoted(line, ours)]
    below: list[str] = []
    if not "".join(above).strip():  # nothing on top: the answer is below, or between
        below = [line for line in _below_quote(text[cut:]) if not _quoted(line, ours)]
    signature = rules.client_lines
    lines = [*above, *below]
    if signature is not None:
        lines = [line for line in lines if not signature.fullmatch(line.strip())]
    return "\n".join(lines).strip()


def _quoted(line: str, ours: _Ours) -> bool:
    return line.lstrip().startswith(">") or ours.echoes(line)


def _below_quote(rest: str) -> list[str]:
    """A bottom-posted or inline answer (the buyer wrote nothing above the quote): the
    unmarked lines among and after a ``>`` quote that follows the reply header within
    ``_HEADER_LINES`` lines. (Under a top-posted answer, an unmarked line in the quote is
    ours, wrapped by a client that did not mark it.) Text after a header with
    no ``>`` lines (Outlook's, a forward) is someone else's mail, as is all after a
    signature or a second header."""
    lines = rest.splitlines()
    if lines and _FORWARD.search(lines[0]):
        return []
    first = next((n for n, line in enumerate(lines) if line.lstrip().startswith(">")), None)
    if first is None or first > _HEADER_LINES:
        return []
    kept = []
    for line in lines[first:]:
        if line == "-- " or _NEXT_HEADER.match(line):
            break
        kept.append(line)
    return kept


def _parser_quote_start(text: str) -> int:
    """Where quotequail sees a reply or forward header ("On ... wrote:", "Begin forwarded
    message:", "---------- Forwarded message ---------"); the text's length if nowhere.

    quotequail rather than mail-parser-reply: quotequail tries anchored patterns one line at
    a time, so the lines and columns it is shown bound its work, while mail-parser-reply
    runs whole-text patterns with nested lazy repeats inside lookaheads (a single 4 KB line
    starting "On " takes it 0.4 s, growing with the square of the length) and, on our
    fixtures, misses "Le ... a écrit :" and "El ... escribió:". quotequail misses the Italian,
    Japanese and Chinese headers and Outlook's From:/Sent: blocks; ``quote_starts`` has them.
    """
    lines = text.split("\n", _PARSER_LINES)[:_PARSER_LINES]
    shown = "\n".join(line[:_PARSER_COLUMNS] for line in lines)
    try:
        if _QUOTE_HEADERS is not None:
            first_quoted = _QUOTE_HEADERS.first_line(shown)
            if first_quoted is None:
                return len(text)
            return sum(len(line) + 1 for line in lines[:first_quoted])
        parts: list[tuple[bool, str]] = quotequail.quote(
            shown, limit=len(lines) + 1, quote_intro_line=True
        )
    except Exception:  # a library reading a stranger's text; the rules' markers still apply
        return len(text)
    if len(parts) < 2:
        return len(text)
    first_quoted = len(lines) - parts[1][1].count("\n") - 1
    return sum(len(line) + 1 for line in lines[:first_quoted])


@dataclass(frozen=True, slots=True)
class _QuoteHeaders:
    """quotequail's search for the line a reply or forward header starts on, with its own
    patterns as one alternation: ``quotequail.quote`` tries each of its 43 patterns in turn
    on each line (and pair of wrapped lines) until one matches, and most mail has no such
    line. The answer is the same line (tests/unit/test_classify.py compares the two)."""

    pattern: re.Pattern[str]
    wrap: int
    join: Callable[[list[str]], str]

    @classmethod
    def of_quotequail(cls) -> _QuoteHeaders | None:
        """``None`` (quotequail reads every text) if its internals are not as expected."""
        try:
            from quotequail import _internal, _patterns

            patterns = [p for group in _patterns.COMPILED_PATTERN_MAP.values() for p in group]
            flags = {p.flags for p in patterns}
            wrap, join = int(_patterns.MAX_WRAP_LINES), _internal.join_wrapped_lines
            if len(flags) != 1 or not callable(join) or not patterns:
                return None
            either = "|".join(f"(?:{p.pattern})" for p in patterns)
            return cls(re.compile(either, flags.pop()), wrap, join)
        except Exception:  # another version of the library: no shortcut
            return None

    def first_line(self, text: str) -> int | None:
        """Where ``quotequail.quote(text, limit=<past the end>, quote_intro_line=True)``
        splits the text, as a line index; ``None`` where it does not: its
        ``find_quote_position``, any pattern at once."""
        lines = text.split("\n")
        for n in range(len(lines)):
            for m in range(self.wrap):
                line = self.join(lines[n : n + 1 + m])
                if line.startswith(">"):
                    line = line[1:].strip()
                if not line:
                    break
                if self.pattern.match(line.strip()):
                    return n
        return None


_QUOTE_HEADERS = _QuoteHeaders.of_quotequail()


def _buyer_words(rule: MarketplaceRule | None, mail: _Mail, rules: MailRules) -> str:
    """A relayed message's buyer part when the rule can find it; else the unquoted text."""
    if rule is not None and rule.buyer_text is not None:
        found = rule.buyer_text.search(mail.text)
        if found is not None:
            return _own_words(found.group(1).strip(), rules, mail.ours)
    return _own_words(mail.text, rules, mail.ours)


def _machine_made(
    mail: _Mail, rules: MailRules, rule: MarketplaceRule | None, sellers: frozenset[str]
) -> Classification | None:
    """Automatic replies, then bulk mail, then automatic notifications. Marketplaces send
    with list and Auto-Submitted headers too, so a matching marketplace rule wins over the
    last two; a real automatic reply wins over everything, list headers or not."""
    found = _auto_reply(mail, rules)
    if found is not None or rule is not None:
        return found
    own_list = _own_list(mail.message, sellers)
    bulk = (b for b in rules.bulk_headers if not (b.mailing_list and own_list))
    notices = (a for a in rules.auto_reply_headers if a.notification)
    return _header(mail.message, bulk, MessageKind.BULK) or _header(
        mail.message, notices, MessageKind.AUTO_REPLY
    )


def _auto_reply(mail: _Mail, rules: MailRules) -> Classification | None:
    """A real automatic reply: its headers (not a notification's) or its subject."""
    auto = (a for a in rules.auto_reply_headers if not a.notification)
    return _header(mail.message, auto, MessageKind.AUTO_REPLY) or _auto_subject(mail, rules)


def _delivered(mail: _Mail, rules: MailRules) -> Classification | None:
    """A carrier's sender saying, not negated, that a parcel was delivered. A buyer saying
    the same words is not a carrier: the sender decides first. Whether the sender is who
    it says is for ``worker.origin`` to prove before the notice acts."""
    if not rules.delivered_phrases:
        return None
    carrier = rules.carrier_of(mail.sender)
    if carrier is None:
        return None
    found = _delivered_phrase(rules, (mail.subject, mail.text))
    if found is None:
        return None
    keyword, said = found
    numbers = tracking_numbers_in(f"{mail.subject}\n{mail.text}")
    evidence = (
        f"carrier={carrier} phrase={keyword.language}:{said} "
        f"tracking={numbers[0] if numbers else 'none'}"
    )
    return Classification(
        MessageKind.DELIVERED, evidence, carrier=carrier, tracking_numbers=numbers
    )


def _delivered_phrase(rules: MailRules, texts: tuple[str, ...]) -> tuple[Keyword, str] | None:
    flat = [" ".join(t.split()) for t in texts]
    for keyword in rules.delivered_phrases:
        for text in flat:
            for found in keyword.pattern.finditer(text):
                start, end = found.span(1)
                if not rules.negated(text, start, end):
                    return keyword, text[start:end].lower()[:_EVIDENCE_CHARS]
    return None


def tracking_numbers_in(text: str) -> tuple[str, ...]:
    """What may be tracking numbers in a carrier's text, compact and upper-case as
    ``worker.tracking.clean_number`` makes them, first seen first, at most
    ``MAX_TRACKING_NUMBERS``. Each run of words with digits counts whole (a number printed
    in groups) and word by word (a number next to a date)."""
    found: dict[str, None] = {}
    for run in _TRACKING_RUN.finditer(text[:TEXT_CHARS]):
        words = run.group(0).split(" ")
        joined = (
            [run.group(0)] if 1 < len(words) and len(run.group(0)) <= 2 * MAX_NUMBER_LENGTH else []
        )
        for candidate in (*joined, *words):
            number = clean_number(candidate)
            if number is not None and len(number) >= _MIN_TRACKING_CHARS:
                found[number.upper()] = None
                if len(found) == MAX_TRACKING_NUMBERS:
                    return tuple(found)
    return tuple(found)


def _header(
    message: InboundMessage, rules: Iterable[HeaderRule], kind: MessageKind
) -> Classification | None:
    """The first header a rule names whose value matches it, as ``header=Name: value``."""
    for rule in rules:
        for value in message.headers_named(rule.header):
            shown = _plain(value.strip())
            if rule.pattern.search(shown):
                return Classification(kind, f"header={rule.header}: {shown[:_EVIDENCE_CHARS]}")
    return None


def _auto_subject(mail: _Mail, rules: MailRules) -> Classification | None:
    index = _index(rules).auto_subjects
    if index is not None and not index.found_in(mail.subject.encode()):
        return None
    for keyword in rules.auto_reply_subjects:
        found = keyword.pattern.search(mail.subject)
        if found is not None:
            said = found.group(0).strip()[:_EVIDENCE_CHARS]
            return Classification(MessageKind.AUTO_REPLY, f"subject={keyword.language}:{said}")
    return None


def _own_list(message: InboundMessage, sellers: frozenset[str]) -> bool:
    """Whether one of the seller's own lists passed the message on: its List-Id is a seller
    address with ``.`` for ``@`` (Google Groups), or its List-Post a seller's mailto."""
    named = {
        item.strip().lower()
        for value in (*message.headers_named("List-Id"), *message.headers_named("List-Post"))
        for item in _bracketed(_plain(value))
    }
    return any(a.replace("@", ".") in named or f"mailto:{a}" in named for a in sellers)


def _bracketed(value: str) -> list[str]:
    return [piece.partition(">")[0] for piece in value.split("<")[1:]]


def _bare(line: str) -> str:
    """The line without leading and trailing punctuation, its spaces collapsed."""
    start = next((i for i, c in enumerate(line) if c.isalnum()), len(line))
    end = next((i for i in range(len(line), start, -1) if line[i - 1].isalnum()), start)
    return " ".join(line[start:end].split())


def _unsubscribe(
    message: InboundMessage,
    rules: MailRules,
    subject: str,
    words: str,
    unsubscribe_addresses: frozenset[str],
) -> str | None:
    """Evidence when the message is addressed to, or is essentially, a request to stop.
    ``subject`` is without its reply prefixes."""
    to = next((r for r in message.recipients if r in unsubscribe_addresses), None)
    if to is not None:
        return f"to={_plain(to)}"
    lines = [bare for bare in map(_bare, words.splitlines()) if bare]
    candidates = [_bare(subject)]
    if len(lines) <= rules.unsubscribe_max_lines:
        candidates.extend(lines)
    index = _index(rules).unsubscribe
    for candidate in filter(None, candidates):
        if index is not None and not index.whole(candidate.encode()):
            continue
        for keyword in rules.unsubscribe_phrases:
            if keyword.pattern.fullmatch(candidate):
                return f"unsubscribe={keyword.language}:{candidate[:_EVIDENCE_CHARS]}"
    return None


def _marketplace(
    rule: MarketplaceRule, rules: MailRules, subject: str, text: str, words: str
) -> Classification:
    numbers = rules.order_numbers_in(f"{subject}\n{text}")
    evidence = f"rule={rule.id}"
    rating = rule.rating_in(text, rules.rating_words) or rule.rating_in(subject, rules.rating_words)
    return Classification(
        rule.message_kind,
        evidence,
        dispute_kind=rule.dispute_kind,
        rating=rating,
        marketplace=rule.marketplace,
        relayed=rule.relayed,
        order_numbers=numbers,
    )
