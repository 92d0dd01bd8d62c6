"""user_notification: a mail-only notification to a patient without an account (patient_id)

Revision ID: 0039
Revises: 0038
Create Date: 2026-12-04 12:30:00
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0039"
down_revision: str | None = "0038"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("user_notification") as batch:
        batch.alter_column("user_id", existing_type=sa.Integer(), nullable=True)
        batch.add_column(sa.Column("patient_id", sa.Integer(), nullable=True))
        batch.create_foreign_key("fk_user_notification_patient_id_patient", "patient", ["patient_id"], ["id"])
        batch.create_unique_constraint("uq_user_notification_patient_id_event_key", ["patient_id", "event_key"])
        batch.create_check_constraint("one_recipient", "(user_id IS NULL) <> (patient_id IS NULL)")


def downgrade() -> None:
    op.execute("DELETE FROM user_notification WHERE user_id IS NULL")
    with op.batch_alter_table("user_notification") as batch:
        batch.drop_constraint("one_recipient", type_="check")
        batch.drop_constraint("uq_user_notification_patient_id_event_key", type_="unique")
        batch.drop_constraint("fk_user_notification_patient_id_patient", type_="foreignkey")
        batch.drop_column("patient_id")
        batch.alter_column("user_id", existing_type=sa.Integer(), nullable=False)
