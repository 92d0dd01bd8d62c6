"""job_request_id: the request, job or DICOM association that caused a job record (hospital/logging_setup.py)

Revision ID: 0023
Revises: 0022
Create Date: 2026-12-12 10:00:00
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0023"
# Chained after 0019 on the ops branch; re-chained after whatever lands on main first.
down_revision: str | None = "0022"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Nullable, no default: adding it is instant and old code that does not write it keeps working.
    with op.batch_alter_table("job_record") as batch:
        batch.add_column(sa.Column("request_id", sa.String(length=80), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("job_record") as batch:
        batch.drop_column("request_id")
