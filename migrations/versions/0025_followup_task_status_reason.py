"""followup_task.status_reason: why the responsible clinician cancelled a follow-up task

Revision ID: 0025
Revises: 0024
Create Date: 2026-12-03 23:30:00
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0025"
down_revision: str | None = "0024"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Null for existing tasks: none was cancelled with a reason before the plan could be edited.
    with op.batch_alter_table("followup_task", schema=None) as batch_op:
        batch_op.add_column(sa.Column("status_reason", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("followup_task", schema=None) as batch_op:
        batch_op.drop_column("status_reason")
