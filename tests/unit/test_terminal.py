"""Agents see text, not terminal commands: what `worker thread`, `worker inbox` and the logs
show of a stranger's mail has no control, bidi or invisible character left in it."""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Iterator

import pytest
import structlog

from worker import logs
from worker.terminal import printable

ATTACK = "\x1b]0;pwned\x07 \x1b[2J \u202eevil\u202c \x9b31m"
SHOWN = "␛]0;pwned␇ ␛[2J <U+202E>evil<U+202C> <U+009B>31m"


def shown_only(text: str) -> bool:
    """Nothing in ``text`` that ``printable`` would replace: it is safe as it is."""
    return printable(text, keep_newlines=True) == text


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        (ATTACK, SHOWN),
        ("\0\x01\x08\x0b\x0c\r\x1f\x7f", "␀␁␈␋␌␍␟␡"),
        ("a\nb\tc", "a␊b␉c"),
        ("\x80\x85\x9f", "<U+0080><U+0085><U+009F>"),
        ("\u061c\u200e\u200f\u202a\u202d\u2066\u2069", "<U+061C><U+200E><U+200F><U+202A>"
         "<U+202D><U+2066><U+2069>"),
        ("line\u2028para\u2029", "line<U+2028>para<U+2029>"),
        ("in\u200bvis\u2060ible\ufeff", "in<U+200B>vis<U+2060>ible<U+FEFF>"),
        ("tag\U000e0041\U000e007f", "tag<U+E0041><U+E007F>"),
        ("lone \udc80", "lone <U+DC80>"),
    ],
)  # fmt: skip
def test_controls_become_visible_placeholders(text: str, shown: str) -> None:
    assert printable(text) == shown


@pytest.mark.parametrize(
    "text",
    ["Grüße, 配送について, 배송 문의, שלום, مرحبا", "👨\u200d👩\u200d👧 family", "می\u200cخواهم"],
)
def test_ordinary_text_of_every_script_is_left_alone(text: str) -> None:
    """Right-to-left scripts, CJK and joiners are text; only explicit controls are replaced."""
    assert printable(text) == text


def test_line_breaks_and_tabs_are_kept_when_asked() -> None:
    assert printable("one\n\ttwo\r\x1b", keep_newlines=True) == "one\n\ttwo␍␛"


# Format characters that are text: joiners, the soft hyphen, signs written before numbers.
VISIBLE_FORMAT = {0xAD, 0x200C, 0x200D, *range(0x600, 0x606), 0x6DD, 0x70F, 0x890, 0x891}
VISIBLE_FORMAT |= {0x8E2, 0x110BD, 0x110CD}
BIDI_CONTROLS = {"LRE", "RLE", "LRO", "RLO", "PDF", "LRI", "RLI", "FSI", "PDI"}


def test_every_code_point_comes_out_safe() -> None:
    """Judged by the Unicode database, not by the table printable uses."""
    shown = set(printable("".join(map(chr, range(0x110000))), keep_newlines=True)) - {"\n", "\t"}
    unsafe = [f"U+{ord(c):04X}" for c in shown if _unsafe(c)]
    assert not unsafe


def _unsafe(char: str) -> bool:
    category = unicodedata.category(char)
    return (
        category in ("Cc", "Cs", "Zl", "Zp")
        or (category == "Cf" and ord(char) not in VISIBLE_FORMAT)
        or unicodedata.bidirectional(char) in BIDI_CONTROLS
    )


# The logs ---------------------------------------------------------------------------------


@pytest.fixture
def log_config() -> Iterator[None]:
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


def _log_attack() -> None:
    log = logs.get("test")
    log.warning("mail.received", subject=ATTACK, nested={"who": [ATTACK]}, count=3)
    try:
        raise ValueError(ATTACK)
    except ValueError:
        log.exception("mail.unclassifiable", uid=7)


def test_console_log_lines_show_placeholders(
    log_config: None, capsys: pytest.CaptureFixture[str]
) -> None:
    logs.configure("console")
    _log_attack()
    err = capsys.readouterr().err
    assert shown_only(err)
    assert f"subject='{SHOWN}'" in err
    assert f"nested={{'who': ['{SHOWN}']}}" in err
    assert f"ValueError: {SHOWN}" in err, "the traceback is cleaned too"
    lines = err.splitlines()
    assert lines[0].endswith("count=3"), "one event, one line: no forged line breaks"
    assert "Traceback (most recent call last):" in lines, "a traceback keeps its lines"


def test_json_log_lines_carry_no_bidi_or_c1(
    log_config: None, capsys: pytest.CaptureFixture[str]
) -> None:
    logs.configure("json")
    _log_attack()
    events = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert events[0]["subject"] == SHOWN
    assert events[0]["nested"] == {"who": [SHOWN]}
    assert all(shown_only(json.dumps(event, ensure_ascii=False)) for event in events)
