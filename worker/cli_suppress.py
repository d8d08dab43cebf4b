"""``worker suppress add|remove|list|import``: the suppression list by hand, with who and why.

A hard bounce or a spam complaint is the buyer's own mail system speaking: removing one takes
``--force``, and every removal is kept (worker/store_operator.py). Addresses are checked as
the store keys them; every text shown on the terminal goes through ``_shown``.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import sys
from pathlib import Path

from worker import logs
from worker.cli import _agent, _default_agent, _open_store, _preview, _shown
from worker.clock import SystemClock
from worker.config import Settings
from worker.domain import SuppressionReason
from worker.errors import FeedError, StoreError
from worker.feeds import normalise_email
from worker.store_operator import PROVEN, ForceNeeded

log = logs.get("worker.cli")

ADDRESS_MAX = 254
"""RFC 5321's longest path: an address longer than this cannot be delivered anyway."""
IMPORT_BYTES_MAX = 100_000_000
"""A suppression list of a million addresses is some 30 MB: a larger file is a mistake."""
IMPORT_LINE_MAX = 1000
"""Characters a suppression list's line may have; a longer one is a bad line, not memory."""


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    suppress = commands.add_parser(
        "suppress", help="addresses never written to: add, remove, list, import"
    )
    actions = suppress.add_subparsers(dest="suppress_action", required=True, metavar="ACTION")
    reasons = [r.value for r in SuppressionReason]
    adding = actions.add_parser("add", help="suppress one address")
    adding.add_argument("address", type=address_argument)
    adding.add_argument("--reason", type=SuppressionReason, choices=reasons, required=True)
    adding.add_argument("--note", default="", help="why, in a few words (kept with it)")
    adding.add_argument("--by", type=_agent, help="who (default: the account running this)")
    adding.set_defaults(handler=cmd_suppress_add)
    removing = actions.add_parser(
        "remove", help="mail this address again (a hard bounce or complaint needs --force)"
    )
    removing.add_argument("address", type=address_argument)
    removing.add_argument("--by", type=_agent, help="who (default: the account running this)")
    removing.add_argument(
        "--force",
        action="store_true",
        help="remove a hard_bounce or spam_complaint suppression too",
    )
    removing.set_defaults(handler=cmd_suppress_remove)
    listing = actions.add_parser("list", help="suppressed addresses, oldest first")
    listing.add_argument("--reason", type=SuppressionReason, choices=reasons)
    listing.set_defaults(handler=cmd_suppress_list)
    importing = actions.add_parser(
        "import", help="a file of addresses: one per line, or a CSV with an email column"
    )
    importing.add_argument("file", type=Path)
    importing.add_argument(
        "--reason",
        type=SuppressionReason,
        choices=reasons,
        default=SuppressionReason.MANUAL,
        help="for every address (default manual)",
    )
    importing.add_argument("--by", type=_agent, help="who (default: the account running this)")
    importing.set_defaults(handler=cmd_suppress_import)


def address_problem(text: str) -> str | None:
    """Why ``text`` is not one deliverable address, or None."""
    if "\r" in text or "\n" in text:
        return "it holds a line break"
    if len(text) > ADDRESS_MAX:
        return f"it is longer than {ADDRESS_MAX} characters"
    try:
        address = normalise_email(text)
    except ValueError as exc:  # "'x' is not an e-mail address: why": the caller names it
        return str(exc).split("is not an e-mail address: ", 1)[-1]
    if not address.partition("@")[0].isascii():
        return "its part before the @ is not ASCII (SMTPUTF8 is not supported)"
    return None


def address_argument(text: str) -> str:
    """One address, no list, no line break: as the store keys it."""
    problem = address_problem(text)
    if problem is not None:
        raise argparse.ArgumentTypeError(f"{_shown(text[:100])!r} is not one address: {problem}")
    return normalise_email(text)


def cmd_suppress_add(args: argparse.Namespace, settings: Settings) -> int:
    store = _open_store(settings)
    by = args.by or _default_agent()
    note = " ".join(args.note.split())[:500]
    held = store.add_suppression(args.address, args.reason, by, SystemClock().now(), note)
    if held is not None:
        print(
            f"{_shown(args.address)} is already suppressed ({held.reason.value}, since "
            f"{held.created_at:%Y-%m-%d %H:%M}, by {_shown(held.created_by or 'the worker')}); "
            "left as it is"
        )
        return 0
    log.warning("suppression.added", email=args.address, reason=args.reason.value, by=by)
    print(f"{_shown(args.address)} suppressed ({args.reason.value}) by {_shown(by)}")
    return 0


def cmd_suppress_remove(args: argparse.Namespace, settings: Settings) -> int:
    store = _open_store(settings)
    by = args.by or _default_agent()
    try:
        held = store.remove_suppression(args.address, by, SystemClock().now(), force=args.force)
    except ForceNeeded as exc:
        raise StoreError(_shown(str(exc))) from None
    log.warning(
        "suppression.removed",
        email=held.email,
        reason=held.reason.value,
        added_by=held.created_by,
        by=by,
        forced=held.reason in PROVEN,
    )
    print(
        f"{_shown(held.email)}: {held.reason.value} suppression removed by {_shown(by)} (kept in "
        "suppression_removal); new steps may mail it, steps already skipped stay skipped"
    )
    return 0


def cmd_suppress_list(args: argparse.Namespace, settings: Settings) -> int:
    store = _open_store(settings)
    rows = store.suppression_rows(args.reason)
    which = f" ({args.reason.value})" if args.reason else ""
    print(f"{len(rows)} suppressed address(es){which}")
    if rows:
        print(f"{'since (UTC)':16} {'reason':14} {'by':16} address / detail")
    for row in rows:
        by = _shown(row.created_by or "worker")
        print(
            f"{row.created_at:%Y-%m-%d %H:%M} {row.reason.value:14} {by[:16]:16} "
            f"{_shown(row.email)}  {_preview(row.detail, 80)}"
        )
    return 0


@dataclasses.dataclass(frozen=True, slots=True)
class BadLine:
    line: int
    reason: str


def read_addresses(path: Path) -> tuple[list[str], list[BadLine]]:
    """A suppression list: one address per line, or a CSV whose header has an ``email``
    column. Blank lines and ``#`` comments are skipped; every other line is an address or
    a bad line, named by its number."""
    try:
        if path.stat().st_size > IMPORT_BYTES_MAX:
            raise FeedError(
                f"larger than {IMPORT_BYTES_MAX // 1_000_000} MB: no suppression list is; "
                "nothing was imported",
                where=str(path),
            )
        text = path.read_bytes().decode("utf-8-sig")
    except OSError as exc:
        raise FeedError(f"cannot read the file: {exc.strerror}", where=str(path)) from None
    except UnicodeDecodeError as exc:
        raise FeedError(
            f"not UTF-8 (byte {exc.start}); save it as UTF-8 and import it again; "
            "nothing was imported",
            where=str(path),
        ) from None
    lines = text.splitlines()
    first = next((n for n, line in enumerate(lines) if line.strip()), None)
    column = _email_column(lines[first]) if first is not None else None
    good: list[str] = []
    bad: list[BadLine] = []
    for number, line in enumerate(lines, 1):
        if column is not None and first is not None and number <= first + 1:
            continue
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if len(line) > IMPORT_LINE_MAX:
            bad.append(BadLine(number, f"longer than {IMPORT_LINE_MAX} characters"))
            continue
        if column is not None:
            cells = _cells(line)
            if cells is None or len(cells) <= column:
                bad.append(BadLine(number, "no email column in this row"))
                continue
            stripped = cells[column].strip()
        problem = address_problem(stripped)
        if problem is not None:
            bad.append(BadLine(number, f"{_preview(stripped, 60)!r} is not one address: {problem}"))
            continue
        good.append(normalise_email(stripped))
    return good, bad


def _cells(line: str) -> list[str] | None:
    try:
        return next(csv.reader(io.StringIO(line)), [])
    except csv.Error:
        return None


def _email_column(line: str) -> int | None:
    """The ``email`` column of a CSV header, or None when the file is a plain list."""
    if "@" in line:
        return None
    cells = [cell.strip().lower() for cell in _cells(line) or []]
    for name in ("email", "e-mail", "email_address", "address"):
        if name in cells:
            return cells.index(name)
    return None


def cmd_suppress_import(args: argparse.Namespace, settings: Settings) -> int:
    store = _open_store(settings)
    by = args.by or _default_agent()
    good, bad = read_addresses(args.file)
    for item in bad:
        print(f"{_shown(str(args.file))}:{item.line}: {_shown(item.reason)}", file=sys.stderr)
    detail = f"imported from {args.file.name}"[:200]
    done = store.import_suppressions(good, args.reason, by, SystemClock().now(), detail)
    log.warning(
        "suppression.imported",
        file=str(args.file),
        reason=args.reason.value,
        by=by,
        added=done.added,
        already=done.already,
        bad_lines=len(bad),
    )
    print(
        f"{_shown(str(args.file))}: {done.added} suppressed ({args.reason.value}), "
        f"{done.already} already suppressed, {len(bad)} bad line(s)"
    )
    return 1 if bad else 0
