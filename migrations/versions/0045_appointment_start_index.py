"""appointment (start, id) index: a day's modality worklist reads a range of appointment starts in
(start, id) order; without it every C-FIND read every appointment ever booked (issue #18)

Revision ID: 0045
Revises: 0044
Create Date: 2026-12-04 22:10:00
"""
from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0045"
down_revision: str | None = "0044"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_appointment_start_id", "appointment", ["start", "id"])


def downgrade() -> None:
    op.drop_index("ix_appointment_start_id", table_name="appointment")
