"""An operator's hands-on commands: see a message before buyers do (``preview``), send one
to yourself (``send-test``), see what the worker is doing (``status``), settle ``in_doubt``
sends; the suppression list by hand is worker/cli_suppress.py.

Nothing here counts as a send: a preview writes nothing, and a test message is recorded in
``test_send`` only, never in ``send``, so it moves no plan, cap or metric. Every text a
stranger wrote (names, products, relay replies, addresses) reaches the terminal through
``_shown``.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import secrets
import sys
from collections.abc import Iterator
from datetime import datetime, timedelta
from email.errors import HeaderParseError
from email.header import decode_header, make_header
from pathlib import Path

from worker import logs
from worker.cli import (
    _agent,
    _daemon,
    _default_agent,
    _instant,
    _open_store,
    _preview,
    _shown,
    add_resolve_arguments,
)
from worker.cli_suppress import add_commands as add_suppress_commands
from worker.cli_suppress import address_argument
from worker.clock import SystemClock
from worker.compose import ComposedMessage, compose
from worker.config import Settings
from worker.daemon import Daemon
from worker.domain import (
    Campaign,
    CampaignStep,
    Customer,
    Order,
    Review,
    Send,
    SendState,
    TriggerEvent,
)
from worker.errors import ConfigError, StoreError, WorkerError
from worker.language import normalise_locale
from worker.plan import OrderHistory
from worker.render import RenderedMessage, TemplateRunner
from worker.return_path import return_path_base
from worker.send import Failed, InDoubt, Mailer, Outcome, Retry, Sent
from worker.store_operator import TestSend
from worker.store_status import FAILURES_WITHIN, INBOUND_WITHIN, Status

log = logs.get("worker.cli")

TEST_PREFIX = "[TEST] "
TEST_HEADER = b"X-Worker-Test: yes\r\n"
"""First header of every test message: filters and the relay's log can tell it apart."""
SAMPLE_PRODUCTS = (
    "Stainless steel insulated water bottle with bamboo lid and carry strap, 750 ml, "
    "matte forest green (BPA-free, dishwasher-safe)",
    "Bottle cleaning brush, set of 3",
    "Spare silicone seal",
)
"""The sample order's items: one long name, as real exports have, and short ones."""
_SAMPLE_IDS = {"amazon": "028-1234567-7654321", "ebay": "12-34567-89012"}


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    preview = commands.add_parser(
        "preview", help="a step's message as the daemon would send it: headers and text"
    )
    _message_arguments(preview)
    preview.add_argument(
        "--html", type=Path, metavar="FILE", help="also write the HTML part to FILE"
    )
    preview.set_defaults(handler=cmd_preview)

    test = commands.add_parser(
        "send-test",
        help="send a step's message to yourself through the relay, marked [TEST]; "
        "counted as no order's send",
    )
    _message_arguments(test)
    test.add_argument(
        "--to",
        type=address_argument,
        required=True,
        metavar="ADDRESS",
        help="the one address to send to",
    )
    test.add_argument("--by", type=_agent, help="who sends it (default: the account running this)")
    test.set_defaults(handler=cmd_send_test)

    status = commands.add_parser(
        "status", help="one screen: sends, in_doubt, failures, disputes, suppressions, mail"
    )
    status.add_argument("--now", type=_instant, help="judge ages at this ISO 8601 time")
    status.set_defaults(handler=cmd_status)

    doubt = commands.add_parser(
        "in-doubt", help="sends that may have reached the relay: list them, resolve one"
    )
    doubt_actions = doubt.add_subparsers(dest="in_doubt_action", required=True, metavar="ACTION")
    doubt_actions.add_parser(
        "list", help="every in_doubt send, oldest first, with what to look for in the relay's log"
    ).set_defaults(handler=cmd_in_doubt_list)
    resolve = doubt_actions.add_parser(
        "resolve", help="record what the relay's log says (as `worker sends resolve`)"
    )
    add_resolve_arguments(resolve)
    add_suppress_commands(commands)


def _message_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("campaign", help="the campaign's name")
    parser.add_argument("step", help="the step's id")
    parser.add_argument("--order", help="render for this stored order (default: a sample order)")
    parser.add_argument(
        "--locale", type=_locale, help="the template language (default: the buyer's, as sent)"
    )


def _locale(text: str) -> str:
    locale = normalise_locale(text)
    if locale is None:
        raise argparse.ArgumentTypeError(f"{_shown(text)!r} is not a locale tag like de or de-AT")
    return locale


# preview and send-test ---------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Rendered:
    """A step's message for one order, as the daemon would build it."""

    campaign: Campaign
    step: CampaignStep
    history: OrderHistory
    sample: bool
    rendered: RenderedMessage
    rule: str
    """How the language was chosen: the daemon's rule (``order locale de``) or ``--locale``."""


def render_step(
    daemon: Daemon,
    campaign_name: str,
    step_id: str,
    order_id: str | None,
    locale: str | None,
    now: datetime,
) -> Rendered:
    campaign, step = _campaign_step(daemon.campaigns, campaign_name, step_id)
    if order_id is not None:
        history, sample = daemon.store.history(order_id), False
        if step.trigger.event is TriggerEvent.REVIEWED and not history.reviews:
            raise WorkerError(
                f"order {_shown(order_id)} has no review, and {campaign.name}/{step.id} goes "
                "out only after one; leave out --order to see it for a sample 5-star review"
            )
    else:
        history, sample = sample_history(campaign, step, daemon.settings, now), True
    if locale is not None:
        rule = f"--locale {locale}"
    else:
        language = daemon.language(history, campaign.name, step.id)
        locale, rule = language.locale, f"{language.rule} {language.detail}".strip()
    template, chosen, context = daemon.render_job(history, campaign.name, step.id, locale)
    runner = daemon.runner
    if runner is None:
        rendered = daemon.renderer.render(template, chosen, context)
    else:  # within the daemon's time and size budget: a looping template cannot hang this

        async def within_budget(runner: TemplateRunner) -> RenderedMessage:
            async with runner:
                return await runner.render(template, chosen, context)

        rendered = asyncio.run(within_budget(runner))
    return Rendered(campaign, step, history, sample, rendered, rule)


def _campaign_step(
    campaigns: list[Campaign], name: str, step_id: str
) -> tuple[Campaign, CampaignStep]:
    campaign = next((c for c in campaigns if c.name == name), None)
    if campaign is None:
        known = ", ".join(c.name for c in campaigns) or "none"
        raise ConfigError(f"no campaign {_shown(name)!r}; the campaigns are: {known}")
    step = next((s for s in campaign.steps if s.id == step_id), None)
    if step is None:
        known = ", ".join(s.id for s in campaign.steps)
        raise ConfigError(
            f"campaign {campaign.name} has no step {_shown(step_id)!r}; its steps are: {known}",
            where=campaign.source or None,
        )
    return campaign, step


def sample_marketplace(campaign: Campaign) -> str:
    """The marketplace a sample order is from: the campaign's own when it names one, the
    seller's shop when it applies to it, else the first it names."""
    if len(campaign.marketplaces) == 1 or "shop" not in campaign.marketplaces:
        return sorted(campaign.marketplaces)[0]
    return "shop"


def sample_history(
    campaign: Campaign, step: CampaignStep, settings: Settings, now: datetime
) -> OrderHistory:
    """A realistic order for the campaign, delivered a few days ago: several items, one with
    a long name, from a marketplace the campaign applies to; a 5-star review only for a step
    a review triggers (as the start-up check renders them)."""
    marketplace = sample_marketplace(campaign)
    order = Order(
        order_id=_SAMPLE_IDS.get(marketplace, "SHOP-10427"),
        marketplace=marketplace,
        buyer_email="alex.sample@example.com",
        buyer_name="Alex Sample",
        products=SAMPLE_PRODUCTS,
        locale=settings.default_locale,
        ordered_at=now - timedelta(days=14),
        shipped_at=now - timedelta(days=12),
        delivered_at=now - timedelta(days=6),
        review_url="https://shop.example/products/water-bottle#reviews"
        if marketplace == "shop"
        else None,
        carrier="DHL",
        tracking_number="JJD000390007654321",
    )
    reviews: tuple[Review, ...] = ()
    if step.trigger.event is TriggerEvent.REVIEWED:
        reviews = (Review(order.order_id, 5, now - timedelta(days=1)),)
    customer = Customer(order.buyer_email, order.buyer_name, settings.default_locale)
    return OrderHistory(order=order, customer=customer, reviews=reviews)


def _composed(
    made: Rendered, settings: Settings, now: datetime, message_id: str, *, to: str | None = None
) -> ComposedMessage:
    """The message compose builds for the daemon, with a Message-ID no report can tie to a
    send and no reply token (a reply to a test must not count as the buyer's)."""
    order = made.history.order
    if to is not None:
        order = dataclasses.replace(order, buyer_email=to)
    send = Send(
        id=0,
        order_id=order.order_id,
        campaign=made.campaign.name,
        step=made.step.id,
        state=SendState.SCHEDULED,
        due_at=now,
        message_id=message_id,
    )
    return compose(made.rendered, send=send, order=order, settings=settings, now=now)


_PLUMBING = frozenset({"mime-version", "content-type", "content-transfer-encoding"})


def shown_headers(message: ComposedMessage) -> Iterator[str]:
    """Each header as a reader sees it (encoded words decoded), fit for a terminal."""
    for name, value in message.raw_items():
        if name.lower() in _PLUMBING:
            continue
        try:
            text = str(make_header(decode_header(str(value))))
        except (HeaderParseError, LookupError, UnicodeError):
            text = str(value)
        yield f"{name}: {_shown(text)}"


def cmd_preview(args: argparse.Namespace, settings: Settings) -> int:
    daemon = _daemon(settings, SystemClock())
    now = daemon.clock.now()
    made = render_step(daemon, args.campaign, args.step, args.order, args.locale, now)
    preview_id = f"<preview.{secrets.token_hex(6)}@{_domain(settings)}>"
    message = _composed(made, settings, now, preview_id)
    order = made.history.order
    whose = "a sample order" if made.sample else "order"
    print(
        f"# {made.campaign.name}/{made.step.id} for {whose} {_shown(order.order_id)} "
        f"({_shown(order.marketplace)}), language {made.rendered.locale} ({_shown(made.rule)})"
    )
    print(f"# template {_shown(made.rendered.source)}; nothing was sent or recorded")
    if settings.inbox.reply_tokens:
        print("# Reply-To: the daemon adds the order's reply token (reply+TOKEN@)")
    for line in shown_headers(message):
        print(line)
    print()
    print(_shown(made.rendered.text, keep_newlines=True), end="")
    if args.html is not None:
        try:
            args.html.write_text(made.rendered.html, encoding="utf-8")
        except OSError as exc:
            raise ConfigError(
                f"cannot write the HTML part: {exc.strerror}", where=str(args.html)
            ) from None
        print(f"# HTML part written to {_shown(str(args.html))}", file=sys.stderr)
    return 0


def _domain(settings: Settings) -> str:
    return settings.sender_domain or "worker.invalid"


def cmd_send_test(args: argparse.Namespace, settings: Settings) -> int:
    daemon = _daemon(settings, SystemClock())
    now = daemon.clock.now()
    suppressed, _disputes = daemon.store.protections(args.to)
    if suppressed is not None:
        raise StoreError(
            f"{args.to} is suppressed ({suppressed.reason.value}, since "
            f"{suppressed.created_at:%Y-%m-%d %H:%M} UTC): nothing is sent to it, tests "
            "included; send the test to another address"
        )
    made = render_step(daemon, args.campaign, args.step, args.order, args.locale, now)
    marked = dataclasses.replace(made, rendered=_marked(made.rendered))
    message_id = f"<test.{secrets.token_hex(10)}@{_domain(settings)}>"
    message = _composed(marked, settings, now, message_id, to=args.to)
    # The plain return path, no send's token: a bounce of a test suppresses no one.
    sender = return_path_base(settings)
    outcome = asyncio.run(_hand_over(settings, TEST_HEADER + message.as_bytes(), sender, args.to))
    verdict, detail = _verdict(outcome)
    by = args.by or _default_agent()
    test = TestSend(
        campaign=made.campaign.name,
        step=made.step.id,
        order_id=None if made.sample else made.history.order.order_id,
        locale=made.rendered.locale,
        recipient=args.to,
        subject=marked.rendered.subject,
        message_id=message_id,
        outcome=verdict,
        detail=detail,
        created_by=by,
        created_at=now,
    )
    test_id = daemon.store.record_test_send(test)
    log.info(
        "send_test.recorded",
        outcome=verdict,
        test_id=test_id,
        campaign=test.campaign,
        step=test.step,
        order=test.order_id,
        recipient=test.recipient,
        message_id=message_id,
        by=by,
        detail=detail,
    )
    what = f"test {test_id}: {made.campaign.name}/{made.step.id} ({made.rendered.locale})"
    if isinstance(outcome, Sent):
        print(f"{what} sent to {_shown(args.to)}, Message-ID {message_id}: {_shown(detail)}")
        return 0
    print(f"{what} to {_shown(args.to)} {verdict}: {_shown(detail)}")
    return 1


def _marked(rendered: RenderedMessage) -> RenderedMessage:
    return dataclasses.replace(rendered, subject=TEST_PREFIX + rendered.subject)


async def _hand_over(settings: Settings, data: bytes, sender: str, recipient: str) -> Outcome:
    async with Mailer(settings.smtp) as mailer:
        return await mailer.send(data, sender=sender, recipient=recipient)


def _verdict(outcome: Outcome) -> tuple[str, str]:
    """A test is sent once: a transient refusal is a failure to read, not a retry."""
    if isinstance(outcome, Sent):
        return "sent", outcome.reply
    if isinstance(outcome, InDoubt):
        return "in_doubt", outcome.reason
    if isinstance(outcome, Retry | Failed):
        return "failed", outcome.reason
    raise AssertionError(outcome)


# status ----------------------------------------------------------------------------------------


def _age(delta: timedelta) -> str:
    seconds = max(0, int(delta.total_seconds()))
    if seconds < 3600:
        return f"{seconds // 60} min"
    if seconds < 2 * 86400:
        return f"{seconds // 3600} h"
    return f"{seconds // 86400} d {seconds % 86400 // 3600} h"


def _at(moment: datetime | None, now: datetime) -> str:
    if moment is None:
        return "never"
    return f"{moment:%Y-%m-%d %H:%M} ({_age(now - moment)} ago)"


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{_shown(k)} {v}" for k, v in sorted(counts.items())) or "none"


def status_lines(status: Status, where: str) -> list[str]:
    now = status.now
    lines = [f"status at {now:%Y-%m-%d %H:%M} UTC, database {where}"]
    by_state: dict[str, dict[str, int]] = {}
    for (state, reason), count in status.sends.items():
        by_state.setdefault(state, {})
        by_state[state][reason] = by_state[state].get(reason, 0) + count
    lines.append("sends:")
    for state in SendState:
        reasons = by_state.get(state.value, {})
        total = sum(reasons.values())
        if not total:
            continue
        named = {_preview(r, 40): n for r, n in reasons.items() if r}
        detail = f"  ({_counts(named)})" if named else ""
        lines.append(f"  {state.value:10} {total:7}{detail}")
    if not by_state:
        lines.append("  none yet")
    if status.in_doubt:
        lines.append(
            f"in doubt: {status.in_doubt}, the oldest since {_at(status.oldest_in_doubt, now)}: "
            "check the relay's log, then `worker in-doubt list` / `resolve`"
        )
    else:
        lines.append("in doubt: none")
    if status.oldest_due is not None:
        lines.append(
            f"due, not sent: {status.due_unsent}, the oldest due "
            f"{status.oldest_due:%Y-%m-%d %H:%M} ({_age(now - status.oldest_due)} late)"
        )
    else:
        lines.append("due, not sent: none")
    if status.buyers_awaiting_pass:
        lines.append(f"buyers awaiting a pass: {status.buyers_awaiting_pass}")
    hours = int(FAILURES_WITHIN.total_seconds() // 3600)
    lines.append(f"failures, last {hours} h: {len(status.failures) or 'none'}")
    for failed in status.failures:
        lines.append(
            f"  {failed.id:6} {failed.at:%m-%d %H:%M} {_shown(failed.order_id)[:22]:22} "
            f"{_shown(failed.campaign + '/' + failed.step)[:30]:30} {_preview(failed.reason, 80)}"
        )
    lines.append(
        f"disputes: {status.open_disputes} open, {status.needs_review} need review"
        + (" (`worker disputes list --needs-review`)" if status.needs_review else "")
    )
    total = sum(status.suppressions.values())
    lines.append(f"suppressions: {total}" + (f" ({_counts(status.suppressions)})" if total else ""))
    days = INBOUND_WITHIN.days
    total = sum(status.inbound.values())
    kinds = f" ({_counts(status.inbound)})" if total else ""
    lines.append(f"inbound, last {days} d: {total}{kinds}")
    if not status.mailboxes:
        lines.append("mailboxes: none read yet")
    for mailbox in status.mailboxes:
        lines.append(
            f"mailbox {_shown(mailbox.mailbox)}: last full read {_at(mailbox.read_at, now)}, "
            f"last message stored {_at(mailbox.checkpoint_at, now)}"
        )
    return lines


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    store = _open_store(settings)
    status = store.status(args.now or SystemClock().now())
    print("\n".join(status_lines(status, _shown(store.where))))
    return 0


# in_doubt --------------------------------------------------------------------------------------


def cmd_in_doubt_list(args: argparse.Namespace, settings: Settings) -> int:
    store = _open_store(settings)
    now = SystemClock().now()
    rows = store.in_doubt_sends()
    print(f"{len(rows)} send(s) in doubt: the relay may have them; its log says which")
    for row in rows:
        print(
            f"{row.id:6} since {row.since:%Y-%m-%d %H:%M} ({_age(now - row.since)})  "
            f"{_shown(row.order_id)} {_shown(row.campaign)}/{_shown(row.step)}  to "
            f"{_shown(row.recipient or '?')}"
        )
        ids = f"Message-ID {_shown(row.message_id or '-')}"
        if row.relay_message_id:
            ids += f", relay id {_shown(row.relay_message_id)}"
        print(f"       {ids}; attempt {row.attempts}; {_preview(row.reason, 100)}")
    if rows:
        print(
            "found in the relay's log: `worker in-doubt resolve ID --sent`; "
            "never left: `--not-sent` (or `worker sends requeue ID` to send it again)"
        )
    return 0
