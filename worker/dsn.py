"""Read delivery-status notifications: who failed, why, and which of our sends caused it.

A hard bounce suppresses the buyer for good, and a wrongly suppressed buyer never hears from
the seller again, so only the recipient's own permanent failure is hard: a status that says
the address or its domain is bad (5.1.1, 5.1.2, 5.1.3, 5.1.6, 5.1.10, 5.4.4), or, behind an
unspecific one (5.0.0, 5.x.0, none), words that say so, in the wording of the big MTAs and
providers and in their languages (the tables below). Words about the sender, policy,
reputation, authentication, rate, size or storage win over those, and so does the SMTP
stage: a refusal of MAIL FROM is about us, one after DATA came once the address had been
accepted, and a relayed "user unknown" whose stage the report does not show proves nothing
(filtering gateways and some carriers answer so after DATA). A delay warning, a 4.x.x status
and anything unclear are soft.

The server's own words about a recipient are read first, then the report's status, then the
mailer's prose around the recipient. Reports are read from their RFC 3464 structure, from a
mailer's prose (X-Failed-Recipients, qmail, Exchange, Domino...) and from Amazon SES's JSON;
feedback-loop complaints by :mod:`worker.feedback`. Pure; never raises on bad mail; every
regex is linear-time (re2) and reads a capped text.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from email.message import Message
from enum import Enum
from typing import Any

import re2

from worker.domain import Bounce, Classification, MessageKind
from worker.feedback import (
    ADDRESS,
    MAX_FIELD_CHARS,
    MAX_PART_BYTES,
    MSGID,
    Parts,
    addresses_in,
    attached_headers,
    block_fields,
    header_value,
    loose_fields,
    own_parts,
    read_feedback,
    ses_notification,
    ses_original_id,
)
from worker.inbound import MAX_TEXT_CHARS, InboundMessage, decode_bytes

MAX_DIAGNOSTIC_CHARS = 300
_WINDOW_BEFORE, _WINDOW_AFTER = 400, 900
"""The text read about one recipient: around its first mention in the mailer's prose."""


class _Reading(Enum):
    """What the server's words are about; ``PROVIDER_*`` are one provider's own wording."""

    PROVIDER_HARD = "provider hard"
    PROVIDER_SOFT = "provider soft"
    SENDER = "sender"
    POLICY = "policy"
    SOFT = "soft"
    DOMAIN = "domain"
    ADDRESS = "address"


# The remote server's words, per language. Latin-script phrases match whole words. -----------

_ADDRESS_WORDS = {
    "en": (
        r"(?:user|recipient|mailbox|address|account|addressee)\s+(?:is\s+)?unknown",
        r"unknown\s+(?:local\s+)?(?:user|recipient|mailbox|address|account|e-?mail\s+address)",
        r"no\s+such\s+(?:user|recipient|mailbox|address|account|person|local\s+user)",
        r"(?:user|recipient|mailbox|address|account)(?:\s+\S+)?\s+(?:does\s+not|doesn'?t)\s+exist",
        r"(?:user|recipient|mailbox|address|account)(?:\s+\S+)?\s+(?:was\s+)?not\s+found",
        r"(?:recipient|address|user)(?:\s+name)?\s+(?:is\s+)?not\s+(?:recogni[sz]ed|known|valid)",
        r"invalid\s+(?:recipient|mailbox|user|address|e-?mail\s+address|final\s+delivery\s+userid)",
        r"not\s+a\s+valid\s+(?:user|recipient|mailbox|address)",
        r"address\s+(?:couldn'?t|could\s+not)\s+be\s+found",
        r"account\s+that\s+you\s+tried\s+to\s+reach\s+does\s+not\s+exist",
        r"not\s+listed\s+in\s+(?:the\s+)?(?:domino\s+directory|public\s+name\s+&\s+address\s+book)",
        r"no\s+(?:mailbox|account)\s+(?:here\s+)?by\s+that\s+name",
        r"requested\s+action\s+not\s+taken:?\s+mailbox\s+unavailable",
        r"recipient\s+address\s+rejected(?:\.|\s*$)",
        r"has\s+moved|no\s+longer\s+(?:valid|active|in\s+use|exists?|accepts\s+mail)",
    ),
    "de": (
        r"benutzer\s+unbekannt|unbekannter\s+(?:benutzer|empfänger)|kein\s+solcher\s+benutzer",
        r"(?:empfänger|postfach|mailbox|adresse|e-mail-adresse|konto|benutzer)(?:\s+\S+)?\s+"
        r"(?:existiert\s+nicht|nicht\s+gefunden|ist\s+unbekannt|unbekannt)",
        r"adresse\s+nicht\s+gefunden\s+wurde",
    ),
    "fr": (
        r"utilisateur\s+inconnu|destinataire\s+(?:inconnu|invalide|introuvable|inexistant)",
        r"adresse\s+(?:destinataire\s+|e-?mail\s+|électronique\s+)?"
        r"(?:inconnue|invalide|introuvable|inexistante)",
        r"(?:boîte|boite|compte)\s+(?:aux\s+lettres\s+|mail\s+)?(?:inexistante?|introuvable)",
        r"n['\x{2019}]existe\s+pas",
    ),
    "es": (
        r"(?:usuario|destinatario)\s+(?:desconocido|inexistente|no\s+existe)",
        r"(?:buzón|buzon|cuenta|dirección|direccion)(?:\s+de\s+correo)?(?:\s+\S+)?\s+"
        r"(?:no\s+existe|inexistente|desconocida|no\s+encontrad[oa])",
        r"no\s+existe\s+(?:dicha\s+persona|ese\s+usuario|el\s+usuario|la\s+cuenta)",
    ),
    "it": (
        r"(?:destinatario|utente)\s+(?:inesistente|sconosciuto|non\s+esiste|non\s+trovato)",
        r"(?:indirizzo|casella)(?:\s+\S+)?\s+(?:inesistente|non\s+esiste|sconosciut[oa])",
        r"nessun\s+utente",
    ),
    "pt": (
        r"(?:usuário|usuario|utilizador|destinatário|destinatario)\s+"
        r"(?:desconhecido|inexistente|não\s+existe)",
        r"(?:conta|endereço|endereco|caixa\s+postal)(?:\s+\S+)?\s+(?:não\s+existe|inexistente)",
    ),
    "nl": (r"(?:gebruiker|ontvanger|adres)(?:\s+\S+)?\s+(?:onbekend|bestaat\s+niet)",),
    "ru": (
        r"(?:пользовател|адрес|получател|ящик)\S*(?:\s+\S+)?\s+(?:не\s+существует|не\s+найден)",
        r"нет\s+такого\s+(?:пользователя|адреса|ящика)|несуществующ",
    ),
    "ja": (
        r"宛先不明|存在しない(?:ユーザ|アドレス|メールアドレス|宛先|アカウント)|不明なユーザ",
        r"(?:ユーザー?|アドレス|宛先|アカウント|受信者|メールボックス)(?:は|が)?"
        r"(?:存在しません|見つかりません|不明です)",
    ),
    "zh": (
        r"(?:用户|用戶|收件人|收信人|邮箱|郵箱|信箱|帐户|账户|帳戶|账号|帳號|地址)(?:名|地址)?不存在",
        r"无此用户|無此用戶|查无此人|查無此人|未知用户|未知用戶",
        r"找不到(?:该|該)?(?:收件人|用户|用戶|邮箱|郵箱)",
    ),
    "ko": (r"존재하지\s*않는\s*(?:사용자|계정|주소)|(?:사용자|수신자)를\s*찾을\s*수\s*없",),
}
"""The recipient's address does not exist (or moved away)."""

_DOMAIN_WORDS = {
    "en": (
        r"unroutable\s+address|unrouteable\s+address|unknown\s+host|no\s+such\s+domain",
        r"host\s+or\s+domain\s+name\s+not\s+found|(?:host|domain)(?:\s+\S+)?\s+(?:not\s+found|unknown)",
        r"domain(?:\s+\S+)?\s+(?:does\s+not|doesn'?t)\s+exist|domain\s+is\s+not\s+reachable",
        r"(?:invalid|illegal|unknown|non-?existent)\s+(?:host/)?domain",
        r"couldn'?t\s+find\s+(?:any\s+host\s+named|a\s+mail\s+exchanger)|no\s+mx\s+(?:record\s+)?found",
        r"(?:host|domain|server)(?:\s+\S+)?\s+(?:does\s+not|doesn'?t)\s+accept\s+(?:e-?)?mail",
        r"null\s+mx|indicated\s+no\s+smtp\s+service",
    ),
    "de": (r"domain\s+existiert\s+nicht",),
    "fr": (r"domaine\s+(?:inexistant|introuvable|inconnu)",),
    "es": (r"dominio\s+(?:no\s+existe|inexistente|desconocido)",),
    "it": (r"dominio\s+(?:inesistente|non\s+esiste)",),
    "ja": (r"ドメインが存在しません",),
    "zh": (r"域名不存在",),
}
"""The recipient's domain does not exist or takes no mail (hostunknown, null MX)."""

_SOFT_WORDS = {
    "en": (
        r"mailbox\s+(?:is\s+)?full|over\s*quota|quota\s+(?:exceeded|full)",
        r"exceed(?:s|ed)?\s+(?:the\s+|its\s+|his\s+|her\s+)?(?:storage|disk|mailbox)?\s*quota",
        r"insufficient\s+(?:system\s+)?(?:storage|disk\s+space)|not\s+enough\s+(?:disk\s+)?space",
        r"(?:disk|storage)\s+(?:is\s+)?full|mailbox\s+size\s+limit",
        r"message\s+(?:is\s+)?too\s+(?:large|big)|size\s+(?:limit|exceeds)|exceeds?\s+(?:the\s+)?"
        r"(?:maximum\s+)?(?:message\s+)?size",
        r"rate\s+limit|too\s+many\s+(?:messages|recipients|connections|e-?mails|mails)",
        r"try\s+again\s+later|please\s+try\s+later|temporar(?:y|ily)",
        r"host\s+not\s+found,\s+try\s+again",
        r"(?:is|been|account|mailbox)\s+(?:disabled|suspended|deactivated|locked|frozen)|on\s+hold",
        r"recipient\s+preferences|refuse[sd]?\s+to\s+(?:accept|receive)|blocked\s+by\s+(?:the\s+)?"
        r"recipient|user\s+reject|message\s+filtered",
        r"connection\s+(?:timed\s+out|refused|reset)|timed\s+out|expired|mail\s+loop|too\s+many\s+hops",
        r"name\s+server\s+(?:reply|failure)|servfail",
        r"command\s+output|(?:couldn'?t|could\s+not|cannot|can'?t|unable\s+to)\s+create",
    ),
    "de": (r"postfach\s+(?:ist\s+)?voll|speicherplatz|vorübergehend|zu\s+groß",),
    "fr": (r"boîte\s+(?:aux\s+lettres\s+)?pleine|quota\s+dépassé|temporaire|trop\s+volumineux",),
    "es": (r"buzón\s+(?:está\s+)?lleno|cuota\s+excedida|temporal",),
    "it": (r"casella(?:\s+\S+)?\s+piena|quota\s+superata|temporane\w*",),
    "ja": (r"容量(?:オーバー|超過|不足)|メールボックスがいっぱい|一時的",),
    "zh": (r"(?:邮箱|郵箱|信箱)(?:已满|已滿)|空间不足|空間不足|容量不足|超出配额|暂时|暫時",),
    "ru": (r"переполнен|превышен",),
}

_POLICY_WORDS = {
    "en": (
        r"black\s*list(?:ed)?|block\s*list(?:ed)?|rbl\b|spamhaus|spamcop|reputation",
        r"polic(?:y|ies)|spf\b|dkim\b|dmarc\b|authenticat\w*|not\s+authori[sz]ed|access\s+denied",
        r"relay(?:ing)?\s+(?:access\s+)?(?:denied|not\s+permitted|not\s+allowed)",
        r"(?:not\s+permitted|unable)\s+to\s+relay|virus|malware|phishing|content\s+rejected",
        r"reverse\s+dns|ptr\s+record|tls\s+(?:is\s+)?required|banned|blocked|prohibited",
    ),
    "fr": (r"indésirable|politique|liste\s+noire|pas\s+autoris\w*",),
    "es": (r"lista\s+negra|política",),
    "it": (r"lista\s+nera|politica",),
    "ja": (r"迷惑メール|スパム|ポリシー",),
    "zh": (r"垃圾邮件|垃圾郵件|黑名单|黑名單|反垃圾|策略",),
    "any": (r"spam",),
}

_SENDER_WORDS = {
    "en": (
        r"sender(?:'s)?\s+(?:address\s+|domain\s+|mailbox\s+)?(?:\S+\s+)?"
        r"(?:rejected|refused|denied|unknown|invalid|not\s+allowed|not\s+found|does\s+not\s+exist)",
        r"sender\s+verif\w*\s+failed|unverified\s+sender|domain\s+of\s+sender\s+address",
        r"mail\s+from\s+(?:address\s+)?(?:rejected|refused|invalid)|envelope\s+sender",
        r"my\s+name\s+was\s+rejected",
    ),
    "de": (r"absender(?:adresse)?(?:\s+\S+)?\s+(?:abgelehnt|unbekannt|ungültig|existiert)",),
    "fr": (r"expéditeur(?:\s+\S+)?\s+(?:refusé|rejeté|inconnu|invalide|n['\x{2019}]existe)",),
    "es": (r"remitente(?:\s+\S+)?\s+(?:rechazad[oa]|desconocido|inválido|no\s+existe)",),
    "it": (r"mittente(?:\s+\S+)?\s+(?:rifiutat[oa]|sconosciuto|non\s+valido|inesistente)",),
    "ja": (r"(?:送信者|差出人)(?:アドレス)?(?:が|は)?(?:拒否|不明|存在しません)",),
    "zh": (r"(?:发件人|發件人|寄件人)(?:地址)?(?:被拒绝|被拒絕|不存在|无效|無效|未知)",),
}

_KDDI = ("ezweb.ne.jp", "au.com")
_PROVIDER_RULES: tuple[tuple[str, _Reading, str, tuple[str, ...]], ...] = (
    # au (KDDI) answers "550 : User unknown", with no address, when the recipient's own
    # reception filter refuses the sender, and "550 <address>: User unknown" when the
    # address does not exist (au's support pages), whatever the SMTP stage.
    (r"550:?\s+:\s+user\s+unknown", _Reading.PROVIDER_SOFT, "kddi:reception filter", _KDDI),
    (r"550:?\s+<[^<>\s]+>:\s+user\s+unknown", _Reading.PROVIDER_HARD, "kddi:no such user", _KDDI),
    # Yahoo refuses an unknown user after DATA, in these words.
    (
        r"delivery\s+error:\s+dd\s+(?:sorry,?\s+)?this\s+user\s+doesn'?t\s+have\s+an?\s+\S+\s+account",
        _Reading.PROVIDER_HARD,
        "yahoo:no such account",
        (),
    ),
    # Outlook.com's refusal of an address it does not have, with its error numbers.
    (
        r"mailbox\s+unavailable\s+\(-?\d+:\d+:-?\d+\)",
        _Reading.PROVIDER_HARD,
        "outlook.com:no such mailbox",
        (),
    ),
    # Microsoft 365 directory-based edge blocking: the address is not in the tenant.
    (
        r"5\.4\.1\s+(?:\S+\s+)?recipient\s+address\s+rejected:\s*access\s+denied",
        _Reading.PROVIDER_HARD,
        "microsoft:not in the directory",
        (),
    ),
)
_UNKNOWN = frozenset({_Reading.DOMAIN, _Reading.ADDRESS})
_REPLY_CHARS = 80
_NON_LATIN = frozenset({"ru", "ja", "zh", "ko", "any"})


@dataclass(frozen=True, slots=True)
class _Entry:
    """One group of the vocabulary: a provider's rule, or one language's words for one
    reading. ``rank`` is the precedence of a server's reply (lower first)."""

    reading: _Reading
    rank: int
    name: str
    domains: tuple[str, ...] = ()
    provider: bool = False


def _vocabulary() -> tuple[Any, tuple[_Entry, ...]]:
    """Every phrase in one case-insensitive regex, a group per entry in order of precedence:
    at one place the first alternative wins, so one search reads a whole text."""
    groups = [f"({pattern})" for pattern, _, _, _ in _PROVIDER_RULES]
    entries = [
        _Entry(reading, 0, label, domains, True) for _, reading, label, domains in _PROVIDER_RULES
    ]
    words = (_SENDER_WORDS, _POLICY_WORDS, _SOFT_WORDS, _DOMAIN_WORDS, _ADDRESS_WORDS)
    readings = (_Reading.SENDER, _Reading.POLICY, _Reading.SOFT, _Reading.DOMAIN, _Reading.ADDRESS)
    for rank, (table, reading) in enumerate(zip(words, readings, strict=True), start=1):
        for language, phrases in table.items():
            body = "|".join(phrases)
            groups.append(f"({body})" if language in _NON_LATIN else rf"(\b(?:{body}))")
            entries.append(_Entry(reading, rank, language))
    pattern = re2.compile("(?i)" + "|".join(groups))
    if pattern.groups != len(entries):
        raise ValueError("a phrase in the vocabulary has a capturing group")
    return pattern, tuple(entries)


_VOCABULARY, _ENTRIES = _vocabulary()

# Structure and prose --------------------------------------------------------------------------

_STATUS = re2.compile(r"(?:^|[^\d.])([245]\.\d{1,3}\.\d{1,3})")
_TEXT_CODE = re2.compile(r"(?m)(?:^|[^\w.#-])([45][0-5]\d)(?:[ :-]|$)")
_CONTINUATION = re2.compile(r"^\s*([245]\d\d)[ -](?:\d\.\d{1,3}\.\d{1,3}\s+)?")
_QUOTED_MSGID = re2.compile(r"(?im)^[ \t>]*Message-ID:\s*(<[^<>\s]+>)")
_BLOCK_SPLIT = re2.compile(r"\r?\n[ \t]*\r?\n")
_COMMAND = re2.compile(
    r"(?i)(?:in\s+reply\s+to\s+(?:end\s+of\s+)?|after\s+(?:pipelined\s+)?(?:end\s+of\s+)?"
    r"|>>>\s*|did\s+not\s+like\s+our\s+|most\s+progress\s+was\s+|\[|smtp\s+command\W{0,10}"
    r"|smtp:)(rcpt|data|mail)(?:\b|_)"
)
_NO_RECIPIENT_ACCEPTED = re2.compile(
    r"(?i)need\s+rcpt|no\s+valid\s+recipients|rcpt\s+command\s+must\s+precede|no\s+recipients"
)
"""The answer to DATA when no recipient was accepted: with pipelining, the refusal printed
after ``>>> DATA`` was the answer to RCPT TO."""
_MAILER = re2.compile(
    r"(?i)mailer-?daemon|mail-daemon|post_?master@|mail delivery (?:subsystem|system|service)"
    r"|mail administrator|系统退信|退信服务"
)
_MAILER_NAMES = ("mailer-daemon", "mailer_daemon", "mail-daemon", "postmaster", "post_master")
_BOUNCE_SUBJECT = re2.compile(
    r"(?i)^\s*(?:undeliver|undelivered mail|unzustellbar|non remis|non recapitabile"
    r"|no se puede entregar|mail delivery failed|delivery status notification"
    r"|delivery (?:failure|notification)|failure notice|returned mail|delayed mail"
    r"|warning: (?:could not send|message .* delayed)|mail system error|message not delivered"
    r"|nondeliverable|(?:mail|message) could not be delivered|系统退信|退信|配信不能|配送不能)"
)
_DELAY_SUBJECT = re2.compile(
    r"(?i)delay|still being retried|warning: could not send|verzögert|retardé|ritardat|retrasad"
    r"|遅延|延迟"
)
# Where a text bounce stops talking and starts quoting the original (Exim, qmail, Yahoo,
# sendmail, Lotus, IMail, OpenSMTPD, DragonFly, Chinese providers, a broken report's parts).
_COPY_MARKER = re2.compile(
    r"(?im)^[ \t-]*(?:below this line is a copy of the message|this is a copy of the message"
    r"|included is a copy of the message"
    r"|below is a copy of the original message|original message(?: headers)?(?: follows)?"
    r"|unsent message follows|returned message|message headers follow"
    r"|content-type:\s*(?:message/rfc822|text/rfc822-headers)|原始邮件|原邮件)"
)
_RECIPIENTS_INTRO = re2.compile(
    r"(?i)following\s+(?:recipients?|address|destination)|recipient(?:\(s\))?\s*(?:address)?:"
    r"|addressed\s+to|could\s+not\s+be\s+delivered\s+to|delivery\s+to"
)

_HEDGE = re2.compile(
    r"(?i)\b(?:may|might|possibly|perhaps|peut|puede|quizás|potrebbe|möglicherweise|vielleicht)\b"
)
_HEDGE_CHARS = 120
_STATUS_TYPES = frozenset({"message/delivery-status", "message/global-delivery-status"})
_SUCCESS_ACTIONS = frozenset({"delivered", "relayed", "expanded"})
_HARD_STATUSES = frozenset({"5.1.1", "5.1.2", "5.1.3", "5.1.6", "5.1.10", "5.4.4"})
"""The address or its domain is bad: 5.1.10 is Office 365's RecipientNotFound and RFC 7505's
null MX; 5.4.4 is a domain with no mail route (no such domain)."""
_NOT_ACCEPTING_CODES = frozenset({521, 556})
"""RFC 7504: the host or domain does not accept mail at all (null MX)."""
_OUR_SIDE = "our side: policy/reputation/authentication refusal, not the buyer's address"
_SENDER_SIDE = "our side: the sender was refused, not the buyer's address"


@dataclass(frozen=True, slots=True)
class _Failure:
    """One failed (or delayed) recipient as read, before judging it."""

    bounce: Bounce
    action: str
    code: int | None
    words: str
    """The server's reply about this recipient; for a mailer's prose, the text around it."""
    own_status: bool = True
    """The status is the remote server's own (in its words), not the report's summary."""
    prose: bool = False
    """``words`` is a mailer's prose, not one reply: read by what it says first."""


@dataclass(frozen=True, slots=True)
class _Said:
    """What some words are about, as shown in the evidence (``en:user unknown``)."""

    reading: _Reading
    label: str
    replied: bool = False
    """The words follow an SMTP reply code: a server's answer, not the reporter's own."""


@dataclass(frozen=True, slots=True)
class _Context:
    """The mailer's prose, for the words and SMTP command about one recipient."""

    human: str
    human_lower: str


@dataclass(frozen=True, slots=True)
class _Verdict:
    failure: _Failure
    kind: MessageKind
    evidence: str


def read_bounce(message: InboundMessage) -> Bounce | None:
    """None when the message is not a delivery failure report (or delay warning)."""
    verdict = _guarded(message)
    return verdict.failure.bounce if verdict else None


def classify_bounce(message: InboundMessage) -> Classification | None:
    """BOUNCE_HARD / BOUNCE_SOFT / BOUNCE_POLICY, or SPAM_COMPLAINT for a feedback report,
    with evidence and bounce=...; None when the message is no report."""
    try:
        parts = own_parts(message.tree)
        feedback = read_feedback(message, parts)
        verdict = _judge(message, parts) if feedback is None else None
    except Exception:  # a mailbox loop must never stop on one stranger's message
        return None
    if verdict is None:
        return feedback
    return Classification(verdict.kind, verdict.evidence, bounce=verdict.failure.bounce)


def _guarded(message: InboundMessage) -> _Verdict | None:
    try:
        return _judge(message, own_parts(message.tree))
    except Exception:  # a mailbox loop must never stop on one stranger's message
        return None


def _judge(message: InboundMessage, parts: Parts) -> _Verdict | None:
    """Several failed recipients in one report: the first hard one speaks for it, else the
    first, so a report never hides the one failure that must suppress."""
    blocks = _status_blocks(parts)
    if blocks is None and _mailer_named(message):
        blocks = _forwarded_status_blocks(parts)
    ses = ses_notification(message) if blocks is None else None
    if blocks is None and ses is None and not _from_a_mailer(message):
        return None
    human = _human_part(message, parts)
    context = _Context(human, human.lower())
    found = _failures(message, context, blocks, ses)
    if found is None:
        return None
    source, failures = found
    original = _original_message_id(message, parts)
    verdicts = []
    for failure in failures:
        bounce = failure.bounce
        if bounce.original_message_id is None:
            bounce = replace(bounce, original_message_id=original)
        verdicts.append(_verdict(source, replace(failure, bounce=bounce), context))
    hard = [v for v in verdicts if v.kind is MessageKind.BOUNCE_HARD]
    return (hard or verdicts)[0]


# Reading: RFC 3464 structure first, then SES's JSON, then the non-standard text shapes -----


def _failures(
    message: InboundMessage,
    context: _Context,
    blocks: list[dict[str, str]] | None,
    ses: dict[str, Any] | None,
) -> tuple[str, list[_Failure]] | None:
    if blocks is not None:
        entries = [_entry(fields) for fields in blocks if _is_recipient_block(fields)]
        failing = [e for e in entries if e is not None]
        if failing:
            return "dsn", [_fill_from_text(message, context, f) for f in failing]
        if entries:  # every recipient delivered or relayed: a success notice
            return None
    if ses is not None:
        return _ses_failures(ses)
    return _text_failure(message, context, structural=blocks is not None)


def _from_a_mailer(message: InboundMessage) -> bool:
    """Prose is read only from a mailer: X-Failed-Recipients, a mailer's name or the null
    sender (which automatic replies use too, so the prose must then give a code)."""
    return bool(_failed_recipients(message)) or _mailer_named(message) or _null_sender(message)


def _null_sender(message: InboundMessage) -> bool:
    return any(path.strip() == "<>" for path in message.headers_named("Return-Path"))


def _status_blocks(parts: Parts) -> list[dict[str, str]] | None:
    return next((_blocks_of(part) for kind, part in parts if kind in _STATUS_TYPES), None)


def _forwarded_status_blocks(parts: Parts) -> list[dict[str, str]] | None:
    """Some mailers attach their report as a message of its own; believed from a mailer
    only, since a buyer forwarding a bounce is writing to us, not reporting."""
    for kind, part in parts:
        payload = part.get_payload() if kind == "message/rfc822" else None
        inner = payload[0] if isinstance(payload, list) and payload else None
        blocks = _status_blocks(own_parts(inner)) if isinstance(inner, Message) else None
        if blocks is not None:
            return blocks
    return None


def _blocks_of(part: Message) -> list[dict[str, str]]:
    payload = part.get_payload()
    if isinstance(payload, list):
        return [_first_of(block_fields(b)) for b in payload[:100] if isinstance(b, Message)]
    data = part.get_payload(decode=True)
    raw = data[:MAX_PART_BYTES] if isinstance(data, bytes) else b""
    text = decode_bytes(raw, "utf-8", [], "delivery-status")
    return [_first_of(loose_fields(chunk)) for chunk in _BLOCK_SPLIT.split(text)[:100]]


def _first_of(fields: list[tuple[str, str]]) -> dict[str, str]:
    return dict(reversed(fields))


def _is_recipient_block(fields: dict[str, str]) -> bool:
    return any(k in fields for k in ("final-recipient", "original-recipient", "action", "status"))


def _entry(fields: dict[str, str]) -> _Failure | None:
    """The failure one recipient block reports; ``None`` when it reports a delivery."""
    action = fields.get("action", "").strip().lower()
    diagnostic, code, remote = _diagnostic(fields.get("diagnostic-code", ""))
    status = _status(fields.get("status", ""), remote)
    if action in _SUCCESS_ACTIONS or status.startswith("2."):
        return None
    recipient = _recipient(fields.get("original-recipient")) or _recipient(
        fields.get("final-recipient")
    )
    bounce = Bounce(status, recipient, diagnostic=diagnostic)
    return _Failure(bounce, action, code, diagnostic, own_status=bool(remote) or not diagnostic)


def _status(field: str, remote: str) -> str:
    """The remote server's own status when it gave a specific one (it knows better than
    the report's summary), else the Status field, else whatever the server gave."""
    if remote and not remote.endswith(".0"):
        return remote
    return _first_status(field)[1] or remote


def _first_status(text: str, classes: str = "245") -> tuple[int, str]:
    """Where the first enhanced status code of these classes is, and which, not part of a
    longer number or a version; (-1, "") when there is none."""
    data = text[:MAX_PART_BYTES].encode()
    for found in _STATUS.finditer(data):
        status, end = found.group(1).decode(), found.end(1)
        after = data[end : end + 2]
        longer = after[:1].isdigit() or (after[:1] == b"." and after[1:2].isdigit())
        if status[0] in classes and not longer:
            return len(data[: found.start(1)].decode("utf-8", "replace")), status
    return -1, ""


def _recipient(field: str | None) -> str:
    """``rfc822; <Buyer@Example>`` -> ``buyer@example``; other address types are ignored."""
    if not field:
        return ""
    kind, _, address = field.partition(";")
    if not address or kind.strip().lower() not in ("rfc822", "utf-8"):
        return ""
    found = addresses_in(address)
    return found[0] if found else ""


def _diagnostic(field: str) -> tuple[str, int | None, str]:
    """The server's words on one line without the repeated ``550-5.1.1`` continuation
    prefixes, the SMTP code they start with and the enhanced status they give."""
    kind, typed, rest = field[:MAX_FIELD_CHARS].partition(";")
    text = rest.lstrip() if typed and kind.strip().replace("-", "").isalnum() else field
    code = _leading_code(text)
    lines = text.splitlines() or [""]
    if code is not None:
        lines = lines[:1] + [_without_continuation(line, code) for line in lines[1:]]
    words = " ".join(" ".join(lines).split())
    return words[:MAX_DIAGNOSTIC_CHARS], code, _first_status(words, "45")[1]


def _leading_code(text: str) -> int | None:
    """``550`` of ``550-5.1.1 ...`` or ``550 ...``."""
    head = text.lstrip()[:4]
    if (
        len(head) >= 3
        and head[:3].isdigit()
        and head[0] in "245"
        and head[3:] in ("", " ", "-", ":", "\t")
    ):
        return int(head[:3])
    return None


def _without_continuation(line: str, code: int) -> str:
    match = _CONTINUATION.match(line)
    return line[match.end() :] if match and match.group(1) == str(code) else line


def _one_line(text: str) -> str:
    return " ".join(text.split())[:MAX_DIAGNOSTIC_CHARS]


def _fill_from_text(message: InboundMessage, context: _Context, failure: _Failure) -> _Failure:
    """A report that names no recipient or gives no words: take them from the prose, for
    the operator to read; the verdict still rests on the report's own status and code."""
    bounce = failure.bounce
    recipient = bounce.recipient or next(
        iter(_failed_recipients(message)), _named_recipient(message, context.human)
    )
    diagnostic = bounce.diagnostic or _failure_line(_about(context, recipient))[0]
    return replace(failure, bounce=replace(bounce, recipient=recipient, diagnostic=diagnostic))


def _ses_failures(body: dict[str, Any]) -> tuple[str, list[_Failure]] | None:
    """SES's own bounce notification: its recipients, statuses and the remote's words."""
    details = body.get("bounce")
    if body.get("notificationType") != "Bounce" or not isinstance(details, dict):
        return None
    permanent = str(details.get("bounceType", "")).lower() == "permanent"
    listed = details.get("bouncedRecipients")
    failures = []
    for row in listed if isinstance(listed, list) else []:
        if not isinstance(row, dict):
            continue
        diagnostic, code, remote = _diagnostic(str(row.get("diagnosticCode", "")))
        status = _status(str(row.get("status", "")), remote)
        found = addresses_in(str(row.get("emailAddress", "")))
        action = str(row.get("action", "failed")).lower() if permanent else "delayed"
        bounce = Bounce(status, found[0] if found else "", ses_original_id(body), diagnostic)
        failures.append(_Failure(bounce, action, code, diagnostic))
    return ("ses", failures) if failures else None


def _text_failure(
    message: InboundMessage, context: _Context, *, structural: bool
) -> tuple[str, list[_Failure]] | None:
    """Exim's X-Failed-Recipients, qmail, Yahoo, Exchange 2003, Lotus, Chinese providers and
    reports too broken to read: a mailer's prose. Without a status, a code or a bounce's
    subject, its words must say the address is unknown, and come from a mailer by name."""
    failed = _failed_recipients(message)
    recipient = failed[0] if failed else _named_recipient(message, context.human)
    about = _about(context, recipient)
    diagnostic, status, code = _failure_line(about)
    subject = message.subject[:MAX_FIELD_CHARS]
    signal = bool(status or code or _BOUNCE_SUBJECT.search(subject))
    named = _mailer_named(message)
    if not (failed or structural or signal or (named and _says_unknown(about, recipient))):
        return None
    action = "delayed" if _DELAY_SUBJECT.search(subject) else "failed"
    bounce = Bounce(status, recipient, diagnostic=diagnostic)
    failure = _Failure(bounce, action, code, about, prose=True)
    return _text_source(context, failed), [failure]


def _says_unknown(text: str, recipient: str) -> bool:
    said = _read(text, recipient, leftmost=True)
    return said is not None and said.reading in (*_UNKNOWN, _Reading.PROVIDER_HARD)


def _text_source(context: _Context, failed: list[str]) -> str:
    if failed:
        return "x-failed-recipients"
    return "qmail" if "qmail-send program" in context.human_lower else "mailer"


def _failed_recipients(message: InboundMessage) -> list[str]:
    return addresses_in(" ".join(message.headers_named("X-Failed-Recipients")))


def _mailer_named(message: InboundMessage) -> bool:
    """From MAILER-DAEMON, postmaster, "Mail Delivery Subsystem"..."""
    who = " ".join((message.sender, message.sender_name, *message.headers_named("From")))
    return bool(_MAILER.search(who[:MAX_FIELD_CHARS]))


def _human_part(message: InboundMessage, parts: Parts) -> str:
    """The mailer's own prose, before the copy of our message. A report whose MIME
    structure is broken (a wrong boundary) has no text part: its raw body is read."""
    text = message.text or _raw_body(parts)
    marker = _COPY_MARKER.search(text)
    return text[: marker.start()] if marker else text


def _raw_body(parts: Parts) -> str:
    """The first part left undecoded by a broken structure, as its raw text."""
    for _, part in parts:
        payload = part.get_payload()
        if isinstance(payload, str) and payload.strip():
            text = payload[:MAX_TEXT_CHARS]
            return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return ""


def _about(context: _Context, recipient: str) -> str:
    """The prose around the recipient's first mention, else its beginning."""
    at = context.human_lower.find(recipient) if recipient else -1
    if at < 0:
        return context.human[: _WINDOW_AFTER * 2]
    return context.human[max(0, at - _WINDOW_BEFORE) : at + _WINDOW_AFTER]


def _failure_line(text: str) -> tuple[str, str, int | None]:
    """The first line giving an enhanced status (else an SMTP code): (line, status, code)."""
    at, status = _first_status(text, "45")
    if at < 0:
        found = _TEXT_CODE.search(text)
        if found is None:
            return "", "", None
        at = found.start(1)
    end = text.find("\n", at)
    line = text[text.rfind("\n", 0, at) + 1 : len(text) if end < 0 else end]
    code = _TEXT_CODE.search(line)
    return _one_line(line), status, int(code.group(1)) if code else None


def _named_recipient(message: InboundMessage, human: str) -> str:
    """The first address the mailer's prose names after it introduces the failed recipients
    (else anywhere) that is neither us nor a mailer."""
    ours = {message.sender, *message.recipients}
    intro = _RECIPIENTS_INTRO.search(human)
    start = intro.start() if intro else 0
    found = [
        (m.start(), m.group(0).lower())
        for m in ADDRESS.finditer(human)
        if m.group(0).lower() not in ours and not m.group(0).lower().startswith(_MAILER_NAMES)
    ]
    after = [address for at, address in found if at >= start]
    return (after or [address for _, address in found] or [""])[0]


def _original_message_id(message: InboundMessage, parts: Parts) -> str | None:
    """From the returned message or its headers, else a quoted copy, else the threading
    headers: SES and some relays rewrite it, so the threader also tries relay ids."""
    original = attached_headers(parts)
    found = MSGID.search(header_value(original, "Message-ID")) if original is not None else None
    if found:
        return found.group(0)
    text = message.text
    marker = _COPY_MARKER.search(text)
    quoted = _QUOTED_MSGID.search(text, marker.start() if marker else 0)
    if quoted:
        return quoted.group(1)
    return next(iter(message.thread_ids), None)


# Judging ----------------------------------------------------------------------------------


def _verdict(source: str, failure: _Failure, context: _Context) -> _Verdict:
    kind, why = _kind(failure, context)
    return _Verdict(failure, kind, _evidence(source, failure, kind, why))


def _kind(failure: _Failure, context: _Context) -> tuple[MessageKind, str]:
    """The kind and the words that decided it: the remote server's words about this
    recipient first, then the report's status, and the prose around the recipient only when
    neither says anything specific."""
    status, code = failure.bounce.status, failure.code
    temporary = status.startswith("4.") or (not status and code is not None and code < 500)
    if failure.action == "delayed" or temporary:
        return MessageKind.BOUNCE_SOFT, ""
    if status.startswith("5.7.") and failure.own_status:
        return MessageKind.BOUNCE_POLICY, f"({_OUR_SIDE})"
    recipient = failure.bounce.recipient
    said = _read(failure.words, recipient, leftmost=failure.prose)
    if said is None and not _specific(status) and context.human:
        said = _read(_about(context, recipient), recipient, leftmost=True)
    found = said.reading if said else None
    label = said.label if said else ""
    if found is _Reading.PROVIDER_HARD:
        return MessageKind.BOUNCE_HARD, f"hard={label}"
    if found is _Reading.PROVIDER_SOFT:
        return MessageKind.BOUNCE_SOFT, f"soft={label}"
    if found is _Reading.SENDER:
        return MessageKind.BOUNCE_POLICY, f"sender={label} ({_SENDER_SIDE})"
    if found is _Reading.POLICY or (status.startswith("5.7.") and found not in _UNKNOWN):
        return MessageKind.BOUNCE_POLICY, (f"policy={label} " if label else "") + f"({_OUR_SIDE})"
    if found is _Reading.SOFT:
        return MessageKind.BOUNCE_SOFT, f"soft={label}"
    if status in _HARD_STATUSES:
        return MessageKind.BOUNCE_HARD, ""
    return _by_words(failure, context, said)


def _by_words(failure: _Failure, context: _Context, said: _Said | None) -> tuple[MessageKind, str]:
    """Words saying the address or domain is unknown, behind no decisive status. Not hard
    when the refusal answered MAIL FROM (us) or DATA (the address had been accepted); an
    unknown *user* in a server's reply also needs that reply to be the one to RCPT TO, or at
    least not to contradict the server's own specific status: filtering gateways and some
    carriers answer "user unknown" after DATA, and many reports do not say which it was."""
    status, code = failure.bounce.status, failure.code
    command = _command(context, failure.bounce.recipient)
    if command == "MAIL":
        return MessageKind.BOUNCE_POLICY, f"command=MAIL ({_SENDER_SIDE})"
    if command == "DATA":
        return MessageKind.BOUNCE_SOFT, "command=DATA (the address was accepted)"
    if said is not None and said.reading is _Reading.DOMAIN:
        return MessageKind.BOUNCE_HARD, f"hard={said.label}"
    if said is not None and said.reading is _Reading.ADDRESS:
        if command == "RCPT":
            return MessageKind.BOUNCE_HARD, f"hard={said.label} command=RCPT"
        if failure.own_status and _specific(status):
            return MessageKind.BOUNCE_SOFT, f"words={said.label} (but status {status} disagrees)"
        if said.replied:
            return MessageKind.BOUNCE_SOFT, f"words={said.label} (reply at an unknown SMTP stage)"
        return MessageKind.BOUNCE_HARD, f"hard={said.label}"
    if code in _NOT_ACCEPTING_CODES:
        return MessageKind.BOUNCE_HARD, f"code={code} (does not accept mail)"
    return MessageKind.BOUNCE_SOFT, ""


def _specific(status: str) -> bool:
    """A status that names a reason (5.2.1 mailbox disabled), not just a class (5.0.0)."""
    return bool(status) and not status.endswith(".0")


def _read(text: str, recipient: str, *, leftmost: bool) -> _Said | None:
    """What the words are about. A server's reply is read by precedence (providers' own
    wording, sender, policy, soft, domain, address); prose by what it says first. (Read as
    UTF-8 bytes: re2 reads ``str`` through a slow conversion of every offset.)"""
    flat = " ".join(text[: _WINDOW_BEFORE + _WINDOW_AFTER].split()).encode()
    domain = recipient.rpartition("@")[2]
    best: tuple[int, _Said] | None = None
    at = 0
    while at <= len(flat) and (match := _VOCABULARY.search(flat, at)) is not None:
        entry = _ENTRIES[(match.lastindex or 1) - 1]
        start = match.start()
        at = start + 1  # phrases may overlap: a provider's rule inside ordinary words
        if (entry.domains and not domain.endswith(entry.domains)) or (
            entry.reading in _UNKNOWN and _hedged(flat, start)
        ):
            continue
        if leftmost:
            return _said(entry, match.group(0), flat, start)
        if best is None or entry.rank < best[0]:
            best = entry.rank, _said(entry, match.group(0), flat, start)
    return best[1] if best else None


def _said(entry: _Entry, words: bytes, flat: bytes, start: int) -> _Said:
    if entry.provider:
        return _Said(entry.reading, entry.name)
    said = " ".join(words.decode("utf-8", "replace").lower().split())[:40]
    before = flat[max(0, start - _REPLY_CHARS) : start]
    replied = entry.reading is _Reading.ADDRESS and bool(_TEXT_CODE.search(before))
    return _Said(entry.reading, f"{entry.name}:{said}", replied)


def _hedged(text: bytes, start: int) -> bool:
    """A guess in the same sentence ("the group may not exist") is no statement."""
    sentence = text[max(0, start - _HEDGE_CHARS) : start].rpartition(b". ")[2]
    return bool(_HEDGE.search(sentence))


def _command(context: _Context, recipient: str) -> str:
    """The SMTP command the refusal answered, as the prose about this recipient says."""
    at = context.human_lower.find(recipient) if recipient else 0
    mentions = [(m.start(), m.group(1).upper()) for m in _COMMAND.finditer(context.human)]
    if not mentions:
        return ""
    after = [command for start, command in mentions if start >= at]
    command = after[0] if after else mentions[-1][1]
    if command == "DATA" and _NO_RECIPIENT_ACCEPTED.search(context.human):
        return "RCPT"
    return command


def _evidence(source: str, failure: _Failure, kind: MessageKind, why: str) -> str:
    status = failure.bounce.status
    if source == "dsn":
        words = [f"dsn_status={status or 'none'}"]
    else:
        words = [source, f"status={status}"] if status else [source]
    if failure.action == "delayed":
        words.append("action=delayed")
    if (not status or status.endswith(".0")) and failure.bounce.diagnostic:
        words.append(f"text={failure.bounce.diagnostic[:80]}")
    if why:
        words.append(why)
    elif kind is MessageKind.BOUNCE_POLICY:
        words.append(f"({_OUR_SIDE})")
    return " ".join(words)
