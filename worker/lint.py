"""`worker lint`: every campaign and template checked against the marketplaces' rules
(docs/compliance.md), one line per finding, so an operator fixes them before start-up does
refuse them."""

from __future__ import annotations

import argparse
from pathlib import Path

from worker.campaign import load_campaigns
from worker.cli import _shown
from worker.compliance import policy_findings
from worker.config import Settings


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    lint = commands.add_parser(
        "lint", help="check campaigns and templates against the marketplaces' policy rules"
    )
    lint.add_argument(
        "--campaigns", type=Path, metavar="DIR", help="campaign folder (default: campaigns_dir)"
    )
    lint.set_defaults(handler=cmd_lint)


def cmd_lint(args: argparse.Namespace, settings: Settings) -> int:
    """Exit 1 on any finding, so a CI step or a deploy script stops there."""
    campaigns = load_campaigns(args.campaigns or settings.campaigns_dir)
    findings = policy_findings(settings, campaigns, args.config)
    for finding in findings:
        print(_shown(str(finding)))
    if findings:
        return 1
    templates = {step.template for campaign in campaigns for step in campaign.steps}
    print(f"ok: {len(campaigns)} campaigns, {len(templates)} templates, no policy findings")
    return 0
