"""Decide what an inbound message is, and say why.

Pure: the verdict depends only on the message and the rules file, so every case is a
fixture in a table. The order of the checks is the precedence in ``docs/mail-rules.md``:
the seller's own mail, bounces, automatic replies, unsubscribes, marketplace notifications,
complaints, and everything else is a buyer's reply. Complaints are looked for only in the
buyer's own words, never in quoted text, since our own check-in mail asks about damage.
"""

from __future__ import annotations

import dataclasses
import re

from worker.domain import Classification, MessageKind
from worker.dsn import classify_bounce
from worker.inbound import InboundMessage
from worker.rules import ComplaintKeyword, MailRules, MarketplaceRule, normalise

_EDGES = re.compile(r"^[\W_]+|[\W_]+$")
_EVIDENCE_CHARS = 80


def classify(
    message: InboundMessage,
    rules: MailRules,
    *,
    seller_addresses: frozenset[str],
    unsubscribe_addresses: frozenset[str] = frozenset(),
    ours: tuple[str, ...] = (),
) -> Classification:
    """The verdict and its evidence; never raises on a broken message.

    ``unsubscribe_addresses`` should hold the List-Unsubscribe mailbox only when it is not
    also where buyers reply, or every reply would count as an unsubscribe.
    """
    subject = normalise(message.subject)
    text = normalise(message.text)
    if message.sender and message.sender in seller_addresses:
        numbers = rules.order_numbers_in(f"{subject}\n{own_words(text, rules)}")
        return Classification(MessageKind.SELLER, f"from={message.sender}", order_numbers=numbers)
    bounce = classify_bounce(message)
    if bounce is not None:
        found = bounce.order_numbers or rules.order_numbers_in(f"{subject}\n{text}")
        return dataclasses.replace(bounce, order_numbers=found)
    rule = rules.marketplace_rule(message.sender, subject, text)
    return _after_bounces(message, rules, subject, text, rule, unsubscribe_addresses)


def _after_bounces(
    message: InboundMessage,
    rules: MailRules,
    subject: str,
    text: str,
    rule: MarketplaceRule | None,
    unsubscribe_addresses: frozenset[str],
) -> Classification:
    auto = _auto_reply(message, rules, subject, yield_to_marketplace=rule is not None)
    if auto is not None:
        return dataclasses.replace(auto, order_numbers=rules.order_numbers_in(subject))
    words = _buyer_words(rule, text, rules)
    numbers = rules.order_numbers_in(f"{subject}\n{words}")
    unsubscribe = _unsubscribe(message, rules, subject, words, unsubscribe_addresses)
    if unsubscribe is not None:
        return Classification(MessageKind.UNSUBSCRIBE, unsubscribe, order_numbers=numbers)
    if rule is not None:
        return _marketplace(rule, rules, subject, text, words)
    complaint = _complaint(rules, (rules.without_reply_prefixes(subject), words))
    if complaint is not None:
        keyword, said = complaint
        return Classification(
            MessageKind.COMPLAINT,
            f"keyword={keyword.language}:{said}",
            dispute_kind=keyword.kind,
            order_numbers=numbers,
        )
    return Classification(MessageKind.REPLY, "rule=default", order_numbers=numbers)


def own_words(text: str, rules: MailRules) -> str:
    """The text before the first quote marker, without ``>`` lines: what the buyer wrote."""
    starts = (found.start() for p in rules.quote_starts if (found := p.search(text)))
    cut = min(starts, default=len(text))
    lines = (line for line in text[:cut].splitlines() if not line.lstrip().startswith(">"))
    return "\n".join(lines).strip()


def _buyer_words(rule: MarketplaceRule | None, text: str, rules: MailRules) -> str:
    """A relayed message's buyer part when the rule can find it; else the unquoted text."""
    if rule is not None and rule.buyer_text is not None:
        found = rule.buyer_text.search(text)
        if found is not None:
            return own_words(found.group(1).strip(), rules)
    return own_words(text, rules)


def _auto_reply(
    message: InboundMessage, rules: MailRules, subject: str, *, yield_to_marketplace: bool
) -> Classification | None:
    for header in rules.auto_reply_headers:
        if header.notification and yield_to_marketplace:
            continue
        for value in message.headers_named(header.header):
            if header.pattern.search(value.strip()):
                evidence = f"header={header.header}: {value.strip()[:_EVIDENCE_CHARS]}"
                return Classification(MessageKind.AUTO_REPLY, evidence)
    for keyword in rules.auto_reply_subjects:
        found = keyword.pattern.search(subject)
        if found is not None:
            evidence = f"subject={keyword.language}:{found.group(0).strip()}"
            return Classification(MessageKind.AUTO_REPLY, evidence)
    return None


def _bare(line: str) -> str:
    return " ".join(_EDGES.sub("", line).split())


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
        return f"to={to}"
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
            for found in keyword.pattern.finditer(text):
                if not rules.negated(text, found.start(), found.end()):
                    return keyword, found.group(0).lower()
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
