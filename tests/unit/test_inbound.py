"""Parsing inbound mail: every field the later steps use, and no exception on broken mail."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

import pytest

from worker.inbound import codec_for, parse


def _word(text: str, charset: str, codec: str | None = None) -> str:
    data = base64.b64encode(text.encode(codec or charset)).decode("ascii")
    return f"=?{charset}?B?{data}?="


def _message(headers: str, body: bytes = b"Hello\r\n") -> bytes:
    return headers.replace("\n", "\r\n").encode("utf-8") + b"\r\n" + body


def test_fields_are_decoded_and_addresses_lower_cased() -> None:
    raw = _message(
        "From: Mia Jones <Mia.Jones@Buyer.Example>\n"
        "To: Shop <help@shop.example>\n"
        "Subject: Re: How is your kettle?\n"
        "Message-ID: <abc@buyer.example>\n"
        "In-Reply-To: <w17.1a2b3c4d@shop.example>\n"
        "References: <w12.00000000@shop.example>\n <w17.1a2b3c4d@shop.example>\n"
        "Date: Mon, 02 Mar 2026 10:00:00 +0100\n"
    )
    message = parse(raw)
    assert message.sender == "mia.jones@buyer.example"
    assert message.sender_name == "Mia Jones"
    assert message.recipients == ("help@shop.example",)
    assert message.subject == "Re: How is your kettle?"
    assert message.message_id == "<abc@buyer.example>"
    assert message.date == datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
    assert message.thread_ids == ("<w17.1a2b3c4d@shop.example>", "<w12.00000000@shop.example>")
    assert message.text == "Hello"
    assert message.errors == ()


@pytest.mark.parametrize(
    ("charset", "codec", "text"),
    [
        ("GB2312", "gbk", "退货申请：订单"),  # GBK characters under a GB2312 label, as Outlook does
        ("GBK", "gbk", "商品没有收到"),
        ("GB18030", "gb18030", "退款"),
        ("Big5", "big5", "商品損壞"),
        ("Shift_JIS", "cp932", "商品が届きません"),
        ("ISO-2022-JP", "iso2022_jp", "配信停止"),
        ("EUC-KR", "euc-kr", "배송 문의"),
    ],
)
def test_rfc2047_subjects_in_cjk_charsets(charset: str, codec: str, text: str) -> None:
    raw = _message(f"From: a@buyer.example\nSubject: {_word(text, charset, codec)} 123\n")
    message = parse(raw)
    assert message.subject == f"{text} 123"
    assert message.errors == ()


def test_cjk_body_in_its_declared_charset() -> None:
    body = "注文した商品がまだ届いていません。".encode("iso2022_jp")
    raw = _message(
        "From: a@buyer.example\nContent-Type: text/plain; charset=ISO-2022-JP\n"
        "Content-Transfer-Encoding: 7bit\n",
        body,
    )
    assert parse(raw).text == "注文した商品がまだ届いていません。"


def test_unknown_charset_is_read_as_utf8_and_reported() -> None:
    raw = _message(
        "From: a@buyer.example\nContent-Type: text/plain; charset=x-klingon\n",
        "tlhIngan Hol — ok".encode(),
    )
    message = parse(raw)
    assert message.text == "tlhIngan Hol — ok"
    assert any("unknown charset 'x-klingon'" in e for e in message.errors)


def test_mislabelled_utf8_is_recognised() -> None:
    raw = _message(
        "From: a@buyer.example\nContent-Type: text/plain; charset=us-ascii\n",
        "Grüße, das Paket ist nicht angekommen".encode(),
    )
    message = parse(raw)
    assert message.text == "Grüße, das Paket ist nicht angekommen"


def test_wrong_charset_bytes_are_replaced_not_fatal() -> None:
    raw = _message(
        "From: a@buyer.example\nContent-Type: text/plain; charset=utf-8\n", b"caf\xe9 \xff\xfe"
    )
    message = parse(raw)
    assert message.text == "caf\ufffd \ufffd\ufffd"
    assert message.errors == ("part 0 (text/plain): not valid utf-8; unreadable bytes replaced",)


def test_raw_eight_bit_header_and_broken_multipart_still_parse() -> None:
    raw = (
        b"From: \xc3\xa9mile <emile@buyer.example>\r\n"
        b"Subject: \xff\xfe broken\r\n"
        b"Content-Type: multipart/mixed; boundary=zz\r\n\r\n"
        b"--zz\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nWhere is my parcel?\r\n"
    )
    message = parse(raw)
    assert message.sender == "emile@buyer.example"
    assert message.sender_name == "émile"
    assert "broken" in message.subject
    assert message.text == "Where is my parcel?"
    assert any("Boundary" in e for e in message.errors)


def test_malformed_headers_do_not_raise() -> None:
    raw = _message(
        "From: <<<not an address\nDate: yesterday-ish\nSubject: =?utf-8?B?####?=\n"
        "Message-ID: no brackets\n"
    )
    message = parse(raw)
    assert message.sender == ""
    assert message.date is None
    assert message.message_id is None
    assert any(e.startswith("Date:") for e in message.errors)


def test_html_only_message_becomes_text() -> None:
    raw = _message(
        "From: a@buyer.example\nContent-Type: text/html; charset=utf-8\n",
        b"<html><style>p{}</style><p>The kettle &amp; lid</p><p>are broken</p></html>",
    )
    assert parse(raw).text == "The kettle & lid\nare broken"


def test_attachments_are_not_read_as_text() -> None:
    raw = _message(
        'From: a@buyer.example\nContent-Type: multipart/mixed; boundary="b"\n',
        b"--b\r\nContent-Type: text/plain\r\nContent-Disposition: attachment; filename=x.txt\r\n"
        b"\r\nattached\r\n--b\r\nContent-Type: text/plain\r\n\r\nthe message\r\n--b--\r\n",
    )
    assert parse(raw).text == "the message"


def test_identity_is_the_hash_of_the_bytes() -> None:
    first = parse(_message("From: a@buyer.example\n"))
    again = parse(_message("From: a@buyer.example\n"))
    other = parse(_message("From: b@buyer.example\n"))
    assert first.content_hash == again.content_hash != other.content_hash


@pytest.mark.parametrize(
    ("label", "codec"),
    [("gb2312", "gb18030"), ("Shift_JIS", "cp932"), ("ks_c_5601-1987", "cp949"), ("nope", None)],
)
def test_legacy_labels_read_with_their_supersets(label: str, codec: str | None) -> None:
    assert codec_for(label) == codec
