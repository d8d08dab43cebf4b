"""A carrier's "your parcel was delivered": recognised from a carrier's sender and its words,
with the tracking numbers it names; acting only when the carrier is proven."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path

import pytest

from worker.classify import MAX_TRACKING_NUMBERS, TEXT_CHARS, classify, tracking_numbers_in
from worker.domain import Classification, Match, MatchMethod, MessageKind, Order
from worker.errors import RulesError
from worker.inbound import parse
from worker.origin import Origin
from worker.react import Delivered, Standing, react
from worker.rules import MailRules, load_rules
from worker.thread import Candidates, match, wanted

ROOT = Path(__file__).resolve().parents[2]
SELLER = frozenset({"service@shop.example"})
NOW = datetime(2026, 3, 20, 12, 0, tzinfo=UTC)
DHL_NUMBER = "00340434161234567890"
K = MessageKind


@pytest.fixture(scope="module")
def rules() -> MailRules:
    return load_rules(ROOT / "config" / "mail-rules.yaml")


def _mail(sender: str, subject: str, body: str, **headers: str) -> bytes:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = "service@shop.example"
    message["Subject"] = subject
    message["Date"] = format_datetime(NOW - timedelta(hours=2))
    message["Message-ID"] = "<notice-1@mail.example>"
    for name, value in headers.items():
        message[name.replace("_", "-")] = value
    message.set_content(body)
    return message.as_bytes()


def _classify(rules: MailRules, raw: bytes) -> Classification:
    return classify(parse(raw), rules, seller_addresses=SELLER)


# The carriers' notices, in the seven languages the rules cover: (sender, subject, body).
NOTICES = {
    "en-ups": (
        "UPS <mcinfo@ups.com>",
        "UPS Update: Package Delivered",
        "Your package 1Z 999 AA1 01 2345 6784 has been delivered.\nLeft at: Front Door",
        "ups",
        "1Z999AA10123456784",
    ),
    "de-dhl": (
        "DHL Paket <noreply@dhl.de>",
        f"Ihre DHL Sendung {DHL_NUMBER} wurde zugestellt",
        "Hallo, Ihre Sendung wurde heute erfolgreich zugestellt. Ablageort: Garage",
        "dhl",
        DHL_NUMBER,
    ),
    "fr-colissimo": (
        "Colissimo <noreply@notification.colissimo.fr>",
        "Votre colis est arrivé",
        "Bonjour, votre colis 6A12345678901 a été livré dans votre boîte aux lettres.",
        "colissimo",
        "6A12345678901",
    ),
    "es-correos": (
        "Correos <notificaciones@correos.es>",
        "Tu envío PQ4F6P0712345670128001V",
        "Tu envío PQ4F6P0712345670128001V ha sido entregado al destinatario.",
        "correos",
        "PQ4F6P0712345670128001V",
    ),
    "it-poste": (
        "Poste Italiane <noreply@poste.it>",
        "Aggiornamento spedizione",
        "La spedizione RR123456785IT è stata consegnata il 18/03/2026.",
        "poste-italiane",
        "RR123456785IT",
    ),
    "ja-japanpost": (
        "日本郵便 <mail@trackings.post.japanpost.jp>",
        "お届け完了のお知らせ",
        "お問い合わせ番号 EJ123456785JP の郵便物は配達完了しました。",
        "japan-post",
        "EJ123456785JP",
    ),
    "zh-chinapost": (
        "中国邮政 <service@chinapost.com.cn>",
        "邮件 LX123456785CN 已妥投",
        "您的邮件 LX123456785CN 已妥投,感谢使用。",
        "china-post",
        "LX123456785CN",
    ),
}


@pytest.mark.parametrize("name", sorted(NOTICES))
def test_a_carriers_delivered_notice_names_its_tracking_number(rules: MailRules, name: str) -> None:
    sender, subject, body, carrier, number = NOTICES[name]
    verdict = _classify(rules, _mail(sender, subject, body))
    assert verdict.kind is K.DELIVERED
    assert verdict.carrier == carrier
    assert number in verdict.tracking_numbers
    assert f"carrier={carrier}" in verdict.evidence
    assert f"phrase={name[:2]}:" in verdict.evidence
    assert verdict.tracking_numbers[0] == number
    assert verdict.evidence.endswith(f"tracking={number}")


def test_the_first_number_is_the_evidence(rules: MailRules) -> None:
    sender, subject, body, _, number = NOTICES["de-dhl"]
    verdict = _classify(rules, _mail(sender, subject, body))
    assert verdict.evidence == f"carrier=dhl phrase=de:wurde zugestellt tracking={number}"


@pytest.mark.parametrize("name", sorted(NOTICES))
def test_the_same_words_from_a_buyer_are_not_a_carriers_notice(rules: MailRules, name: str) -> None:
    _, subject, body, _, _ = NOTICES[name]
    verdict = _classify(rules, _mail("Mia <mia@buyer.example>", subject, body))
    assert verdict.kind is not K.DELIVERED
    assert verdict.tracking_numbers == ()


@pytest.mark.parametrize(
    "sender",
    [
        "noreply@dhl.de.evil.example",
        "noreply@evil-dhl.de",
        "noreply@dhl.de@evil.example",
        "noreply@mydhl.de",
    ],
)
def test_a_look_alike_domain_is_no_carrier(rules: MailRules, sender: str) -> None:
    raw = _mail(sender, f"Sendung {DHL_NUMBER} wurde zugestellt", "Ihre Sendung wurde zugestellt.")
    assert _classify(rules, raw).kind is not K.DELIVERED


@pytest.mark.parametrize(
    ("sender", "text"),
    [
        ("mcinfo@ups.com", "Your package has not been delivered. We will try again tomorrow."),
        ("noreply@dhl.de", "Ihre Sendung wurde nicht zugestellt."),
        ("noreply@poste.it", "La spedizione non è stata consegnata: destinatario assente."),
        ("notificaciones@correos.es", "Tu envío no ha sido entregado."),
        ("mcinfo@ups.com", "Your package will be delivered tomorrow between 10:00 and 14:00."),
        ("noreply@dhl.de", "Ihre Sendung wird heute zugestellt."),
    ],
)
def test_a_carrier_saying_not_yet_is_no_delivery(rules: MailRules, sender: str, text: str) -> None:
    verdict = _classify(rules, _mail(sender, "Sendungsstatus / Shipment status", text))
    assert verdict.kind is not K.DELIVERED


def test_list_and_notification_headers_do_not_hide_a_delivery(rules: MailRules) -> None:
    sender, subject, body, _, _ = NOTICES["en-ups"]
    raw = _mail(
        sender,
        subject,
        body,
        List_Unsubscribe="<https://ups.com/unsub>",
        Auto_Submitted="auto-generated",
        Feedback_ID="1.us-east-1.x:ups",
    )
    assert _classify(rules, raw).kind is K.DELIVERED


def test_a_real_automatic_reply_from_a_carrier_stays_one(rules: MailRules) -> None:
    raw = _mail("agent@dhl.de", "Automatic reply: your parcel has been delivered", "Away.")
    assert _classify(rules, raw).kind is K.AUTO_REPLY


def test_tracking_numbers_alone_grouped_and_next_to_dates() -> None:
    text = f"Sendung {DHL_NUMBER} am 04.12.2026 um 10:15; UPS 1Z 999 AA1 01 2345 6784, Tel 12345"
    assert tracking_numbers_in(text) == (DHL_NUMBER, "1Z999AA10123456784")


def test_tracking_numbers_are_bounded() -> None:
    many = " , ".join(f"AB{n:010d}" for n in range(1000))
    assert len(tracking_numbers_in(many)) == MAX_TRACKING_NUMBERS
    assert tracking_numbers_in("1" * 10_000) == ()  # longer than any number
    assert tracking_numbers_in("1-" * 50_000) == ()


def test_a_huge_hostile_notice_is_read_quickly_and_bounded(rules: MailRules) -> None:
    body = ("9" * 39 + " " + "has been delivered x1 " * 50) * 20_000
    raw = _mail("mcinfo@ups.com", "Delivered " + "7 " * 10_000, body)
    started = time.perf_counter()
    verdict = _classify(rules, raw)
    assert time.perf_counter() - started < 5
    assert verdict.kind is K.DELIVERED
    assert len(verdict.tracking_numbers) <= MAX_TRACKING_NUMBERS
    assert len(body) > TEXT_CHARS


def test_the_rules_refuse_an_unknown_carrier(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text("carrier_mail:\n  senders:\n    dhll: ['@dhl\\.de$']\n", encoding="utf-8")
    with pytest.raises(RulesError, match="unknown carrier ids"):
        load_rules(path)


# Threading and what the notice may do --------------------------------------------------------


def _verdict(rules: MailRules) -> tuple[Classification, bytes]:
    sender, subject, body, _, _ = NOTICES["de-dhl"]
    raw = _mail(sender, subject, body)
    return _classify(rules, raw), raw


ORDER = Order("12-34567-89012", "ebay", "mia@buyer.example", tracking_number=DHL_NUMBER)
CARRIER = "noreply@dhl.de"
PROVEN = Origin(CARRIER, "dhl.de", "mx.shop.example: dmarc=pass header.from=dhl.de")
FORGED = Origin(CARRIER, None, "no Authentication-Results from mx.shop.example")


def test_only_an_authenticated_carrier_threads_by_tracking_number(rules: MailRules) -> None:
    verdict, raw = _verdict(rules)
    message = parse(raw)
    found = Candidates(orders_by_tracking={DHL_NUMBER: ORDER})
    proven = wanted(message, verdict, authenticated=True)
    assert proven.tracking_numbers == (DHL_NUMBER,)
    threaded = match(proven, found, verdict, now=NOW, recent=timedelta(days=30))
    assert threaded.match == Match(ORDER.order_id, MatchMethod.TRACKING_NUMBER, DHL_NUMBER)
    forged = wanted(message, verdict, authenticated=False)
    assert forged.tracking_numbers == ()
    assert match(forged, found, verdict, now=NOW, recent=timedelta(days=30)).match is None


def test_an_authenticated_notice_delivers_at_its_own_time(rules: MailRules) -> None:
    verdict, _ = _verdict(rules)
    at = NOW - timedelta(hours=2)
    matched = Match(ORDER.order_id, MatchMethod.TRACKING_NUMBER, DHL_NUMBER)
    done = react(verdict, matched, Standing(CARRIER, PROVEN, written_at=at))
    assert done.delivered == Delivered(DHL_NUMBER, at)
    assert not done.withheld
    assert done.open_dispute is None and done.suppress == () and not done.reply


def test_a_forged_notice_is_withheld(rules: MailRules) -> None:
    verdict, _ = _verdict(rules)
    matched = Match(ORDER.order_id, MatchMethod.TRACKING_NUMBER, DHL_NUMBER)
    done = react(verdict, matched, Standing(CARRIER, FORGED, written_at=NOW))
    assert done.delivered is None
    assert done.withheld.startswith("delivery withheld: not authenticated as dhl.de")


def test_a_notice_naming_no_known_number_acts_on_nothing(rules: MailRules) -> None:
    verdict, _ = _verdict(rules)
    done = react(verdict, None, Standing(CARRIER, PROVEN, written_at=NOW))
    assert done.delivered is None
    assert f"no order holds a tracking number it names ({DHL_NUMBER})" in done.withheld
    by_conversation = Match(ORDER.order_id, MatchMethod.CONVERSATION, "<x@y>")
    assert react(verdict, by_conversation, Standing(CARRIER, PROVEN)).delivered is None


def test_old_mail_delivers_nothing(rules: MailRules) -> None:
    verdict, _ = _verdict(rules)
    matched = Match(ORDER.order_id, MatchMethod.TRACKING_NUMBER, DHL_NUMBER)
    done = react(verdict, matched, Standing(CARRIER, PROVEN, written_at=NOW))
    assert done.only_suppressions().delivered is None
