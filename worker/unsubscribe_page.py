# ruff: noqa: RUF001 - the typographic apostrophe and full-width marks are what these languages write
"""The small pages of the one-click unsubscribe endpoint, in the buyer's language.

A GET shows :data:`ASK` with a button that POSTs to the same address (link scanners fetch
with GET, so a GET never unsubscribes); the POST shows :data:`DONE`. Every value put in a
page is HTML-escaped; the address is shown masked (``a…@example.com``), as whoever holds
the link needs no more to recognise it. Pure: data in, text out.
"""

from __future__ import annotations

from dataclasses import dataclass
from html import escape
from typing import Literal

Page = Literal["ask", "done", "invalid"]


@dataclass(frozen=True, slots=True)
class Words:
    title: str
    ask: str
    button: str
    done_title: str
    done: str
    invalid_title: str
    invalid: str


WORDS: dict[str, Words] = {
    "en": Words(
        title="Unsubscribe",
        ask="Do you want to stop receiving e-mails from {seller} at {address}?",
        button="Unsubscribe",
        done_title="You are unsubscribed",
        done="{seller} will not send any more e-mails to {address}.",
        invalid_title="Link not valid",
        invalid="This link is not valid, and nothing has been changed. Please open the "
        "unsubscribe link in the e-mail again.",
    ),
    "de": Words(
        title="Abmelden",
        ask="Möchten Sie keine E-Mails mehr von {seller} an {address} erhalten?",
        button="Abmelden",
        done_title="Sie sind abgemeldet",
        done="{seller} schickt keine E-Mails mehr an {address}.",
        invalid_title="Ungültiger Link",
        invalid="Dieser Link ist ungültig, es wurde nichts geändert. Bitte öffnen Sie den "
        "Abmeldelink in der E-Mail noch einmal.",
    ),
    "fr": Words(
        title="Désabonnement",
        ask="Ne plus recevoir d’e-mails de {seller} à l’adresse {address}\u00a0?",
        button="Me désabonner",
        done_title="Vous êtes désabonné(e)",
        done="{seller} n’enverra plus d’e-mails à l’adresse {address}.",
        invalid_title="Lien non valide",
        invalid="Ce lien n’est pas valide et rien n’a été modifié. Veuillez rouvrir le lien "
        "de désabonnement figurant dans l’e-mail.",
    ),
    "es": Words(
        title="Darse de baja",
        ask="¿Quiere dejar de recibir correos electrónicos de {seller} en {address}?",
        button="Darme de baja",
        done_title="Se ha dado de baja",
        done="{seller} no enviará más correos electrónicos a {address}.",
        invalid_title="Enlace no válido",
        invalid="Este enlace no es válido y no se ha cambiado nada. Vuelva a abrir el "
        "enlace para darse de baja que aparece en el correo.",
    ),
    "it": Words(
        title="Annulla l’iscrizione",
        ask="Non desidera più ricevere e-mail da {seller} all’indirizzo {address}?",
        button="Annulla l’iscrizione",
        done_title="Iscrizione annullata",
        done="{seller} non invierà più e-mail all’indirizzo {address}.",
        invalid_title="Link non valido",
        invalid="Questo link non è valido e non è stato modificato nulla. Apra di nuovo il "
        "link per annullare l’iscrizione che trova nell’e-mail.",
    ),
    "ja": Words(
        title="配信停止",
        ask="{seller} から {address} 宛てのメール配信を停止しますか？",
        button="配信を停止する",
        done_title="配信を停止しました",
        done="今後、{seller} から {address} 宛てにメールをお送りすることはありません。",
        invalid_title="無効なリンクです",
        invalid="このリンクは無効です。設定は変更されていません。"
        "メールに記載の配信停止リンクをもう一度開いてください。",
    ),
    "zh": Words(
        title="退订",
        ask="确定不再接收 {seller} 发送到 {address} 的邮件吗？",
        button="确认退订",
        done_title="已退订",
        done="{seller} 将不再向 {address} 发送邮件。",
        invalid_title="链接无效",
        invalid="此链接无效，未做任何更改。请重新打开邮件中的退订链接。",
    ),
    "zh-Hant": Words(
        title="取消訂閱",
        ask="確定不再接收 {seller} 寄到 {address} 的電子郵件嗎？",
        button="確認取消訂閱",
        done_title="已取消訂閱",
        done="{seller} 將不再寄送電子郵件到 {address}。",
        invalid_title="連結無效",
        invalid="此連結無效，未做任何變更。請重新開啟電子郵件中的取消訂閱連結。",
    ),
}
"""Each language the page speaks; the buyer's is chosen as for their mail."""

_STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:32rem;margin:3rem auto;padding:0 1rem;"
    "line-height:1.5}button{font-size:1rem;padding:.5rem 1.25rem}"
)


def masked(address: str) -> str:
    """``ann@example.com`` -> ``a…@example.com``: enough to recognise, little to harvest."""
    local, at, domain = address.strip().rpartition("@")
    if not at or not local:
        return "…"
    return f"{local[0]}…@{domain}"


def render_page(page: Page, locale: str, *, seller: str = "", address: str = "") -> str:
    """The whole HTML document; ``locale`` must be a key of :data:`WORDS` (else English)."""
    words = WORDS.get(locale) or WORDS["en"]
    lang = locale if locale in WORDS else "en"
    values = {"seller": escape(seller), "address": escape(masked(address))}
    if page == "ask":
        title = words.title
        body = (
            f"<p>{escape(words.ask).format(**values)}</p>\n"
            '<form method="post">'
            '<input type="hidden" name="List-Unsubscribe" value="One-Click">'
            f'<button type="submit">{escape(words.button)}</button></form>'
        )
    elif page == "done":
        title = words.done_title
        body = f"<p>{escape(words.done).format(**values)}</p>"
    else:
        title = words.invalid_title
        body = f"<p>{escape(words.invalid)}</p>"
    return (
        f'<!doctype html>\n<html lang="{lang}"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta name="robots" content="noindex">'
        f"<title>{escape(title)}</title><style>{_STYLE}</style></head>\n"
        f"<body><h1>{escape(title)}</h1>\n{body}\n</body></html>\n"
    )
