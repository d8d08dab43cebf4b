"""Marketplace policy profiles: what Amazon, eBay, AliExpress, the law and mail providers
forbid in a campaign or template, found before anything is sent.

A campaign is checked against the profile of every marketplace it applies to, plus ``all``.
Wording rules work on sentences of the template SOURCE (so a finding names the exact line,
and every ``{% if %}`` branch is read); contact-detail rules also read a RENDER for a sample
order of each marketplace in each locale, so a variable that renders to a URL is caught and
reported at the line of the variable. The rules and their sources: docs/compliance.md.

Gating, incentive and star-rating wording is found by word families in seven languages and
their proximity in a sentence (and its neighbours), not by a list of known sentences. The
patterns are plain alternations with no nested repetition, so matching stays linear on
operator-written files.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import jinja2
from jinja2.sandbox import SandboxedEnvironment

from worker.config import Settings
from worker.domain import Campaign, CampaignStep, StepKind, TriggerEvent
from worker.errors import ConfigError
from worker.render import BLOCKS, OrderView, add_filters, sample_context
from worker.terminal import printable

DOCS = "docs/compliance.md"
PROFILES = ("amazon", "ebay", "aliexpress", "shop", "all")
MAX_TEMPLATE_CHARS = 1_000_000
"""Read of one template file: far above any message, so a stray huge file costs little."""
AMAZON_REVIEW_MIN = timedelta(days=5)
AMAZON_REVIEW_MAX = timedelta(days=30)

# rule id -> (profile, doc anchor)
RULES: dict[str, tuple[str, str]] = {
    "A1": ("amazon", "a1-one-review-request-per-order"),
    "A2": ("amazon", "a2-review-request-5-to-30-days-after-delivery"),
    "A3": ("amazon", "a3-no-check-in-thank-you-or-marketing-messages"),
    "A4": ("amazon", "a4-plain-text-only"),
    "A5": ("amazon", "a5-no-contact-details"),
    "A6": ("amazon", "a6-order-number-in-the-subject"),
    "A7": ("amazon", "a7-no-positive-review-requests-or-review-changes"),
    "A8": ("amazon", "a8-no-incentives"),
    "E1": ("ebay", "e1-no-links-off-the-marketplace-or-contact-details"),
    "E2": ("ebay", "e2-ask-for-feedback"),
    "E3": ("ebay", "e3-no-feedback-extortion"),
    "S1": ("shop", "s1-unsubscribe-line"),
    "S2": ("shop", "s2-list-unsubscribe"),
    "S3": ("shop", "s3-per-buyer-cap"),
    "G1": ("all", "g1-no-review-gating"),
    "G2": ("all", "g2-no-incentives-for-reviews"),
    "G3": ("all", "g3-no-asking-for-positive-reviews"),
}


@dataclass(frozen=True, slots=True, order=True)
class Finding:
    path: str
    line: int
    rule_id: str
    profile: str
    message: str

    @property
    def source(self) -> str:
        """Where the rule and its source are explained."""
        return f"{DOCS}#{RULES[self.rule_id][1]}"

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}"
        return f"{where}: {self.rule_id} {self.profile}: {self.message} ({self.source})"


@dataclass(frozen=True, slots=True)
class TemplateSource:
    """One ``templates/<folder>/<locale>.jinja`` file as written."""

    folder: str
    locale: str
    path: str
    text: str


def read_templates(templates_dir: Path, folders: Iterable[str]) -> list[TemplateSource]:
    """Every locale file of the named folders; the I/O edge of the lint."""
    found = []
    for folder in sorted(set(folders)):
        directory = templates_dir / folder
        if not directory.is_dir():
            continue
        for path in sorted(directory.glob("*.jinja")):
            if path.is_file():
                with path.open(encoding="utf-8", errors="replace") as file:
                    text = file.read(MAX_TEMPLATE_CHARS)
                found.append(TemplateSource(folder, path.stem, str(path), text))
    return found


# --- word families -----------------------------------------------------------------------


def _words(*alternatives: str, whole: bool = False) -> re.Pattern[str]:
    """Latin words start at a word boundary (and end at one if ``whole``, else they are
    stems); CJK ones match anywhere."""
    latin = [a for a in alternatives if a.isascii() or any(c.isalpha() and c < "ͯ" for c in a)]
    cjk = [a for a in alternatives if a not in latin]
    parts = []
    if latin:
        parts.append(r"\b(?:" + "|".join(latin) + ")" + (r"\b" if whole else ""))
    if cjk:
        parts.append("(?:" + "|".join(cjk) + ")")
    return re.compile("|".join(parts), re.IGNORECASE)


# fmt: off
REVIEW = _words(
    # en
    "reviews?", "feedback", "ratings?", "rate us", "rate the", "stars?", "testimonial",
    # de
    "bewert", "rezension", "sterne",
    # fr
    "avis", "évaluation", "évaluer", "notez", "noter", "étoiles?", "commentaire",
    # es
    "reseña", "opinión", "valoraci[óo]n", "valorar", "valórenos", "calificaci[óo]n",
    "estrellas",
    # it
    "recension", "valutazion", "valutar", "opinion[ei]", "stelle",
    # ja
    "レビュー", "評価", "口コミ", "フィードバック",
    # zh / zh-Hant
    "评价", "評價", "评论", "評論", "好评", "好評", "反馈", "回饋", "评分", "評分",
)
CONTACT = _words(
    "contact", "reply", "respond", "write to us", "get in touch", "let us know", "e-?mail us",
    "message us", "reach out", "tell us", "talk to us", "call us", "kontakt", "antworten sie",
    "antworten", "schreiben sie uns", "melden sie sich", "wenden sie sich",
    "lassen sie es uns wissen", "sagen sie uns", "contactez", "contacter", "répond",
    "écrivez-nous", "dites-nous", "prévenez-nous", "faites-nous savoir", "contácte", "contacta",
    "respond", "escríb", "avísenos", "háganos saber", "díganos", "contatt", "rispond", "scriv",
    "fatecelo sapere", "avvisateci", "連絡", "返信", "お問い合わせ", "問い合わせ", "ご一報",
    "お知らせ", "联系", "聯繫",
    "聯絡", "联络", "回复", "回覆", "告诉我们", "告訴我們", "找我们", "找我們", "沟通", "溝通",
    "咨询", "諮詢", "客服",
)
# "first", "before", "instead", "otherwise": help placed as a precondition or alternative.
FIRST = _words(
    "first", "before", "instead", "rather than", "otherwise", "prior to", "if not", "erst einmal",
    "zuvor", "auparavant", "previamente", "en primer lugar", "per prima cosa", "事前に",
    "if you are not", "if you're not", "unhappy", "dissatisfied", "not satisfied", "zuerst",
    "vorher", "bevor", "stattdessen", "anstatt", "sonst", "andernfalls", "zunächst", "vorab",
    "wenn nicht", "falls nicht", "unzufrieden", "nicht zufrieden", "d'abord", "avant",
    "plutôt que", "au lieu de", "sinon", "en premier", "pas satisfait", "insatisfait",
    "primero", "antes", "en lugar de", "en vez de", "si no", "de lo contrario",
    "no está satisfech", "insatisfech", "prima", "invece", "altrimenti", "anzitutto",
    "innanzitutto", "se non", "insoddisfatt", "まず", "先に", "前に", "代わりに", "その前",
    "でなければ", "ご不満",
    "不満", "请先", "請先", "先联系", "先聯繫", "先與", "先与", "先回复", "先回覆", "之前",
    "首先", "而不是", "否则", "否則", "先跟", "先和", "先给", "先給", "先找", "先告诉", "先告訴",
    "不满意", "不滿意",
)
# "if you are happy/satisfied": a review asked of the pleased only.
CONDITION = _words(
    "if", "wenn", "falls", "si", "se", "もし", "たら", "れば", "なら", "場合", "如果", "若", "要是",
    whole=True,
)
PLEASED = _words(
    "happy", "satisfied", "pleased", "enjoy", "love", "zufrieden", "gefällt", "glücklich",
    "satisfait", "content", "plaît", "satisfech", "content[oa]", "gustado", "gustó",
    "soddisfatt", "contento", "piaciut", "満足", "気に入", "满意", "滿意", "喜欢", "喜歡",
)
INCENTIVE = _words(
    "gift ?cards?", "vouchers?", "coupons?", "discounts?", "% off", "cash ?back", "rewards?",
    "prizes?", "store credit", "promo code", "gutschein", "rabatt", "geschenk", "prämie",
    "bon d'achat", "réduction", "remise", "code promo", "cadeau", "carte cadeau", "descuento",
    "cupón", "vale", "regalo", "tarjeta regalo", "reembolso parcial", "buono", "sconto",
    "omaggio", "coupon", "クーポン", "ギフト券", "ギフトカード", "割引", "ポイント",
    "プレゼント", "特典", "キャッシュバック",
    "优惠券", "優惠券", "返现", "返現", "折扣", "礼品卡", "禮品卡", "赠品", "贈品", "红包",
    "紅包", "代金券", "优惠", "優惠",
)
# Weaker words: an incentive only in the very sentence that asks for the review.
INCENTIVE_NEAR = _words(
    "free", "refund", "money back", "gratis", "kostenlos", "rückerstattung", "gratuit",
    "rembours", "reembolso", "gratuito", "rimborso", "無料", "返金", "免费", "免費", "退款",
)
POSITIVE = _words(
    "5[ -]?stars?", "five[ -]?stars?", "★★★★★", "positive (?:review|feedback|rating)",
    "good (?:review|feedback|rating)", "great (?:review|rating)", "top rating", "best rating",
    "fünf sternen?", "5 sternen?", "5-sterne", "positive bewertung", "gute bewertung",
    "cinq étoiles", "5 étoiles", "avis positif", "bon avis", "bonne note", "cinco estrellas",
    "5 estrellas", "reseña positiva", "buena reseña", "valoración positiva", "buena valoración",
    "cinque stelle", "5 stelle", "recensione positiva", "buona recensione",
    "valutazione positiva", "星5", "星５", "5つ星", "５つ星", "高評価", "良い評価",
    "良いレビュー", "五星", "5星", "好评",
    "好評", "五顆星", "五颗星",
)
CHANGE = _words(
    "change", "update", "remove", "revise", "delete", "edit", "withdraw", "take down", "ändern",
    "entfernen", "löschen", "aktualisieren", "zurückziehen", "zurücknehmen", "modifier",
    "supprimer", "retirer", "changer", "cambiar", "modificar", "eliminar", "retirar",
    "actualizar", "modificare", "cambiare", "rimuovere", "eliminare", "ritirare", "変更", "削除",
    "修正", "取り消", "書き換", "修改", "删除", "刪除", "更改", "撤销", "撤銷", "撤回",
)
REMEDY = _words(
    "refund", "return", "replace", "replacement", "exchange", "repair", "resend", "erstatt",
    "rückgabe", "ersatz", "umtausch", "reparatur", "rembourse", "retour", "remplace", "échange",
    "répar", "reembols", "devoluci", "reemplaz", "cambio", "repar", "rimbors", "reso",
    "sostitu", "riparaz", "返金", "返品", "交換", "修理", "再送", "退款", "退货", "退貨",
    "换货", "換貨", "更换",
    "更換", "补发", "補發", "维修", "維修",
)
TIE = _words(
    "once", "after", "as soon as", "provided", "in exchange", "in return", "only if", "if",
    "sobald", "nachdem", "wenn", "falls", "im gegenzug", "une fois", "dès que", "après", "si",
    "en échange", "cuando", "una vez", "después", "a cambio", "se", "quando", "dopo",
    "una volta", "in cambio", "たら", "後", "場合", "代わりに", "如果", "之后", "之後", "一旦",
    "只要", "才",
    whole=True,
)
UNSUBSCRIBE = {
    "en": _words("unsubscribe", "opt out", "opt-out", "stop receiving", "no longer receive"),
    "de": _words("abmelden", "abbestellen", "abmeldung", "keine .{0,40}mehr erhalten"),
    "fr": _words("désabonn", "désinscri", "ne plus recevoir"),
    "es": _words("darse de baja", "darte de baja", "dar de baja", "baja", "dejar de recibir"),
    "it": _words(
        "disiscriv", "annullare l'iscrizione", "più ricevere", "ricevere più", "cancellami",
        "cancellarsi",
    ),
    "ja": _words("配信停止", "配信を停止", "受け取りを停止", "配信解除", "受け取りたくない"),
    "zh": _words("退订", "取消订阅", "退訂", "取消訂閱"),
}

# fmt: on
URL = re.compile(
    r"\bhttps?://[^\s<>\"')]+|\bwww\.[^\s<>\"')]+"
    r"|\b(?:[a-z0-9-]+\.)+(?:com|net|org|de|fr|es|it|jp|cn|tw|hk|uk|eu|io|shop|store|info|"
    r"biz|co|example|at|ch|nl|be|us|ca|au)\b(?:/[^\s<>\"')]*)?",
    re.IGNORECASE,
)
EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
PHONE = re.compile(r"(?:\btel:|\+\d{1,3}|\b0\d{1,4})[ ()/.-]{0,3}\d[\d ()/.-]{5,}\d")
IMAGE = re.compile(r"<img\b|\.(?:png|jpe?g|gif|svg|webp)\b", re.IGNORECASE)
EBAY_HOST = re.compile(r"(?:https?://)?(?:[\w-]+\.)*ebay\.[a-z.]+(?:/|$)", re.IGNORECASE)
ALIEXPRESS_HOST = re.compile(r"(?:https?://)?(?:[\w-]+\.)*aliexpress\.[a-z.]+(?:/|$)", re.I)

_BLOCK = re.compile(r"\{%-?\s*block\s+(\w+)\s*-?%\}(.*?)\{%-?\s*endblock", re.DOTALL)
_TAG = re.compile(r"\{\{.*?\}\}|\{%.*?%\}|\{#.*?#\}", re.DOTALL)
_EXPR = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)
_HTML_TAG = re.compile(r"<[^>]*>")
_SENTENCE_END = re.compile(r"[.!?;](?=\s|$)|[\u3002\uff01\uff1f\uff1b]|\n")
_HAS_WORD = re.compile(r"\w")
_NEAR = 60  # characters: a "first" word this close to a contact word belongs to it


# --- campaigns ---------------------------------------------------------------------------


def profiles_of(campaign: Campaign) -> list[str]:
    """The profiles a campaign is checked against: its marketplaces' and ``all``."""
    return [p for p in PROFILES[:-1] if p in campaign.marketplaces] + ["all"]


def _step_kind(step: CampaignStep) -> StepKind:
    """The declared kind; the folder name decides for amazon_review* folders too."""
    if step.kind is StepKind.OTHER and step.template.startswith(("amazon_review", "review_req")):
        return StepKind.REVIEW_REQUEST
    return step.kind


def _where(campaign: Campaign, step: CampaignStep) -> tuple[str, int]:
    return campaign.source, campaign.step_lines.get(step.id, 1)


def _days(value: timedelta) -> str:
    days = value / timedelta(days=1)
    return f"{days:g}d" if days >= 1 else f"{value / timedelta(hours=1):g}h"


def check_campaigns(
    campaigns: Sequence[Campaign],
    templates: Sequence[TemplateSource],
    settings: Settings,
    *,
    settings_path: str = "config/worker.yaml",
    settings_text: str = "",
) -> list[Finding]:
    """Every finding for these campaigns, their templates and the settings, sorted by place."""
    by_folder: dict[str, list[TemplateSource]] = {}
    for source in templates:
        by_folder.setdefault(source.folder, []).append(source)
    findings: set[Finding] = set()
    findings.update(_amazon_steps(campaigns, by_folder))
    for campaign in campaigns:
        profiles = profiles_of(campaign)
        if "shop" in profiles:
            findings.update(_buyer_cap(campaign, settings, settings_path, settings_text))
        for step in campaign.steps:
            for source in by_folder.get(step.template, []):
                findings.update(_template(source, _step_kind(step), profiles, settings))
    if any("shop" in c.marketplaces and c.enabled for c in campaigns):
        findings.update(_list_unsubscribe(settings, settings_path, settings_text))
    return sorted(findings)


def _asks_for_review(step: CampaignStep, sources: Sequence[TemplateSource]) -> bool:
    kind = _step_kind(step)
    if kind.asks_for_review:
        return True
    if kind is StepKind.REVIEW_THANKS or step.trigger.event is TriggerEvent.REVIEWED:
        return False
    return any(REVIEW.search(_plain(b.text)) for s in sources for b in _blocks(s.text))


def _amazon_steps(
    campaigns: Sequence[Campaign], by_folder: Mapping[str, list[TemplateSource]]
) -> Iterator[Finding]:
    first: tuple[str, int] | None = None  # in an enabled campaign: the one that counts
    for campaign in campaigns:
        if "amazon" not in campaign.marketplaces:
            continue
        own: tuple[str, int] | None = None  # a disabled campaign must pass alone too
        for step in campaign.steps:
            path, line = _where(campaign, step)
            if not _asks_for_review(step, by_folder.get(step.template, [])):
                yield Finding(
                    path,
                    line,
                    "A3",
                    "amazon",
                    f"step {step.id!r} ({_step_kind(step).value}) is not a review request; "
                    "Amazon permits no check-in, thank-you or marketing message",
                )
                continue
            earlier = own or first
            if earlier is not None:
                yield Finding(
                    path,
                    line,
                    "A1",
                    "amazon",
                    f"step {step.id!r} is a second review or feedback request for the same "
                    f"order (the first: {earlier[0]}:{earlier[1]}); Amazon allows one",
                )
            own = own or (path, line)
            if first is None and campaign.enabled:
                first = (path, line)
            yield from _amazon_timing(campaign, step, path, line)


def _amazon_timing(
    campaign: Campaign, step: CampaignStep, path: str, line: int
) -> Iterator[Finding]:
    if step.trigger.event is not TriggerEvent.DELIVERED:
        after = step.trigger.event.value if step.trigger.event else f"step {step.trigger.step}"
        yield Finding(
            path,
            line,
            "A2",
            "amazon",
            f"review request after {after}; Amazon allows it only 5d to 30d after delivery "
            "(after: {event: delivered, delay: 5d..30d})",
        )
        return
    if step.delay_min < AMAZON_REVIEW_MIN:
        yield Finding(
            path,
            line,
            "A2",
            "amazon",
            f"review request {_days(step.delay_min)} after delivery; Amazon allows 5d to 30d",
        )
    elif step.latest is None or step.latest > AMAZON_REVIEW_MAX:
        said = "no 'latest:'" if step.latest is None else f"latest: {_days(step.latest)}"
        yield Finding(
            path,
            line,
            "A2",
            "amazon",
            f"review request with {said}; a dispute, the buyer cap, an unanswered message or a "
            "pause can hold it past 30 days after delivery, so set 'latest: 30d' or less "
            "(Amazon allows 5d to 30d)",
        )


def _key_line(text: str, key: str) -> int:
    for number, line in enumerate(text.splitlines(), 1):
        if line.startswith(f"{key}:"):
            return number
    return 1


def _buyer_cap(
    campaign: Campaign, settings: Settings, settings_path: str, settings_text: str
) -> Iterator[Finding]:
    for step in campaign.steps:
        cap = step.buyer_cap if step.buyer_cap is not None else settings.buyer_cap
        if cap > timedelta(0) or _answers_own_review(step):
            continue
        if step.buyer_cap is None:
            where = (settings_path, _key_line(settings_text, "buyer_cap"))
        else:
            where = _where(campaign, step)
        yield Finding(
            *where,
            "S3",
            "shop",
            f"campaign {campaign.name!r} step {step.id!r} runs without a per-buyer cap "
            "(buyer_cap: 0); shop mail needs one",
        )


def _answers_own_review(step: CampaignStep) -> bool:
    """A thank-you for the buyer's own review goes at most once per review and answers
    something the buyer just did; the cap exists against mail nobody asked for."""
    return step.trigger.event is TriggerEvent.REVIEWED and step.kind is StepKind.REVIEW_THANKS


def _list_unsubscribe(settings: Settings, path: str, text: str) -> Iterator[Finding]:
    addresses = [
        settings.unsubscribe.mailto,
        settings.unsubscribe.url,
        settings.reply_to,
        settings.sender,
    ]
    if not any(a and ("@" in a or a.startswith("https://")) for a in addresses):
        yield Finding(
            path,
            _key_line(text, "unsubscribe"),
            "S2",
            "shop",
            "no List-Unsubscribe address: set unsubscribe.mailto or unsubscribe.url",
        )


# --- templates ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Block:
    name: str
    text: str
    offset: int
    """Where the block's body starts in the file."""


def _blocks(text: str) -> list[_Block]:
    return [_Block(m[1], m[2], m.start(2)) for m in _BLOCK.finditer(text)]


def _blank(match: re.Match[str]) -> str:
    """A tag replaced by as many spaces, keeping its newlines, so offsets stay true."""
    return re.sub(r"[^\n]", " ", match[0])


def _plain(text: str) -> str:
    return _TAG.sub(_blank, text)


def _line_of(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


@dataclass(frozen=True, slots=True)
class _Sentence:
    text: str
    offset: int


def _sentences(text: str) -> list[_Sentence]:
    """Sentences with their offsets; a blank line or a list item ends one too."""
    found, start = [], 0
    for match in _SENTENCE_END.finditer(text):
        end = match.end()
        if _HAS_WORD.search(text, start, end):
            found.append(_Sentence(text[start:end], start))
        start = end
    if _HAS_WORD.search(text, start):
        found.append(_Sentence(text[start:], start))
    return found


def _near(first: re.Pattern[str], second: re.Pattern[str], text: str) -> bool:
    """Some match of ``first`` within _NEAR characters of some match of ``second``."""
    seconds = [m.start() for m in second.finditer(text)]
    return any(abs(m.start() - s) <= _NEAR for m in first.finditer(text) for s in seconds)


def _template(
    source: TemplateSource, kind: StepKind, profiles: list[str], settings: Settings
) -> Iterator[Finding]:
    blocks = {b.name: b for b in _blocks(source.text)}
    marketplaces = [p for p in profiles if p != "all"]
    if "amazon" in profiles:
        html = blocks.get("html")
        if html is not None and _plain(html.text).strip():
            yield _at(
                source,
                html.offset,
                "A4",
                "amazon",
                "the html block is not empty; Amazon messages are plain text only",
            )
        subject = blocks.get("subject")
        if subject is not None and not any(
            "order.number" in e for e in _EXPR.findall(subject.text)
        ):
            yield _at(
                source,
                subject.offset,
                "A6",
                "amazon",
                "the subject has no {{ order.number }}; Amazon wants the order number there",
            )
    for block in blocks.values():
        yield from _wording(source, block, kind, profiles)
        yield from _contact_source(source, block, marketplaces)
    if "shop" in profiles:
        yield from _unsubscribe_line(source, blocks)
    if "ebay" in profiles and kind.asks_for_review and source.locale.split("-")[0] == "en":
        text = blocks.get("text")
        if text is not None and "feedback" not in text.text.lower():
            yield _at(
                source,
                text.offset,
                "E2",
                "ebay",
                'an eBay review request asks for "Feedback", eBay\'s word',
            )
    for marketplace in marketplaces:
        yield from _contact_render(source, blocks, marketplace, settings)


def _at(source: TemplateSource, offset: int, rule: str, profile: str, message: str) -> Finding:
    return Finding(source.path, _line_of(source.text, offset), rule, profile, message)


def _quoted(sentence: _Sentence) -> str:
    words = " ".join(sentence.text.split())
    return words if len(words) <= 70 else words[:67] + "..."


def _wording(
    source: TemplateSource, block: _Block, kind: StepKind, profiles: list[str]
) -> Iterator[Finding]:
    text = _plain(block.text)
    if block.name == "html":
        text = _HTML_TAG.sub(_blank, text)
    sentences = _sentences(text)
    asks = [bool(REVIEW.search(s.text)) for s in sentences]
    amazon = "amazon" in profiles
    ebay_like = "ebay" in profiles or "aliexpress" in profiles
    for index, sentence in enumerate(sentences):
        offset = block.offset + sentence.offset
        around = asks[max(0, index - 1) : index + 2]
        quoted = _quoted(sentence)
        if any(around) and _near(FIRST, CONTACT, sentence.text):
            yield _at(
                source,
                offset,
                "G1",
                "all",
                f"help offered as a precondition or alternative to a review: {quoted!r}; "
                "offer help in its own sentence, without first/before/instead",
            )
        elif asks[index] and CONDITION.search(sentence.text) and PLEASED.search(sentence.text):
            yield _at(
                source, offset, "G1", "all", f"a review asked only of pleased buyers: {quoted!r}"
            )
        incentive = (any(around) and INCENTIVE.search(sentence.text)) or (
            asks[index] and INCENTIVE_NEAR.search(sentence.text)
        )
        if incentive:
            message = f"an incentive tied to a review: {quoted!r}"
            yield _at(source, offset, "G2", "all", message)
            if amazon:
                yield _at(source, offset, "A8", "amazon", message)
        if kind is not StepKind.REVIEW_THANKS and POSITIVE.search(sentence.text):
            message = f"asks for a positive or 5-star review: {quoted!r}"
            yield _at(source, offset, "G3", "all", message)
            if amazon:
                yield _at(source, offset, "A7", "amazon", message)
        elif amazon and asks[index] and _near(CHANGE, REVIEW, sentence.text):
            yield _at(
                source, offset, "A7", "amazon", f"asks to change or remove a review: {quoted!r}"
            )
        if ebay_like and asks[index] and REMEDY.search(sentence.text) and TIE.search(sentence.text):
            yield _at(
                source,
                offset,
                "E3",
                "ebay" if "ebay" in profiles else "aliexpress",
                f"help, a refund or a replacement tied to feedback: {quoted!r}",
            )


def _contact_hits(text: str, marketplace: str) -> Iterator[tuple[int, str, str]]:
    """(offset, kind, what) for every URL, address, phone number or image in ``text``."""
    addresses = [(m.start(), m.end()) for m in EMAIL.finditer(text)]
    for match in URL.finditer(text):
        if marketplace == "ebay" and EBAY_HOST.match(match[0]):
            continue
        if marketplace == "aliexpress" and ALIEXPRESS_HOST.match(match[0]):
            continue
        if any(start <= match.start() < end for start, end in addresses):
            continue  # the domain of an e-mail address, reported as the address
        yield match.start(), "link", match[0]
    for start, end in addresses:
        yield start, "e-mail address", text[start:end]
    for match in PHONE.finditer(text):
        yield match.start(), "phone number", match[0].strip()
    for match in IMAGE.finditer(text):
        yield match.start(), "image", match[0]


_CONTACT_RULE = {"amazon": "A5", "ebay": "E1", "aliexpress": "E1"}


def _contact_source(
    source: TemplateSource, block: _Block, marketplaces: list[str]
) -> Iterator[Finding]:
    for marketplace in marketplaces:
        rule = _CONTACT_RULE.get(marketplace)
        if rule is None:
            continue
        for offset, what, value in _contact_hits(_plain(block.text), marketplace):
            yield _at(
                source,
                block.offset + offset,
                rule,
                marketplace,
                f"{what} {value!r} in the {block.name}; {_forbidden(marketplace)}",
            )


def _forbidden(marketplace: str) -> str:
    if marketplace == "amazon":
        return "Amazon messages carry no links, addresses, phone numbers or images"
    return f"{marketplace} permits no contact details or links off {marketplace}"


def _sample_order(order: OrderView, marketplace: str) -> OrderView:
    """The sample order as the marketplace's export gives it (its own review link)."""
    urls = {
        "amazon": "https://www.amazon.com/review/create-review?asin=B000SAMPLE",
        "ebay": "https://www.ebay.com/fdbk/leave_feedback?item=1234567890",
        "aliexpress": "https://feedback.aliexpress.com/management/leaveFeedback.htm?id=1",
        "shop": "https://shop.example/products/water-bottle#reviews",
    }
    return replace(order, marketplace=marketplace, review_url=urls[marketplace])


@functools.lru_cache(maxsize=64)
def _compiled(text: str) -> jinja2.Template | None:
    """One compilation per template text: it is rendered once per marketplace, and
    compiling is most of the lint's cost at start-up. None: it does not compile."""
    env = SandboxedEnvironment(
        loader=jinja2.DictLoader({"t": text}),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    add_filters(env)
    try:
        return env.get_template("t")
    except jinja2.TemplateError:
        return None


def _rendered(source: TemplateSource, context: dict[str, Any]) -> dict[str, str]:
    """Each block rendered; a template that does not render is the start-up check's
    business, not the lint's, so it yields nothing here."""
    template = _compiled(source.text)
    if template is None:
        return {}
    out = {}
    for name in BLOCKS & set(template.blocks):
        try:
            out[name] = "".join(template.blocks[name](template.new_context(context)))
        except Exception:  # any template failure is reported by the start-up check
            continue
    return out


def _variables(context: Mapping[str, Any]) -> dict[str, str]:
    """``order.review_url`` -> its sample value, for every string attribute."""
    found = {}
    for name, value in context.items():
        fields = getattr(value, "__dataclass_fields__", None)
        if fields is None:
            continue
        for attribute in fields:
            item = getattr(value, attribute)
            if isinstance(item, str) and item:
                found[f"{name}.{attribute}"] = item
    return found


def _contact_render(
    source: TemplateSource, blocks: Mapping[str, _Block], marketplace: str, settings: Settings
) -> Iterator[Finding]:
    rule = _CONTACT_RULE.get(marketplace)
    if rule is None:
        return
    context = sample_context(settings.seller, source.locale)
    context["order"] = _sample_order(context["order"], marketplace)
    variables = _variables(context)
    allowed = {context["order"].number, context["order"].tracking_number or ""}
    for name, rendered in _rendered(source, context).items():
        block = blocks.get(name)
        if block is None:
            continue
        literal = _plain(block.text)
        for value in allowed - {""}:
            rendered = rendered.replace(value, " ")
        for _offset, what, value in _contact_hits(rendered, marketplace):
            if value in literal:
                continue  # written in the source: reported at its own line already
            line = _variable_line(source, block, variables, value)
            yield Finding(
                source.path,
                line,
                rule,
                marketplace,
                f"the {name} renders a {what} ({value!r}) for a {marketplace} order; "
                f"{_forbidden(marketplace)}",
            )


def _variable_line(
    source: TemplateSource, block: _Block, variables: Mapping[str, str], value: str
) -> int:
    """The line of the ``{{ }}`` whose variable rendered ``value``; else the block's."""
    names = [name for name, sample in variables.items() if value in sample or sample in value]
    for match in _EXPR.finditer(block.text):
        if any(name in match[1] for name in names):
            return _line_of(source.text, block.offset + match.start())
    return _line_of(source.text, block.offset)


def _unsubscribe_line(source: TemplateSource, blocks: Mapping[str, _Block]) -> Iterator[Finding]:
    language = source.locale.split("-")[0]
    pattern = UNSUBSCRIBE.get(language, UNSUBSCRIBE["en"])
    for name in ("text", "html"):
        block = blocks.get(name)
        if block is None or (name == "html" and not _plain(block.text).strip()):
            continue
        if not pattern.search(block.text):
            yield _at(
                source,
                block.offset,
                "S1",
                "shop",
                f"the {name} block has no unsubscribe line in {source.locale}",
            )


# --- the edge: files in, findings out ----------------------------------------------------


def policy_findings(
    settings: Settings, campaigns: Sequence[Campaign], settings_path: Path | None = None
) -> list[Finding]:
    """Read the templates the campaigns use (and the settings file, for line numbers) and
    check everything."""
    path = settings_path or Path("config/worker.yaml")
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = ""
    folders = [step.template for campaign in campaigns for step in campaign.steps]
    templates = read_templates(settings.templates_dir, folders)
    return check_campaigns(
        campaigns, templates, settings, settings_path=str(path), settings_text=text
    )


def refuse_findings(findings: Sequence[Finding]) -> None:
    """Nothing runs on a campaign that breaks a marketplace's rules: one line naming each."""
    if findings:
        listed = "; ".join(printable(str(f)) for f in findings)
        raise ConfigError(
            f"{len(findings)} marketplace policy finding(s), see `worker lint`: {listed}"
        )
