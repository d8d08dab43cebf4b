"""shipping: the order's marketplace site, carrier, tracking, the marketplace's delivery
estimate, a delivery event and the parcel's last status

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03 10:00:00.000000

Columns are added and dropped in place (SQLite 3.35+ drops a plain column without
rebuilding the table), so the order table keeps the triggers of 0005.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import worker.schema

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_COLUMNS = (
    ("site", sa.String(64), "marketplace site host: ebay.de, amazon.co.jp"),
    ("carrier", sa.String(64), None),
    ("tracking_number", sa.String(64), None),
    ("shipping_service", sa.String(64), None),
    ("expected_delivery_at", worker.schema.UtcDateTime(), "the marketplace's own estimate"),
    ("delivery_event_at", worker.schema.UtcDateTime(), "a delivery event; outranks the rest"),
    ("shipment_status", sa.String(24), None),
    ("shipment_status_at", worker.schema.UtcDateTime(), None),
)


def upgrade() -> None:
    for name, kind, comment in _COLUMNS:
        op.add_column("order", sa.Column(name, kind, nullable=True, comment=comment))


def downgrade() -> None:
    for name, _kind, _comment in reversed(_COLUMNS):
        op.drop_column("order", name)
