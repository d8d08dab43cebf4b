"""The classifier over the fixture messages, and the precedence between its checks."""

from __future__ import annotations

import dataclasses
import textwrap
import time
from pathlib import Path
from typing import NamedTuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.classify import TEXT_CHARS, classify, own_words
from worker.domain import Classification, DisputeKind, Intent, MessageKind
from worker.inbound import InboundMessage, parse
from worker.rules import MailRules, load_rules, normalise

ROOT = Path(__file__).resolve().parents[2]
MAIL = ROOT / "tests" / "fixtures" / "mail"
SELLER = frozenset({"service@shop.example", "help@shop.example"})
UNSUBSCRIBE = frozenset({"unsubscribe@shop.example"})

K = MessageKind
D = DisputeKind


@pytest.fixture(scope="module")
def rules() -> MailRules:
    return load_rules(ROOT / "config" / "mail-rules.yaml")


def run(rules: MailRules, raw: bytes, ours: tuple[str, ...] = ()) -> Classification:
    return classify(
        parse(raw), rules, seller_addresses=SELLER, unsubscribe_addresses=UNSUBSCRIBE, ours=ours
    )


MISREAD = pytest.mark.xfail(
    strict=True,
    reason="a known misreading of the shipped intent model (docs/mail-rules.md, Known limits); "
    "it fails loudly (XPASS) once a retrained model reads it right",
)


class Expect(NamedTuple):
    kind: MessageKind
    evidence: str
    """A part of the evidence the verdict must give."""
    dispute: DisputeKind | frozenset[DisputeKind] | None = None
    """The dispute kind, or the kinds a person would accept for the words (each pauses)."""
    numbers: tuple[str, ...] = ()
    marketplace: str | None = None
    rating: int | None = None
    relayed: bool = False


AUTO_REPLIES = {
    "en_out_of_office": Expect(K.AUTO_REPLY, "header=Auto-Submitted: auto-replied"),
    "exchange_automatic_reply": Expect(K.AUTO_REPLY, "subject=en:Automatic reply"),
    "de_abwesenheitsnotiz": Expect(K.AUTO_REPLY, "subject=de:Abwesenheitsnotiz"),
    "fr_reponse_automatique": Expect(K.AUTO_REPLY, "subject=fr:Réponse automatique"),
    "es_respuesta_automatica": Expect(K.AUTO_REPLY, "subject=es:Respuesta automática"),
    "it_risposta_automatica": Expect(K.AUTO_REPLY, "subject=it:Risposta automatica"),
    "ja_fuzai_iso2022jp": Expect(K.AUTO_REPLY, "subject=ja:自動返信"),
    "zh_zidong_huifu_gb2312": Expect(K.AUTO_REPLY, "subject=zh:自动回复"),
    "x_autoreply": Expect(K.AUTO_REPLY, "header=X-Autoreply: yes"),
}
BULK_MAIL = {
    # An acknowledgement with only Precedence: bulk, which bulk mail carries: not a real
    # automatic reply (Auto-Submitted: auto-replied, X-Autoreply, an out-of-office subject).
    "precedence_bulk": Expect(K.BULK, "header=Precedence: bulk", numbers=("#48213",)),
    "newsletter_esp": Expect(K.BULK, "header=List-Unsubscribe: <https://em.descaler.example/"),
    "mailing_list_post": Expect(
        K.BULK, "header=List-Id: Kettle sellers forum <sellers.forum.example.org>"
    ),
    "carrier_notice_feedback_id": Expect(K.BULK, "header=Feedback-ID: 1.eu-west-1.Qx7d:"),
}
UNSUBSCRIBE_MAIL = {
    "en_please_unsubscribe": Expect(K.UNSUBSCRIBE, "unsubscribe=en:Please unsubscribe me"),
    "de_abmelden": Expect(K.UNSUBSCRIBE, "unsubscribe=de:Abmelden"),
    "fr_desabonner": Expect(K.UNSUBSCRIBE, "unsubscribe=fr:Désabonner"),
    "es_baja": Expect(K.UNSUBSCRIBE, "unsubscribe=es:Baja"),
    "it_cancellami": Expect(K.UNSUBSCRIBE, "unsubscribe=it:Cancellami"),
    "ja_haishin_teishi": Expect(K.UNSUBSCRIBE, "unsubscribe=ja:配信停止"),
    "zh_tuiding": Expect(K.UNSUBSCRIBE, "unsubscribe=zh:退订"),
    "list_unsubscribe_mailto": Expect(K.UNSUBSCRIBE, "to=unsubscribe@shop.example"),
}
AMAZON_ORDER = ("112-4567890-1234567",)
EBAY_ORDER = ("24-11223-44556",)
ALI_ORDER = ("8178123456789012",)
MARKETPLACE = {
    "amazon_buyer_message": Expect(
        K.REPLY, "rule=amazon-buyer-message", None, AMAZON_ORDER, "amazon", relayed=True
    ),
    "amazon_buyer_complaint": Expect(
        K.COMPLAINT,
        "rule=amazon-buyer-message intent=not_received",
        D.NOT_RECEIVED,
        ("302-1234567-1234567",),
        "amazon",
        relayed=True,
    ),
    "amazon_a_to_z_claim": Expect(
        K.DISPUTE_OPENED, "rule=amazon-a-to-z-claim", D.A_TO_Z, AMAZON_ORDER, "amazon"
    ),
    "amazon_a_to_z_closed": Expect(
        K.DISPUTE_CLOSED, "rule=amazon-a-to-z-closed", D.A_TO_Z, AMAZON_ORDER, "amazon"
    ),
    "amazon_chargeback": Expect(
        K.DISPUTE_OPENED, "rule=amazon-chargeback", D.CHARGEBACK, ("113-9876543-7654321",), "amazon"
    ),
    "ebay_member_message": Expect(
        K.REPLY, "rule=ebay-member-message", None, EBAY_ORDER, "ebay", relayed=True
    ),
    "ebay_case_opened": Expect(
        K.DISPUTE_OPENED, "rule=ebay-case-opened", D.EBAY_CASE, EBAY_ORDER, "ebay"
    ),
    "ebay_case_closed": Expect(
        K.DISPUTE_CLOSED, "rule=ebay-case-closed", D.EBAY_CASE, EBAY_ORDER, "ebay"
    ),
    "ebay_feedback_positive": Expect(K.REVIEW, "rule=ebay-feedback", None, EBAY_ORDER, "ebay", 5),
    "ebay_feedback_negative": Expect(
        K.REVIEW, "rule=ebay-feedback", None, ("19-55667-88990",), "ebay", 1
    ),
    "aliexpress_dispute_opened": Expect(
        K.DISPUTE_OPENED,
        "rule=aliexpress-dispute-opened",
        D.ALIEXPRESS_DISPUTE,
        ALI_ORDER,
        "aliexpress",
    ),
    "aliexpress_dispute_closed": Expect(
        K.DISPUTE_CLOSED,
        "rule=aliexpress-dispute-closed",
        D.ALIEXPRESS_DISPUTE,
        ALI_ORDER,
        "aliexpress",
    ),
    "trustpilot_review": Expect(K.REVIEW, "rule=trustpilot-review", None, ("#1042",), "shop", 4),
}
COMPLAINTS = {
    "en_not_received": Expect(K.COMPLAINT, "intent=not_received", D.NOT_RECEIVED, ("#1051",)),
    "en_damaged_quoting_checkin": Expect(K.COMPLAINT, "intent=damaged", D.DAMAGED),
    "en_chargeback": Expect(K.COMPLAINT, "intent=claim_threat", D.CLAIM_THREAT, ("#1044",)),
    "de_not_received_latin1": Expect(
        K.COMPLAINT, "intent=not_received", D.NOT_RECEIVED, ("302-1234567-7654321",)
    ),
    # "I sent it back as agreed; when do I get my money?": a refund, or the return it follows.
    "de_refund": Expect(K.COMPLAINT, "intent=re", frozenset({D.REFUND, D.RETURN}), ("#1047",)),
    "fr_wrong_item": Expect(K.COMPLAINT, "intent=wrong_item", D.WRONG_ITEM, ("#1048",)),
    # "No funciona: the light comes on but it does not heat": defective, however it is named.
    "es_not_as_described": Expect(
        K.COMPLAINT, "intent=", frozenset({D.NOT_AS_DESCRIBED, D.DAMAGED}), ("#1049",)
    ),
    "it_return": Expect(K.COMPLAINT, "intent=return", D.RETURN, ("#1050",)),
    # A cancel; in the mailbox tests the order is delivered, so the stage makes it a return.
    "it_cancel": Expect(K.COMPLAINT, "intent=", frozenset({D.CANCEL, D.RETURN}), ("#1053",)),
    "ja_damaged_iso2022jp": Expect(K.COMPLAINT, "intent=damaged", D.DAMAGED),
    "ja_not_received_shift_jis": Expect(
        K.COMPLAINT, "intent=not_received", D.NOT_RECEIVED, ("#1055",)
    ),
    "zh_refund_gb2312": Expect(K.COMPLAINT, "intent=refund", D.REFUND, ("#1056",)),
    "zh_wrong_item_big5": Expect(K.COMPLAINT, "intent=wrong_item", D.WRONG_ITEM, ("#1057",)),
    "ko_euc_kr_reply": Expect(K.REPLY, "intent=", numbers=("#1058",)),
    "en_damaged_via_own_group": Expect(K.COMPLAINT, "intent=damaged", D.DAMAGED, ("#1061",)),
}
REPLIES = {
    "en_thanks": Expect(K.REPLY, "intent="),
    "en_quotes_checkin": Expect(K.REPLY, "intent="),
    "en_not_damaged": Expect(K.REPLY, "intent="),
    "en_outlook_top_post": Expect(K.REPLY, "intent="),
    "de_danke_outlook": Expect(K.REPLY, "intent="),
    "fr_merci": Expect(K.REPLY, "intent="),
    "es_gracias": Expect(K.REPLY, "intent="),
    "it_grazie": Expect(K.REPLY, "intent="),
    "ja_arigatou": Expect(K.REPLY, "intent="),
    "zh_xiexie": Expect(K.REPLY, "intent="),
    "seller_answer": Expect(K.SELLER, "from=help@shop.example", numbers=("#1042",)),
    "en_forwarded_checkin": Expect(K.REPLY, "intent="),
    "de_forwarded_thunderbird": Expect(K.REPLY, "intent="),
    "fr_apple_forward": Expect(K.REPLY, "intent="),
}
BROKEN = {
    "missing_boundary": Expect(K.REPLY, "intent=", numbers=("#1051",)),
    "unknown_charset": Expect(K.COMPLAINT, "intent=damaged", D.DAMAGED, ("#1044",)),
    "malformed_from": Expect(K.REPLY, "intent="),
    "eight_bit_headers": Expect(K.COMPLAINT, "intent=damaged", D.DAMAGED, ("#1059",)),
    "bad_encoded_word": Expect(K.COMPLAINT, "intent=not_received", D.NOT_RECEIVED, ("#1060",)),
}
TABLE = {
    f"{group}/{name}": expect
    for group, table in (
        ("auto_replies", AUTO_REPLIES),
        ("bulk", BULK_MAIL),
        ("unsubscribe", UNSUBSCRIBE_MAIL),
        ("marketplace", MARKETPLACE),
        ("complaints", COMPLAINTS),
        ("replies", REPLIES),
        ("broken", BROKEN),
    )
    for name, expect in table.items()
}


@pytest.mark.parametrize("name", sorted(TABLE))
def test_fixture_is_classified(rules: MailRules, name: str) -> None:
    expect = TABLE[name]
    verdict = run(rules, (MAIL / f"{name}.eml").read_bytes())
    disputes = expect.dispute if isinstance(expect.dispute, frozenset) else {expect.dispute}
    assert (verdict.kind, verdict.rating) == (expect.kind, expect.rating), verdict.evidence
    assert verdict.dispute_kind in disputes, verdict.evidence
    assert (verdict.marketplace, verdict.relayed) == (expect.marketplace, expect.relayed)
    assert verdict.order_numbers == expect.numbers
    assert expect.evidence in verdict.evidence


def test_every_fixture_is_in_the_table() -> None:
    groups = (
        "auto_replies",
        "bulk",
        "unsubscribe",
        "marketplace",
        "complaints",
        "replies",
        "broken",
    )
    on_disk = {f"{p.parent.name}/{p.stem}" for g in groups for p in (MAIL / g).glob("*.eml")}
    assert on_disk == set(TABLE)


def test_fixtures_are_complete_messages() -> None:
    """The integration tests APPEND them to a real IMAP server: each needs the usual headers."""
    for path in MAIL.glob("*/*.eml"):
        message = parse(path.read_bytes())
        assert message.message_id and message.date and message.subject, path.name
        assert message.header("From") and message.header("To"), path.name


def test_korean_is_read_without_errors() -> None:
    message = parse((MAIL / "complaints" / "ko_euc_kr_reply.eml").read_bytes())
    assert message.errors == ()
    assert "감사합니다" in message.text


def mail(subject: str, body: str, *headers: str, sender: str = "buyer@buyer.example") -> bytes:
    lines = [
        "Message-ID: <t1@buyer.example>",
        "Date: Thu, 12 Mar 2026 09:00:00 +0000",
        f"From: Buyer <{sender}>",
        "To: help@shop.example",
        f"Subject: {subject}",
        *headers,
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=utf-8",
        "",
        body,
    ]
    return "\n".join(lines).encode("utf-8")


@pytest.mark.parametrize(
    ("subject", "body", "kind", "dispute"),
    [
        ("Re: Did your kettle arrive safely?", "Thank you, it arrived and works!", K.REPLY, None),
        ("Hello", "Where is my parcel? It has not arrived", K.COMPLAINT, D.NOT_RECEIVED),
        ("Hello", "It arrived, not damaged at all, thanks!", K.REPLY, None),
        (
            "Hi",
            "please stop sending me broken kettles, I want a refund",
            K.COMPLAINT,
            frozenset({D.DAMAGED, D.REFUND}),
        ),
        ("Hi", "No refund needed, I found the missing lid in the box.", K.REPLY, None),
        ("Hi", "I want my money back.", K.COMPLAINT, D.REFUND),
        ("Kettle", "Das Paket ist nicht angekommen.", K.COMPLAINT, D.NOT_RECEIVED),
        ("Kettle", "Alles unbeschädigt angekommen, danke!", K.REPLY, None),
        ("Kettle", "Il pacco non è ancora arrivato.", K.COMPLAINT, D.NOT_RECEIVED),
        ("ケトル", "破損はありませんでした。ありがとうございます。", K.REPLY, None),
        ("水壶", "没有损坏，谢谢。", K.REPLY, None),
        ("STOP", "", K.UNSUBSCRIBE, None),
        ("Re: Your order", "Hi,\n\nSTOP\n\nThanks", K.UNSUBSCRIBE, None),
        ("Re: Your order", "please unsubscribe me from this list, thanks", K.UNSUBSCRIBE, None),
        ("Re: Your order", "I will stop using it if it keeps leaking.", K.REPLY, None),
        pytest.param("Hi", "Does it come with a UK plug?", K.REPLY, None, marks=MISREAD),
        ("Commande", "Je veux être remboursée.", K.COMPLAINT, D.REFUND),
        (
            "Hi",
            "The kettle doesn't heat upstairs, only in the kitchen.",
            K.COMPLAINT,
            frozenset({D.DAMAGED, D.NOT_AS_DESCRIBED}),
        ),
        pytest.param("ケトル", "蓋が壊れていません。", K.REPLY, None, marks=MISREAD),
        ("ケトル", "蓋が壊れています。", K.COMPLAINT, D.DAMAGED),
        pytest.param(
            "不在票が入っていました", "再配達をお願いします。", K.REPLY, None, marks=MISREAD
        ),
        ("【不在】3月23日まで", "不在にしております。", K.AUTO_REPLY, None),
    ],
)
def test_buyer_words(
    rules: MailRules,
    subject: str,
    body: str,
    kind: MessageKind,
    dispute: DisputeKind | frozenset[DisputeKind] | None,
) -> None:
    """``dispute``: the kind, or the kinds a person would accept for the words (each pauses)."""
    verdict = run(rules, mail(subject, body))
    allowed = dispute if isinstance(dispute, frozenset) else {dispute}
    assert verdict.kind is kind and verdict.dispute_kind in allowed, verdict.evidence


def test_seller_comes_first(rules: MailRules) -> None:
    raw = mail("Re: refund", "Your refund is on its way.", "Auto-Submitted: auto-generated",
               sender="Service@shop.example")  # fmt: skip
    assert run(rules, raw).kind is K.SELLER


def test_auto_reply_beats_a_complaint_word(rules: MailRules) -> None:
    raw = mail("Out of Office: Re: broken kettle", "I am away. Re your refund: later.",
               "Auto-Submitted: auto-replied")  # fmt: skip
    verdict = run(rules, raw)
    assert verdict.kind is K.AUTO_REPLY
    assert verdict.evidence == "header=Auto-Submitted: auto-replied"


@pytest.mark.parametrize(
    ("header", "kind"),
    [
        ("X-Auto-Response-Suppress: All", K.REPLY),
        ("Precedence: list", K.BULK),
        ("Precedence: junk", K.BULK),
        ("Precedence: bulk", K.BULK),
        ("Precedence: first-class", K.REPLY),
        ("Precedence: auto_reply", K.AUTO_REPLY),
        ("Auto-Submitted: no", K.REPLY),
        ("Auto-Submitted: No (manual)", K.REPLY),
        ("Auto-Submitted: auto-generated", K.AUTO_REPLY),
        ("Auto-Submitted: auto-notified", K.AUTO_REPLY),
        ("X-Autorespond: 1", K.AUTO_REPLY),
        ("List-Id: Kettle news <news.descaler.example>", K.BULK),
        ("List-Unsubscribe: <mailto:leave@descaler.example>", K.BULK),
        ("List-Post: NO", K.BULK),
        ("Feedback-ID: 42:news:descaler", K.BULK),
        ("X-Campaign: spring26", K.BULK),
        ("X-CSA-Complaints: csa-complaints@eco.de", K.BULK),
    ],
)
def test_automatic_and_bulk_headers(rules: MailRules, header: str, kind: MessageKind) -> None:
    assert run(rules, mail("Re: your order", "Thanks!", header)).kind is kind


def test_unsubscribe_address_beats_a_complaint(rules: MailRules) -> None:
    raw = mail("refund", "I want a refund").replace(b"To: help@", b"To: unsubscribe@")
    verdict = run(rules, raw)
    assert (verdict.kind, verdict.evidence) == (K.UNSUBSCRIBE, "to=unsubscribe@shop.example")


def test_unsubscribe_address_counts_only_when_passed(rules: MailRules) -> None:
    raw = mail("Question", "Is it 230 V?").replace(b"To: help@", b"To: unsubscribe@")
    verdict = classify(parse(raw), rules, seller_addresses=SELLER)
    assert verdict.kind is not K.UNSUBSCRIBE


def test_marketplace_notification_beats_its_own_auto_submitted(rules: MailRules) -> None:
    raw = (MAIL / "marketplace" / "amazon_a_to_z_claim.eml").read_bytes()
    assert b"Auto-Submitted: auto-generated" in raw
    assert run(rules, raw).kind is K.DISPUTE_OPENED


def test_marketplace_rule_needs_its_sender(rules: MailRules) -> None:
    raw = mail("A-to-z Guarantee claim received for Order 112-4567890-1234567", "hello")
    verdict = run(rules, raw)
    assert verdict.marketplace is None
    assert verdict.kind is not K.DISPUTE_OPENED  # a buyer may say so: at most a complaint
    assert verdict.order_numbers == ("112-4567890-1234567",)


def test_quoted_order_numbers_are_not_the_buyers(rules: MailRules) -> None:
    body = "Thanks, #1001 is fine.\n\nOn Thu, 12 Mar 2026, Shop <s@shop.example> wrote:\n> #1002"
    assert run(rules, mail("Re: hello", body)).order_numbers == ("#1001",)


@pytest.mark.parametrize(
    "separator",
    [
        "On Thu, 12 Mar 2026 at 09:00, Kettle & Co <service@shop.example> wrote:",
        "On Thu, 12 Mar 2026 at 09:00, Kettle & Co <\nservice@shop.example> wrote:",
        "Am Do., 12. März 2026 um 09:00 Uhr schrieb Kettle & Co <service@shop.example>:",
        "Le jeu. 12 mars 2026 à 09:00, Kettle & Co <service@shop.example> a écrit :",
        "El jue, 12 mar 2026 a las 9:00, Kettle & Co escribió:",
        "Il giorno gio 12 mar 2026 alle ore 09:00 Kettle & Co ha scritto:",
        "2026年3月12日(木) 9:00 Kettle & Co <service@shop.example>:",
        "在 2026年3月12日 09:00，Kettle & Co 写道：",
        "-----Original Message-----",
        "-----Ursprüngliche Nachricht-----",
        "-------- Message d'origine --------",
        "From: Kettle & Co <service@shop.example>\nSent: Thursday, March 12, 2026 9:00 AM",
        "Von: Kettle & Co <service@shop.example>\nGesendet: Donnerstag, 12. März 2026 09:00",
        "差出人: Kettle & Co <service@shop.example>\n送信日時: 2026年3月12日 9:00",
        "发件人: Kettle & Co <service@shop.example>\n发送时间: 2026年3月12日 9:00",
        "De : Kettle & Co <service@shop.example>\nEnvoyé : jeudi 12 mars 2026 09:00",
        "De: Kettle & Co <service@shop.example>\nEnviado: jueves, 12 de marzo de 2026 9:00",
        "Da: Kettle & Co <service@shop.example>\nInviato: giovedì 12 marzo 2026 09:00",
        "________________________________\nFrom: Kettle & Co <service@shop.example>",
        "---------- Forwarded message ---------\nFrom: Kettle & Co <service@shop.example>",
        "---------- Forwarded message ---------",
        "Begin forwarded message:\n\nFrom: Kettle & Co <service@shop.example>",
        "Begin forwarded message:",
        "Anfang der weitergeleiteten Nachricht:",
        "Début du message réexpédié :",
        "-------- Weitergeleitete Nachricht --------\nBetreff: Wasserkocher",
        "-------- Message transféré --------",
        "---------- Mensaje reenviado ---------",
        "-------- Messaggio inoltrato --------",
    ],
)
def test_quoted_text_is_not_the_buyers(rules: MailRules, separator: str) -> None:
    text = normalise(f"All fine, thanks!\n\n{separator}\n\nSomething missing or damaged? Refund?")
    assert own_words(text, rules) == "All fine, thanks!"


def test_greater_than_lines_are_dropped_anywhere(rules: MailRules) -> None:
    assert own_words("Hi\n> damaged?\nall good", rules) == "Hi\nall good"


@pytest.mark.parametrize(
    "separator",
    [
        "Op do 12 mrt. 2026 om 09:00 schreef Kettle & Co <service@shop.example>:",
        "Em qui., 12 de mar. de 2026 às 09:00, Kettle & Co <service@shop.example> escreveu:",
        "Den 12 mars 2026 kl. 09:00 skrev Kettle & Co <service@shop.example>:",
        "2026/03/12 Kettle & Co <service@shop.example>",
    ],
)
def test_the_reply_parser_finds_headers_the_rules_do_not_list(
    rules: MailRules, separator: str
) -> None:
    text = normalise(f"All fine, thanks!\n\n{separator}\n> Something missing or damaged?\nRefund?")
    assert rules.quote_start(text) == len(text)
    assert own_words(text, rules) == "All fine, thanks!"


# Bulk and mailing-list mail ------------------------------------------------------------------

NEWS = "news@descaler.example"
BULKY = (
    "List-Id: Kettle news <news.descaler.example>",
    "List-Unsubscribe: <mailto:leave@descaler.example>",
    "Precedence: bulk",
)
OWN_GROUP = (
    "List-Id: <help.shop.example>",
    "List-Post: <https://groups.google.com/a/shop.example/group/help/post>, "
    "<mailto:help@shop.example>",
    "List-Unsubscribe: <mailto:googlegroups-manage+8033+unsubscribe@googlegroups.com>",
    "Precedence: list",
)


@pytest.mark.parametrize(
    ("subject", "body"),
    [
        ("Spring offer", "My parcel has not arrived? Broken kettle? Full refund, always."),
        ("STOP", "Unsubscribe"),
        ("Re: your order #1042", "Thanks for your order!"),
    ],
)
def test_bulk_is_never_a_complaint_an_unsubscribe_or_a_reply(
    rules: MailRules, subject: str, body: str
) -> None:
    verdict = run(rules, mail(subject, body, *BULKY, sender=NEWS))
    assert verdict.kind is K.BULK
    assert verdict.evidence == "header=List-Id: Kettle news <news.descaler.example>"


@pytest.mark.parametrize(
    ("subject", "header", "evidence"),
    [
        ("Re: your order", "Auto-Submitted: auto-replied", "header=Auto-Submitted: auto-replied"),
        ("Re: your order", "X-Autoreply: yes", "header=X-Autoreply: yes"),
        ("Out of office: Re: your order", "X-Mailer: vacation", "subject=en:Out of office"),
    ],
)
def test_a_real_automatic_reply_stays_one_with_bulk_headers(
    rules: MailRules, subject: str, header: str, evidence: str
) -> None:
    verdict = run(rules, mail(subject, "I am away until Monday.", header, *BULKY))
    assert (verdict.kind, verdict.evidence) == (K.AUTO_REPLY, evidence)


def test_bulk_headers_beat_auto_generated(rules: MailRules) -> None:
    raw = mail("Weekly news", "Hello", "Auto-Submitted: auto-generated", *BULKY, sender=NEWS)
    assert run(rules, raw).kind is K.BULK


def with_headers(raw: bytes, *headers: str) -> bytes:
    head, _, body = raw.partition(b"\nSubject:")
    return head + "".join(f"\n{h}" for h in headers).encode() + b"\nSubject:" + body


@pytest.mark.parametrize(
    ("fixture", "kind"),
    [
        ("ebay_case_opened", K.DISPUTE_OPENED),
        ("ebay_feedback_negative", K.REVIEW),
        ("amazon_buyer_message", K.REPLY),
        ("amazon_buyer_complaint", K.COMPLAINT),
    ],
)
def test_marketplace_rules_beat_their_list_headers(
    rules: MailRules, fixture: str, kind: MessageKind
) -> None:
    raw = (MAIL / "marketplace" / f"{fixture}.eml").read_bytes()
    raw = with_headers(raw, "List-Unsubscribe: <mailto:u@marketplace.example>", "Feedback-ID: 1:x")
    assert parse(raw).header("Feedback-ID") == "1:x"
    verdict = run(rules, raw)
    assert (verdict.kind, verdict.marketplace is not None) == (kind, True)


def test_the_sellers_own_group_passing_a_complaint_on_is_no_bulk(rules: MailRules) -> None:
    verdict = run(rules, mail("Order #1061", "The glass is broken.", *OWN_GROUP))
    assert (verdict.kind, verdict.dispute_kind) == (K.COMPLAINT, D.DAMAGED)
    assert run(rules, mail("Order #1061", "STOP", *OWN_GROUP)).kind is K.UNSUBSCRIBE


@pytest.mark.parametrize(
    "headers",
    [
        ("List-Id: <help.shop.example.evil.example>",),
        ("List-Post: <mailto:help@shop.example.evil.example>",),
        ("List-Id: <shop.example>", "List-Post: <mailto:news@shop.example>"),
        (*OWN_GROUP, "Feedback-ID: 42:news:descaler"),
    ],
)
def test_a_list_that_is_not_the_sellers_own_is_bulk(
    rules: MailRules, headers: tuple[str, ...]
) -> None:
    assert run(rules, mail("Offer", "Refund guaranteed!", *headers)).kind is K.BULK


# Our own mail coming back -------------------------------------------------------------------

CHECK_IN = """Hello Emily,

Thank you for your order #1042. Your parcel should have reached you by now, so we would like \
to check in: did it arrive safely, and does your Electric kettle 1.7 l work as you expected?

If anything is not quite right, we are glad to help:

1. A question about setting it up or using it: reply to this e-mail and tell us where you \
are stuck.
2. Something missing or damaged: reply with a short description (a photo helps), and we \
will put it right within 1-2 working days.
3. Anything else: just reply; we answer every message within 24 hours.

To stop receiving these messages, simply reply with "unsubscribe".

Best regards,
Anna, customer service
Kettle & Co"""
CHECK_IN_SUBJECT = "Re: Did your Electric kettle 1.7 l arrive safely?"


@pytest.mark.parametrize(
    "body",
    [
        f"All good, thanks!\n\n{CHECK_IN}",
        f"All good, thanks!\n\n---------- 전달된 메일 ----------\n{CHECK_IN}",
        f"All good, thanks!\n\n-------- Przekazana wiadomość --------\n{CHECK_IN}",
        f"All good, thanks!\n\n{CHECK_IN.upper()}",
        "All good, thanks!\n\n" + textwrap.fill(CHECK_IN, 66, break_on_hyphens=False),
        "All good, thanks!\n\n" + CHECK_IN.replace(" ", "  ").replace("\n", "\n\t"),
    ],
    ids=["no-marker", "korean-forward", "polish-forward", "capitals", "rewrapped", "spaced"],
)
def test_our_text_without_a_known_marker_is_not_the_buyers(rules: MailRules, body: str) -> None:
    raw = mail(CHECK_IN_SUBJECT, body)
    text = normalise(parse(raw).text)
    assert "damaged" in own_words(text, rules).lower(), "without ours, our lines read as theirs"
    words = own_words(text, rules, ("Thanks for your review!", CHECK_IN))
    assert words.startswith("All good, thanks!") and "damaged" not in words.lower()
    verdict = run(rules, raw, ours=("Thanks for your review!", CHECK_IN))
    assert (verdict.kind, verdict.order_numbers) == (K.REPLY, ())


def test_our_check_in_forwarded_under_a_marker_is_not_the_buyers(rules: MailRules) -> None:
    body = f"See below, all fine.\n\n---------- Forwarded message ---------\n{CHECK_IN}"
    for ours in ((), (CHECK_IN,)):
        verdict = run(rules, mail(f"Fwd: {CHECK_IN_SUBJECT[4:]}", body), ours=ours)
        assert (verdict.kind, verdict.order_numbers) == (K.REPLY, ())


def test_an_out_of_office_in_another_language_quoting_us_opens_nothing(rules: MailRules) -> None:
    body = f"부재중입니다. 3월 23일에 돌아옵니다.\n\n{CHECK_IN}"
    raw = mail(f"부재중: {CHECK_IN_SUBJECT[4:]}", body)
    text = normalise(parse(raw).text)
    assert "damaged" in own_words(text, rules), "without ours, our lines read as theirs"
    assert own_words(text, rules, (CHECK_IN,)) == "부재중입니다. 3월 23일에 돌아옵니다."
    verdict = run(rules, raw, ours=(CHECK_IN,))
    assert (verdict.kind, verdict.intent) == (K.REPLY, Intent.OTHER), verdict.evidence


@pytest.mark.parametrize(
    ("body", "dispute"),
    [
        pytest.param(
            f"Something missing or damaged: yes, the lid.\n\n{CHECK_IN}", D.DAMAGED, marks=MISREAD
        ),
        (f"It never arrived.\n\n{CHECK_IN}", D.NOT_RECEIVED),
        (f"{CHECK_IN}\n\nP.S. the base is cracked", D.DAMAGED),
    ],
)
def test_the_buyers_own_lines_stay_beside_ours(
    rules: MailRules, body: str, dispute: DisputeKind
) -> None:
    verdict = run(rules, mail(CHECK_IN_SUBJECT, body), ours=(CHECK_IN,))
    assert (verdict.kind, verdict.dispute_kind) == (K.COMPLAINT, dispute)


def test_only_whole_lines_or_long_pieces_of_ours_are_removed(rules: MailRules) -> None:
    text = "Best regards,\n  KETTLE   & co \nDamaged\nreply with a short description\nThanks"
    ours = ("Something missing or damaged: reply with a short description.\nKettle & Co",)
    assert own_words(text, rules, ours) == "Best regards,\nDamaged\nThanks"


def test_what_our_mail_quotes_is_not_ours(rules: MailRules) -> None:
    ours = ("> The lid of my kettle is cracked.\nSorry! A new lid is on its way.",)
    text = "The lid of my kettle is cracked.\nSorry! A new lid is on its way."
    assert own_words(text, rules, ours) == "The lid of my kettle is cracked."


# Hostile mail -------------------------------------------------------------------------------

MB = 1_000_000
AMAZON = "x7q@marketplace.amazon.com"
EBAY = "ebay@ebay.com"
# (sender, subject, body) of 1 MB each: backtracking bait for every family of shipped pattern.
BAIT = {
    "spaces": (None, " " * MB, " " * MB),
    "whitespace-runs": (None, "\t \u3000" * (MB // 3), " \t\n\r\f\v\xa0" * (MB // 7)),
    "words-apart": (None, "has" + " " * MB + "not arrived", "where is" + "\n" * MB + "my parcel"),
    "a-then-bang": (None, "a" * MB + "!", "a" * MB + "!"),
    "punctuation-then-word": (None, "!" * MB + "a", ".\n" * (MB // 2) + "a"),
    "digits": (None, "1" * MB, "1-" * (MB // 2)),
    "order-bait": (None, "112-4567890-" * (MB // 12), "#1" * (MB // 2) + "&#1234" * (MB // 6)),
    "adjacent-numbers": (None, "#1001 " * (MB // 6), "8178123456789012 " * (MB // 17)),
    "negated-keywords": (None, "not damaged " * (MB // 12), "no refund, " * (MB // 11)),
    "glued-keywords": (None, "damaged" * (MB // 7), "xrefundx " * (MB // 9)),
    "cjk": (None, "没" * MB, "壊れて" * (MB // 3) + "いません"),
    "unsubscribe-bait": (None, "please " * (MB // 7) + "unsubscribe!", "stop " * (MB // 5)),
    "reply-prefixes": (None, "Re: " * (MB // 4) + "broken", "AW:[1]" * (MB // 6)),
    "quote-starts": (None, "On " + "x " * MB, "On x\n" * (MB // 5) + "-" * MB),
    "outlook-blocks": (None, "_" * MB, "From: x\n" * (MB // 8) + "2026年3月12日" * (MB // 10)),
    "parser-date-bait": (None, "x", ("2026/1/1 " + " <@" * 60 + "\n") * (MB // 190)),
    "parser-long-lines": (None, "x", ("Am " + " schrieb " * 20 + "\n") * (MB // 170)),
    "amazon-subjects": (AMAZON, "A-to-z Guarantee claim " * (MB // 23), "-" * MB),
    "amazon-buyer-text": (AMAZON, "x", "-----Message:-----" * (MB // 18)),
    "ebay-buyer-text": ("x@members.ebay.com", "x", "New message from: x\n" + "a\n" * (MB // 2)),
    "ebay-ratings": (EBAY, "feedback " * (MB // 9), "left you a " * (MB // 11)),
    "trustpilot-ratings": ("n@trustpilot.com", "review", "5-star " * (MB // 7)),
    "long-sender": ("a" * MB + "@ebay.com", "feedback", "x"),
}


def hostile(
    subject: str,
    text: str,
    sender: str | None = None,
    headers: tuple[tuple[str, str], ...] = (),
) -> InboundMessage:
    """A parsed message with the given fields put in whole, past the parser's own limits."""
    base = parse(mail("x", "x"))
    return dataclasses.replace(
        base,
        subject=subject,
        text=text,
        sender=base.sender if sender is None else sender,
        headers=base.headers + headers,
    )


def seconds(rules: MailRules, message: InboundMessage, ours: tuple[str, ...] = ()) -> float:
    started = time.perf_counter()
    classify(message, rules, seller_addresses=SELLER, ours=ours)
    return time.perf_counter() - started


@pytest.mark.parametrize("name", sorted(BAIT))
def test_regex_bait_is_classified_quickly(rules: MailRules, name: str) -> None:
    sender, subject, body = BAIT[name]
    assert seconds(rules, hostile(subject, body, sender)) < 1.0


@pytest.mark.parametrize(
    "header",
    ["List-Id", "List-Post", "Auto-Submitted", "Precedence", "X-Autoreply", "Feedback-ID"],
)
def test_huge_header_values_are_read_quickly(rules: MailRules, header: str) -> None:
    values = (" " * MB + "no", "<" * MB, "<mailto:" * (MB // 8))
    message = hostile("x", "x", headers=tuple((header, value) for value in values))
    assert seconds(rules, message) < 1.0


def test_huge_mail_of_ours_is_compared_quickly(rules: MailRules) -> None:
    lines = "".join(f"line {n:06} of our text, long enough\n" for n in range(MB // 37))
    message = hostile("x", lines)
    assert seconds(rules, message, ours=(lines, "x" * MB, " \n" * MB)) < 1.0
    assert classify(message, rules, seller_addresses=SELLER, ours=(lines,)).kind is K.REPLY


def test_a_keyword_past_the_cut_is_not_read(rules: MailRules) -> None:
    """The limits are real: a 1 MB body is read as its first 64 KB."""
    filler = "x\n" * (TEXT_CHARS // 2)
    assert run(rules, mail("Hello", "It arrived broken.")).kind is K.COMPLAINT
    cut = classify(hostile("Hello", filler + "It arrived broken."), rules, seller_addresses=SELLER)
    alone = classify(hostile("Hello", filler), rules, seller_addresses=SELLER)
    assert (cut.kind, cut.intent, cut.evidence) == (alone.kind, alone.intent, alone.evidence)


TRICKY = st.sampled_from(
    ["\ud800", "\udcff", "\x00", "\u2028", "\u3000", ">", "-- ", "On x wrote:", "#1001"]
)
TEXT = st.lists(st.one_of(st.text(max_size=40), TRICKY), max_size=30).map("\n".join)


@given(subject=TEXT, body=TEXT, value=TEXT, ours=st.lists(TEXT, max_size=3))
@settings(max_examples=150, deadline=None)
def test_classify_never_raises(
    rules: MailRules, subject: str, body: str, value: str, ours: list[str]
) -> None:
    headers = tuple((name, value) for name in ("List-Id", "List-Post", "Auto-Submitted"))
    message = hostile(subject, body, sender=value, headers=headers)
    verdict = classify(message, rules, seller_addresses=SELLER, ours=tuple(ours))
    assert verdict.kind in set(MessageKind)
