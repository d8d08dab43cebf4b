"""The classifier over the fixture messages, and the precedence between its checks."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import pytest

from worker.classify import classify, own_words
from worker.domain import Classification, DisputeKind, MessageKind
from worker.inbound import parse
from worker.rules import MailRules, load_rules

ROOT = Path(__file__).resolve().parents[2]
MAIL = ROOT / "tests" / "fixtures" / "mail"
SELLER = frozenset({"service@shop.example", "help@shop.example"})
UNSUBSCRIBE = frozenset({"unsubscribe@shop.example"})

K = MessageKind
D = DisputeKind


@pytest.fixture(scope="module")
def rules() -> MailRules:
    return load_rules(ROOT / "config" / "mail-rules.yaml")


def run(rules: MailRules, raw: bytes) -> Classification:
    return classify(parse(raw), rules, seller_addresses=SELLER, unsubscribe_addresses=UNSUBSCRIBE)


class Expect(NamedTuple):
    kind: MessageKind
    evidence: str
    """A part of the evidence the verdict must give."""
    dispute: DisputeKind | None = None
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
    "precedence_bulk": Expect(K.AUTO_REPLY, "header=Precedence: bulk", numbers=("#48213",)),
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
        "rule=amazon-buyer-message keyword=de:noch nicht angekommen",
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
    "en_not_received": Expect(K.COMPLAINT, "en:has not arrived", D.NOT_RECEIVED, ("#1051",)),
    "en_damaged_quoting_checkin": Expect(K.COMPLAINT, "keyword=en:cracked", D.DAMAGED),
    "en_chargeback": Expect(K.COMPLAINT, "keyword=en:chargeback", D.CHARGEBACK, ("#1044",)),
    "de_not_received_latin1": Expect(
        K.COMPLAINT, "nicht angekommen", D.NOT_RECEIVED, ("302-1234567-7654321",)
    ),
    "de_refund": Expect(K.COMPLAINT, "keyword=de:rückerstattung", D.REFUND, ("#1047",)),
    "fr_wrong_item": Expect(K.COMPLAINT, "keyword=fr:mauvais article", D.WRONG_ITEM, ("#1048",)),
    "es_not_as_described": Expect(K.COMPLAINT, "es:no funciona", D.NOT_AS_DESCRIBED, ("#1049",)),
    "it_return": Expect(K.COMPLAINT, "keyword=it:restituirlo", D.RETURN, ("#1050",)),
    "it_cancel": Expect(K.COMPLAINT, "keyword=it:annullare", D.CANCEL, ("#1053",)),
    "ja_damaged_iso2022jp": Expect(K.COMPLAINT, "keyword=ja:破損", D.DAMAGED),
    "ja_not_received_shift_jis": Expect(
        K.COMPLAINT, "ja:届いていません", D.NOT_RECEIVED, ("#1055",)
    ),
    "zh_refund_gb2312": Expect(K.COMPLAINT, "keyword=zh:退款", D.REFUND, ("#1056",)),
    "zh_wrong_item_big5": Expect(K.COMPLAINT, "keyword=zh:寄錯", D.WRONG_ITEM, ("#1057",)),
    "ko_euc_kr_reply": Expect(K.REPLY, "rule=default", numbers=("#1058",)),
}
REPLIES = {
    "en_thanks": Expect(K.REPLY, "rule=default"),
    "en_quotes_checkin": Expect(K.REPLY, "rule=default"),
    "en_not_damaged": Expect(K.REPLY, "rule=default"),
    "en_outlook_top_post": Expect(K.REPLY, "rule=default"),
    "de_danke_outlook": Expect(K.REPLY, "rule=default"),
    "fr_merci": Expect(K.REPLY, "rule=default"),
    "es_gracias": Expect(K.REPLY, "rule=default"),
    "it_grazie": Expect(K.REPLY, "rule=default"),
    "ja_arigatou": Expect(K.REPLY, "rule=default"),
    "zh_xiexie": Expect(K.REPLY, "rule=default"),
    "seller_answer": Expect(K.SELLER, "from=help@shop.example", numbers=("#1042",)),
}
BROKEN = {
    "missing_boundary": Expect(K.REPLY, "rule=default", numbers=("#1051",)),
    "unknown_charset": Expect(K.COMPLAINT, "keyword=en:broken", D.DAMAGED, ("#1044",)),
    "malformed_from": Expect(K.REPLY, "rule=default"),
    "eight_bit_headers": Expect(K.COMPLAINT, "keyword=de:kaputt", D.DAMAGED, ("#1059",)),
    "bad_encoded_word": Expect(K.COMPLAINT, "keyword=zh:没收到", D.NOT_RECEIVED, ("#1060",)),
}
TABLE = {
    f"{group}/{name}": expect
    for group, table in (
        ("auto_replies", AUTO_REPLIES),
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
    assert (verdict.kind, verdict.dispute_kind, verdict.rating) == (
        expect.kind,
        expect.dispute,
        expect.rating,
    )
    assert (verdict.marketplace, verdict.relayed) == (expect.marketplace, expect.relayed)
    assert verdict.order_numbers == expect.numbers
    assert expect.evidence in verdict.evidence


def test_every_fixture_is_in_the_table() -> None:
    groups = ("auto_replies", "unsubscribe", "marketplace", "complaints", "replies", "broken")
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
        ("Hi", "please stop sending me broken kettles, I want a refund", K.COMPLAINT, D.DAMAGED),
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
        ("Hi", "Does it come with a UK plug?", K.REPLY, None),
    ],
)
def test_buyer_words(
    rules: MailRules, subject: str, body: str, kind: MessageKind, dispute: DisputeKind | None
) -> None:
    verdict = run(rules, mail(subject, body))
    assert (verdict.kind, verdict.dispute_kind) == (kind, dispute)


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
        ("Precedence: list", K.REPLY),
        ("Precedence: junk", K.AUTO_REPLY),
        ("Precedence: auto_reply", K.AUTO_REPLY),
        ("Auto-Submitted: no", K.REPLY),
        ("Auto-Submitted: auto-generated", K.AUTO_REPLY),
        ("X-Autorespond: 1", K.AUTO_REPLY),
    ],
)
def test_auto_reply_headers(rules: MailRules, header: str, kind: MessageKind) -> None:
    assert run(rules, mail("Re: your order", "Thanks!", header)).kind is kind


def test_unsubscribe_address_beats_a_complaint(rules: MailRules) -> None:
    raw = mail("refund", "I want a refund").replace(b"To: help@", b"To: unsubscribe@")
    verdict = run(rules, raw)
    assert (verdict.kind, verdict.evidence) == (K.UNSUBSCRIBE, "to=unsubscribe@shop.example")


def test_unsubscribe_address_counts_only_when_passed(rules: MailRules) -> None:
    raw = mail("Question", "Is it 230 V?").replace(b"To: help@", b"To: unsubscribe@")
    verdict = classify(parse(raw), rules, seller_addresses=SELLER)
    assert verdict.kind is K.REPLY


def test_marketplace_notification_beats_its_own_auto_submitted(rules: MailRules) -> None:
    raw = (MAIL / "marketplace" / "amazon_a_to_z_claim.eml").read_bytes()
    assert b"Auto-Submitted: auto-generated" in raw
    assert run(rules, raw).kind is K.DISPUTE_OPENED


def test_marketplace_rule_needs_its_sender(rules: MailRules) -> None:
    raw = mail("A-to-z Guarantee claim received for Order 112-4567890-1234567", "hello")
    verdict = run(rules, raw)
    assert (verdict.kind, verdict.marketplace) == (K.REPLY, None)
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
    ],
)
def test_quoted_text_is_not_the_buyers(rules: MailRules, separator: str) -> None:
    from worker.rules import normalise

    text = normalise(f"All fine, thanks!\n\n{separator}\n\nSomething missing or damaged? Refund?")
    assert own_words(text, rules) == "All fine, thanks!"


def test_greater_than_lines_are_dropped_anywhere(rules: MailRules) -> None:
    assert own_words("Hi\n> damaged?\nall good", rules) == "Hi\nall good"
