"""The shipped intent reader on the development set (tests/fixtures/intents): every intent and
every trap class of every language, through the worker's own parse and classify, as
bench/intents.py scores it. And the model is what its training files make.

The set is never trained on (bench/train_intents.py reads bench/intents/train/ only), so
these are held-out figures; docs/mail-rules.md has them per language."""

from __future__ import annotations

import csv
import math
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from worker.classify import classify
from worker.domain import Classification
from worker.inbound import parse
from worker.intent import at_stage
from worker.intent_model import IntentModel, shipped_model
from worker.rules import load_rules

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

import build_intent_mail  # noqa: E402
import intents as bench  # noqa: E402
import train_intents  # noqa: E402

SET = ROOT / "tests" / "fixtures" / "intents"
GROUP_RIGHT = 0.4
"""Each language's messages of one intent, or of one trap class (two to ten of them): this
share at least gets the right action (pause, suppress or none). A floor that catches a class
the model lost, not a target: the weakest group (Italian refunds, 2 of 5) is in the
closing figures of docs/mail-rules.md."""
TRAP_RIGHT = 0.8
"""Each trap class, all languages together: this share at least gets the right action."""
TARGETS = {
    "complaint_recall": (">=", 0.95),
    "unsubscribe_recall": (">=", 0.90),
    "ordinary_suppressed": ("<=", 0.0),
    "kind_right": (">=", 0.90),
    "ordinary_paused": ("<=", 0.03),
}
"""The targets of issue 11 (bench/intents.py prints them per language)."""


@pytest.fixture(scope="module")
def scored() -> list[tuple[bench.Labelled, Classification]]:
    rules = load_rules(ROOT / "config" / "mail-rules.yaml")
    items = bench.read_labels(SET)
    return [
        (
            item,
            at_stage(
                classify(parse(item.path.read_bytes()), rules, seller_addresses=frozenset()),
                item.stage,
            ),
        )
        for item in items
    ]


def _groups(
    scored: list[tuple[bench.Labelled, Classification]], trap: bool
) -> dict[tuple[str, str], list[bool]]:
    groups: dict[tuple[str, str], list[bool]] = defaultdict(list)
    traps = _traps()
    for item, verdict in scored:
        name = traps.get(item.path.name, "") if trap else item.intent
        if name:
            groups[(item.language, name)].append(bench.action_of(verdict) == item.action)
    return groups


def _traps() -> dict[str, str]:
    with (SET / "labels.csv").open(encoding="utf-8") as f:
        return {Path(row["path"]).name: row["trap"] for row in csv.DictReader(f)}


def test_the_set_is_built_from_its_sources() -> None:
    files = build_intent_mail.build()
    stale = [p.name for p, data in files.items() if not p.exists() or p.read_bytes() != data]
    assert stale == [], "run: .venv/bin/python bench/build_intent_mail.py"


def test_every_language_has_every_intent(
    scored: list[tuple[bench.Labelled, Classification]],
) -> None:
    groups = _groups(scored, trap=False)
    languages = {lang for lang, _ in groups}
    intents = {intent for _, intent in groups}
    assert languages == {"en", "de", "fr", "es", "it", "ja", "zh"}
    assert len(intents) == 16
    assert {(lang, i) for lang in languages for i in intents} <= groups.keys()


def test_each_intent_of_each_language_gets_its_action(
    scored: list[tuple[bench.Labelled, Classification]],
) -> None:
    weak = {
        f"{lang}/{name}": f"{sum(right)}/{len(right)}"
        for (lang, name), right in _groups(scored, trap=False).items()
        if sum(right) < GROUP_RIGHT * len(right)
    }
    assert weak == {}


def test_each_trap_class_of_each_language_gets_its_action(
    scored: list[tuple[bench.Labelled, Classification]],
) -> None:
    """A language has one to ten mails of a trap class: at most the share GROUP_RIGHT allows
    may go wrong, rounded in the class's favour (one of two); over all languages, a class
    gets TRAP_RIGHT of its mails right."""
    groups = _groups(scored, trap=True)
    assert len({name for _, name in groups}) >= 10
    weak = {
        f"{lang}/{name}": f"{sum(right)}/{len(right)}"
        for (lang, name), right in groups.items()
        if sum(right) < math.floor(GROUP_RIGHT * len(right))
    }
    assert weak == {}
    classes: dict[str, list[bool]] = defaultdict(list)
    for (_, name), right in groups.items():
        classes[name] += right
    weak = {
        name: f"{sum(right)}/{len(right)}"
        for name, right in classes.items()
        if sum(right) < TRAP_RIGHT * len(right)
    }
    assert weak == {}


def test_the_whole_set_meets_its_targets(
    scored: list[tuple[bench.Labelled, Classification]],
) -> None:
    whole = bench.Score()
    for item, verdict in scored:
        whole.add(item, verdict)
    missed = {}
    for name, (sense, bound) in TARGETS.items():
        value = whole.rate(name)
        assert value is not None
        if not (value >= bound if sense == ">=" else value <= bound):
            missed[name] = round(value, 3)
    assert missed == {}


def test_the_shipped_model_is_what_its_training_files_make() -> None:
    """Retrained from bench/intents/train/ in this run, the model decides as the shipped one:
    the weights in the package are not hand-edited, nor stale after a change of the files."""
    files = train_intents.training_files()
    shipped = shipped_model()
    assert shipped.trained_on == train_intents.digest(files), (
        "the training files changed: run .venv/bin/python bench/train_intents.py"
    )
    texts, labels, _ = train_intents.load(files)
    again = IntentModel.load(train_intents.fit(texts, labels).save())  # as shipped
    probe = [parse(path.read_bytes()).text for path in sorted((SET / "mail").rglob("*.eml"))[::4]]
    decided = [int(np.argmax(shipped.probabilities(t))) for t in probe]
    assert decided == [int(np.argmax(again.probabilities(t))) for t in probe]
