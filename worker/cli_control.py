"""``worker pause``, ``worker resume``, ``worker pauses`` and ``worker report``: an operator
stops sending (all of it, a marketplace's or a campaign's) and measures what each step adds.

A pause is stored, so every worker on the database obeys it within one pass and it survives
restarts (worker/pauses.py); the report compares each step's sent orders with its hold-out
(worker/store_report.py).
"""

from __future__ import annotations

import argparse
from datetime import datetime, timedelta

import worker.cli as cli
from worker import logs
from worker.campaign import load_campaigns
from worker.clock import SystemClock
from worker.config import Settings
from worker.errors import CampaignError
from worker.pauses import BY_LIMIT, REASON_LIMIT, Pause, PauseScope, one_line, scope_of
from worker.store_report import MIN_HOLDOUT, OUTCOMES, Group, StepReport, difference

log = logs.get("worker.cli")

_OUTCOME_NAMES = {
    "replied": "replied",
    "disputed": "disputes",
    "reviewed": "reviews",
    "good_reviews": "4-5 stars",
}


def _by(text: str) -> str:
    try:
        name = one_line(text, BY_LIMIT, "name")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if not name:
        raise argparse.ArgumentTypeError("the name is empty")
    return name


def _reason(text: str) -> str:
    try:
        return one_line(text, REASON_LIMIT, "reason")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _scope_options(parser: argparse.ArgumentParser, verb: str) -> None:
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument("--marketplace", metavar="M", help=f"{verb} only this marketplace's mail")
    scope.add_argument("--campaign", metavar="C", help=f"{verb} only this campaign")


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    pause = commands.add_parser(
        "pause",
        help="stop sending (everything, or one marketplace or campaign) on every worker within "
        "a pass; due mail waits, the mailbox is still read",
    )
    _scope_options(pause, "pause")
    pause.add_argument("--by", type=_by, help="who pauses (default: the account running this)")
    pause.add_argument("--reason", type=_reason, default="", help="why, for the other operators")
    pause.add_argument("--list", action="store_true", help="only list the pauses in force")
    pause.set_defaults(handler=cmd_pause)

    resume = commands.add_parser(
        "resume", help="lift a pause; what waited goes out if still inside its max_lateness"
    )
    _scope_options(resume, "resume")
    resume.add_argument("--all", action="store_true", help="lift every pause in force")
    resume.add_argument("--by", type=_by, help="who resumes (default: the account running this)")
    resume.set_defaults(handler=cmd_resume)

    commands.add_parser(
        "pauses", help="the pauses in force: what, since when, who, why"
    ).set_defaults(handler=cmd_pauses)

    report = commands.add_parser(
        "report",
        help="per campaign step: sent, held out, and the replies, disputes and reviews that "
        "followed, with the message and without",
    )
    report.add_argument(
        "--since",
        type=cli._duration,
        default=timedelta(days=30),
        help="steps sent or held out this long ago or later (default 30d)",
    )
    report.add_argument("--campaign", metavar="C", help="only this campaign")
    report.add_argument("--now", type=cli._instant, help="report as of this ISO 8601 time")
    report.set_defaults(handler=cmd_report)


def _scope(args: argparse.Namespace, settings: Settings) -> tuple[PauseScope, str]:
    try:
        scope, target = scope_of(args.marketplace, args.campaign)
    except ValueError as exc:
        raise CampaignError(str(exc)) from None
    if scope is PauseScope.CAMPAIGN:
        _known_campaign(target, settings)
    return scope, target


def _known_campaign(name: str, settings: Settings) -> None:
    """A campaign name must be one of the files'; if the files cannot be read (the reason
    to pause, perhaps), the name is taken as given."""
    try:
        names = [c.name for c in load_campaigns(settings.campaigns_dir)]
    except CampaignError as exc:
        log.warning("pause.campaigns_unreadable", error=str(exc))
        return
    if name not in names:
        raise CampaignError(
            f"no campaign named {name!r}; the campaigns are: {', '.join(names)}",
            where=str(settings.campaigns_dir),
        )


def _pause_line(pause: Pause) -> str:
    why = f": {cli._shown(pause.reason)}" if pause.reason else ""
    return (
        f"{pause.describe()} paused since {pause.paused_at:%Y-%m-%d %H:%M} UTC by "
        f"{cli._shown(pause.paused_by)}{why}"
    )


def _print_pauses(pauses: list[Pause]) -> None:
    if not pauses:
        print("nothing is paused")
    for pause in pauses:
        print(_pause_line(pause))


def cmd_pauses(args: argparse.Namespace, settings: Settings) -> int:
    _print_pauses(cli._open_store(settings).pauses())
    return 0


def cmd_pause(args: argparse.Namespace, settings: Settings) -> int:
    store = cli._open_store(settings)
    if args.list:
        _print_pauses(store.pauses())
        return 0
    scope, target = _scope(args, settings)
    by = args.by or cli._default_agent()
    done = store.pause(scope, target, by, args.reason, SystemClock().now())
    if not done.new:
        print(f"already: {_pause_line(done.pause)}")
        return 0
    log.warning("pause.added", scope=scope.value, target=target, by=by, reason=args.reason)
    print(
        f"{_pause_line(done.pause)}\n"
        "every worker holds this mail from its next pass (due mail waits, reason paused); "
        "the mailbox is still read. Lift it with `worker resume"
        + (f" --{scope.value} {target}`" if target else "`")
    )
    return 0


def cmd_resume(args: argparse.Namespace, settings: Settings) -> int:
    store = cli._open_store(settings)
    if args.all:
        lifted = [p for p in store.pauses() if store.resume(p.scope, p.target) is not None]
    else:
        scope, target = _scope(args, settings)
        found = store.resume(scope, target)
        lifted = [found] if found is not None else []
    by = args.by or cli._default_agent()
    for pause in lifted:
        log.warning("pause.lifted", scope=pause.scope.value, target=pause.target, by=by)
        print(f"resumed {pause.describe()} (paused by {cli._shown(pause.paused_by)})")
    if not lifted:
        print("that was not paused")
    if remaining := store.pauses():
        print("still paused:")
        _print_pauses(remaining)
    elif lifted:
        print("what waited goes out on the next pass if still inside its max_lateness")
    return 0


def _rate(count: int, group: Group) -> str:
    rate = group.rate(count)
    return f"{count:6} {'' if rate is None else f'{rate:6.1%}':>6}"


def _difference(step: StepReport, outcome: str) -> str:
    found = difference(step, outcome)
    if found is None:
        return f"{'':13}"
    change, margin = found
    return f"{f'{change * 100:+.1f} ±{margin * 100:.1f}':>13}"


def cmd_report(args: argparse.Namespace, settings: Settings) -> int:
    now: datetime = args.now or SystemClock().now()
    since = now - args.since
    steps = cli._open_store(settings).step_report(since, now, args.campaign)
    print(
        f"report from {since:%Y-%m-%d %H:%M} to {now:%Y-%m-%d %H:%M} UTC: orders whose step "
        "was sent or held out then, and what followed it until now"
    )
    if not steps:
        print("nothing was sent or held out in that time")
        return 0
    header = "".join(f"{_OUTCOME_NAMES[o]:>14}" for o in OUTCOMES)
    print(f"{'campaign/step':36} {'group':9} {'orders':>7}{header}")
    for step in steps:
        name = cli._shown(f"{step.campaign}/{step.step}")
        for label, group in (("sent", step.sent), ("held out", step.held_out)):
            counts = "".join(f" {_rate(getattr(group, o), group)}" for o in OUTCOMES)
            print(f"{name:36} {label:9} {group.orders:7}{counts}")
            name = ""
        if step.comparable:
            changes = "".join(f" {_difference(step, o)}" for o in OUTCOMES)
            print(f"{'':36} {'adds pts':9} {'':7}{changes}")
        elif step.held_out.orders == 0:
            print(f"{'':36} no hold-out: nothing to compare (set holdout: 10% on this step)")
        else:
            print(
                f"{'':36} hold-out too small to compare: {step.held_out.orders} orders, "
                f"fewer than {MIN_HOLDOUT}"
            )
    print(
        "adds pts: the sent rate less the held-out rate, in percentage points, ± its 95% "
        "margin; a margin wider than the change means no measurable difference yet"
    )
    return 0
