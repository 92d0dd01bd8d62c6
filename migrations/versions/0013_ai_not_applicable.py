"""ai_not_applicable: an analysis job can end "not applicable", with its reason

`analysis_job.status` is a plain VARCHAR(32) without a check constraint (enum_column), so the new
value `not_applicable` needs no schema change; the reason the model was not run gets its own
column, kept apart from `error` (a not-applicable series is not a failure). The downgrade turns
not-applicable jobs into failed ones with the reason as their error, so no row is left with a
status the older code cannot read.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-04 10:00:00
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("analysis_job", schema=None) as batch_op:
        batch_op.add_column(sa.Column("not_applicable_reason", sa.Text(), nullable=True))


def downgrade() -> None:
    op.execute(
        "UPDATE analysis_job SET status = 'failed', error = 'AI not applicable: ' || not_applicable_reason "
        "WHERE status = 'not_applicable'"
    )
    with op.batch_alter_table("analysis_job", schema=None) as batch_op:
        batch_op.drop_column("not_applicable_reason")
