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
from typing import TYPE_CHECKING

from sqlalchemy import Connection, Engine

from worker.domain import Order


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
