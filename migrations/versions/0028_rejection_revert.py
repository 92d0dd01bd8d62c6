"""instance_rejection.reverted_at / reverted_by: a rejection reverted by an authorised user
(imaging_orders/archive/rejection.py)

Revision ID: 0028
Revises: 0027
Create Date: 2026-12-03 23:40:00
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0028"
down_revision: str | None = "0027"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("instance_rejection", schema=None) as batch_op:
        batch_op.add_column(sa.Column("reverted_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("reverted_by", sa.String(length=80), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("instance_rejection", schema=None) as batch_op:
        batch_op.drop_column("reverted_by")
        batch_op.drop_column("reverted_at")
