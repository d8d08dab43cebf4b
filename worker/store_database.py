"""What every part of the store needs from ``Store``: the engine and its transactions.

``Store`` (worker/store.py) is put together from one mixin per kind of record it keeps
(worker/store_orders.py, worker/store_sends.py, worker/store_inbound.py). Each mixin reaches the
database through the few names declared here, once, so mypy checks every part against the
one definition: the engine and the transactions are defined on ``Store``, the order look-ups on
``OrdersMixin``. The declarations exist only for the type checker; at run time each name
resolves on ``Store``.
"""

from __future__ import annotations

import contextlib
import functools
import random
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar, cast

from sqlalchemy import Connection, Engine

from worker.domain import Order
from worker.errors import StoreConflict

CONFLICT_ATTEMPTS = 6
"""Runs of one transaction that another worker's crossed (a deadlock, a serialization
failure) before the error is the caller's."""

_Method = TypeVar("_Method", bound=Callable[..., Any])


def retried_on_conflict(method: _Method) -> _Method:
    """Run a method that is one whole transaction again when the database aborted it for
    crossing another's. With several workers, two transactions can wake the same buyers
    (the triggers of migration 0005) in opposite orders; PostgreSQL then aborts one of them,
    which is routine and must cost a retry, not the worker. The method must own its
    transaction and do nothing outside the database, so running it again is exact."""

    @functools.wraps(method)
    def run(*args: Any, **kwargs: Any) -> Any:
        for attempt in range(1, CONFLICT_ATTEMPTS + 1):
            try:
                return method(*args, **kwargs)
            except StoreConflict:
                if attempt == CONFLICT_ATTEMPTS:
                    raise
                # Jittered, growing pauses so the two do not cross again in step.
                time.sleep(random.uniform(0.005, 0.02) * 2**attempt)
        raise AssertionError("unreachable")

    return cast(_Method, run)


class _Database:
    engine: Engine

    if TYPE_CHECKING:

        @property
        def where(self) -> str:
            """Defined by ``Store``: the database URL, password hidden."""

        def _connect(self) -> contextlib.AbstractContextManager[Connection]:
            """Defined by ``Store``: a connection for reads."""

        def _begin(self) -> contextlib.AbstractContextManager[Connection]:
            """Defined by ``Store``: one transaction."""

        def _begin_write(self) -> contextlib.AbstractContextManager[Connection]:
            """Defined by ``Store``: one transaction holding the write lock from its start."""

        def _require_order(self, tx: Connection, order_id: str) -> None:
            """Defined by ``OrdersMixin``."""

        def _order_in(self, tx: Connection, order_id: str) -> Order:
            """Defined by ``OrdersMixin``."""
