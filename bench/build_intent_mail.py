"""Build the intent development set: ``.eml`` files and ``labels.csv`` from the hand-written
sources in ``tests/fixtures/intents/source/<lang>.yaml``.

The sources hold what each buyer wrote and its label; this script wraps the words as their
mail client would (our check-in quoted under, over or between them, with that client's
attribution line in that language) and encodes them in the charset the source names. The
output is deterministic and committed, so ``bench/intents.py`` scores plain ``.eml`` files,
like any other directory of mail.

    .venv/bin/python bench/build_intent_mail.py            # rewrite the set
    .venv/bin/python bench/build_intent_mail.py --check    # exit 1 if it is out of date
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "intents"
SELLER = ("Lumen Home", "service@lumen-home.example")
SENT = datetime(2026, 3, 2, 9, 30, tzinfo=UTC)

OURS = {
    "en": (
        "How is your order?",
        "Hello {name},\n\nYour order 14-09876-54321 should have reached you by now.\n"
        "Has everything arrived in good order, and is it working as you hoped?\n"
        "If anything is wrong, just tell us: we will put it right.\n\n"
        "Kind regards,\nAnna, Lumen Home",
    ),
    "de": (
        "Ist alles gut angekommen?",
        "Hallo {name},\n\nIhre Bestellung 14-09876-54321 sollte inzwischen angekommen sein.\n"
        "Ist alles in gutem Zustand, und funktioniert es so, wie Sie es sich vorgestellt haben?\n"
        "Falls etwas nicht stimmt, sagen Sie es uns einfach.\n\n"
        "Viele Grüße\nAnna, Lumen Home",
    ),
    "fr": (
        "Votre commande est-elle bien arrivée ?",
        "Bonjour {name},\n\nVotre commande 14-09876-54321 devrait vous être parvenue.\n"
        "Tout est-il arrivé en bon état, et en êtes-vous satisfait(e) ?\n"
        "Si quelque chose ne va pas, dites-le-nous simplement.\n\n"
        "Bien cordialement,\nAnna, Lumen Home",
    ),
    "es": (
        "¿Ha llegado bien su pedido?",
        "Hola {name}:\n\nSu pedido 14-09876-54321 ya debería haber llegado.\n"
        "¿Ha llegado todo en buen estado y funciona como esperaba?\n"
        "Si algo no está bien, díganoslo sin más.\n\n"
        "Un saludo,\nAnna, Lumen Home",
    ),
    "it": (
        "Il suo ordine è arrivato bene?",
        "Gentile {name},\n\nil suo ordine 14-09876-54321 dovrebbe essere arrivato.\n"
        "È arrivato tutto in buono stato e funziona come sperava?\n"
        "Se qualcosa non va, ce lo dica pure.\n\n"
        "Cordiali saluti,\nAnna, Lumen Home",
    ),
    "ja": (
        "ご注文の商品は届きましたか",
        "{name} 様\n\nご注文 14-09876-54321 の商品はお手元に届きましたでしょうか。\n"
        "破損などなく、問題なくお使いいただけていますか。\n"
        "何かございましたら、お気軽にお知らせください。\n\n"
        "Lumen Home アンナ",
    ),
    "zh": (
        "您的订单收到了吗？",
        "{name} 您好，\n\n您的订单 14-09876-54321 应该已经送达。\n"
        "商品是否完好无损，使用是否满意？\n"
        "如有任何问题，请直接告诉我们。\n\n"
        "Lumen Home 安娜",
    ),
}
"""Our check-in, as the buyer's client quotes it."""

_WHEN = {
    "en": "Mon, 2 Mar 2026 at 09:30",
    "de": "Mo., 2. März 2026 um 09:30",
    "fr": "lun. 2 mars 2026 à 09:30",
    "es": "lun, 2 mar 2026 a las 9:30",
    "it": "lun 2 mar 2026 alle ore 09:30",
    "ja": "2026年3月2日(月) 9:30",
    "zh": "2026年3月2日周一 09:30",
}

_WROTE = {
    "gmail": {
        "en": "On {when}, {name} <{addr}> wrote:",
        "de": "Am {when} Uhr schrieb {name} <{addr}>:",
        "fr": "Le {when}, {name} <{addr}> a écrit :",
        "es": "El {when}, {name} (<{addr}>) escribió:",
        "it": "Il giorno {when} {name} <{addr}> ha scritto:",
        "ja": "{when} {name} <{addr}>:",
        "zh": "{name} <{addr}> 于{when}写道：",
    },
    "apple": {
        "en": "On 2 Mar 2026, at 09:30, {name} <{addr}> wrote:",
        "de": "Am 02.03.2026 um 09:30 schrieb {name} <{addr}>:",
        "fr": "Le 2 mars 2026 à 09:30, {name} <{addr}> a écrit :",
        "es": "El 2 mar 2026, a las 9:30, {name} <{addr}> escribió:",
        "it": "Il giorno 2 mar 2026, alle ore 09:30, {name} <{addr}> ha scritto:",
        "ja": "2026/03/02 9:30、{name} <{addr}>のメール:",
        "zh": "在 2026年3月2日，09:30，{name} <{addr}> 写道：",
    },
    "thunderbird": {
        "en": "On 02/03/2026 09:30, {name} wrote:",
        "de": "Am 02.03.26 um 09:30 schrieb {name}:",
        "fr": "Le 02/03/2026 à 09:30, {name} a écrit :",
        "es": "El 2/3/26 a las 9:30, {name} escribió:",
        "it": "Il 02/03/26 09:30, {name} ha scritto:",
        "ja": "2026/03/02 9:30, {name} wrote:",
        "zh": "在 2026/3/2 9:30, {name} 写道:",
    },
    "yahoo": {
        "en": "On Monday, March 2, 2026, 09:30, {name} <{addr}> wrote:",
        "de": "{name} <{addr}> schrieb am Mo., 2. März 2026 um 09:30:",
        "fr": "Le lundi 2 mars 2026, 09:30, {name} <{addr}> a écrit :",
        "es": "El lunes, 2 de marzo de 2026, 09:30, {name} <{addr}> escribió:",
        "it": "Il lunedì 2 marzo 2026, 09:30, {name} <{addr}> ha scritto:",
        "ja": "2026年3月2日月曜日 9:30、{name} <{addr}> さんは書きました:",
        "zh": "{name} <{addr}> 在 2026年3月2日星期一 09:30 写道：",
    },
    "webde": {
        "en": 'Sent: Monday, 02 March 2026 at 09:30\nFrom: "{name}" <{addr}>',
        "de": 'Gesendet: Montag, 02. März 2026 um 09:30 Uhr\nVon: "{name}" <{addr}>',
        "fr": 'Envoyé: lundi 2 mars 2026 à 09:30\nDe: "{name}" <{addr}>',
        "es": 'Enviado: lunes, 2 de marzo de 2026 a las 9:30\nDe: "{name}" <{addr}>',
        "it": 'Inviato: lunedì 2 marzo 2026 alle 09:30\nDa: "{name}" <{addr}>',
        "ja": '送信日時: 2026年3月2日 9:30\n差出人: "{name}" <{addr}>',
        "zh": '发送时间: 2026年3月2日 09:30\n发件人: "{name}" <{addr}>',
    },
}

_OUTLOOK = {
    "en": ("From", "Sent", "To", "Subject"),
    "de": ("Von", "Gesendet", "An", "Betreff"),
    "fr": ("De", "Envoyé", "À", "Objet"),
    "es": ("De", "Enviado", "Para", "Asunto"),
    "it": ("Da", "Inviato", "A", "Oggetto"),
    "ja": ("差出人", "送信日時", "宛先", "件名"),
    "zh": ("发件人", "发送时间", "收件人", "主题"),
}

_MOBILE = {
    "en": "Sent from my iPhone",
    "de": "Von meinem iPhone gesendet",
    "fr": "Envoyé de mon iPhone",
    "es": "Enviado desde mi iPhone",
    "it": "Inviato da iPhone",
    "ja": "iPhoneから送信",
    "zh": "发自我的iPhone",
}

_TRADITIONAL = str.maketrans(
    "写订单应该经达损无满问题请诉们发时间邮于周务码吗伟",
    "寫訂單應該經達損無滿問題請訴們發時間郵於週務碼嗎偉",
)
_QQ = "------------------ 原始邮件 ------------------"


def _buyer(lang: str, n: int) -> tuple[str, str]:
    names = {
        "en": ["Mary Collins", "Raj Patel", "Tom Baker", "Chloe Nguyen"],
        "de": ["Jürgen Weiß", "Anna Schmidt", "Lukas Bauer", "Petra Huber"],
        "fr": ["Hélène Dubois", "Marc Lefèvre", "Camille Roy", "Jean Martin"],
        "es": ["José Núñez", "Lucía García", "Diego Torres", "Carmen Ruiz"],
        "it": ["Giulia Rossi", "Marco Bianchi", "Chiara Ricci", "Luca Gallo"],
        "ja": ["佐藤 花子", "鈴木 一郎", "高橋 美咲", "田中 健"],
        "zh": ["王芳", "李伟", "陈静", "張家豪"],
    }[lang]
    name = names[n % len(names)]
    return name, f"buyer{n:03d}.{lang}@mail.example"


def _ours(lang: str, buyer: str) -> tuple[str, str]:
    subject, body = OURS[lang]
    return subject, body.format(name=buyer.split()[0])


def _attribution(client: str, lang: str, buyer_addr: str, our_subject: str) -> str:
    name, addr = SELLER
    if client == "outlook":
        f, s, t, subj = _OUTLOOK[lang]
        sep = ":"
        return "\n".join(
            (
                "________________________________",
                f"{f}{sep} {name} <{addr}>",
                f"{s}{sep} {_WHEN[lang]}",
                f"{t}{sep} {buyer_addr}",
                f"{subj}{sep} {our_subject}",
            )
        )
    if client == "qq":
        sent = "发送时间: 2026年3月2日(星期一) 上午9:30"
        return f'{_QQ}\n发件人: "{name}"<{addr}>;\n{sent}\n主题: {our_subject}'
    style = "gmail" if client in ("gmail", "mobile") else client
    return _WROTE[style][lang].format(when=_WHEN[lang], name=name, addr=addr)


def _quoted(text: str, client: str) -> str:
    if client in ("outlook", "qq", "webde"):
        return text
    return "\n".join(f"> {line}" if line else ">" for line in text.splitlines())


def body_of(item: dict[str, Any], lang: str, buyer_addr: str, buyer_name: str) -> str:
    """The whole text body the buyer's client sends."""
    words = str(item["body"]).strip("\n")
    layout, client = item.get("layout", "none"), item.get("client", "gmail")
    if client == "mobile" and layout != "inline":
        words = f"{words}\n\n{_MOBILE[lang]}"
    if layout == "none":
        return words + "\n"
    our_subject, ours = _ours(lang, buyer_name)
    header = _attribution(client, lang, buyer_addr, our_subject)
    if layout == "top":
        return f"{words}\n\n{header}\n{_quoted(ours, client)}\n"
    if layout == "bottom":
        return f"{header}\n{_quoted(ours, 'gmail')}\n\n{words}\n"
    # inline: the buyer's answers between the quoted lines of our mail
    answers = [part.strip() for part in words.split("\n---\n")]
    lines = ours.splitlines()
    middle = max(1, min(3, len(lines) - 1))
    cuts = [middle, middle + 1, len(lines)]
    pieces, start = [header], 0
    for n, answer in enumerate(answers):
        end = cuts[min(n, len(cuts) - 1)] if n < len(answers) - 1 else len(lines)
        pieces.append(_quoted("\n".join(lines[start:end]), "gmail"))
        pieces.append(f"\n{answer}\n")
        start = end
    return "\n".join(pieces) + "\n"


def message_of(item: dict[str, Any], lang: str, n: int) -> bytes:
    charset = str(item.get("charset") or "utf-8")
    buyer_name, buyer_addr = _buyer(lang, n)
    for shift in range(4):  # a name the charset can write (Traditional is not in GB2312)
        buyer_name, buyer_addr = _buyer(lang, n + shift)
        if _writable(buyer_name, charset):
            break
    msg = EmailMessage(policy=SMTP)
    msg["From"] = f"{buyer_name} <{buyer_addr}>"
    msg["To"] = f"{SELLER[0]} <{SELLER[1]}>"
    msg["Subject"] = str(item.get("subject") or "")
    msg["Date"] = format_datetime(SENT + timedelta(days=3, minutes=7 * n))
    msg["Message-ID"] = f"<{item['id']}@mail.example>"
    if item.get("layout", "none") != "none":
        msg["In-Reply-To"] = f"<checkin-{lang}-{n:03d}@lumen-home.example>"
    text = body_of(item, lang, buyer_addr, buyer_name)
    if not _writable(text, charset):  # a Traditional reader's client shows ours in Traditional
        text = text.translate(_TRADITIONAL)
    if not _writable(text, charset):
        raise SystemExit(f"{item['id']}: the quoted mail cannot be written in {charset}")
    msg.set_content(text, charset=charset)
    return msg.as_bytes()


def _writable(text: str, charset: str) -> bool:
    try:
        text.encode(charset)
    except UnicodeEncodeError:
        return False
    return True


def build() -> dict[Path, bytes]:
    """Every output file and its bytes."""
    out: dict[Path, bytes] = {}
    rows = io.StringIO()
    writer = csv.writer(rows, lineterminator="\n")
    writer.writerow(["path", "language", "intent", "expected_action", "stage", "trap"])
    for source in sorted((ROOT / "source").glob("*.yaml")):
        lang = source.stem
        for n, item in enumerate(yaml.safe_load(source.read_text(encoding="utf-8")) or []):
            path = Path("mail") / lang / f"{item['id']}.eml"
            out[ROOT / path] = message_of(item, lang, n)
            writer.writerow(
                [
                    path.as_posix(),
                    lang,
                    item["intent"],
                    item["action"],
                    item.get("stage") or "unknown",
                    item.get("trap") or "",
                ]
            )
    out[ROOT / "labels.csv"] = rows.getvalue().encode()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the set is stale")
    args = parser.parse_args()
    files = build()
    stale = [p for p, data in files.items() if not p.exists() or p.read_bytes() != data]
    extra = [p for p in (ROOT / "mail").rglob("*.eml") if p not in files]
    if args.check:
        for path in stale + extra:
            print(f"out of date: {path.relative_to(ROOT)}", file=sys.stderr)
        return 1 if stale or extra else 0
    for path in extra:
        path.unlink()
    for path in stale:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(files[path])
    print(f"{len(files) - 1} messages, {len(stale)} written, {len(extra)} removed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
