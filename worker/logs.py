"""Structured logs: one line per decision, keyed by a stable ``event`` name.

JSON lines when stderr is not a terminal (journald, container platforms), readable key=value
lines on a terminal. Tests assert on the event keys, never on prose. Values carry text from
strangers' mail: every string is made printable first (see :mod:`worker.terminal`), so a log
line on an agent's terminal shows an escape sequence and never runs it.
"""

from __future__ import annotations

import logging
import sys
from typing import Literal

import structlog

from worker.terminal import printable

_TRACEBACKS = frozenset({"exception", "stack"})
"""Values whose line breaks are kept on the console: they are many lines by nature."""


def configure(fmt: Literal["auto", "json", "console"] = "auto", *, verbose: bool = False) -> None:
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    # JSON escapes line breaks itself; on the console one would start a forged log line.
    rendering: list[structlog.typing.Processor] = (
        [
            printable_values(keep_newlines=True),
            structlog.processors.JSONRenderer(ensure_ascii=False),
        ]
        if use_json
        else [
            structlog.processors.format_exc_info,  # the traceback is text to clean too
            printable_values(keep_newlines=False),
            structlog.dev.ConsoleRenderer(colors=False, sort_keys=False),
        ]
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            *rendering,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.DEBUG if verbose else logging.INFO
        ),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )


def get(name: str) -> structlog.typing.FilteringBoundLogger:
    logger: structlog.typing.FilteringBoundLogger = structlog.get_logger(name)
    return logger


def printable_values(*, keep_newlines: bool) -> structlog.typing.Processor:
    """A processor making every string of an event printable, in nested values too."""

    def processor(
        _logger: structlog.typing.WrappedLogger, _name: str, event: structlog.typing.EventDict
    ) -> structlog.typing.EventDict:
        return {
            key: _printable(value, keep_newlines or key in _TRACEBACKS)
            for key, value in event.items()
        }

    return processor


def _printable(value: object, keep_newlines: bool) -> object:
    if isinstance(value, str):
        return printable(value, keep_newlines=keep_newlines)
    if isinstance(value, dict):
        return {
            _printable(key, keep_newlines): _printable(item, keep_newlines)
            for key, item in value.items()
        }
    if isinstance(value, list | tuple | set | frozenset):
        return [_printable(item, keep_newlines) for item in value]
    return value
