"""imaging_series.derived: series the platform made from a study itself (the AI's SR and key
images), told apart from the modality's own images on the worklist and in counts

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-03 20:30:00
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Additive with a server default: code that does not know the column keeps working (expand).
    op.add_column("imaging_series", sa.Column("derived", sa.Boolean(), nullable=False, server_default=sa.false()))


def downgrade() -> None:
    op.drop_column("imaging_series", "derived")
