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
import unicodedata
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from io import BytesIO

import numpy as np
import numpy.typing as npt
import re2

from worker.domain import Intent
from worker.errors import WorkerError

BUCKETS = 1 << 18
"""Hashed feature space; collisions among the few thousand features a language uses are rare."""
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
_CJK_NEGATIONS = (
    "没有",
    "沒有",
    "没",
    "沒",
    "不",
    "未",
    "无",
    "無",
    "ない",
    "なし",
    "ません",
    "ず",
)
_SCOPE = 3

_WORD = re2.compile(r"[\pL\pM\pN']+")
_CJK = re2.compile(r"[\p{Han}\p{Hiragana}\p{Katakana}ー]+")
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
    """Every feature of a prepared text, by name (``w:`` word, ``b:`` word pair, ``n:``
    negated word, ``c:`` character n-gram, ``k:`` CJK n-gram)."""
    words = [w.replace("'", "") for w in _WORD.findall(text)]
    negated = 0
    previous = "^"
    for word in words:
        if not word:
            continue
        yield f"w:{word}"
        yield f"b:{previous} {word}"
        if negated:
            yield f"n:{word}"
            negated -= 1
        if word in _NEGATORS:
            negated = _SCOPE
        previous = word
        if _CJK.fullmatch(word) is None:
            padded = f" {word} "
            for size in (3, 4, 5):
                for start in range(len(padded) - size + 1):
                    yield f"c:{padded[start : start + size]}"
    yield f"b:{previous} $"
    for run in _CJK.findall(text):
        for size in (1, 2, 3):
            for start in range(len(run) - size + 1):
                gram = run[start : start + size]
                yield f"k:{gram}"
        for negation in _CJK_NEGATIONS:
            at = run.find(negation)
            if at >= 0:
                yield f"k!{run[max(0, at - 3) : at]}"
                yield f"k!{negation}"


def bucket(name: str) -> int:
    return zlib.crc32(name.encode("utf-8")) & (BUCKETS - 1)


def features(text: str) -> npt.NDArray[np.int64]:
    """The sorted, distinct feature buckets of a raw text."""
    found = {bucket(name) for name in feature_names(prepared(text))}
    return np.fromiter(sorted(found), dtype=np.int64, count=len(found))


class ModelError(WorkerError):
    """The shipped intent model is missing or unreadable: reinstall, or retrain it."""


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
        found = features(text)
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
        column = self.intents.index(intent)
        scored: dict[str, float] = {}
        for name in feature_names(prepared(text)):
            if name[:2] not in ("w:", "b:", "n:", "k:") or name in scored:
                continue
            row = np.searchsorted(self.rows, bucket(name))
            if row < len(self.rows) and self.rows[row] == bucket(name):
                scored[name] = float(self.weights[row, column])
        best = sorted((v, k) for k, v in scored.items() if v > 0)[-count:]
        return [_shown(name) for _, name in reversed(best)]

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
    kind, _, value = name.partition(":")
    if kind == "n":
        return f"not {value}"
    return value.replace("^", "").replace("$", "").strip()


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
