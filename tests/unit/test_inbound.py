"""Parsing inbound mail: every field the later steps use, and no exception on broken mail."""

from __future__ import annotations

import base64
import dataclasses
from datetime import UTC, datetime

import pytest

from worker import inbound
from worker.config import InboxSettings
from worker.inbound import MAX_ERRORS, MAX_THREAD_IDS, ParseLimits, codec_for, parse


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


@pytest.mark.parametrize(
    "label", ["zlib", "hex", "base64", "rot13", "punycode", "idna", "undefined", "unicode_escape"]
)
def test_codecs_that_are_no_mail_charset_are_unknown(label: str) -> None:
    assert codec_for(label) is None


@pytest.mark.parametrize("label", ["UTF_8", " utf-8 ", '"utf-8"', "utf-8\0", "UTF--8"])
def test_spellings_of_a_charset_are_one_charset(label: str) -> None:
    assert codec_for(label) == "utf-8"


def test_a_character_split_across_encoded_words_is_joined() -> None:
    data = "退货".encode("gb18030")
    first, second = (base64.b64encode(half).decode() for half in (data[:3], data[3:]))
    raw = _message(f"Subject: =?GB2312?B?{first}?=\n =?GB2312?B?{second}?= now\n")
    assert parse(raw).subject == "退货 now"


def test_blanks_between_encoded_words_vanish_and_text_between_stays() -> None:
    raw = _message(
        "Subject: =?utf-8?q?a?= =?utf-8?q?b?= and =?utf-8?q?c?=\n folded\n =?utf-8?q?d?=\n"
        "X-Plain: one\n two\n"
    )
    message = parse(raw)
    assert message.subject == "ab and c folded d"
    assert message.header("X-Plain") == "one two"


def test_a_bad_encoded_word_stays_as_written_and_says_so() -> None:
    raw = _message("Subject: Re: =?utf-8?B?A?= =?utf-8?B?SGVsbG8=?=\n")
    message = parse(raw)
    assert message.subject == "Re: =?utf-8?B?A?= Hello"
    assert message.errors == ("Subject: malformed encoded word '=?utf-8?B?A?='",)


def test_backslash_escapes_in_a_header_stay_text() -> None:
    raw = _message("Subject: \\u202e =?utf-8?q?x?=\n")
    assert parse(raw).subject == "\\u202e x"


def test_message_ids_are_bracketed_words() -> None:
    raw = _message(
        "Message-ID: junk <a b> <ok@x> <also@x>\nIn-Reply-To: <<q@x>>\nReferences: <1@x> <2@x>\n"
    )
    message = parse(raw)
    assert message.message_id == "<ok@x>"
    assert message.thread_ids == ("<q@x>", "<2@x>", "<1@x>")


def test_thread_ids_keep_the_newest_references() -> None:
    references = " ".join(f"<{n}@x>" for n in range(MAX_THREAD_IDS + 50))
    message = parse(_message(f"References: {references}\n"))
    assert message.references[0] == "<50@x>"
    assert len(message.references) == MAX_THREAD_IDS


def test_error_lines_are_capped() -> None:
    words = " ".join(f"=?x-{n}?q?a?=" for n in range(MAX_ERRORS * 2))
    message = parse(_message(f"Subject: {words}\n"))
    assert len(message.errors) == MAX_ERRORS
    assert message.errors[-1] == f"... and {MAX_ERRORS + 1} more"


def test_html_scripts_and_styles_go_block_ends_break_lines() -> None:
    raw = _message(
        "From: a@buyer.example\nContent-Type: text/html; charset=utf-8\n",
        b"<SCRIPT type=x>alert(1)</script>Dear<br/>seller<Style>p{}</STYLE></P><div>my "
        b"<b>kettle</b> &lt;3</div><scripts>kept</scripts><script>no end",
    )
    assert parse(raw).text == "Dear\nseller\nmy kettle <3\nkeptno end"


def test_runs_of_blank_lines_become_one() -> None:
    raw = _message("From: a@buyer.example\n", b"one\r\n \r\n\r\n\t\r\ntwo\r\n  three\r\n\r\n")
    assert parse(raw).text == "one\n\ntwo\n  three"


def test_a_text_cut_at_the_limit_drops_a_split_character() -> None:
    raw = _message("Content-Type: text/plain; charset=utf-8\n", "aé".encode() * 10)
    message = parse(raw, limits=ParseLimits(max_text_bytes=4))
    assert message.text == "aéa"
    assert message.truncated == "text > max_text_bytes 4"
    assert not any("not valid" in e for e in message.errors)


def test_the_limits_default_to_the_inbox_settings() -> None:
    settings = InboxSettings()
    chosen = {f.name: getattr(settings, f.name) for f in dataclasses.fields(ParseLimits)}
    assert ParseLimits(**chosen) == ParseLimits()


def test_truncation_is_said_first_even_among_many_errors() -> None:
    words = " ".join(f"=?x-{n}?q?a?=" for n in range(MAX_ERRORS * 2))
    raw = _message(f"Subject: {words}\n", b"a long text " * 100)
    message = parse(raw, limits=ParseLimits(max_text_bytes=1024))
    assert message.errors[0] == "truncated: text > max_text_bytes 1024"


def test_a_bug_costs_the_message_its_reading_not_the_mailbox(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(*_: object) -> tuple[str, bool]:
        raise RuntimeError("a bug")

    monkeypatch.setattr(inbound, "_body_text", broken)
    raw = _message("From: a@buyer.example\n")
    message = parse(raw)
    assert message.errors == ("unreadable: RuntimeError('a bug')",)
    assert (message.raw, message.text, message.sender) == (raw, "", "")


def test_an_address_with_a_control_character_is_no_address() -> None:
    """Found by the property test: ``From: @\\0`` is no sender (no database stores a NUL)."""
    message = parse(b"From: @\x00\r\nTo: shop@example.com\r\n\r\nhello\r\n")
    assert message.sender == ""
    assert message.recipients == ("shop@example.com",)
