"""How well, and how fast, the worker classifies real bounces and complaints.

Reads a corpus laid out like corpus-dev (``labels.csv`` with ``path``, ``category``,
``hard_soft``, ``subtype``; the files beside it) and runs what ``worker classify`` runs, in
this process: ``worker.inbound.parse`` then ``worker.classify.classify`` with the project's
``config/mail-rules.yaml`` and no seller addresses. Prints suppression recall and precision,
the non-bounces suppressed, the complaints and automatic replies recognised, the crashes, and
messages per second for parse + classify (median of ``--repeat`` runs) beside
``email.message_from_bytes`` alone on the same files in the same run.

    .venv/bin/python bench/classify.py CORPUS_DIR [--labels labels.csv] [--repeat 3]
        [--no-fail] [--misses]

Exits 1 when a target is missed (``--no-fail``: print only). See bench/README.md.
"""

from __future__ import annotations

import argparse
import csv
import email
import json
import os
import platform
import statistics
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from time import perf_counter

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from worker.classify import classify  # noqa: E402
from worker.domain import Classification, MessageKind  # noqa: E402
from worker.inbound import parse  # noqa: E402
from worker.rules import MailRules, load_rules  # noqa: E402

RECALL, PRECISION, RATE = 0.95, 0.95, 1000.0
"""The targets: hard-bounce suppression recall and precision, messages per second."""
OTHER_ROWS = frozenset({"autoreplies", "complaints", "negatives"})
FEEDBACK_OUTCOMES = {
    "opt-out": {MessageKind.SPAM_COMPLAINT, MessageKind.UNSUBSCRIBE},
    "auth-failure": {MessageKind.BOUNCE_POLICY},
    "not-spam": {MessageKind.BOUNCE_POLICY},
}
"""A complaint is recognised as SPAM_COMPLAINT; an opt-out may also be an unsubscribe, and an
authentication-failure report (RFC 6591) is a report about us that suppresses no one."""


@dataclass(frozen=True, slots=True)
class Row:
    path: str
    category: str
    hard_soft: str
    subtype: str
    raw: bytes


@dataclass(slots=True)
class Score:
    """Suppression over one set of rows, as the corpus README scores it."""

    hard: int = 0
    found: int = 0
    suppressed: int = 0
    wrongly: list[str] = field(default_factory=list)
    missed: list[str] = field(default_factory=list)
    others_suppressed: list[str] = field(default_factory=list)

    @property
    def recall(self) -> float:
        return self.found / self.hard if self.hard else 1.0

    @property
    def precision(self) -> float:
        return self.found / self.suppressed if self.suppressed else 1.0


def read_rows(corpus: Path, labels: Path) -> list[Row]:
    with labels.open(newline="", encoding="utf-8") as handle:
        return [
            Row(
                r["path"],
                r["category"],
                r["hard_soft"],
                r["subtype"],
                (corpus / r["path"]).read_bytes(),
            )
            for r in csv.DictReader(handle)
        ]


def verdicts(rows: list[Row], rules: MailRules) -> tuple[dict[str, Classification], list[str]]:
    found: dict[str, Classification] = {}
    crashes: list[str] = []
    for row in rows:
        try:
            found[row.path] = classify(parse(row.raw), rules, seller_addresses=frozenset())
        except Exception as exc:  # a crash is a figure here, not the end of the run
            crashes.append(f"{row.path}: {exc!r}")
    return found, crashes


def score(
    rows: list[Row], found: dict[str, Classification], bounces: str, others: frozenset[str]
) -> Score:
    """Should-suppress: bounces labelled hard. Scored: bounces labelled hard or soft, and
    every automatic reply, complaint and negative (``others``, or the rows of ``bounces``
    with no label: the copies of complaints). Suppressed: kind BOUNCE_HARD."""
    result = Score()
    for row in rows:
        verdict = found.get(row.path)
        suppressed = verdict is not None and verdict.kind is MessageKind.BOUNCE_HARD
        if row.category == bounces and row.hard_soft in ("hard", "soft"):
            result.hard += row.hard_soft == "hard"
            result.found += suppressed and row.hard_soft == "hard"
            result.suppressed += suppressed
            if suppressed and row.hard_soft == "soft":
                result.wrongly.append(row.path)
            if not suppressed and row.hard_soft == "hard":
                result.missed.append(row.path)
        elif row.category in others or (row.category == bounces and not row.hard_soft):
            result.suppressed += suppressed
            if suppressed:
                result.others_suppressed.append(row.path)
    return result


def recognised(rows: list[Row], found: dict[str, Classification]) -> tuple[int, int, Counter[str]]:
    """Complaints read as what their feedback type means, and automatic replies read as such."""
    complaints, autoreplies = 0, 0
    kinds: Counter[str] = Counter()
    for row in rows:
        verdict = found.get(row.path)
        kind = verdict.kind if verdict else None
        if row.category == "complaints":
            feedback_type = row.subtype.partition(":")[2]
            expected = FEEDBACK_OUTCOMES.get(feedback_type, {MessageKind.SPAM_COMPLAINT})
            complaints += kind in expected
            kinds[f"{feedback_type} -> {kind.value if kind else 'crash'}"] += 1
        elif row.category == "autoreplies":
            autoreplies += kind is MessageKind.AUTO_REPLY
    return complaints, autoreplies, kinds


def rate(raws: list[bytes], work: Callable[[bytes], object]) -> float:
    start = perf_counter()
    for raw in raws:
        work(raw)
    return len(raws) / (perf_counter() - start)


def speeds(raws: list[bytes], rules: MailRules, repeat: int) -> tuple[float, float]:
    """Medians, interleaved so that drift on a shared machine hits both alike."""

    def worker(raw: bytes) -> object:
        try:
            return classify(parse(raw), rules, seller_addresses=frozenset())
        except Exception:  # counted as crashes above
            return None

    ours, ceiling = [], []
    for _ in range(repeat):
        ceiling.append(rate(raws, email.message_from_bytes))
        ours.append(rate(raws, worker))
    return statistics.median(ours), statistics.median(ceiling)


def print_score(name: str, result: Score) -> None:
    print(
        f"{name:12} recall {result.recall:.3f} ({result.found}/{result.hard})   "
        f"precision {result.precision:.3f} ({result.found}/{result.suppressed})"
    )


def print_misses(rows: list[Row], found: dict[str, Classification], results: list[Score]) -> None:
    labels = {row.path: f"{row.category}/{row.hard_soft or row.subtype}" for row in rows}
    for title, paths in (
        ("hard bounces not suppressed", [p for r in results for p in r.missed]),
        ("suppressed but not hard", [p for r in results for p in r.wrongly + r.others_suppressed]),
    ):
        print(f"\n{title}:")
        for path in paths:
            verdict = found.get(path)
            said = f"{verdict.kind.value} {verdict.evidence}" if verdict else "crash"
            print(f"  {path} [{labels[path]}] -> {json.dumps(said, ensure_ascii=True)}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("corpus", type=Path, help="folder laid out like corpus-dev")
    parser.add_argument("--labels", type=Path, help="labels file (default CORPUS/labels.csv)")
    parser.add_argument("--repeat", type=int, default=3, help="speed runs; the median is shown")
    parser.add_argument("--no-fail", action="store_true", help="print only; exit 0")
    parser.add_argument("--misses", action="store_true", help="list every row scored wrong")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rows = read_rows(args.corpus, args.labels or args.corpus / "labels.csv")
    rules = load_rules(ROOT / "config" / "mail-rules.yaml")
    found, crashes = verdicts(rows, rules)
    main_score = score(rows, found, "bounces", OTHER_ROWS)
    tricky = score(rows, found, "tricky_mime", frozenset())
    complaints, autoreplies, kinds = recognised(rows, found)
    ours, ceiling = speeds([row.raw for row in rows], rules, args.repeat)
    counts = Counter(row.category for row in rows)

    print(
        f"classify: {len(rows)} messages from {args.corpus}; {os.cpu_count()} cores, "
        f"Python {platform.python_version()}; targets recall >= {RECALL}, precision >= "
        f"{PRECISION}, no non-bounce suppressed, no crash, >= {RATE:g} msg/s\n"
    )
    print_score("bounces", main_score)
    print_score("tricky_mime", tricky)
    others = main_score.others_suppressed + tricky.others_suppressed
    print(f"non-bounces suppressed: {len(others)}" + (f" {others}" if others else ""))
    shown = ", ".join(f"{kind} {n}" for kind, n in sorted(kinds.items()))
    print(f"complaints recognised: {complaints}/{counts['complaints']} ({shown})")
    print(f"automatic replies recognised: {autoreplies}/{counts['autoreplies']}")
    print(f"crashes: {len(crashes)}" + "".join(f"\n  {c}" for c in crashes))
    print(
        f"parse + classify: {ours:.0f} msg/s (median of {args.repeat}); "
        f"email.message_from_bytes alone: {ceiling:.0f} msg/s; ratio {ours / ceiling:.2f}"
    )
    if args.misses:
        print_misses(rows, found, [main_score, tricky])
    missed = [
        name
        for name, failed in (
            ("recall", main_score.recall < RECALL),
            ("precision", main_score.precision < PRECISION),
            ("non-bounces suppressed", bool(others)),
            ("crashes", bool(crashes)),
            ("speed", ours < RATE),
        )
        if failed
    ]
    print("\ntargets missed: " + (", ".join(missed) if missed else "none"))
    return 1 if missed and not args.no_fail else 0


if __name__ == "__main__":
    sys.exit(main())
