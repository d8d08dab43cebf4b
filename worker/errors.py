"""One small exception hierarchy; every message tells an operator what to fix and where.

Each class's docstring is its default message. ``where`` names the place of the problem
(``campaigns/x.yaml:12``, ``orders.csv:line 40``, ``smtp 127.0.0.1:25``) and is printed first.
"""

from __future__ import annotations


class WorkerError(Exception):
    """The worker cannot go on."""

    def __init__(self, message: str | None = None, *, where: str | None = None) -> None:
        self.where = where
        self.detail = message or (type(self).__doc__ or "").strip()
        super().__init__(f"{where}: {self.detail}" if where else self.detail)


class ConfigError(WorkerError):
    """The configuration is invalid; fix config/worker.yaml or the WORKER_* environment."""


class CampaignError(WorkerError):
    """A campaign file is invalid."""


class TemplateError(WorkerError):
    """A template cannot be rendered."""


class FeedError(WorkerError):
    """An input file cannot be read."""


class RowError(FeedError):
    """A row of an input file is invalid; it was written to the rejects file."""


class StoreError(WorkerError):
    """The database refused the operation."""


class StoreConflict(StoreError):
    """Another worker's transaction crossed this one (a deadlock or a serialization failure);
    running it again succeeds, and the store does so for the daemon's own transactions."""


class SchemaOutOfDate(StoreError):
    """The database schema is out of date; run `worker db upgrade`."""


class UnknownOrder(StoreError):
    """No such order; import it first with `worker import orders`."""


class DuplicateSend(StoreError):
    """A send for this order, campaign and step already exists; it is never sent twice."""


class MailboxError(WorkerError):
    """The mailbox cannot be reached or read; the worker reconnects with backoff."""


class FolderMissing(MailboxError):
    """A configured folder does not exist in the mailbox; check imap.folders."""


class ModelError(WorkerError):
    """The shipped intent model is missing or unreadable: reinstall the package, or rebuild
    the model with `python bench/train_intents.py`."""


class RulesError(ConfigError):
    """The mail rules file is invalid; fix config/mail-rules.yaml."""
