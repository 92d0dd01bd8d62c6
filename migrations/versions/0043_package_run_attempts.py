"""package_analysis.attempts: how often a partner model run was claimed, so a run stuck in
`running` after a worker crash is reclaimed a limited number of times, and a late answer of an
earlier attempt is told apart from the current one's

Revision ID: 0043
Revises: 0042
Create Date: 2026-12-04 16:00:00
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0043"
down_revision: str | None = "0042"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("package_analysis") as batch:
        batch.add_column(sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"))
    # Runs claimed before this revision were claimed once.
    op.execute("UPDATE package_analysis SET attempts = 1 WHERE status <> 'queued'")


def downgrade() -> None:
    with op.batch_alter_table("package_analysis") as batch:
        batch.drop_column("attempts")
