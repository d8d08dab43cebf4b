"""Train the intent model shipped in ``worker/intent_model.npz``.

Reads the hand-written training sets ``bench/intents/train/<lang>.yaml`` (never the
development set under ``tests/fixtures/intents``, which only measures), fits a multinomial
logistic regression over the features of ``worker.intent_model`` with AdaGrad, and writes
the weights. Deterministic: the same files give the same weights (a fixed shuffling seed,
zero start, no threads).

    .venv/bin/python bench/train_intents.py              # retrain and write the model
    .venv/bin/python bench/train_intents.py --folds 5    # cross-validated accuracy only
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import numpy.typing as npt
import yaml

from worker.domain import Intent
from worker.intent_model import MODEL_INTENTS, IntentModel, design, training_digest

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ROOT / "bench" / "intents" / "train"
OUT = ROOT / "worker" / "intent_model.npz"
EPOCHS = 12
RATE = 0.4
L2 = 1e-6
SEED = 20261204
SEEDS = (SEED, SEED + 1, SEED + 2)
"""Descents averaged: one shuffled order of the texts moves the figures by a point or two."""
MIN_TEXTS = 2
"""A feature found in fewer training texts gets no weight."""
PRUNE = 1e-3
"""Weights smaller than this are dropped from the shipped file; they change no decision."""


def training_files(folder: Path = TRAIN) -> list[Path]:
    return sorted(folder.glob("*.yaml"))


def load(files: list[Path]) -> tuple[list[str], list[Intent], list[str]]:
    texts, labels, langs = [], [], []
    for path in files:
        for n, item in enumerate(yaml.safe_load(path.read_text(encoding="utf-8")) or []):
            try:
                texts.append(str(item["text"]))
                labels.append(Intent(item["intent"]))
            except (KeyError, ValueError, TypeError) as exc:
                raise SystemExit(f"{path}: item {n}: {exc!r}") from exc
            langs.append(path.stem)
    return texts, labels, langs


def digest(files: list[Path]) -> str:
    return training_digest(p.name.encode() + b"\0" + p.read_bytes() for p in files)


def fit(texts: list[str], labels: list[Intent], trained_on: str = "") -> IntentModel:
    intents = MODEL_INTENTS
    y = np.array([intents.index(label) for label in labels], dtype=np.int64)
    offsets, flat = design(texts)
    used, inverse, seen = np.unique(flat, return_inverse=True, return_counts=True)
    rare = seen[inverse] < MIN_TEXTS  # a feature of one text alone learns that text by heart
    inverse = np.where(rare, -1, inverse)
    classes = len(intents)
    counts = np.bincount(y, minlength=classes).astype(np.float64)
    balance = np.where(counts > 0, len(y) / (np.count_nonzero(counts) * np.maximum(counts, 1)), 0)
    runs = [_descend(y, offsets, inverse, (len(used), classes), balance, seed) for seed in SEEDS]
    weights = sum(w for w, _ in runs) / len(runs)
    bias = sum(b for _, b in runs) / len(runs)
    keep = np.abs(weights).max(axis=1) >= PRUNE
    return IntentModel(
        intents,
        used[keep].astype(np.int64),
        weights[keep].astype(np.float32),
        bias.astype(np.float32),
        trained_on,
    )


def _descend(
    y: npt.NDArray[np.int64],
    offsets: npt.NDArray[np.int64],
    inverse: npt.NDArray[np.int64],
    shape: tuple[int, int],
    balance: npt.NDArray[np.float64],
    seed: int,
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """One descent from zero, the texts in the order ``seed`` shuffles them each epoch:
    AdaGrad on the class-balanced log loss, the weights averaged over the epochs' ends."""
    weights = np.zeros(shape, dtype=np.float64)
    squares = np.full_like(weights, 1e-8)
    bias = np.zeros(shape[1], dtype=np.float64)
    bias_squares = np.full(shape[1], 1e-8)
    rng = np.random.default_rng(seed)
    total = np.zeros_like(weights)
    total_bias = np.zeros_like(bias)
    for _ in range(EPOCHS):
        for i in rng.permutation(len(y)):
            rows = inverse[offsets[i] : offsets[i + 1]]
            scale = 1.0 / np.sqrt(max(rows.size, 1))  # as the model scales: by all features
            rows = rows[rows >= 0]
            if rows.size == 0:
                continue
            logits = bias + weights[rows].sum(axis=0) * scale
            logits -= logits.max()
            p = np.exp(logits)
            p /= p.sum()
            p[y[i]] -= 1.0
            p *= balance[y[i]]
            grad = scale * p[None, :] + L2 * weights[rows]
            squares[rows] += grad * grad
            weights[rows] -= RATE * grad / np.sqrt(squares[rows])
            bias_squares += p * p
            bias -= RATE * p / np.sqrt(bias_squares)
        total += weights
        total_bias += bias
    return total / EPOCHS, total_bias / EPOCHS


def _predict(model: IntentModel, texts: list[str]) -> npt.NDArray[np.int64]:
    return np.array([int(np.argmax(model.probabilities(t))) for t in texts], dtype=np.int64)


def cross_validate(texts: list[str], labels: list[Intent], langs: list[str], folds: int) -> None:
    """Held-out figures on the training texts: accuracy per file, and for each line the
    reader could pause at, the complaints paused and the ordinary texts paused."""
    rng = np.random.default_rng(SEED)
    fold_of = rng.integers(0, folds, size=len(texts))
    right: Counter[str] = Counter()
    seen: Counter[str] = Counter()
    mass = np.zeros(len(texts))
    for fold in range(folds):
        train = [i for i in range(len(texts)) if fold_of[i] != fold]
        test = [i for i in range(len(texts)) if fold_of[i] == fold]
        model = fit([texts[i] for i in train], [labels[i] for i in train])
        complaint = [n for n, intent in enumerate(model.intents) if intent.dispute_kind]
        for i in test:
            p = model.probabilities(texts[i])
            mass[i] = p[complaint].sum()
            seen[langs[i]] += 1
            right[langs[i]] += model.intents[int(np.argmax(p))] is labels[i]
    for lang in sorted(seen):
        print(f"{lang}: {right[lang] / seen[lang]:.3f} of {seen[lang]}")
    print(f"all: {sum(right.values()) / sum(seen.values()):.3f}")
    is_complaint = np.array([label.dispute_kind is not None for label in labels])
    ordinary = np.array(
        [label.dispute_kind is None and label is not Intent.UNSUBSCRIBE for label in labels]
    )
    for line in (0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.6):
        recall = (mass[is_complaint] >= line).mean()
        paused = (mass[ordinary] >= line).mean()
        print(
            f"pause from {line:.2f}: complaints paused {recall:.3f}, ordinary paused {paused:.3f}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folds", type=int, default=0, help="cross-validate instead")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    files = training_files()
    texts, labels, langs = load(files)
    print(f"{len(texts)} texts from {len(files)} files: {dict(Counter(langs))}")
    if args.folds:
        cross_validate(texts, labels, langs, args.folds)
        return 0
    model = fit(texts, labels, digest(files))
    args.out.write_bytes(model.save())
    print(f"wrote {args.out} ({args.out.stat().st_size // 1024} KB, {len(model.rows)} rows)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
