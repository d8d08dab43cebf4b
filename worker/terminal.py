"""What a terminal may be shown of text strangers wrote: characters, never commands.

Mail reaches agents' terminals through ``worker thread``, ``worker inbox`` and the console
log. A control character there is a command (ESC starts sequences that retitle the window,
clear the screen or rewrite what was shown; U+009B is ESC [ in one character), and a bidi
control or an invisible format character reorders or hides the text around it. Each becomes
a visible placeholder: the Unicode control pictures for C0 and DEL (``␛`` for ESC), and
``<U+202E>`` for the rest.

Zero-width joiner and non-joiner (U+200C, U+200D) stay: Persian, the Indic scripts and
emoji need them, and they reorder nothing. So do the soft hyphen and the Arabic number signs
(U+0600...), which hide nothing.
"""

from __future__ import annotations

_C0 = range(0x00, 0x20)
_C1 = range(0x80, 0xA0)
_BIDI = (0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A))
_SEPARATORS = (0x2028, 0x2029)
_INVISIBLE = (
    *(0x180E, 0x200B, *range(0x2060, 0x2065), *range(0x206A, 0x2070), 0xFEFF),
    *(*range(0x13430, 0x13439), *range(0x1BCA0, 0x1BCA4), *range(0x1D173, 0x1D17B)),
)
_ANNOTATIONS = range(0xFFF9, 0xFFFC)
_TAGS = range(0xE0000, 0xE0080)
"""Tag characters spell out invisible ASCII: text an agent (or a model) reads, unseen."""
_SURROGATES = range(0xD800, 0xE000)
"""Lone surrogates cannot even be written to a UTF-8 terminal: printing one raises."""


def _placeholder(code: int) -> str:
    if code in _C0:
        return chr(0x2400 + code)
    if code == 0x7F:
        return "\N{SYMBOL FOR DELETE}"
    return f"<U+{code:04X}>"


_REPLACED = (
    *_C0,
    0x7F,
    *_C1,
    *_BIDI,
    *_SEPARATORS,
    *_INVISIBLE,
    *_ANNOTATIONS,
    *_TAGS,
    *_SURROGATES,
)
_TABLE = {code: _placeholder(code) for code in _REPLACED}
_TABLE_WITH_LINES = {code: shown for code, shown in _TABLE.items() if chr(code) not in "\n\t"}


def printable(text: str, *, keep_newlines: bool = False) -> str:
    """``text`` with every character that could act on a terminal, or reorder or hide text,
    replaced by a visible placeholder. ``keep_newlines`` keeps line feeds and tabs."""
    return text.translate(_TABLE_WITH_LINES if keep_newlines else _TABLE)
