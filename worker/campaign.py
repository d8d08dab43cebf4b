"""Campaign files: operator-edited YAML turned into checked domain values.

Validation walks PyYAML's node tree rather than loaded dicts, so every error names the file
line of the offending key or value and the field path, and an operator can fix a file from
the message alone. Plain scalars are read as written: YAML 1.1 would otherwise turn an
unquoted ``18:00`` into the number 1080.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from datetime import time, timedelta
from pathlib import Path

import yaml

from worker.config import parse_duration
from worker.domain import (
    MARKETPLACES,
    Campaign,
    CampaignStep,
    Condition,
    SendWindow,
    StepKind,
    Trigger,
    TriggerEvent,
)
from worker.errors import CampaignError

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
DEFAULT_MAX_LATENESS = timedelta(days=3)

_NAME = re.compile(r"[a-z0-9-]+")
_TEMPLATE = re.compile(r"[a-z0-9_]+")
_CLOCK = re.compile(r"(\d{1,2}):(\d{2})")
_RATING = re.compile(r"\s*(\d+)\s*(?:\.\.\s*(\d+)\s*)?")
_PERCENT = re.compile(r"(\d{1,2}(?:\.\d{1,2})?)\s*%")
HOLDOUT_MAX = 50
"""Percent: past half, the campaign measures more than it sends."""
_NULL = "tag:yaml.org,2002:null"
_BOOL = "tag:yaml.org,2002:bool"

_CAMPAIGN_KEYS = (
    "name",
    "description",
    "enabled",
    "applies_to",
    "send_window",
    "buyer_cap",
    "steps",
)
_STEP_KEYS = (
    "id",
    "after",
    "template",
    "unless",
    "max_lateness",
    "kind",
    "hold_while_awaiting_answer",
    "buyer_cap",
    "holdout",
    "latest",
)
_AFTER_KEYS = ("event", "step", "delay", "rating")


def parse_delay(text: str) -> tuple[timedelta, timedelta]:
    """``7d`` -> (7d, 7d); ``10d..15d`` -> (10d, 15d). Raises ValueError.

    A range lets the planner pick a stable point per order, so mail is not sent in bursts.
    """
    low, dots, high = text.partition("..")
    try:
        first = _duration(low)
        last = _duration(high) if dots else first
    except ValueError:
        raise ValueError(f"{text!r} is not a duration like 7d or a range like 10d..15d") from None
    if last < first:
        raise ValueError(f"{text!r} is a range whose start is after its end")
    return first, last


def _duration(text: str) -> timedelta:
    return timedelta(0) if text.strip() == "0" else parse_duration(text)


@dataclass(frozen=True, slots=True)
class _At:
    """A YAML node with its field path and file, so any error can point at it."""

    node: yaml.Node
    path: str
    source: str

    @property
    def line(self) -> int:
        return int(self.node.start_mark.line) + 1

    def error(self, message: str) -> CampaignError:
        prefix = f"{self.path}: " if self.path else ""
        return CampaignError(prefix + message, where=f"{self.source}:{self.line}")

    def child(self, node: yaml.Node, name: str) -> _At:
        """``name`` is a key, or an index written as ``[2]``."""
        joined = self.path and not name.startswith("[")
        return _At(node, f"{self.path}.{name}" if joined else self.path + name, self.source)


def _listing(names: Iterable[str]) -> str:
    return ", ".join(names)


def _fields(at: _At, allowed: tuple[str, ...], required: tuple[str, ...] = ()) -> dict[str, _At]:
    """The keys of a mapping node; unknown, repeated or missing keys are errors."""
    if not isinstance(at.node, yaml.MappingNode):
        raise at.error(f"expected a mapping with keys {_listing(allowed)}")
    found: dict[str, _At] = {}
    for key_node, value_node in at.node.value:
        key = at.child(key_node, str(key_node.value))
        if not isinstance(key_node, yaml.ScalarNode) or key_node.value not in allowed:
            raise key.error(f"unknown key; allowed: {_listing(allowed)}")
        if key_node.value in found:
            raise key.error(f"repeated key (first on line {found[key_node.value].line})")
        found[key_node.value] = at.child(value_node, key_node.value)
    missing = [name for name in required if name not in found]
    if missing:
        raise at.error(f"missing required key {missing[0]!r}")
    return found


def _items(at: _At) -> list[_At]:
    if not isinstance(at.node, yaml.SequenceNode):
        raise at.error("expected a list")
    return [at.child(node, f"[{index}]") for index, node in enumerate(at.node.value)]


def _text(at: _At) -> str:
    if not isinstance(at.node, yaml.ScalarNode) or at.node.tag == _NULL:
        raise at.error("expected a value")
    return str(at.node.value)


def _matching(at: _At, pattern: re.Pattern[str], what: str) -> str:
    value = _text(at)
    if not pattern.fullmatch(value):
        raise at.error(f"{value!r} is not {what}")
    return value


def _one_of(at: _At, allowed: Collection[str]) -> str:
    value = _text(at).lower()
    if value not in allowed:
        raise at.error(f"{value!r} is not one of {_listing(allowed)}")
    return value


def _choices(at: _At, allowed: Collection[str], *, non_empty: bool) -> list[str]:
    items = _items(at)
    if non_empty and not items:
        raise at.error(f"expected at least one of {_listing(allowed)}")
    return [_one_of(item, allowed) for item in items]


def _flag(at: _At) -> bool:
    if not isinstance(at.node, yaml.ScalarNode) or at.node.tag != _BOOL:
        raise at.error("expected true or false")
    return bool(yaml.constructor.SafeConstructor.bool_values[at.node.value.lower()])


def _delay(at: _At) -> tuple[timedelta, timedelta]:
    try:
        return parse_delay(_text(at))
    except ValueError as exc:
        raise at.error(str(exc)) from exc


def _lateness(at: _At) -> timedelta:
    try:
        value = _duration(_text(at))
    except ValueError as exc:
        raise at.error(str(exc)) from exc
    if value <= timedelta(0):
        raise at.error("must be longer than zero, or every step would be skipped as too late")
    return value


def _latest(at: _At, delay_max: timedelta) -> timedelta:
    """``latest: 30d``: at least the delay's upper end, or some orders could never be sent."""
    value = _lateness(at)
    if value < delay_max:
        raise at.error(
            f"{_text(at)} is sooner than the delay's upper end; the step could never go out "
            "for some orders (latest counts from the same moment as the delay)"
        )
    return value


def _cap(at: _At) -> timedelta:
    try:
        return _duration(_text(at))
    except ValueError as exc:
        raise at.error(f"{exc}; 0 sends this campaign's mail without a per-buyer cap") from exc


def _holdout(at: _At) -> float:
    """``holdout: 10%``: the share of orders kept from this step, 0% to 50%."""
    text = _text(at)
    match = _PERCENT.fullmatch(text.strip())
    if match is None or float(match[1]) > HOLDOUT_MAX:
        raise at.error(
            f"{text!r} is not a share of orders from 0% to {HOLDOUT_MAX}% like 10%; the orders "
            "held out never get this step, so the report can compare"
        )
    return float(match[1]) / 100


def _kind(template: str, trigger: Trigger) -> StepKind:
    """The kind a step without ``kind:`` has: from its template's name (the shipped ones are
    named after what they are); any other template that speaks of reviews or feedback is
    taken for a review request, the side on which the seller keeps the last word."""
    known = {k.value: k for k in StepKind}
    if template in known:
        return known[template]
    if trigger.event is TriggerEvent.REVIEWED:
        return StepKind.REVIEW_THANKS
    if "review" in template or "feedback" in template:
        return StepKind.REVIEW_REMINDER if trigger.step is not None else StepKind.REVIEW_REQUEST
    return StepKind.OTHER


def _hold(at: _At | None, kind: StepKind) -> bool:
    """Review steps always wait for the seller's answer; check-ins and shipping notices do
    not by default; any other step does unless its campaign says otherwise."""
    default = kind not in (StepKind.CHECK_IN, StepKind.SHIPPING_NOTICE)
    if at is None:
        return default
    hold = _flag(at)
    if not hold and kind.asks_for_review:
        raise at.error(
            f"a {kind.value} step always waits while the buyer's last message is unanswered; "
            "only other steps can switch it off"
        )
    return hold


def _clock(at: _At) -> time:
    match = _CLOCK.fullmatch(_text(at))
    if match is None or int(match[1]) > 23 or int(match[2]) > 59:
        raise at.error(f'{at.node.value!r} is not a time of day like "09:00" (00:00-23:59)')
    return time(int(match[1]), int(match[2]))


def _rating(at: _At) -> tuple[int, int]:
    match = _RATING.fullmatch(_text(at))
    low = int(match[1]) if match else 0
    high = int(match[2] or low) if match else 0
    if not 1 <= low <= high <= 5:
        raise at.error(f"{at.node.value!r} is not a star rating like 5 or a range like 4..5")
    return low, high


def _send_window(at: _At) -> SendWindow:
    fields = _fields(at, ("from", "to", "days"), required=("from", "to"))
    start, end = _clock(fields["from"]), _clock(fields["to"])
    if start >= end:
        raise fields["to"].error(f"must be later than from ({start:%H:%M}); the end is exclusive")
    if "days" not in fields:
        return SendWindow(start, end)
    days = _choices(fields["days"], WEEKDAYS, non_empty=True)
    return SendWindow(start, end, frozenset(WEEKDAYS.index(day) for day in days))


def _marketplaces(at: _At) -> frozenset[str]:
    fields = _fields(at, ("marketplaces",), required=("marketplaces",))
    return frozenset(_choices(fields["marketplaces"], sorted(MARKETPLACES), non_empty=True))


@dataclass(frozen=True, slots=True)
class _StepIds:
    """Ids before and after the step being read, to tell a typo from a forward reference."""

    earlier: list[str]
    later: set[str]


def _earlier_step(at: _At, own_id: str, steps: _StepIds) -> str:
    """Only an earlier step may be followed, which rules out cycles."""
    name = _text(at)
    if name == own_id:
        raise at.error("a step cannot follow itself")
    if name in steps.later:
        raise at.error(f"{name!r} comes later in the file; a step can only follow an earlier one")
    if name not in steps.earlier:
        known = _listing(steps.earlier) or "none"
        raise at.error(f"no step {name!r} before this one (earlier steps: {known})")
    return name


def _trigger(at: _At, fields: dict[str, _At], own_id: str, steps: _StepIds) -> Trigger:
    if ("event" in fields) == ("step" in fields):
        raise at.error("needs exactly one of 'event' (delivered, shipped, reviewed) or 'step'")
    if "step" in fields:
        if "rating" in fields:
            raise fields["rating"].error("only allowed with 'event: reviewed'")
        return Trigger(step=_earlier_step(fields["step"], own_id, steps))
    event = TriggerEvent(_one_of(fields["event"], [e.value for e in TriggerEvent]))
    if "rating" not in fields:
        return Trigger(event=event)
    if event is not TriggerEvent.REVIEWED:
        raise fields["rating"].error("only allowed with 'event: reviewed'")
    low, high = _rating(fields["rating"])
    return Trigger(event=event, min_rating=low, max_rating=high)


def _step(at: _At, steps: _StepIds, campaign_cap: timedelta | None) -> CampaignStep:
    fields = _fields(at, _STEP_KEYS, required=("id", "after", "template"))
    own_id = _matching(fields["id"], _NAME, "a step id made of a-z, 0-9 and -")
    after = _fields(fields["after"], _AFTER_KEYS)
    trigger = _trigger(fields["after"], after, own_id, steps)
    delay_min, delay_max = _delay(after["delay"]) if "delay" in after else (timedelta(0),) * 2
    template = _matching(fields["template"], _TEMPLATE, "a template name made of a-z, 0-9 and _")
    unless = _unless(fields["unless"]) if "unless" in fields else frozenset()
    lateness = fields.get("max_lateness")
    kind = (
        StepKind(_one_of(fields["kind"], [k.value for k in StepKind]))
        if "kind" in fields
        else _kind(template, trigger)
    )
    return CampaignStep(
        id=own_id,
        trigger=trigger,
        delay_min=delay_min,
        delay_max=delay_max,
        template=template,
        unless=unless,
        max_lateness=_lateness(lateness) if lateness is not None else DEFAULT_MAX_LATENESS,
        kind=kind,
        hold_while_awaiting_answer=_hold(fields.get("hold_while_awaiting_answer"), kind),
        buyer_cap=_cap(fields["buyer_cap"]) if "buyer_cap" in fields else campaign_cap,
        holdout=_holdout(fields["holdout"]) if "holdout" in fields else 0.0,
        latest=_latest(fields["latest"], delay_max) if "latest" in fields else None,
    )


def _unless(at: _At) -> frozenset[Condition]:
    return frozenset(
        Condition(c) for c in _choices(at, [c.value for c in Condition], non_empty=False)
    )


def _declared_ids(items: list[_At]) -> list[str]:
    """Step ids as written, read ahead so a reference to a later step gets a clear message."""
    ids = []
    for item in items:
        if isinstance(item.node, yaml.MappingNode):
            ids += [str(v.value) for k, v in item.node.value if k.value == "id"]
    return ids


def _steps(
    at: _At, campaign_cap: timedelta | None
) -> tuple[tuple[CampaignStep, ...], dict[str, int]]:
    items = _items(at)
    if not items:
        raise at.error("a campaign needs at least one step")
    declared = _declared_ids(items)
    steps: list[CampaignStep] = []
    lines: dict[str, int] = {}
    for item in items:
        earlier = [s.id for s in steps]
        step = _step(item, _StepIds(earlier, set(declared) - set(earlier)), campaign_cap)
        if step.id in lines:
            raise _fields(item, _STEP_KEYS)["id"].error(
                f"duplicate step id {step.id!r} (first on line {lines[step.id]})"
            )
        steps.append(step)
        lines[step.id] = item.line
    return tuple(steps), lines


def _campaign(root: _At) -> tuple[Campaign, int]:
    fields = _fields(root, _CAMPAIGN_KEYS, required=("name", "steps"))
    name = _matching(fields["name"], _NAME, "a campaign name made of a-z, 0-9 and -")
    if "description" in fields:
        _text(fields["description"])
    cap = _cap(fields["buyer_cap"]) if "buyer_cap" in fields else None
    steps, lines = _steps(fields["steps"], cap)
    campaign = Campaign(
        name=name,
        steps=steps,
        marketplaces=_marketplaces(fields["applies_to"])
        if "applies_to" in fields
        else MARKETPLACES,
        send_window=_send_window(fields["send_window"]) if "send_window" in fields else None,
        source=root.source,
        enabled=_flag(fields["enabled"]) if "enabled" in fields else True,
        step_lines=lines,
    )
    return campaign, fields["name"].line


def _compose(path: Path) -> _At:
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except OSError as exc:
        raise CampaignError(f"cannot read the file: {exc.strerror}", where=source) from exc
    except UnicodeDecodeError as exc:
        raise CampaignError(f"not UTF-8 text: {exc.reason}", where=source) from exc
    except yaml.MarkedYAMLError as exc:
        raise _syntax_error(exc, source) from exc
    if node is None:
        raise CampaignError(
            "the file is empty; a campaign needs a name and steps", where=source + ":1"
        )
    return _At(node, "", source)


def _syntax_error(exc: yaml.MarkedYAMLError, source: str) -> CampaignError:
    mark = exc.problem_mark or exc.context_mark
    where = f"{source}:{mark.line + 1}" if mark is not None else source
    message = f"not valid YAML: {exc.problem or exc.context}"
    if exc.context and exc.problem and exc.context_mark is not None:
        message += f" ({exc.context} started on line {exc.context_mark.line + 1})"
    return CampaignError(message, where=where)


def _load(path: Path) -> tuple[Campaign, int]:
    return _campaign(_compose(path))


def load_campaign(path: Path) -> Campaign:
    """Read and check one campaign file; the first problem found raises CampaignError."""
    return _load(path)[0]


def _campaign_files(directory: Path) -> list[Path]:
    """Every *.yaml/*.yml, skipping hidden files such as editor lock files."""
    if not directory.is_dir():
        raise CampaignError("the campaigns directory does not exist", where=str(directory))
    files = [p for p in directory.iterdir() if p.suffix in (".yaml", ".yml")]
    files = sorted(p for p in files if not p.name.startswith(".") and p.is_file())
    if not files:
        raise CampaignError("no campaign files (*.yaml, *.yml) found", where=str(directory))
    return files


def load_campaigns(directory: Path) -> list[Campaign]:
    """All campaigns, enabled and disabled, sorted by name; names must be unique."""
    found: dict[str, Campaign] = {}
    for path in _campaign_files(directory):
        campaign, name_line = _load(path)
        first = found.get(campaign.name)
        if first is not None:
            raise CampaignError(
                f"name: {campaign.name!r} is already used by {first.source}; names must be unique",
                where=f"{path}:{name_line}",
            )
        found[campaign.name] = campaign
    return [found[name] for name in sorted(found)]
