"""`worker lint` and `worker check` refuse, by file and line, the campaigns the issue tried:
an Amazon campaign with two review requests on day 2 and a template full of links, and a
template promising a gift card for a 5-star review."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

AMAZON = """name: amazon-reviews
applies_to:
  marketplaces: [amazon]
steps:
  - id: ask
    after: {event: delivered, delay: 2d}
    template: review_request
  - id: ask-again
    after: {event: delivered, delay: 2d}
    template: review_request
"""
LINKS = """{% block subject %}How do you like it?{% endblock %}
{% block text %}Hello,
please review us at https://shop.example/review or {{ order.review_url }}.
Questions: help@shop.example
{% endblock %}
{% block html %}<p><img src="https://shop.example/logo.png"> Review us</p>{% endblock %}
"""
SHOP = """name: shop-reviews
applies_to:
  marketplaces: [shop]
steps:
  - id: ask
    after: {event: delivered, delay: 10d}
    template: gift
"""
GIFT = """{% block subject %}Your order {{ order.number }}{% endblock %}
{% block text %}Hello,
leave us a 5-star review and get a $10 gift card!
To stop receiving these messages, reply with unsubscribe.
{% endblock %}
{% block html %}<p>Leave us a 5-star review and get a $10 gift card!</p>
<p>To stop receiving these messages, reply with unsubscribe.</p>{% endblock %}
"""


def workdir(tmp_path: Path, campaign: str, templates: dict[str, str]) -> dict[str, str]:
    (tmp_path / "campaigns").mkdir()
    (tmp_path / "campaigns" / "x.yaml").write_text(campaign, encoding="utf-8")
    for folder, text in templates.items():
        (tmp_path / "templates" / folder).mkdir(parents=True)
        (tmp_path / "templates" / folder / "en.jinja").write_text(text, encoding="utf-8")
    layout = (ROOT / "templates" / "layout.html.jinja").read_text(encoding="utf-8")
    (tmp_path / "templates" / "layout.html.jinja").write_text(layout, encoding="utf-8")
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "worker.yaml").write_text(
        'from: "Kettle & Co <service@shop.example>"\n'
        "seller: {name: Kettle & Co, signature: Anna}\n",
        encoding="utf-8",
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("WORKER_")}
    env["PYTHONPATH"] = str(ROOT)  # the worktree under test, wherever the venv points
    return env


def worker(tmp_path: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "worker", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_lint_and_check_refuse_the_amazon_campaign_of_the_issue(tmp_path: Path) -> None:
    env = workdir(tmp_path, AMAZON, {"review_request": LINKS})
    lint = worker(tmp_path, env, "lint")
    assert lint.returncode == 1, lint.stderr
    lines = lint.stdout.splitlines()
    assert "campaigns/x.yaml:8: A1 amazon: step 'ask-again' is a second review" in lint.stdout
    assert any(
        line.startswith("campaigns/x.yaml:5: A2 amazon: review request 2d after delivery")
        for line in lines
    )
    assert "templates/review_request/en.jinja:3: A5 amazon: link 'https://shop.example/review'" in (
        lint.stdout
    )
    assert "templates/review_request/en.jinja:3: A5 amazon: the text renders a link" in lint.stdout
    assert "templates/review_request/en.jinja:6: A4 amazon:" in lint.stdout
    assert "templates/review_request/en.jinja:1: A6 amazon:" in lint.stdout
    assert all("(docs/compliance.md#" in line for line in lines)
    assert worker(tmp_path, env, "db", "upgrade").returncode == 0
    check = worker(tmp_path, env, "check")
    assert check.returncode != 0
    assert "campaigns/x.yaml:5: A2 amazon" in check.stderr
    assert "Traceback" not in check.stderr


def test_lint_and_check_refuse_a_gift_card_for_five_stars(tmp_path: Path) -> None:
    env = workdir(tmp_path, SHOP, {"gift": GIFT})
    lint = worker(tmp_path, env, "lint", "--campaigns", "campaigns")
    assert lint.returncode == 1
    assert "templates/gift/en.jinja:3: G2 all: an incentive tied to a review" in lint.stdout
    assert "templates/gift/en.jinja:3: G3 all: asks for a positive or 5-star review" in lint.stdout
    assert "templates/gift/en.jinja:6: G2 all:" in lint.stdout
    assert worker(tmp_path, env, "db", "upgrade").returncode == 0
    check = worker(tmp_path, env, "check")
    assert check.returncode != 0
    assert "templates/gift/en.jinja:3: G2 all" in check.stderr


def test_lint_passes_a_fair_campaign(tmp_path: Path) -> None:
    fair = GIFT.replace(
        "leave us a 5-star review and get a $10 gift card!", "an honest review helps."
    )
    fair = fair.replace("Leave us a 5-star review and get a $10 gift card!", "A review helps.")
    env = workdir(tmp_path, SHOP, {"gift": fair})
    lint = worker(tmp_path, env, "lint")
    assert (lint.returncode, lint.stdout) == (
        0,
        "ok: 1 campaigns, 1 templates, no policy findings\n",
    )
