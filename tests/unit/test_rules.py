"""The mail rules file: what it provides, and errors that say where to fix it."""

from __future__ import annotations

from pathlib import Path

import pytest

from worker.domain import DisputeKind
from worker.errors import RulesError
from worker.rules import MailRules, load_rules

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "config" / "mail-rules.yaml"
BASELINE = ROOT / "bench" / "keyword-baseline.yaml"
"""The complaint keywords the intent model replaced, still a rules file (the benchmark's
baseline): the keyword mechanism is tested on them."""
LANGUAGES = {"en", "de", "fr", "es", "it", "ja", "zh"}
BUYER_KINDS = {
    DisputeKind.NOT_RECEIVED,
    DisputeKind.DAMAGED,
    DisputeKind.NOT_AS_DESCRIBED,
    DisputeKind.WRONG_ITEM,
    DisputeKind.REFUND,
    DisputeKind.RETURN,
    DisputeKind.CANCEL,
    DisputeKind.CHARGEBACK,
}


@pytest.fixture(scope="module")
def rules() -> MailRules:
    return load_rules(SHIPPED)


@pytest.fixture(scope="module")
def keywords() -> MailRules:
    return load_rules(BASELINE)


def test_shipped_rules_cover_every_language(rules: MailRules, keywords: MailRules) -> None:
    assert {k.language for k in rules.unsubscribe_phrases} == LANGUAGES
    assert {k.language for k in rules.auto_reply_subjects} == LANGUAGES
    assert rules.complaints == (), "complaints are the intent model's, not keywords'"
    for language in LANGUAGES:
        kinds = {k.kind for k in keywords.complaints if k.language == language}
        assert kinds == BUYER_KINDS, language


def test_complaints_are_tried_in_priority_order(keywords: MailRules) -> None:
    kinds = list(dict.fromkeys(k.kind for k in keywords.complaints))
    assert kinds[:2] == [DisputeKind.CHARGEBACK, DisputeKind.NOT_RECEIVED]


@pytest.mark.parametrize(
    ("text", "numbers"),
    [
        ("Order 112-4567890-1234567 and again 112-4567890-1234567", ("112-4567890-1234567",)),
        ("eBay order 24-11223-44556, item 125987654321", ("24-11223-44556",)),
        ("AliExpress order 8178123456789012", ("8178123456789012",)),
        ("Shopify order #1001, see #1002.", ("#1001", "#1002")),
        ("Amazon 302-1234567-1234567 then shop #1043", ("302-1234567-1234567", "#1043")),
        ("card 81781234567890123 is 17 digits; phone +49 30 1234567", ()),
        ("no numbers here, only #12 and &#1234;", ()),
    ],
)
def test_order_numbers_in(rules: MailRules, text: str, numbers: tuple[str, ...]) -> None:
    assert rules.order_numbers_in(text) == numbers


def test_capture_group_returns_the_number_as_stored(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text("order_numbers:\n  - {name: shop, pattern: '#(\\d{4})\\b'}\n", "utf-8")
    assert load_rules(path).order_numbers_in("order #1001") == ("1001",)


@pytest.mark.parametrize(
    ("address", "marketplace"),
    [
        ("k7x2m9p4q1w8z3v@marketplace.amazon.com", "amazon"),
        ("abc123xyz@marketplace.amazon.de", "amazon"),
        ("Emily_C2019.x7q2k@Members.eBay.com", "ebay"),
        ("ebay@ebay.com", None),
        ("emily.carter@buyer.example", None),
        ("someone@marketplace.amazon.com.evil.example", None),
    ],
)
def test_relay_marketplace(rules: MailRules, address: str, marketplace: str | None) -> None:
    assert rules.relay_marketplace(address) == marketplace


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "mail-rules.yaml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("text", "where", "message"),
    [
        (
            "marketplace:\n"
            "  - id: a\n    marketplace: amazon\n    kind: reply\n    senders: ['x']\n"
            "  - id: b\n    marketplace: ebay\n    kind: reply\n    senders: ['x']\n"
            "    subjects: ['ok', 'bad[']\n",
            ":10",
            "marketplace[1].subjects[1]: bad regex 'bad['",
        ),
        ("order_numbers: []\nlanguages: [en]\n", ":2", "languages: unknown key"),
        (
            "marketplace:\n  - id: a\n    marketplace: amazon\n    kind: dispute_opened\n"
            "    dispute_kind: a_to_b\n    senders: ['x']\n",
            ":5",
            "marketplace[0].dispute_kind: Input should be",
        ),
        (
            "marketplace:\n  - id: a\n    marketplace: amazon\n    kind: dispute_opened\n"
            "    senders: ['x']\n",
            ":2",
            "marketplace[0]: a rule of kind dispute_opened needs a dispute_kind",
        ),
        ("complaints:\n  en:\n    lost_parcel: ['lost']\n", ":3", "complaints.en.lost_parcel"),
        (
            "complaints:\n  en:\n    refund: ['(refund']\n",
            ":3",
            "complaints.en.refund[0]: bad regex",
        ),
        ("unsubscribe:\n  phrases:\n    english: ['stop']\n", ":3", "unsubscribe.phrases.english"),
        ("auto_reply:\n  headers:\n  - {header: X, pattern: '*'}\n", ":3", "bad regex '*'"),
        ("marketplace:\n  - id: a\n    kind: [reply\n", ":4", "not valid YAML"),
        ("- just\n- a list\n", "", "the top level must be a mapping"),
    ],
)
def test_errors_name_the_place(tmp_path: Path, text: str, where: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(RulesError) as caught:
        load_rules(path)
    assert caught.value.where == f"{path}{where}"
    assert message in caught.value.detail


def test_missing_file_is_a_rules_error(tmp_path: Path) -> None:
    with pytest.raises(RulesError, match="cannot read the file"):
        load_rules(tmp_path / "absent.yaml")


def test_repeated_rule_ids_are_refused(tmp_path: Path) -> None:
    rule = "  - {id: a, marketplace: shop, kind: reply, senders: ['x']}\n"
    with pytest.raises(RulesError, match="repeated: \\['a'\\]"):
        load_rules(write(tmp_path, "marketplace:\n" + rule + rule))


@pytest.mark.parametrize(
    "text",
    [
        "112-4567890-1234567 113-9876543-7654321",
        "24-11223-44556 19-55667-88990",
        "8178123456789012 8178123456789013",
        "#1001 #1002",
        "#1001,#1002",
    ],
)
def test_numbers_one_space_apart_are_both_found(rules: MailRules, text: str) -> None:
    first, _, second = text.replace(",", " ").partition(" ")
    assert rules.order_numbers_in(text) == (first, second)


@pytest.mark.parametrize(
    ("text", "numbers"),
    [
        ("1112-4567890-1234567 and 112-4567890-12345678", ()),
        ("112-4567890-1234567-2, 9-112-4567890-1234567", ()),
        ("Order:112-4567890-1234567.", ("112-4567890-1234567",)),
        ("Bestellung112-4567890-1234567", ("112-4567890-1234567",)),
        ("Order#1001 ##1002 &#1003; #10045678", ()),
        ("(#1001)", ("#1001",)),
        ("#1001abc", ("#1001",)),
    ],
)
def test_order_numbers_stand_alone(rules: MailRules, text: str, numbers: tuple[str, ...]) -> None:
    assert rules.order_numbers_in(text) == numbers


def test_order_numbers_are_capped(rules: MailRules) -> None:
    text = " ".join(f"#{n}" for n in range(1000, 1100))
    assert rules.order_numbers_in(text) == tuple(f"#{n}" for n in range(1000, 1000 + 32))


def spans(rules: MailRules, language: str, source: str, text: str) -> list[str]:
    keyword = next(
        k for k in rules.complaints if k.language == language and source in k.pattern.pattern
    )
    return [text[start:end] for start, end in keyword.spans(text)]


@pytest.mark.parametrize(
    ("language", "source", "text", "found"),
    [
        (
            "en",
            "((?:damaged))",
            "undamaged, damaged! (damaged) _damaged_ damagedx",
            ["damaged"] * 3,
        ),
        ("en", "heat", "it doesn't heat upstairs", ["doesn't heat"]),
        ("en", "heat", "it doesn't heat up, doesn't heat", ["doesn't heat up", "doesn't heat"]),
        (
            "de",
            "storn",
            "bitte stornieren, Stornierung! Stornoß",
            ["stornieren", "Stornierung", "Stornoß"],
        ),
        ("fr", "rembours", "remboursé, remboursement", ["remboursé", "remboursement"]),
        ("ja", "破損", "蓋が破損していました", ["破損"]),
        ("zh", "退款", "我要求全额退款。", ["退款"]),
    ],
)
def test_latin_keywords_match_whole_words_cjk_anywhere(
    keywords: MailRules, language: str, source: str, text: str, found: list[str]
) -> None:
    assert spans(keywords, language, source, text) == found


@pytest.mark.parametrize(
    ("text", "keyword", "negated"),
    [
        ("it arrived not damaged", "damaged", True),
        ("it isn't damaged", "damaged", True),
        ("Nothing damaged", "damaged", False),
        ("keine Beschädigung, nicht beschädigt", "beschädigt", True),
        ("壊れていません", "壊れて", True),
        ("壊れています", "壊れて", False),
        ("没有损坏", "损坏", True),
    ],
)
def test_negations_right_next_to_a_keyword(
    rules: MailRules, text: str, keyword: str, negated: bool
) -> None:
    start = text.rindex(keyword)
    assert rules.negated(text, start, start + len(keyword)) is negated


@pytest.mark.parametrize(
    ("text", "where", "source"),
    [
        ("order_numbers:\n  - {name: a, pattern: '(?<!\\d)\\d{4}'}\n", ":2", "(?<!\\d)\\d{4}"),
        (
            "complaints:\n  en:\n    damaged:\n      - 'broken(?! glass)'\n",
            ":4",
            "broken(?! glass)",
        ),
        ("negations:\n  en:\n    before: ['(no)\\s+\\1']\n", ":3", "(no)\\s+\\1"),
        ("quote_starts:\n  - 'x'\n  - '(?<=^)On '\n", ":3", "(?<=^)On "),
        (
            "order_numbers:\n  - name: a\n    pattern: '#\\d+'\n    not_before: '(?=x)'\n",
            ":4",
            "(?=x)",
        ),
    ],
)
def test_lookarounds_and_backreferences_are_refused_at_start_up(
    tmp_path: Path, text: str, where: str, source: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(RulesError) as caught:
        load_rules(path)
    assert caught.value.where == f"{path}{where}"
    assert f"bad regex {source!r}" in caught.value.detail
    assert "lookarounds and backreferences are not supported" in caught.value.detail
