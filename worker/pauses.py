"""Pauses: an operator's stop on sending, for everything, one marketplace or one campaign.

A pause is stored (worker/store_pauses.py), so it survives restarts and every worker sharing
the database obeys it. Planning reads the pauses at the start of each pass and the daemon
again before each claim, so a pause stops sending within one pass. A paused step is not
skipped: it WAITs with reason ``paused`` and goes out after ``worker resume`` if it is still
inside its ``max_lateness``. Mailbox reading never pauses: complaints must still be read.

Pure values and checks; no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from worker.domain import MARKETPLACES
from worker.terminal import printable

PAUSED = "paused"
"""The WAIT reason of a step a pause holds."""
BY_LIMIT = 64
REASON_LIMIT = 300
_CAMPAIGN = re.compile(r"[a-z0-9-]{1,64}")


class PauseScope(StrEnum):
    EVERYTHING = "everything"
    MARKETPLACE = "marketplace"
    CAMPAIGN = "campaign"


@dataclass(frozen=True, slots=True)
class Pause:
    scope: PauseScope
    target: str
    """The marketplace or campaign name; empty for everything."""
    paused_by: str
    reason: str
    paused_at: datetime

    def holds(self, marketplace: str, campaign: str) -> bool:
        """Does this pause hold a step of ``campaign`` for an order of ``marketplace``?"""
        if self.scope is PauseScope.EVERYTHING:
            return True
        if self.scope is PauseScope.MARKETPLACE:
            return marketplace == self.target
        return campaign == self.target

    def describe(self) -> str:
        """``everything``, ``marketplace amazon``, ``campaign review-follow-up``."""
        if self.scope is PauseScope.EVERYTHING:
            return "everything"
        return f"{self.scope.value} {self.target}"


def holding(pauses: Sequence[Pause], marketplace: str, campaign: str) -> Pause | None:
    """The first pause that holds this campaign's mail to an order of this marketplace."""
    return next((p for p in pauses if p.holds(marketplace, campaign)), None)


def scope_of(marketplace: str | None, campaign: str | None) -> tuple[PauseScope, str]:
    """The scope a command names (at most one of the two); ValueError says what is wrong."""
    if marketplace is not None and campaign is not None:
        raise ValueError("name a marketplace or a campaign, not both")
    if marketplace is not None:
        name = marketplace.strip().lower()
        if name not in MARKETPLACES:
            known = ", ".join(sorted(MARKETPLACES))
            raise ValueError(f"{printable(marketplace)!r} is not a marketplace; one of: {known}")
        return PauseScope.MARKETPLACE, name
    if campaign is not None:
        if not _CAMPAIGN.fullmatch(campaign):
            raise ValueError(
                f"{printable(campaign)!r} is not a campaign name (a-z, 0-9 and -, up to 64)"
            )
        return PauseScope.CAMPAIGN, campaign
    return PauseScope.EVERYTHING, ""


def one_line(text: str, limit: int, what: str) -> str:
    """``--by`` and ``--reason`` as they may be stored, logged and shown on a terminal: one
    line of visible characters, at most ``limit`` long. ValueError says what is wrong."""
    value = text.strip()
    if len(value) > limit:
        raise ValueError(f"the {what} is longer than {limit} characters")
    if printable(value) != value or any(c.isspace() and c != " " for c in value):
        raise ValueError(f"the {what} {printable(value)!r} holds control characters")
    return value
