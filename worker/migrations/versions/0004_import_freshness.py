"""import freshness: as of when each order's and customer's imported values are true

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-10 10:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import worker.schema

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_COMMENT = "the feed's last-updated time of the values, else the import's"


def upgrade() -> None:
    for name in ("order", "customer"):
        op.add_column(
            name,
            sa.Column(
                "source_updated_at", worker.schema.UtcDateTime(), nullable=True, comment=_COMMENT
            ),
        )
        # The last import is the best known age of what is stored already.
        table = sa.table(name, sa.column("source_updated_at"), sa.column("updated_at"))
        op.execute(table.update().values(source_updated_at=table.c.updated_at))


def downgrade() -> None:
    for name in ("customer", "order"):
        with op.batch_alter_table(name, schema=None) as batch_op:
            batch_op.drop_column("source_updated_at")
