"""scale: each buyer's next planning moment, kept by triggers; the plan inputs' hash;
mailbox leases

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 18:45:00.000000

``customer.next_due_at`` is the next moment at which anything about the buyer can change: a
pass plans only the buyers whose moment has come. Every write that can change a decision
(an order, a dispute, a review, a reply, a send row, a suppression, an inbound message
threaded to an order) sets it to the epoch in
the same transaction, by a trigger, so no code path can forget it. NULL: nothing will change
until an event arrives.

SQLite drops a table's triggers when a batch migration rebuilds the table: a later migration
that rebuilds one of the watched tables must create its triggers again
(tests/integration/test_due_buyers.py checks them at head).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import worker.schema

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_DUE = (
    "the next moment a pass must plan this buyer; NULL: only an event can change "
    "anything. Triggers set it to EPOCH on every write that can change a decision."
)

_BUYER_OF_ORDER = '(SELECT o.buyer_email FROM "order" o WHERE o.order_id = NEW.order_id)'
# (table, events, the buyers the changed row wakes). Each buyer gets an UPDATE of its own whose
# only condition on an indexed column is ``email = <one value>``: the primary key is the one
# index PostgreSQL can use, whatever the statistics say when the trigger's plan is cached.
_WATCHED = (
    ("order", ("INSERT",), ("NEW.buyer_email",)),
    ("order", ("UPDATE",), ("NEW.buyer_email", "OLD.buyer_email")),
    ("dispute", ("INSERT", "UPDATE"), (_BUYER_OF_ORDER,)),
    ("review", ("INSERT", "UPDATE"), (_BUYER_OF_ORDER,)),
    ("reply", ("INSERT",), (_BUYER_OF_ORDER,)),
    ("send", ("INSERT", "UPDATE"), (_BUYER_OF_ORDER,)),
    ("inbound_message", ("INSERT", "UPDATE"), (_BUYER_OF_ORDER,)),
    ("suppression", ("INSERT", "UPDATE"), ("NEW.email",)),
    ("suppression", ("DELETE",), ("OLD.email",)),
)
_SQLITE_EPOCH = "'1970-01-01 00:00:00.000000'"
_PG_EPOCH = "TIMESTAMP '1970-01-01 00:00:00'"


def _name(table: str, event: str) -> str:
    return f"tr_{table}_{event.lower()}_wakes_buyer"


def upgrade() -> None:
    op.add_column(
        "customer",
        sa.Column("next_due_at", worker.schema.UtcDateTime(), nullable=True, comment=_DUE),
    )
    op.create_index("ix_customer_next_due_at", "customer", ["next_due_at", "email"])
    # Every buyer is planned once after the upgrade.
    customer = sa.table("customer", sa.column("next_due_at", worker.schema.UtcDateTime()))
    op.execute(customer.update().values(next_due_at=worker.schema.EPOCH))

    op.create_table(
        "worker_state",
        sa.Column("key", sa.String(64), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.Column("updated_at", worker.schema.UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_worker_state")),
    )
    op.create_table(
        "mailbox_lease",
        sa.Column(
            "mailbox", sa.String(320), nullable=False, comment="user@host, as in mailbox_checkpoint"
        ),
        sa.Column("holder", sa.String(128), nullable=False, comment="the worker reading it"),
        sa.Column("taken_at", worker.schema.UtcDateTime(), nullable=False),
        sa.Column(
            "expires_at",
            worker.schema.UtcDateTime(),
            nullable=False,
            comment="renewed by every read",
        ),
        sa.Column(
            "read_at",
            worker.schema.UtcDateTime(),
            nullable=True,
            comment="when its holder last read every folder to the end",
        ),
        sa.PrimaryKeyConstraint("mailbox", name=op.f("pk_mailbox_lease")),
    )

    dialect = op.get_bind().dialect.name
    for table, events, buyers in _WATCHED:
        for event in events:
            if dialect == "postgresql":
                _postgresql_trigger(table, event, buyers)
            else:
                _sqlite_trigger(table, event, buyers)


def _wake(buyer: str, epoch: str, differs: str) -> str:
    """One buyer's row back to the epoch, untouched (no new row version) when it is there."""
    return (
        f"UPDATE customer SET next_due_at = {epoch} "
        f"WHERE email = {buyer} AND next_due_at {differs} {epoch}; "
    )


def _sqlite_trigger(table: str, event: str, buyers: tuple[str, ...]) -> None:
    body = "".join(_wake(buyer, _SQLITE_EPOCH, "IS NOT") for buyer in buyers)
    op.execute(
        f'CREATE TRIGGER {_name(table, event)} AFTER {event} ON "{table}" FOR EACH ROW '
        f"BEGIN {body}END"
    )


def _postgresql_trigger(table: str, event: str, buyers: tuple[str, ...]) -> None:
    name = _name(table, event)
    body = "".join(_wake(buyer, _PG_EPOCH, "IS DISTINCT FROM") for buyer in buyers)
    op.execute(
        f"CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        f"{body}RETURN NULL; END $$"
    )
    op.execute(
        f'CREATE TRIGGER {name} AFTER {event} ON "{table}" FOR EACH ROW EXECUTE FUNCTION {name}()'
    )


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    for table, events, _buyers in _WATCHED:
        for event in events:
            name = _name(table, event)
            op.execute(
                f"DROP TRIGGER IF EXISTS {name}"
                + (f' ON "{table}"' if dialect == "postgresql" else "")
            )
            if dialect == "postgresql":
                op.execute(f"DROP FUNCTION IF EXISTS {name}()")
    op.drop_table("mailbox_lease")
    op.drop_table("worker_state")
    op.drop_index("ix_customer_next_due_at", table_name="customer")
    with op.batch_alter_table("customer", schema=None) as batch_op:
        batch_op.drop_column("next_due_at")
