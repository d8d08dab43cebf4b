"""Campaign files load into exact domain values, and every mistake points at its line."""

from __future__ import annotations

import re
import shutil
from datetime import time, timedelta
from pathlib import Path

import pytest

from worker.campaign import load_campaign, load_campaigns, parse_delay
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

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "campaigns"
SHIPPED = ROOT / "campaigns"


def step(step_id: str, trigger: Trigger, template: str, **kwargs: object) -> CampaignStep:
    delay = kwargs.pop("delay", timedelta(0))
    low, high = delay if isinstance(delay, tuple) else (delay, delay)
    return CampaignStep(step_id, trigger, low, high, template, **kwargs)  # type: ignore[arg-type]


FULL = Campaign(
    name="review-request",
    steps=(
        step(
            "check-in",
            Trigger(event=TriggerEvent.SHIPPED),
            "check_in",
            delay=timedelta(1.5),
            kind=StepKind.CHECK_IN,
            hold_while_awaiting_answer=False,
            buyer_cap=timedelta(days=2),
        ),
        step(
            "review-request",
            Trigger(event=TriggerEvent.DELIVERED),
            "review_request",
            delay=timedelta(days=35),
            unless=frozenset({Condition.REVIEWED, Condition.REPLIED}),
            max_lateness=timedelta(hours=12),
            kind=StepKind.REVIEW_REQUEST,
            buyer_cap=timedelta(days=2),
        ),
        step(
            "review-reminder",
            Trigger(step="review-request"),
            "review_reminder",
            delay=(timedelta(days=10), timedelta(days=15)),
            unless=frozenset({Condition.REVIEWED}),
            max_lateness=timedelta(days=5),
            kind=StepKind.REVIEW_REMINDER,
            buyer_cap=timedelta(days=2),
        ),
        step(
            "thanks",
            Trigger(event=TriggerEvent.REVIEWED, min_rating=5, max_rating=5),
            "review_thanks",
            kind=StepKind.OTHER,
            hold_while_awaiting_answer=False,
            buyer_cap=timedelta(0),
        ),
    ),
    marketplaces=frozenset({"ebay", "shop"}),
    send_window=SendWindow(time(9, 30), time(17, 45), frozenset({0, 2, 4})),
    source=str(FIXTURES / "good" / "full.yaml"),
    enabled=False,
)

MINIMAL = Campaign(
    name="minimal",
    steps=(
        step(
            "thanks",
            Trigger(event=TriggerEvent.REVIEWED, min_rating=4, max_rating=5),
            "review_thanks",
            kind=StepKind.REVIEW_THANKS,
        ),
    ),
    marketplaces=MARKETPLACES,
    send_window=None,
    source=str(FIXTURES / "good" / "minimal.yaml"),
    enabled=True,
)


@pytest.mark.parametrize(("fixture", "expected"), [("full", FULL), ("minimal", MINIMAL)])
def test_valid_file_loads_into_exact_domain_values(fixture: str, expected: Campaign) -> None:
    assert load_campaign(FIXTURES / "good" / f"{fixture}.yaml") == expected


def test_step_lines_point_at_each_step() -> None:
    campaign = load_campaign(FIXTURES / "good" / "full.yaml")
    assert campaign.step_lines == {
        "check-in": 11,
        "review-request": 14,
        "review-reminder": 21,
        "thanks": 26,
    }


def test_unquoted_clock_time_is_not_read_as_a_sexagesimal_number() -> None:
    """YAML 1.1 reads a bare 17:45 as 1065; the loader must see the text as written."""
    window = load_campaign(FIXTURES / "good" / "full.yaml").send_window
    assert window is not None and window.end == time(17, 45)


BAD = [
    ("unknown-key", 5, "steps[0].templte: unknown key; allowed: id, after, template, unless"),
    ("unknown-top-key", 2, "marketplaces: unknown key; allowed: name, description, enabled"),
    ("bad-duration", 4, "steps[0].after.delay: '7days' is not a duration like 7d"),
    ("reversed-range", 9, "steps[1].after.delay: '10d..5d' is a range whose start is after"),
    ("later-step", 4, "steps[0].after.step: 'review-request' comes later in the file"),
    ("unknown-step", 7, "steps[1].after.step: no step 'review-requets' before this one"),
    ("self-step", 4, "steps[0].after.step: a step cannot follow itself"),
    ("duplicate-step-id", 6, "steps[1].id: duplicate step id 'check-in' (first on line 3)"),
    ("bad-weekday", 6, "send_window.days[2]: 'thursday' is not one of mon, tue"),
    ("no-days", 2, "send_window.days: expected at least one of mon"),
    ("window-reversed", 4, "send_window.to: must be later than from (18:00)"),
    ("bad-time", 3, "send_window.from: '9am' is not a time of day"),
    ("rating-without-reviewed", 6, "steps[0].after.rating: only allowed with 'event: reviewed'"),
    ("bad-rating", 4, "steps[0].after.rating: '3..6' is not a star rating"),
    ("event-and-step", 7, "steps[1].after: needs exactly one of 'event'"),
    ("bad-event", 4, "steps[0].after.event: 'paid' is not one of delivered, shipped, reviewed"),
    ("unknown-marketplace", 3, "applies_to.marketplaces[1]: 'etsy' is not one of aliexpress"),
    ("bad-name", 1, "name: 'Review Follow Up' is not a campaign name"),
    ("bad-template", 5, "steps[0].template: 'check-in' is not a template name"),
    ("missing-template", 3, "steps[0]: missing required key 'template'"),
    ("no-steps", 2, "steps: a campaign needs at least one step"),
    ("missing-steps", 2, "missing required key 'steps'"),
    ("bad-enabled", 2, "enabled: expected true or false"),
    ("bad-unless", 6, "steps[0].unless[1]: 'disputed' is not one of reviewed, replied"),
    ("zero-lateness", 6, "steps[0].max_lateness: must be longer than zero"),
    ("latest-before-delay", 6, "steps[0].latest: 12d is sooner than the delay's upper end"),
    ("review-not-held", 6, "steps[0].hold_while_awaiting_answer: a review_request step always"),
    ("bad-kind", 6, "steps[0].kind: 'advert' is not one of shipping_notice, check_in"),
    ("bad-cap", 2, "buyer_cap: 'soon' is not a duration like 7d"),
    ("repeated-key", 6, "steps[0].after: repeated key (first on line 4)"),
    ("not-a-mapping", 1, "expected a mapping with keys name, description"),
    ("syntax-error", 5, "not valid YAML: expected ',' or '}', but got ':'"),
    ("tab-indent", 3, "not valid YAML: found character '\\t'"),
    ("empty", 1, "the file is empty"),
    ("comment-only", 1, "the file is empty"),
]


@pytest.mark.parametrize(("fixture", "line", "message"), BAD, ids=[b[0] for b in BAD])
def test_each_mistake_names_its_line_and_field(fixture: str, line: int, message: str) -> None:
    path = FIXTURES / "bad" / f"{fixture}.yaml"
    with pytest.raises(CampaignError) as caught:
        load_campaign(path)
    assert caught.value.where == f"{path}:{line}"
    assert caught.value.detail.startswith(message)


def test_every_bad_fixture_is_in_the_table() -> None:
    assert {p.stem for p in (FIXTURES / "bad").glob("*.yaml")} == {b[0] for b in BAD}


def test_duplicate_campaign_names_across_files_name_both_files() -> None:
    directory = FIXTURES / "duplicate-names"
    with pytest.raises(CampaignError) as caught:
        load_campaigns(directory)
    assert caught.value.where == f"{directory / 'b.yml'}:2"
    assert str(directory / "a.yaml") in caught.value.detail
    assert caught.value.detail.startswith("name: 'same-name' is already used by")


def test_directory_loads_enabled_and_disabled_sorted_by_name(tmp_path: Path) -> None:
    shutil.copy(FIXTURES / "good" / "minimal.yaml", tmp_path / "a.yml")
    shutil.copy(FIXTURES / "good" / "full.yaml", tmp_path / "b.yaml")
    (tmp_path / "notes.txt").write_text("not a campaign")
    (tmp_path / ".#b.yaml").write_text("an editor lock file")
    loaded = load_campaigns(tmp_path)
    assert [(c.name, c.enabled) for c in loaded] == [("minimal", True), ("review-request", False)]


def test_directory_without_campaign_files_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "readme.txt").write_text("nothing here")
    with pytest.raises(CampaignError, match="no campaign files") as caught:
        load_campaigns(tmp_path)
    assert caught.value.where == str(tmp_path)


def test_missing_directory_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(CampaignError, match="does not exist"):
        load_campaigns(tmp_path / "nowhere")


def test_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(CampaignError, match="cannot read the file") as caught:
        load_campaign(tmp_path / "gone.yaml")
    assert caught.value.where == str(tmp_path / "gone.yaml")


def test_shipped_campaigns_load_as_documented() -> None:
    campaigns = {c.name: c for c in load_campaigns(SHIPPED)}
    assert set(campaigns) == {
        "amazon-review-request",
        "review-follow-up",
        "review-thanks",
        "shipping-notice",
    }
    amazon = campaigns.pop("amazon-review-request")
    assert amazon.enabled
    assert amazon.marketplaces == {"amazon"}
    assert [(s.template, s.kind, s.trigger, s.delay_min, s.delay_max) for s in amazon.steps] == [
        (
            "amazon_review_request",
            StepKind.REVIEW_REQUEST,
            Trigger(event=TriggerEvent.DELIVERED),
            timedelta(days=10),
            timedelta(days=14),
        )
    ]
    notice = campaigns.pop("shipping-notice")
    assert not notice.enabled
    assert notice.marketplaces == {"shop"}
    assert [(s.template, s.trigger, s.max_lateness) for s in notice.steps] == [
        ("shipping_notice", Trigger(event=TriggerEvent.SHIPPED), timedelta(days=2))
    ]
    for campaign in campaigns.values():
        assert campaign.enabled
        assert campaign.marketplaces == {"ebay", "aliexpress", "shop"}
    follow_up = campaigns["review-follow-up"]
    assert [(s.id, s.template, s.delay_min, s.delay_max) for s in follow_up.steps] == [
        ("check-in", "check_in", timedelta(days=7), timedelta(days=7)),
        ("review-request", "review_request", timedelta(days=35), timedelta(days=35)),
        ("review-reminder", "review_reminder", timedelta(days=10), timedelta(days=15)),
    ]
    assert follow_up.steps[2].trigger == Trigger(step="review-request")
    assert follow_up.send_window == SendWindow(time(9), time(18), frozenset(range(5)))
    thanks = campaigns["review-thanks"].steps[0]
    assert thanks.trigger == Trigger(event=TriggerEvent.REVIEWED, min_rating=4, max_rating=5)
    assert thanks.template == "review_thanks"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("7d", (timedelta(days=7),) * 2),
        ("0", (timedelta(0),) * 2),
        ("1d12h", (timedelta(hours=36),) * 2),
        ("10d..15d", (timedelta(days=10), timedelta(days=15))),
        ("12h .. 1d", (timedelta(hours=12), timedelta(days=1))),
        ("3d..3d", (timedelta(days=3),) * 2),
    ],
)
def test_parse_delay_reads_durations_and_ranges(
    text: str, expected: tuple[timedelta, timedelta]
) -> None:
    assert parse_delay(text) == expected


@pytest.mark.parametrize("text", ["", "7", "7days", "15d..10d", "..5d", "1d..2d..3d", "-1d"])
def test_parse_delay_rejects_malformed_text(text: str) -> None:
    with pytest.raises(ValueError, match=re.escape(repr(text))):
        parse_delay(text)
