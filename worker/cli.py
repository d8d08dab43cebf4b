"""The command line: the operator's edge, where errors become one readable line each.

Errors print their chain of causes, root first, one line each; tracebacks only with ``-v``.
Exit codes: 0 done, 1 something failed (a send, a pass, bad rows), 2 unusable input or
configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import getpass
import json
import os
import sys
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

from worker import __version__, logs
from worker.classify import classify
from worker.cli_control import add_commands as add_control_commands
from worker.cli_rehearsal import add_commands as add_rehearsal_commands
from worker.clock import Clock, ShiftedClock, SystemClock
from worker.config import Settings, load_settings, parse_duration
from worker.daemon import (
    Daemon,
    PassReport,
    load_checked_campaigns,
    run_once_until_stopped,
    run_until_stopped,
)
from worker.domain import (
    COMPLAINT_INTENTS,
    Classification,
    Dispute,
    DisputeKind,
    Intent,
    MessageKind,
    Reply,
    Review,
    SendState,
    SuppressionReason,
)
from worker.errors import ConfigError, FeedError, MailboxError, WorkerError
from worker.feeds import (
    Format,
    RejectedRow,
    RejectsFile,
    read_disputes,
    read_order_rows,
    read_reviews,
)
from worker.inbound import InboundMessage, parse
from worker.ingest import Ingest, parse_limits, unsubscribe_only
from worker.intent_remote import intent_reader
from worker.origin import Origin, judge
from worker.plan import Verdict
from worker.render import Renderer, TemplateRunner
from worker.return_path import Signer, load_signer
from worker.rules import load_rules
from worker.shipments import read_shipments
from worker.signals import on_stop
from worker.sink import RejectRule, SinkOptions, serve
from worker.store import DisputeRow, InboundRow, SoftBounceRule, Store, UpsertCount
from worker.store_disputes import agent_name
from worker.store_orders import UNKNOWN_IDS_SHOWN
from worker.terminal import printable
from worker.unsubscribe import OneClick, SecretMissing, secret_from

T = TypeVar("T")
log = logs.get("worker.cli")


def _instant(text: str) -> datetime:
    """``--now``/``--at`` values: ISO 8601; a value without offset is UTC."""
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO 8601 time like 2026-03-20T10:00:00Z"
        ) from exc
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _duration(text: str) -> timedelta:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _reject_rule(text: str) -> RejectRule:
    try:
        return RejectRule.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not a fraction between 0 and 1")
    return value


def _intents(text: str) -> list[Intent]:
    """``--intent`` values: one intent or a comma list, each a name ``Intent`` knows."""
    chosen = []
    for name in filter(None, (part.strip() for part in text.split(","))):
        try:
            chosen.append(Intent(name))
        except ValueError:
            known = ", ".join(i.value for i in Intent)
            raise argparse.ArgumentTypeError(
                f"{printable(name)!r} is not an intent; one of: {known}"
            ) from None
    if not chosen:
        raise argparse.ArgumentTypeError("no intent named")
    return chosen


def _agent(text: str) -> str:
    try:
        return agent_name(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _default_agent() -> str:
    """Who answers a dispute when ``--by`` does not say: the account running the command."""
    try:
        return agent_name(getpass.getuser())
    except (OSError, KeyError, ValueError):
        return "agent"


def add_resolve_arguments(resolve: argparse.ArgumentParser) -> None:
    """``SEND_ID --sent|--not-sent``: ``worker sends resolve`` and ``worker in-doubt resolve``."""
    resolve.add_argument("send_id", type=int, help="the id `worker in-doubt list` shows")
    outcome = resolve.add_mutually_exclusive_group(required=True)
    outcome.add_argument("--sent", action="store_true", help="the relay took it: mark it sent")
    outcome.add_argument(
        "--not-sent", action="store_true", help="it never left: mark it failed, not re-sent"
    )
    resolve.add_argument(
        "--by", type=_agent, help="who decided (default: the account running this)"
    )
    resolve.set_defaults(handler=cmd_sends_resolve)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="worker",
        description="After-sales e-mail for online sellers: check-ins, review requests, one "
        "reminder and thank-yous, never to a buyer with an open dispute.",
        epilog="Settings come from config/worker.yaml; every one can be overridden by WORKER_* "
        "environment variables (see the README). -v shows tracebacks.",
    )
    parser.add_argument("--version", action="version", version=f"worker {__version__}")
    parser.add_argument(
        "-c",
        "--config",
        type=Path,
        help="settings file (env WORKER_CONFIG; default config/worker.yaml)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logs and tracebacks")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    from worker.lint import add_commands as add_lint_commands  # it imports cli's helpers

    add_lint_commands(commands)

    run = commands.add_parser("run", help="the daemon: plan, send, sleep, repeat")
    run.add_argument(
        "--once", action="store_true", help="one pass, then exit; non-zero if anything failed"
    )
    run.add_argument(
        "--now", type=_instant, help="pretend the clock starts at this ISO 8601 time (rehearsals)"
    )
    run.set_defaults(handler=cmd_run)

    plan = commands.add_parser(
        "plan", help="dry run: what would be sent, and why the rest would not"
    )
    plan.add_argument(
        "--at", "--now", dest="at", type=_instant, help="plan at this ISO 8601 time (default: now)"
    )
    plan.add_argument("--all", action="store_true", help="also list steps already sent or skipped")
    plan.add_argument("--order", help="only this order")
    plan.set_defaults(handler=cmd_plan)

    sends = commands.add_parser("sends", help="what went out, what was skipped or failed, and why")
    sends.add_argument(
        "--state",
        action="append",
        choices=[s.value for s in SendState],
        help="only these states (repeatable)",
    )
    sends.add_argument(
        "--summary", action="store_true", help="counts per campaign, step and state only"
    )
    sends.set_defaults(handler=cmd_sends)
    send_actions = sends.add_subparsers(dest="sends_action", metavar="ACTION")
    requeue = send_actions.add_parser(
        "requeue",
        help="an in_doubt send you found NOT delivered (relay log): send it again on the next pass",
    )
    requeue.add_argument("send_id", type=int, help="the id `worker sends --state in_doubt` shows")
    requeue.set_defaults(handler=cmd_sends_requeue)
    resolve = send_actions.add_parser(
        "resolve", help="record what the relay's log says about an in_doubt send; sends nothing"
    )
    add_resolve_arguments(resolve)

    check = commands.add_parser(
        "check", help="validate settings, database schema, campaigns and templates"
    )
    check.set_defaults(handler=cmd_check)

    sink = commands.add_parser("sink", help="a test SMTP server writing every message to a Maildir")
    sink.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    sink.add_argument("--port", type=int, default=8025, help="listen port (default 8025)")
    sink.add_argument(
        "--maildir",
        type=Path,
        default=Path("var/sink"),
        help="Maildir to write to (default var/sink)",
    )
    sink.add_argument(
        "--reject",
        type=_reject_rule,
        action="append",
        default=[],
        metavar="PATTERN=CODE TEXT",
        help="refuse matching recipients, e.g. 'bad*@example.com=550 5.1.1 User unknown' "
        "(repeatable)",
    )
    sink.add_argument(
        "--fail-rate",
        type=_fraction,
        default=0.0,
        help="fraction of recipients refused with --fail-code",
    )
    sink.add_argument(
        "--fail-code", type=int, default=451, help="code for --fail-rate refusals (default 451)"
    )
    sink.add_argument(
        "--fail-text",
        default=SinkOptions().fail_text,
        help="text for --fail-rate refusals (default '%(default)s')",
    )
    sink.add_argument("--seed", type=int, help="seed for --fail-rate, for repeatable rehearsals")
    sink.add_argument(
        "--drop-after-data",
        metavar="PATTERN",
        help="hang up after the final '.' for matching recipients",
    )
    sink.set_defaults(handler=cmd_sink)

    db = commands.add_parser("db", help="database schema")
    db_commands = db.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    db_commands.add_parser("upgrade", help="apply pending migrations").set_defaults(
        handler=cmd_db_upgrade
    )
    db_commands.add_parser("status", help="current and latest schema revision").set_defaults(
        handler=cmd_db_status
    )

    imports = commands.add_parser(
        "import", help="import orders, disputes, reviews or shipments from CSV, TSV or JSONL"
    )
    what = imports.add_subparsers(dest="import_kind", required=True, metavar="KIND")
    orders = what.add_parser(
        "orders", help="orders (upsert: a known order takes a row only if it is as new or newer)"
    )
    orders.add_argument("file", type=Path)
    orders.add_argument(
        "--format",
        type=Format,
        choices=list(Format),
        default=Format.GENERIC,
        help="column layout (default generic; see docs/order-feeds.md)",
    )
    orders.add_argument(
        "--replace",
        action="store_true",
        help="take every row as the truth, even one older than what is stored (a correction)",
    )
    orders.set_defaults(handler=cmd_import_orders)
    disputes = what.add_parser("disputes", help="disputes: order_id, kind, opened_at, closed_at")
    disputes.add_argument("file", type=Path)
    disputes.set_defaults(handler=cmd_import_disputes)
    reviews = what.add_parser("reviews", help="reviews: order_id, rating, reviewed_at")
    reviews.add_argument("file", type=Path)
    reviews.set_defaults(handler=cmd_import_reviews)
    shipments = what.add_parser(
        "shipments",
        help="parcel tracking: order_id, carrier, tracking_number, status, at (see "
        "docs/delivery.md); updates known orders, never blanks a field",
    )
    shipments.add_argument("file", type=Path)
    shipments.set_defaults(handler=cmd_import_shipments)

    dispute = commands.add_parser("dispute", help="open or close a dispute by hand")
    dispute_actions = dispute.add_subparsers(dest="dispute_action", required=True, metavar="ACTION")
    opening = dispute_actions.add_parser(
        "open", help="open a dispute: every campaign pauses for this buyer"
    )
    opening.add_argument("order_id")
    opening.add_argument(
        "--kind", type=DisputeKind, choices=list(DisputeKind), default=DisputeKind.COMPLAINT
    )
    opening.add_argument("--at", type=_instant, help="when it was opened (default now)")
    opening.set_defaults(handler=cmd_dispute_open)
    closing = dispute_actions.add_parser(
        "close", help="close the order's open disputes; mail resumes after the cool-down"
    )
    closing.add_argument("order_id")
    closing.add_argument("--at", type=_instant, help="when it was closed (default now)")
    closing.set_defaults(handler=cmd_dispute_close)

    reviewing = commands.add_parser(
        "disputes", help="disputes as agents review them: list, confirm or dismiss by id"
    )
    reviewing_actions = reviewing.add_subparsers(
        dest="disputes_action", required=True, metavar="ACTION"
    )
    listing = reviewing_actions.add_parser(
        "list", help="open disputes, oldest first, with the buyer's words that opened them"
    )
    listing.add_argument(
        "--needs-review",
        action="store_true",
        help="only those opened on an unsure reading that no agent has answered",
    )
    listing.add_argument("--all", action="store_true", help="closed and dismissed ones as well")
    listing.set_defaults(handler=cmd_disputes_list)
    for action, helped in (
        ("confirm", "it is a complaint: keep it open (campaigns stay paused) and off the list"),
        ("dismiss", "it was no complaint: close it now; the buyer's mail resumes at once"),
    ):
        answer = reviewing_actions.add_parser(action, help=helped)
        answer.add_argument("dispute_id", type=int, metavar="ID", help="as `disputes list` shows")
        answer.add_argument(
            "--by", type=_agent, help="the agent answering (default: the account running this)"
        )
        answer.add_argument("--at", type=_instant, help="when (default now)")
        answer.set_defaults(handler=cmd_disputes_answer)

    review = commands.add_parser("review", help="record a review by hand")
    review_actions = review.add_subparsers(dest="review_action", required=True, metavar="ACTION")
    adding = review_actions.add_parser("add", help="record that the buyer reviewed the order")
    adding.add_argument("order_id")
    adding.add_argument("--rating", type=int, choices=range(1, 6), required=True, metavar="1..5")
    adding.add_argument("--at", type=_instant, help="when it was posted (default now)")
    adding.add_argument("--source", default="manual", help="where it was posted (default manual)")
    adding.set_defaults(handler=cmd_review_add)

    ingest = commands.add_parser(
        "ingest", help="read the mailbox: classify and thread every new message"
    )
    ingest.add_argument(
        "--once",
        action="store_true",
        required=True,
        help="read every folder up to date, then exit (`worker run` keeps reading)",
    )
    ingest.set_defaults(handler=cmd_ingest)

    classifying = commands.add_parser(
        "classify", help="classify message files as the mailbox reader would; one JSON line each"
    )
    classifying.add_argument(
        "files", nargs="*", default=["-"], metavar="FILE", help="messages; - or none: stdin"
    )
    classifying.set_defaults(handler=cmd_classify)

    thread = commands.add_parser("thread", help="an order's conversation, oldest first")
    thread.add_argument("order_id")
    thread.add_argument("--full", action="store_true", help="whole message texts, not a preview")
    thread.set_defaults(handler=cmd_thread)

    inbox = commands.add_parser("inbox", help="messages read from the mailbox")
    shown = inbox.add_mutually_exclusive_group()
    shown.add_argument(
        "--awaiting",
        action="store_true",
        help="conversations whose last word is the buyer's and older than --older-than",
    )
    shown.add_argument(
        "--unmatched", action="store_true", help="messages not tied to any order, for agents"
    )
    inbox.add_argument(
        "--older-than",
        type=_duration,
        help="with --awaiting (env WORKER_INBOX_AWAITING_AFTER; default 24h)",
    )
    inbox.add_argument(
        "--kind", action="append", type=MessageKind, choices=list(MessageKind), help="only these"
    )
    inbox.add_argument(
        "--intent",
        action="extend",
        type=_intents,
        metavar="NAME[,NAME]",
        help="only messages the intent reader tagged so (repeatable), e.g. where_is_my_order",
    )
    inbox.add_argument(
        "--urgent",
        action="store_true",
        help="complaints first, then where_is_my_order, address_change, cancel_before_shipping, "
        "then the rest; newest first within each",
    )
    inbox.add_argument("--now", type=_instant, help="judge ages at this ISO 8601 time")
    inbox.set_defaults(handler=cmd_inbox)
    inbox_actions = inbox.add_subparsers(dest="inbox_action", metavar="ACTION")
    assign = inbox_actions.add_parser(
        "assign", help="file an unmatched message under an order; it then acts as if threaded"
    )
    assign.add_argument("message", type=int, help="the id `worker inbox --unmatched` shows")
    assign.add_argument("order_id")
    assign.set_defaults(handler=cmd_inbox_assign)

    reply = commands.add_parser(
        "reply", help="record that a buyer wrote back (stops steps with unless: [replied])"
    )
    reply_actions = reply.add_subparsers(dest="reply_action", required=True, metavar="ACTION")
    reply_add = reply_actions.add_parser("add", help="record a buyer reply")
    reply_add.add_argument("order_id")
    reply_add.add_argument("--at", type=_instant, help="when the buyer wrote (default now)")
    reply_add.set_defaults(handler=cmd_reply_add)
    add_rehearsal_commands(commands)
    from worker.cli_operator import add_commands as operator_commands  # it imports this module

    operator_commands(commands)
    add_control_commands(commands)
    return parser


# Commands --------------------------------------------------------------------------------------


def _open_store(settings: Settings, *, check: bool = True) -> Store:
    store = Store.open(settings.database_url)
    if check:
        store.check_schema()
    return store


def _mailboxes(
    settings: Settings, store: Store, clock: Clock, signer: Signer | None = None
) -> list[Ingest]:
    """A reader per configured mailbox (``imap`` first); the mail rules are checked here."""
    if not settings.every_mailbox:
        return []
    rules = load_rules(settings.inbox.rules_file)
    signer = signer or load_signer(settings)
    return [
        Ingest(settings, store, rules, clock, signer=signer, imap=imap)
        for _name, imap in settings.every_mailbox
    ]


def _daemon(settings: Settings, clock: Clock) -> Daemon:
    store = _open_store(settings)
    renderer = Renderer(settings.templates_dir, settings.default_locale)
    campaigns = load_checked_campaigns(settings, renderer)
    signer = load_signer(settings)  # one key signs what goes out and checks what comes back
    mailboxes = _mailboxes(settings, store, clock, signer)
    runner = TemplateRunner.from_settings(settings)  # its process starts with the first pass
    return Daemon(
        settings,
        store,
        campaigns,
        renderer,
        clock,
        mailboxes=mailboxes,
        signer=signer,
        runner=runner,
        one_click=_one_click(settings),
    )


def _one_click(settings: Settings) -> OneClick | None:
    """The key for ``unsubscribe.url``'s ``{token}``, when the URL has one and it is set."""
    if not settings.unsubscribe.one_click:
        return None
    try:
        return OneClick(secret_from(os.environ, settings.unsubscribe.secret_env))
    except SecretMissing:
        return None


def _require_one_click(settings: Settings) -> None:
    """A ``{token}`` URL without its key would leave every message without one-click."""
    if not settings.unsubscribe.one_click:
        return
    try:
        secret_from(os.environ, settings.unsubscribe.secret_env)
    except SecretMissing as exc:
        raise ConfigError(
            f"unsubscribe.url holds {{token}} but {exc} (unsubscribe.secret_env)",
            where="unsubscribe.url",
        ) from None


def unsubscribe_warnings(settings: Settings) -> list[str]:
    """Why buyers could not unsubscribe: neither form of List-Unsubscribe is received."""
    by_mail = bool(settings.every_mailbox)
    by_url = settings.unsubscribe.url is not None and (
        not settings.unsubscribe.one_click or settings.http.enabled
    )
    if by_mail or by_url:
        return []
    return [
        "no one can receive an unsubscribe: no mailbox is read (imap/mailboxes) for "
        f"mailto:{settings.unsubscribe.mailto or settings.reply_address}, and no one-click "
        "URL is served (set unsubscribe.url to https://.../unsubscribe/{token} with "
        "http.enabled and the key in the environment); see docs/operations.md"
    ]


def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    _require_one_click(settings)
    clock: Clock = ShiftedClock(args.now) if args.now else SystemClock()
    daemon = _daemon(settings, clock)
    with daemon.store.sole_worker():
        return _run(args, settings, daemon)


def _run(args: argparse.Namespace, settings: Settings, daemon: Daemon) -> int:
    if args.once:

        async def once() -> PassReport:
            stop = asyncio.Event()
            async with _rendering(daemon):
                with on_stop(stop):
                    return await run_once_until_stopped(daemon, stop, settings.shutdown_timeout_s)

        report = asyncio.run(once())
        _print_outcomes(report.outcomes, report.waiting)
        if report.relay_down:
            print(f"relay down, sending stopped; the rest waits: {_shown(report.relay_down)}")
        return 0 if report.ok else 1

    async def forever() -> None:
        stop = asyncio.Event()
        async with _rendering(daemon):
            with on_stop(stop):
                await run_until_stopped(daemon, stop, settings.shutdown_timeout_s)

    asyncio.run(forever())
    return 0


@contextlib.asynccontextmanager
async def _rendering(daemon: Daemon) -> AsyncIterator[None]:
    """The rendering process lives as long as the loop that talks to it."""
    if daemon.runner is None:
        yield
        return
    async with daemon.runner:
        yield


def _print_outcomes(outcomes: Counter[str], waiting: Counter[str]) -> None:
    done = ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items()) if v) or "nothing due"
    waits = ", ".join(f"{k} {v}" for k, v in waiting.most_common())
    print(f"pass: {done}" + (f"; waiting: {waits}" if waits else ""))


def cmd_plan(args: argparse.Namespace, settings: Settings) -> int:
    """Streamed: a batch of buyers at a time (in address order), each batch sorted by verdict
    and time, so a store of any size prints in constant memory."""
    daemon = _daemon(settings, SystemClock())
    now = args.at or daemon.clock.now()
    order = {Verdict.DUE: 0, Verdict.SKIP: 1, Verdict.WAIT: 2, Verdict.DONE: 3}
    counts: Counter[str] = Counter()
    print(f"plan at {now.isoformat()}")
    print(f"{'verdict':7} {'order':22} {'campaign/step':36} {'at (UTC)':17} reason")
    for batch, histories in daemon.plan_batches_with_histories(now):
        counts.update(d.verdict.value for d in batch.decisions)
        shown = [
            d
            for d in batch.decisions
            if (args.all or d.verdict is not Verdict.DONE)
            and (args.order is None or d.order_id == args.order)
        ]
        shown.sort(key=lambda d: (order[d.verdict], d.at or now, d.order_id, d.campaign))
        for d in shown:
            at = d.at.strftime("%Y-%m-%d %H:%M") if d.at and d.at.year < 9999 else "-"
            delivery = f" [{d.delivery.describe()}]" if d.delivery is not None else ""
            language = ""
            if d.verdict in (Verdict.DUE, Verdict.WAIT) and d.order_id in histories:
                language = (
                    f"  language {daemon.language(histories[d.order_id], d.campaign, d.step)}"
                )
            print(
                f"{d.verdict.value:7} {d.order_id:22} {d.campaign + '/' + d.step:36} {at:17} "
                f"{d.reason}{delivery}{language}"
            )
    print("total: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    return 0


def cmd_sends(args: argparse.Namespace, settings: Settings) -> int:
    store = _open_store(settings)
    if args.summary:
        counts = Counter(
            (r.campaign, r.step, r.state.value, r.reason.split(":")[0]) for r in store.sends()
        )
        print(f"{'campaign/step':36} {'state':9} {'count':>5}  reason")
        for (campaign, step, state, reason), count in sorted(counts.items()):
            shown = _shown(reason) if state in ("skipped", "failed") else ""
            print(f"{campaign + '/' + step:36} {state:9} {count:5}  {shown}")
        return 0
    states = [SendState(s) for s in args.state] if args.state else None
    print(
        f"{'id':>6} {'state':9} {'order':22} {'campaign/step':36} {'due (UTC)':17} "
        "reason / message-id"
    )
    for row in store.sends(states):
        # A relay's reply or a feed's order id is a stranger's text too.
        detail = _shown(row.reason or row.message_id or "")
        if row.state is SendState.IN_DOUBT and row.message_id:
            detail = f"{detail} {row.message_id}" if row.reason else detail
        print(
            f"{row.id:6} {row.state.value:9} {_shown(row.order_id):22} "
            f"{row.campaign + '/' + row.step:36} {row.due_at:%Y-%m-%d %H:%M} {detail}"
        )
    return 0


def cmd_sends_requeue(args: argparse.Namespace, settings: Settings) -> int:
    store = _open_store(settings)
    row = store.requeue(args.send_id, SystemClock().now())
    log.warning("send.requeued", send_id=row.id, order=row.order_id, step=row.step, by="operator")
    print(f"send {row.id} ({_shown(row.order_id)} {row.campaign}/{row.step}) is scheduled again")
    return 0


def cmd_sends_resolve(args: argparse.Namespace, settings: Settings) -> int:
    store = _open_store(settings)
    by = args.by or _default_agent()
    row = store.resolve(args.send_id, sent=args.sent, now=SystemClock().now(), by=by)
    log.warning("send.resolved", send_id=row.id, order=row.order_id, state=row.state.value, by=by)
    print(f"send {row.id} ({_shown(row.order_id)} {row.campaign}/{row.step}) is now {row.state}")
    return 0


def cmd_check(args: argparse.Namespace, settings: Settings) -> int:
    _require_one_click(settings)
    daemon = _daemon(settings, SystemClock())
    steps = sum(len(c.steps) for c in daemon.campaigns)
    mail = "no mailbox"
    if daemon.mailboxes:
        for mailbox in daemon.mailboxes:
            asyncio.run(_try_login(mailbox))
        names = ", ".join(m.name for m in daemon.mailboxes)
        mail = f"mailbox {names} reachable, mail rules valid"
    elif settings.inbox.rules_file.exists():
        load_rules(settings.inbox.rules_file)
        mail = "no mailbox (mail rules valid)"
    print(
        f"ok: settings, schema {daemon.store.current_revision()}, "
        f"{len(daemon.campaigns)} campaigns with {steps} steps, every template renders, {mail}"
    )
    for warning in unsubscribe_warnings(settings):
        print(f"warning: {_shown(warning)}")
    return 0


async def _try_login(ingest: Ingest) -> None:
    mailbox = ingest.new_mailbox()
    try:
        await mailbox.connect()
        for folder in ingest.imap.folders:
            await mailbox.select(folder)
    except MailboxError as exc:
        if exc.where is not None:
            raise
        raise MailboxError(exc.detail, where=ingest.name) from exc
    finally:
        await mailbox.close()


def cmd_sink(args: argparse.Namespace, settings: Settings) -> int:
    options = SinkOptions(
        host=args.host,
        port=args.port,
        maildir=args.maildir,
        reject=tuple(args.reject),
        fail_rate=args.fail_rate,
        fail_code=args.fail_code,
        fail_text=args.fail_text,
        seed=args.seed,
        drop_after_data=args.drop_after_data,
    )

    async def main() -> None:
        stop = asyncio.Event()
        with on_stop(stop):
            await serve(options, stop, sys.stdout)

    asyncio.run(main())
    return 0


def cmd_db_upgrade(args: argparse.Namespace, settings: Settings) -> int:
    store = _open_store(settings, check=False)
    before, after = store.upgrade()
    print(
        f"database {store.where}: "
        + (f"upgraded {before or 'empty'} -> {after}" if before != after else f"already at {after}")
    )
    return 0


def cmd_db_status(args: argparse.Namespace, settings: Settings) -> int:
    store = _open_store(settings, check=False)
    current, head = store.current_revision(), store.head_revision()
    print(f"database {store.where}: at {current or 'empty'}, latest {head}")
    return 0 if current == head else 1


def _import(
    path: Path,
    rows: Iterator[T | RejectedRow],
    upsert: Callable[[Iterable[T]], UpsertCount],
    fmt: Format = Format.GENERIC,
) -> int:
    """One file, one transaction: if the file fails as a whole (not UTF-8, the database gone),
    nothing of it is stored and the previous rejects file stays."""
    try:
        with RejectsFile(path, fmt=fmt) as rejects, _few_collections():

            def good() -> Iterator[T]:
                for row in rows:
                    if isinstance(row, RejectedRow):
                        rejects.add(row)
                        print(f"{path}:{row.line}: {row.reason}", file=sys.stderr)
                    else:
                        yield row

            count = upsert(good())
    except WorkerError as exc:
        raise type(exc)(f"{exc.detail}; nothing was imported", where=exc.where) from exc
    line = f"{path}: {count.inserted} new, {count.updated} updated, {rejects.count} rejected"
    if rejects.count:
        line += f" (written to {rejects.path})"
    if count.unknown:
        shown = ", ".join(repr(key) for key in count.unknown_ids[:UNKNOWN_IDS_SHOWN])
        more = ", ..." if len(count.unknown_ids) > UNKNOWN_IDS_SHOWN else ""
        line += (
            f"; {count.unknown} about orders not stored, left out ({shown}{more}; import "
            "them first with `worker import orders`)"
        )
    if count.older:
        line += (
            f"; {count.older} older than what is stored, left as they are "
            "(--replace takes them anyway)"
        )
    print(line)
    return 1 if rejects.count else 0


IMPORT_GC_THRESHOLD = 100_000
"""Allocations between two runs of the cycle collector during an import (Python's default:
700)."""


@contextlib.contextmanager
def _few_collections() -> Iterator[None]:
    """An import allocates a few objects per cell, freed by reference counting as soon as a
    batch is written; the cycle collector would otherwise scan each batch in flight again and
    again (a tenth of an import's time). It still runs, rarely; the process's own setting is
    back when the import ends."""
    before = gc.get_threshold()
    gc.set_threshold(IMPORT_GC_THRESHOLD, *before[1:])
    try:
        yield
    finally:
        gc.set_threshold(*before)


def _progress() -> bool:
    return sys.stderr.isatty()


def cmd_import_orders(args: argparse.Namespace, settings: Settings) -> int:
    store = _open_store(settings)
    now = SystemClock().now()
    rows = read_order_rows(args.file, args.format, progress=_progress())
    return _import(
        args.file,
        rows,
        lambda orders: store.upsert_orders(orders, now, force=args.replace),
        args.format,
    )


def _known_order(store: Store) -> Callable[[Dispute | Review], str | None]:
    def check(item: Dispute | Review) -> str | None:
        if store.has_order(item.order_id):
            return None
        return f"no order {item.order_id!r}; import it first with `worker import orders`"

    return check


def cmd_import_disputes(args: argparse.Namespace, settings: Settings) -> int:
    store = _open_store(settings)
    rows = read_disputes(args.file, progress=_progress(), check=_known_order(store))
    return _import(args.file, rows, store.upsert_disputes)


def cmd_import_reviews(args: argparse.Namespace, settings: Settings) -> int:
    store = _open_store(settings)
    rows = read_reviews(args.file, progress=_progress(), check=_known_order(store))
    return _import(args.file, rows, store.upsert_reviews)


def cmd_import_shipments(args: argparse.Namespace, settings: Settings) -> int:
    store = _open_store(settings)
    now = SystemClock().now()
    rows = read_shipments(args.file, progress=_progress())
    return _import(args.file, rows, lambda items: store.upsert_shipments(items, now))


def cmd_dispute_open(args: argparse.Namespace, settings: Settings) -> int:
    store = _open_store(settings)
    at = args.at or SystemClock().now()
    store.open_dispute(args.order_id, args.kind, at)
    print(
        f"order {args.order_id}: {args.kind.value} dispute open since {at.isoformat()}; "
        "campaigns paused for this buyer"
    )
    return 0


def cmd_dispute_close(args: argparse.Namespace, settings: Settings) -> int:
    store = _open_store(settings)
    at = args.at or SystemClock().now()
    closed = store.close_disputes(args.order_id, at)
    resume = at + settings.dispute_cooldown
    print(
        f"order {args.order_id}: closed {closed} dispute(s); "
        f"mail may resume from {resume.isoformat()}"
    )
    return 0 if closed else 1


def cmd_disputes_list(args: argparse.Namespace, settings: Settings) -> int:
    store = _open_store(settings)
    rows = store.disputes(needs_review=args.needs_review, every=args.all)
    which = "awaiting review" if args.needs_review else ("in all" if args.all else "open")
    print(f"{len(rows)} dispute(s) {which}")
    if rows:
        print(
            f"{'id':>5} {'opened (UTC)':16} {'kind':18} {'review':14} {'order':22} buyer / source"
        )
    for row in rows:
        print(
            f"{row.id:5} {row.opened_at:%Y-%m-%d %H:%M} {row.kind.value:18} "
            f"{_review_state(row):14} {_shown(row.order_id):22} {_shown(row.buyer)}  "
            f"{_shown(row.source)}"
        )
        if row.words or row.evidence:
            print(f"      {_opening(row)}")
    return 0


def _review_state(row: DisputeRow) -> str:
    if row.needs_review:
        return "NEEDS REVIEW"
    if row.review is not None:
        return row.review
    return "closed" if row.closed_at is not None else "open"


def _opening(row: DisputeRow) -> str:
    """What opened it, for an agent deciding: the buyer's first words, then why they were read
    so (the intent, how sure, the evidence)."""
    intent = row.intent.value if row.intent else ""
    if intent and row.confidence is not None:
        intent = f"{intent} {row.confidence:.2f}"
    said = "; ".join(part for part in (intent, _preview(row.evidence, 80)) if part)
    words = f'"{_preview(row.words, 80)}"' if row.words else ""
    return " ".join(part for part in (words, f"({said})" if said else "") if part)


def cmd_disputes_answer(args: argparse.Namespace, settings: Settings) -> int:
    store = _open_store(settings)
    at = args.at or SystemClock().now()
    by = args.by or _default_agent()
    if args.disputes_action == "confirm":
        row = store.confirm_dispute(args.dispute_id, by, at)
        print(
            f"dispute {row.id} ({row.kind.value}, order {_shown(row.order_id)}) confirmed by "
            f"{_shown(by)}: it stays open, campaigns stay paused for {_shown(row.buyer)}"
        )
        return 0
    row = store.dismiss_dispute(args.dispute_id, by, at)
    print(
        f"dispute {row.id} ({row.kind.value}, order {_shown(row.order_id)}) dismissed by "
        f"{_shown(by)} and closed at {at.isoformat()}: mail to {_shown(row.buyer)} resumes at "
        "once, with no cool-down"
    )
    return 0


def cmd_review_add(args: argparse.Namespace, settings: Settings) -> int:
    store = _open_store(settings)
    at = args.at or SystemClock().now()
    store.upsert_reviews([Review(args.order_id, args.rating, at, args.source)])
    print(f"order {args.order_id}: {args.rating}-star review recorded at {at.isoformat()}")
    return 0


def cmd_ingest(args: argparse.Namespace, settings: Settings) -> int:
    store = _open_store(settings)
    mailboxes = _mailboxes(settings, store, SystemClock())
    if not mailboxes:
        raise ConfigError(
            "no mailbox configured: set imap.host (WORKER_IMAP_HOST) or name some under mailboxes"
        )
    for ingest in mailboxes:
        report = asyncio.run(ingest.run_once())
        kinds = ", ".join(f"{k} {n}" for k, n in report.stored.most_common()) or "nothing new"
        print(
            f"{_shown(ingest.name)}: {report.total} stored ({kinds}); {report.unmatched} "
            f"unmatched, {report.duplicates} already stored, {report.with_errors} with parse "
            f"errors, {report.withheld} acting on nothing they asked for (see worker inbox)"
        )
    return 0


def cmd_classify(args: argparse.Namespace, settings: Settings) -> int:
    """What the mailbox reader would make of each message, with no database: one JSON line
    per file, in order. ``suppress`` is what the content alone would suppress; the worker
    also needs proof that a report is about one of our sends (``needs``)."""
    rules = load_rules(settings.inbox.rules_file)
    limits = parse_limits(settings)
    reader = intent_reader(settings.intents)
    failed = 0
    for name in args.files:
        try:
            raw = sys.stdin.buffer.read() if name == "-" else Path(name).read_bytes()
        except OSError as exc:  # one unreadable file is reported; the others are read
            failed += 1
            print(json.dumps({"file": name, "error": str(exc)}), flush=True)
            continue
        message = parse(raw, limits=limits)
        verdict = classify(
            message,
            rules,
            seller_addresses=settings.seller_addresses,
            unsubscribe_addresses=unsubscribe_only(settings),
            reader=reader,
        )
        origin = judge(message, settings.authentication.authserv_ids)
        print(json.dumps({"file": name, **_verdict_fields(message, verdict, origin)}), flush=True)
    return 1 if failed else 0


_SUPPRESSES = {
    MessageKind.BOUNCE_HARD: SuppressionReason.HARD_BOUNCE,
    MessageKind.SPAM_COMPLAINT: SuppressionReason.SPAM_COMPLAINT,
    MessageKind.UNSUBSCRIBE: SuppressionReason.UNSUBSCRIBE,
}


def _verdict_fields(
    message: InboundMessage, verdict: Classification, origin: Origin
) -> dict[str, object]:
    reported = verdict.bounce.recipient if verdict.bounce else ""
    who = message.sender if verdict.kind is MessageKind.UNSUBSCRIBE else reported
    reason = _SUPPRESSES.get(verdict.kind) if who else None
    fields: dict[str, object] = {
        "kind": verdict.kind.value,
        "evidence": verdict.evidence,
        "suppress": who if reason else None,
        "reason": reason.value if reason else None,
        "authentication": {"verified_domain": origin.verified_domain, "evidence": origin.evidence},
        "defects": list(message.errors),
    }
    if verdict.intent is not None:
        fields["intent"] = verdict.intent.value
        fields["confidence"] = verdict.confidence
        fields["needs_review"] = verdict.needs_review
    if reason in (SuppressionReason.HARD_BOUNCE, SuppressionReason.SPAM_COMPLAINT):
        fields["needs"] = "our return-path token or Message-ID"
    if verdict.kind is MessageKind.DELIVERED:
        fields["carrier"] = verdict.carrier
        fields["tracking_numbers"] = list(verdict.tracking_numbers)
        fields["needs"] = "the carrier's authenticated From domain and a number an order holds"
    return fields


def _shown(text: str, *, keep_newlines: bool = False) -> str:
    """Mail text on an agent's terminal: characters, never escape sequences or bidi tricks."""
    return printable(text, keep_newlines=keep_newlines)


def _preview(text: str, width: int = 100) -> str:
    flat = printable(" ".join(text.split()))
    return flat if len(flat) <= width else flat[: width - 3] + "..."


def cmd_thread(args: argparse.Namespace, settings: Settings) -> int:
    store = _open_store(settings)
    order = store.order(args.order_id)
    entries = store.conversation(args.order_id)
    print(
        f"order {_shown(order.order_id)} ({_shown(order.marketplace)}), "
        f"buyer {_shown(order.buyer_email)}"
    )
    for entry in entries:
        arrow = "<-" if entry.direction == "in" else "->"
        tag = ""
        if entry.intent is not None:
            sure = f" {entry.confidence:.2f}" if entry.confidence is not None else ""
            tag = f"[{entry.intent.value}{sure}] "
        print(
            f"{entry.at:%Y-%m-%d %H:%M} {arrow} {_shown(entry.label):20} {tag}{_shown(entry.who)}"
        )
        if entry.subject:
            print(f"    subject: {_preview(entry.subject)}")
        if entry.text:
            body = _shown(entry.text, keep_newlines=True) if args.full else _preview(entry.text)
            print("    " + body.replace("\n", "\n    "))
        print(f"    ({_shown(entry.detail)})")
    if not entries:
        print("no messages yet")
    return 0


def cmd_inbox(args: argparse.Namespace, settings: Settings) -> int:
    store = _open_store(settings)
    now = args.now or SystemClock().now()
    if args.awaiting and (args.intent or args.urgent):
        raise ConfigError("--intent and --urgent choose messages; --awaiting lists conversations")
    if args.awaiting:
        limit = args.older_than or settings.inbox.awaiting_after
        waiting = store.awaiting(now - limit)
        older = f"{limit.total_seconds() / 3600:g} h"
        print(f"{len(waiting)} conversation(s) wait for the seller's answer (older than {older})")
        for item in waiting:
            age_h = (now - item.since).total_seconds() / 3600
            print(
                f"{_shown(item.order_id):22} {age_h:6.0f} h  {_shown(item.kind):10} "
                f"{_shown(item.buyer)}  {_preview(item.subject, 60)}"
            )
        return 0
    rows = store.inbound_messages(unmatched=args.unmatched, kinds=args.kind, intents=args.intent)
    if args.urgent:
        rows = urgent_first(rows)
    print(
        f"{'id':>5} {'received (UTC)':16} {'kind':14} {'intent':22} {'order':22} sender / subject"
    )
    for row in rows:
        order = _shown(row.order_id or "-")
        intent = row.intent.value if row.intent else "-"
        print(
            f"{row.id:5} {row.received_at:%Y-%m-%d %H:%M} {row.kind.value:14} {intent:22} "
            f"{order:22} {_shown(row.sender)}  {_preview(row.subject, 60)}"
        )
        if args.unmatched or row.parse_errors:
            errors = "; ".join(row.parse_errors[:3])
            why = row.evidence + (f"; parse errors: {errors}" if errors else "")
            print(f"      {_preview(why, 200)}")
        if row.withheld:
            print(f"      withheld: {_preview(row.withheld, 200)}")
    return 0


_URGENT_AFTER_COMPLAINTS = (
    Intent.WHERE_IS_MY_ORDER,
    Intent.ADDRESS_CHANGE,
    Intent.CANCEL_BEFORE_SHIPPING,
)


def urgent_first(rows: Iterable[InboundRow]) -> list[InboundRow]:
    """What an agent answers first: complaints, then the questions a parcel waits on (where is
    it, a new address, cancel before it ships), then the rest; newest first within each."""

    def rank(row: InboundRow) -> int:
        if row.intent in COMPLAINT_INTENTS:
            return 0
        if row.intent in _URGENT_AFTER_COMPLAINTS:
            return 1 + _URGENT_AFTER_COMPLAINTS.index(row.intent)
        return 1 + len(_URGENT_AFTER_COMPLAINTS)

    newest = sorted(rows, key=lambda r: (r.received_at, r.id), reverse=True)
    return sorted(newest, key=rank)


def cmd_inbox_assign(args: argparse.Namespace, settings: Settings) -> int:
    store = _open_store(settings)
    rule = SoftBounceRule(settings.inbox.soft_bounce_limit, settings.inbox.soft_bounce_window)
    done = store.assign_inbound(args.message, args.order_id, rule)
    effects = [f"{done.dispute.value} dispute opened"] if done.dispute else []
    effects += [f"{_shown(s.email)} suppressed ({s.reason.value})" for s in done.suppressed]
    if done.disputes_closed:
        effects.append(f"{done.disputes_closed} dispute(s) closed")
    print(
        f"message {args.message} filed under {args.order_id}; " + ("; ".join(effects) or "recorded")
    )
    return 0


def cmd_reply_add(args: argparse.Namespace, settings: Settings) -> int:
    store = _open_store(settings)
    at = args.at or SystemClock().now()
    store.add_reply(Reply(args.order_id, at, "manual"))
    print(f"order {args.order_id}: buyer reply recorded at {at.isoformat()}")
    return 0


# Edge ------------------------------------------------------------------------------------------


def _causes(exc: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain:
        chain.append(current)
        hidden = current.__suppress_context__  # `raise ... from None` chose to hide it
        current = current.__cause__ or (None if hidden else current.__context__)
    return chain[::-1]


def _report_error(exc: BaseException, verbose: bool) -> None:
    """Root cause first, one line each; causes the final message already says are left out."""
    if verbose:
        import traceback

        traceback.print_exception(exc, file=sys.stderr)
        return
    final = str(exc) or type(exc).__name__
    for cause in _causes(exc)[:-1]:
        text = (str(cause).strip().splitlines() or [""])[0]
        if text and text not in final:
            print(f"  caused by {type(cause).__name__}: {text}", file=sys.stderr)
    print(f"error: {final.splitlines()[0]}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings(args.config)
        logs.configure(settings.log_format, verbose=args.verbose)
        result: int = args.handler(args, settings)
        return result
    except (ConfigError, FeedError) as exc:
        _report_error(exc, args.verbose)
        return 2
    except WorkerError as exc:
        _report_error(exc, args.verbose)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `worker sends | head`: the reader left; say nothing more, like other Unix tools.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
