"""``worker explain ORDER_ID`` and ``worker plan --from DATE --days N``: the terminal side of
worker/rehearsal.py. Read-only: nothing here writes to the database."""

from __future__ import annotations

import argparse
from collections import Counter

from worker import cli
from worker.clock import SystemClock
from worker.config import Settings
from worker.errors import UnknownOrder
from worker.pauses import PAUSED
from worker.rehearsal import Calendar, Explanation, explain, rehearse


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``explain``, and the calendar switches of the existing ``plan``."""
    explaining = commands.add_parser(
        "explain", help="one order's story: each campaign step, what happened, and why"
    )
    explaining.add_argument("order_id")
    explaining.add_argument(
        "--at", "--now", dest="at", type=cli._instant, help="as of this ISO 8601 time"
    )
    explaining.set_defaults(handler=cmd_explain)

    planning = commands.choices["plan"]
    planning.add_argument(
        "--from",
        dest="start",
        type=cli._instant,
        metavar="DATE",
        help="calendar: rehearse the days from DATE (ISO 8601, UTC); nothing is written",
    )
    planning.add_argument(
        "--days", type=_days, default=None, help="calendar: how many days (default 30)"
    )
    planning.add_argument(
        "--orders", action="store_true", help="calendar: list the order ids behind each count"
    )
    planning.set_defaults(handler=cmd_plan_or_calendar)


def _days(text: str) -> int:
    try:
        days = int(text)
    except ValueError:
        days = 0
    if not 1 <= days <= 366:
        raise argparse.ArgumentTypeError(f"{text!r}: give a number of days from 1 to 366")
    return days


def cmd_plan_or_calendar(args: argparse.Namespace, settings: Settings) -> int:
    """``plan`` as before (a snapshot at --at) unless --from or --days ask for the calendar."""
    if args.start is None and args.days is None:
        return cli.cmd_plan(args, settings)
    daemon = cli._daemon(settings, SystemClock())
    start = args.start or daemon.clock.now()
    calendar = rehearse(
        daemon.store.every_history(),
        daemon.campaigns,
        start,
        args.days or 30,
        daemon.policy,
        keep_orders=args.orders,
        paused=daemon.store.pauses(),
    )
    print_calendar(calendar, orders=args.orders)
    return 0


def print_calendar(calendar: Calendar, *, orders: bool) -> None:
    print(
        f"calendar {calendar.start:%Y-%m-%d %H:%M} .. {calendar.end:%Y-%m-%d %H:%M} UTC "
        "(hourly, every due step taken as sent; nothing written)"
    )
    for pause in calendar.paused:
        print(
            f"held all along: {cli._shown(pause.describe())} is paused "
            "(`worker resume` lets what waited go out within its max_lateness)"
        )
    print(f"{'day':10} {'campaign/step':36} {'what':5} {'count':>5}  reason")
    sent: Counter[str] = Counter()
    skipped: Counter[str] = Counter()
    held: Counter[str] = Counter()
    for day in calendar.days():
        rows = [(c, s, "send", "sent", n) for (d, c, s), n in calendar.sent.items() if d == day]
        rows += [(c, s, "skip", r, n) for (d, c, s, r), n in calendar.skipped.items() if d == day]
        rows += [(c, s, "held", PAUSED, n) for (d, c, s), n in calendar.held.items() if d == day]
        for campaign, step, what, reason, count in sorted(rows):
            shown = "" if what == "send" else cli._shown(reason)
            name = cli._shown(f"{campaign}/{step}")
            print(f"{day:%Y-%m-%d} {name:36} {what:5} {count:5}  {shown}")
            if orders:
                ids = calendar.orders[(day, campaign, step, reason)]
                print("    orders: " + ", ".join(cli._shown(i) for i in ids))
            {"send": sent, "skip": skipped, "held": held}[what][f"{campaign}/{step}"] += count
    total = f"total sent {sum(sent.values())}, skipped {sum(skipped.values())}"
    print(total + (f", held by a pause {sum(held.values())}" if held else ""))
    for name in sorted(sent.keys() | skipped.keys() | held.keys()):
        line = f"  {name:36} sent {sent[name]:5}  skipped {skipped[name]:5}"
        print(line + (f"  held {held[name]:5}" if held else ""))


def cmd_explain(args: argparse.Namespace, settings: Settings) -> int:
    daemon = cli._daemon(settings, SystemClock())
    now = args.at or daemon.clock.now()
    histories = daemon.store.buyer_histories(args.order_id)
    if not any(h.order.order_id == args.order_id for h in histories):
        raise UnknownOrder(f"order {cli._shown(args.order_id)!r} is not stored")
    paused = daemon.store.pauses()
    print_explanation(
        explain(histories, args.order_id, daemon.campaigns, now, daemon.policy, paused)
    )
    return 0


def print_explanation(story: Explanation) -> None:
    shown = cli._shown
    print(
        f"order {shown(story.order_id)} ({shown(story.marketplace)}), "
        f"buyer {shown(story.buyer)}, as of {story.now:%Y-%m-%d %H:%M} UTC"
    )
    print("events:")
    for event in story.events:
        at = "-" if event.at is None else f"{event.at:%Y-%m-%d %H:%M}"
        print(f"  {at:16} {shown(event.text)}")
    if not story.events:
        print("  none")
    for campaign in story.campaigns:
        if not campaign.applies:
            print(f"campaign {campaign.campaign}: does not apply: {shown(campaign.why_not)}")
            continue
        print(f"campaign {campaign.campaign}:")
        for step in campaign.steps:
            due = (
                f"{step.due_at:%Y-%m-%d %H:%M}"
                if step.due_at is not None and step.due_at.year < 9999
                else "-"
            )
            print(f"  {step.step:24} due {due:16} {shown(step.happened)}")
            print(f"  {'':24} decided: {step.verdict.value} ({shown(step.reason)})")
            if step.delivery:
                print(f"  {'':24} counted from: {shown(step.delivery)}")
