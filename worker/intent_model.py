"""A linear model over the buyer's words: what each message most likely wants.

Why a model and not only keywords: buyers paraphrase ("hairline crack", "en mille
morceaux", "货不对板"), insert words into phrases, answer our check-in in three words, and
write in seven languages; a keyword list misses half of that and matches inside the wrong
language. A multinomial logistic regression over hashed character n-grams, words, word pairs
and negated words reads all of it with one set of weights, offline, in well under a
millisecond per message.

The weights are trained by ``bench/train_intents.py`` from the hand-written sets under
``bench/intents/train/`` and shipped in ``worker/intent_model.npz``; the same files give the
same weights. Pure: ``features`` and ``IntentModel.probabilities`` read only their input.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import cache, lru_cache
from importlib import resources
from io import BytesIO

import numpy as np
import numpy.typing as npt
import re2

from worker.domain import Intent
from worker.errors import ModelError

BUCKETS = 1 << 22
"""Hashed feature space: a twentieth of it is used, so a feature the model never saw rarely
falls on one it did (which is what tells it a language it never learnt)."""
TEXT_CHARS = 3000
"""Of the buyer's words, this much is read: more than any buyer writes by hand."""
MODEL_FILE = "intent_model.npz"

MODEL_INTENTS: tuple[Intent, ...] = tuple(
    i for i in Intent if i is not Intent.CANCEL_BEFORE_SHIPPING
)
"""What the model tells apart; ``cancel_before_shipping`` is ``cancel`` read with the
order's stage (``worker.intent.at_stage``)."""

_NEGATORS = frozenset(
    {
        *("not", "no", "never", "nothing", "none", "without", "nor", "neither", "dont", "didnt"),
        *("doesnt", "isnt", "wasnt", "arent", "werent", "havent", "hasnt", "wont", "cant"),
        *("nicht", "kein", "keine", "keinen", "keinem", "keiner", "nie", "niemals", "nichts"),
        *("ohne", "weder", "pas", "aucun", "aucune", "rien", "jamais", "sans", "ni", "non"),
        *("nada", "ningun", "ninguna", "ninguno", "nunca", "sin", "tampoco", "niente", "nessun"),
        *("nessuna", "nessuno", "mai", "senza", "nulla", "neanche"),
    }
)
"""Words after which, within ``_SCOPE`` words, a complaint word says the opposite."""
_NEGATED_AFTER = ("没有", "沒有", "没", "沒", "不", "未", "无", "無", "别", "別")
"""Chinese negations: what follows them is negated (没有破损, 不用退款)."""
_NEGATED_BEFORE = ("ません", "ない", "なし", "なく", "ず", "ございません")
"""Japanese negations: what comes before them is negated (壊れていません, 破損はなく)."""
_CJK_SCOPE = 4
_SCOPE = 3

_WORD = re2.compile(r"[\pL\pM\pN']+")
_CJK = re.compile("[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff66-\uff9f]+")
"""Han, kana and half-width katakana: a character class, linear in Python's ``re`` too."""
_LATIN_TABLE = {
    code: unicodedata.normalize("NFKD", chr(code))[0]
    for code in range(0xC0, 0x250)
    if unicodedata.normalize("NFKD", chr(code))[0].isascii()
}
"""Latin letters without their accents: buyers type "recu" for "reçu", "Grusse" for "Grüße"."""
_DIGITS = str.maketrans("0123456789", "0000000000")


def prepared(text: str) -> str:
    """The text as the model reads it: NFKC, case-folded, Latin accents off, digits alike."""
    cut = unicodedata.normalize("NFKC", text[:TEXT_CHARS]).casefold()
    return cut.translate(_LATIN_TABLE).translate(_DIGITS).replace("\u2019", "'")


def feature_names(text: str) -> Iterator[str]:
    """Every feature of a prepared text, by name (``w:`` word, ``c:`` character n-gram of
    a word, ``b:`` word pair, ``n:`` negated word, ``k:`` CJK n-gram, ``k!`` CJK negation)."""
    words = _words(text)
    for word in words:
        yield from _word_names(word)
    yield from _context_names(words)
    yield from _cjk_names(text)


def features(text: str) -> npt.NDArray[np.int64]:
    """The sorted, distinct buckets of ``feature_names(prepared(text))``."""
    return _features(prepared(text))


def _features(ready: str) -> npt.NDArray[np.int64]:
    """A word's own features are hashed once per process, as most words recur from message
    to message."""
    words = _words(ready)
    found: set[int] = set()
    for word in words:
        found.update(_word_buckets(word))
    found.update(map(bucket, _context_names(words)))
    found.update(map(bucket, _cjk_names(ready)))
    return np.fromiter(sorted(found), dtype=np.int64, count=len(found))


def _vocabulary(ready: str) -> npt.NDArray[np.int64]:
    """The buckets of the text's words: Latin (and other) words whole, Han and kana as
    pairs of characters, numbers left out. What share of them the model knows says whether
    it learnt the language at all: character pieces and digits are shared by every language."""
    names = {f"w:{w}" for w in _words(ready) if _CJK.search(w) is None and "0" not in w}
    names.update(f"k:{run[n : n + 2]}" for run in _CJK.findall(ready) for n in range(len(run) - 1))
    found = {bucket(name) for name in names}
    return np.fromiter(sorted(found), dtype=np.int64, count=len(found))


def bucket(name: str) -> int:
    return zlib.crc32(name.encode("utf-8")) & (BUCKETS - 1)


def _words(text: str) -> list[str]:
    return [w for w in (w.replace("'", "") for w in _WORD.findall(text)) if w]


def _word_names(word: str) -> Iterator[str]:
    yield f"w:{word}"
    if _CJK.fullmatch(word) is None:
        padded = f" {word} "
        for size in (3, 4, 5):
            for start in range(len(padded) - size + 1):
                yield f"c:{padded[start : start + size]}"


@lru_cache(maxsize=1 << 16)
def _word_buckets(word: str) -> tuple[int, ...]:
    return tuple(map(bucket, _word_names(word)))


def _context_names(words: Sequence[str]) -> Iterator[str]:
    negated = 0
    previous = "^"
    for word in words:
        yield f"b:{previous} {word}"
        if negated:
            yield f"n:{word}"
            negated -= 1
        if word in _NEGATORS:
            negated = _SCOPE
        previous = word
    yield f"b:{previous} $"


def _cjk_names(text: str) -> Iterator[str]:
    for run in _CJK.findall(text):
        for size in (1, 2, 3):
            for start in range(len(run) - size + 1):
                yield f"k:{run[start : start + size]}"
        for scope in _cjk_negated(run):
            yield "k!"
            for start in range(len(scope) - 1):
                yield f"k!{scope[start : start + 2]}"


def _cjk_negated(run: str) -> Iterator[str]:
    """The characters a negation turns around: up to ``_CJK_SCOPE`` after a Chinese one,
    before a Japanese one. Their pairs are features of their own (``k!壊れ``), so "broken"
    and "not broken" weigh apart, as ``n:`` words do for the other languages."""
    for negation in _NEGATED_AFTER:
        at = run.find(negation)
        if at >= 0:
            yield run[at + len(negation) : at + len(negation) + _CJK_SCOPE]
    for negation in _NEGATED_BEFORE:
        at = run.find(negation)
        if at > 0:
            yield run[max(0, at - _CJK_SCOPE) : at]


@dataclass(frozen=True, slots=True)
class IntentModel:
    """Weights per feature bucket and intent; rows of buckets never seen in training are zero
    and not stored."""

    intents: tuple[Intent, ...]
    rows: npt.NDArray[np.int64]
    """The buckets with weights, sorted."""
    weights: npt.NDArray[np.float32]
    """One row per entry of ``rows``, one column per intent."""
    bias: npt.NDArray[np.float32]
    trained_on: str
    """sha256 of the training files, as ``bench/train_intents.py`` read them."""

    def probabilities(self, text: str) -> npt.NDArray[np.float64]:
        """How likely each of ``intents`` is, summing to 1."""
        return self._probabilities(features(text))

    def read(self, text: str) -> tuple[npt.NDArray[np.float64], float]:
        """The probabilities, and the share of the text's words (``_vocabulary``) the model
        has weights for: near zero, it is a language or a script it never learnt, and the
        probabilities are only its priors."""
        ready = prepared(text)
        known = _vocabulary(ready)
        share = _hits(self.rows, known).size / max(known.size, 1)
        return self._probabilities(_features(ready)), share

    def _probabilities(self, found: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
        hits = _hits(self.rows, found)
        logits = self.bias.astype(np.float64)
        if hits.size:
            logits = logits + self.weights[hits].sum(axis=0, dtype=np.float64) / np.sqrt(found.size)
        logits -= logits.max()
        exp: npt.NDArray[np.float64] = np.exp(logits)
        total: npt.NDArray[np.float64] = exp / exp.sum()
        return total

    def strongest(self, text: str, intent: Intent, count: int = 3) -> list[str]:
        """The words and word pairs that weigh most for ``intent``: the evidence an agent reads."""
        ready = prepared(text)
        words = _words(ready)
        names = [
            name
            for name in (*(f"w:{w}" for w in words), *_context_names(words), *_cjk_names(ready))
            if _shown(name)
        ]
        if not names:
            return []
        buckets = np.fromiter(map(bucket, names), dtype=np.int64, count=len(names))
        at = np.minimum(np.searchsorted(self.rows, buckets), max(len(self.rows) - 1, 0))
        known = self.rows[at] == buckets if len(self.rows) else np.zeros(len(names), bool)
        weight = np.where(known, self.weights[at, self.intents.index(intent)], 0.0)
        shown: list[str] = []
        for n in np.argsort(-weight, kind="stable"):
            if weight[n] <= 0 or len(shown) == count:
                break
            if (said := _shown(names[n])) not in shown:
                shown.append(said)
        return shown

    def save(self) -> bytes:
        out = BytesIO()
        np.savez_compressed(
            out,
            intents=np.array([i.value for i in self.intents]),
            rows=self.rows.astype(np.int32),
            weights=self.weights.astype(np.float16),
            bias=self.bias,
            trained_on=np.array(self.trained_on),
        )
        return out.getvalue()

    @classmethod
    def load(cls, data: bytes) -> IntentModel:
        try:
            with np.load(BytesIO(data), allow_pickle=False) as npz:
                intents = tuple(Intent(str(value)) for value in npz["intents"])
                rows = npz["rows"].astype(np.int64)
                weights = npz["weights"].astype(np.float32)
                bias = npz["bias"].astype(np.float32)
                trained_on = str(npz["trained_on"])
        except Exception as exc:
            raise ModelError(f"the intent model cannot be read: {exc!r}"[:300]) from exc
        if weights.shape != (len(rows), len(intents)) or bias.shape != (len(intents),):
            raise ModelError("the intent model's weights do not fit its intents")
        return cls(intents, rows, weights, bias, trained_on)


def _hits(rows: npt.NDArray[np.int64], found: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """The indexes into ``rows`` of the buckets in ``found`` that have weights."""
    at = np.searchsorted(rows, found)
    inside = at < len(rows)
    at, wanted = at[inside], found[inside]
    hits: npt.NDArray[np.int64] = at[rows[at] == wanted]
    return hits


def _shown(name: str) -> str:
    """A feature as an agent reads it: words, word pairs and CJK runs of two or more
    characters; empty for the rest (character pieces, negation marks)."""
    kind, _, value = name.partition(":")
    if kind in ("w", "b"):
        return value.removeprefix("^ ").removesuffix(" $")
    if kind == "k" and len(value) >= 2:
        return value
    return ""


def training_digest(texts: Iterable[bytes]) -> str:
    digest = hashlib.sha256()
    for text in texts:
        digest.update(hashlib.sha256(text).digest())
    return digest.hexdigest()


@cache
def shipped_model() -> IntentModel:
    """The model in the package; loaded once per process."""
    try:
        data = resources.files("worker").joinpath(MODEL_FILE).read_bytes()
    except OSError as exc:
        raise ModelError(f"the intent model {MODEL_FILE} is not installed: {exc}") from exc
    return IntentModel.load(data)


def design(
    texts: Sequence[str],
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """All texts' features as (offsets, buckets): text ``i`` has the buckets from
    ``offsets[i]`` to ``offsets[i + 1]``."""
    parts = [features(text) for text in texts]
    offsets = np.zeros(len(parts) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(p) for p in parts])
    flat = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    return offsets, flat
