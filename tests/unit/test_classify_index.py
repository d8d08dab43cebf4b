"""The classifier reads each of the rules' pattern lists in one pass (worker/classify.py,
"Many patterns, one pass"); each shortcut must answer what the patterns one by one would."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import quotequail
from hypothesis import given, settings
from hypothesis import strategies as st

from worker import classify
from worker.inbound import parse
from worker.rules import MailRules, load_rules, normalise

ROOT = Path(__file__).resolve().parents[2]
MAIL = ROOT / "tests" / "fixtures" / "mail"
RULES = load_rules(ROOT / "config" / "mail-rules.yaml")
INDEX = classify._index(RULES)


def _lines() -> list[str]:
    """Lines of the fixture mail, and every quoted sentence of the classifier's tests."""
    found = [
        line
        for path in sorted(MAIL.rglob("*.eml"))
        for line in normalise(parse(path.read_bytes()).text).splitlines()
        if line.strip()
    ]
    tests = (ROOT / "tests" / "unit" / "test_classify.py").read_text(encoding="utf-8")
    found += re.findall(r'"([^"\n]{3,200})"', tests)
    return [
        *found,
        "On Mon, 16 Mar 2026 Kettle & Co <service@shop.example>",
        "wrote:",
        "> quoted",
        "---------- Forwarded message ---------",
        "El lun, 16 mar 2026, Tienda escribió:",
        "Re: RE: Fwd: the lid",
        "",
    ]


LINES = _lines()
TEXTS = st.lists(st.sampled_from(LINES), min_size=1, max_size=8).map("\n".join)


def test_the_index_is_built_for_the_shipped_rules() -> None:
    assert INDEX.auto_subjects is not None and INDEX.unsubscribe is not None
    assert INDEX.quote_starts is not None and INDEX.senders is not None
    assert classify._QUOTE_HEADERS is not None, "quotequail's patterns were read"


@settings(max_examples=400, deadline=None)
@given(TEXTS)
def test_one_pass_answers_as_the_patterns_one_by_one(text: str) -> None:
    rules: MailRules = RULES
    assert INDEX.auto_subjects is not None and INDEX.unsubscribe is not None
    data = text.encode()
    subjects = [k.pattern for k in rules.auto_reply_subjects]
    assert INDEX.auto_subjects.found_in(data) == any(p.search(text) for p in subjects)
    for line in text.splitlines():
        phrases = [k.pattern for k in rules.unsubscribe_phrases]
        whole = any(p.fullmatch(line) for p in phrases)
        assert INDEX.unsubscribe.whole(line.encode()) == whole
        assert classify._without_reply_prefixes(rules, line) == rules.without_reply_prefixes(line)
    assert classify._quote_start(rules, text) == rules.quote_start(text)


def _quotequail_split(text: str) -> int:
    """The line ``quotequail.quote`` splits at, as the classifier asks it; -1 for none."""
    lines = text.split("\n")
    parts = quotequail.quote(text, limit=len(lines) + 1, quote_intro_line=True)
    return -1 if len(parts) < 2 else len(lines) - parts[1][1].count("\n") - 1


@settings(max_examples=400, deadline=None)
@given(TEXTS)
def test_quote_headers_are_found_on_quotequails_line(text: str) -> None:
    assert classify._QUOTE_HEADERS is not None
    found = classify._QUOTE_HEADERS.first_line(text)
    assert (-1 if found is None else found) == _quotequail_split(text)


@pytest.mark.parametrize("path", sorted(MAIL.rglob("*.eml")), ids=lambda p: p.stem)
def test_quote_headers_of_the_fixtures(path: Path) -> None:
    assert classify._QUOTE_HEADERS is not None
    text = parse(path.read_bytes()).text
    found = classify._QUOTE_HEADERS.first_line(text)
    assert (-1 if found is None else found) == _quotequail_split(text)
