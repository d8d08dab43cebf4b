"""Decide what an inbound message is, and say why.

Pure: the verdict depends only on the message, the rules file and the mail we sent, so every
case is a fixture in a table. The order of the checks is the precedence in
``docs/mail-rules.md``: the seller's own mail, bounces, automatic replies, bulk mail,
unsubscribes, marketplace notifications, complaints, and everything else is a buyer's reply.
Complaints are looked for only in the buyer's own words, never in quoted or forwarded text
nor in lines of our own mail, since our check-in mail asks about damage.

Mail is hostile: every text is cut to a bounded size before anything reads it (Unicode
normalisation of a huge string is itself slow), and every pattern is RE2, linear in the text.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass

import quotequail

from worker.domain import Classification, MessageKind
from worker.dsn import classify_bounce
from worker.inbound import InboundMessage
from worker.rules import ComplaintKeyword, HeaderRule, MailRules, MarketplaceRule, normalise

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
"""A line this long found anywhere in our mail is ours, as a client re-wrapped it."""


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
) -> Classification:
    """The verdict and its evidence; never raises on a broken or hostile message.

    ``unsubscribe_addresses`` should hold the List-Unsubscribe mailbox only when it is not
    also where buyers reply, or every reply would count as an unsubscribe. ``ours`` are the
    text bodies we sent this buyer, newest first: their lines are not the buyer's words.
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
    cut = dataclasses.replace(
        message, subject=message.subject[:SUBJECT_CHARS], text=message.text[:TEXT_CHARS]
    )
    bounce = classify_bounce(cut)
    if bounce is not None:
        found = bounce.order_numbers or rules.order_numbers_in(f"{mail.subject}\n{mail.text}")
        return dataclasses.replace(bounce, order_numbers=found)
    rule = rules.marketplace_rule(mail.sender, mail.subject, mail.text)
    machine = _machine_made(mail, rules, rule, seller_addresses)
    if machine is not None:
        return dataclasses.replace(machine, order_numbers=rules.order_numbers_in(mail.subject))
    return _written(mail, rules, rule, unsubscribe_addresses)


def _plain(value: str, limit: int = _HEADER_CHARS) -> str:
    """A header value cut to size and made UTF-8 (a lone surrogate becomes ``?``), as is:
    unlike text, an address is not normalised, or a full-width look-alike would pass."""
    return value[:limit].encode("utf-8", "replace").decode("utf-8")


def _written(
    mail: _Mail, rules: MailRules, rule: MarketplaceRule | None, unsubscribe: frozenset[str]
) -> Classification:
    """Someone wrote it: an unsubscribe, a marketplace notification, a complaint or a reply."""
    words = _buyer_words(rule, mail, rules)
    numbers = rules.order_numbers_in(f"{mail.subject}\n{words}")
    request = _unsubscribe(mail.message, rules, mail.subject, words, unsubscribe)
    if request is not None:
        return Classification(MessageKind.UNSUBSCRIBE, request, order_numbers=numbers)
    if rule is not None:
        return _marketplace(rule, rules, mail.subject, mail.text, words)
    complaint = _complaint(rules, (rules.without_reply_prefixes(mail.subject), words))
    if complaint is not None:
        keyword, said = complaint
        return Classification(
            MessageKind.COMPLAINT,
            f"keyword={keyword.language}:{said}",
            dispute_kind=keyword.kind,
            order_numbers=numbers,
        )
    return Classification(MessageKind.REPLY, "rule=default", order_numbers=numbers)


def own_words(text: str, rules: MailRules, ours: tuple[str, ...] = ()) -> str:
    """What the buyer wrote: the text before the first quote or forward marker, without
    ``>`` lines and without lines of our own mail (``ours``) however they came back."""
    return _own_words(text, rules, _Ours.of(ours))


def _own_words(text: str, rules: MailRules, ours: _Ours) -> str:
    cut = min(_parser_quote_start(text), rules.quote_start(text))
    lines = (
        line
        for line in text[:cut].splitlines()
        if not line.lstrip().startswith(">") and not ours.echoes(line)
    )
    return "\n".join(lines).strip()


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
        parts: list[tuple[bool, str]] = quotequail.quote(
            shown, limit=len(lines) + 1, quote_intro_line=True
        )
    except Exception:  # a library reading a stranger's text; the rules' markers still apply
        return len(text)
    if len(parts) < 2:
        return len(text)
    first_quoted = len(lines) - parts[1][1].count("\n") - 1
    return sum(len(line) + 1 for line in lines[:first_quoted])


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
    auto = (a for a in rules.auto_reply_headers if not a.notification)
    found = _header(mail.message, auto, MessageKind.AUTO_REPLY) or _auto_subject(mail, rules)
    if found is not None or rule is not None:
        return found
    own_list = _own_list(mail.message, sellers)
    bulk = (b for b in rules.bulk_headers if not (b.mailing_list and own_list))
    notices = (a for a in rules.auto_reply_headers if a.notification)
    return _header(mail.message, bulk, MessageKind.BULK) or _header(
        mail.message, notices, MessageKind.AUTO_REPLY
    )


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
    """Evidence when the message is addressed to, or is essentially, a request to stop."""
    to = next((r for r in message.recipients if r in unsubscribe_addresses), None)
    if to is not None:
        return f"to={_plain(to)}"
    lines = [bare for bare in map(_bare, words.splitlines()) if bare]
    candidates = [_bare(rules.without_reply_prefixes(subject))]
    if len(lines) <= rules.unsubscribe_max_lines:
        candidates.extend(lines)
    for candidate in filter(None, candidates):
        for keyword in rules.unsubscribe_phrases:
            if keyword.pattern.fullmatch(candidate):
                return f"unsubscribe={keyword.language}:{candidate[:_EVIDENCE_CHARS]}"
    return None


def _complaint(rules: MailRules, texts: tuple[str, ...]) -> tuple[ComplaintKeyword, str] | None:
    """The first keyword, in priority order, found without a negation next to it."""
    flat = [" ".join(t.split()) for t in texts]
    for keyword in rules.complaints:
        for text in flat:
            for start, end in keyword.spans(text):
                if not rules.negated(text, start, end):
                    return keyword, text[start:end].lower()[:_EVIDENCE_CHARS]
    return None


def _marketplace(
    rule: MarketplaceRule, rules: MailRules, subject: str, text: str, words: str
) -> Classification:
    numbers = rules.order_numbers_in(f"{subject}\n{text}")
    evidence = f"rule={rule.id}"
    if rule.relayed:
        complaint = _complaint(rules, (words,))
        if complaint is not None:
            keyword, said = complaint
            return Classification(
                MessageKind.COMPLAINT,
                f"{evidence} keyword={keyword.language}:{said}",
                dispute_kind=keyword.kind,
                marketplace=rule.marketplace,
                relayed=True,
                order_numbers=numbers,
            )
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
