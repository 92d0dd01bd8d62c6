"""emergency_access: "break the glass" grants, each with its reason, its time limit, when the
administrators were alerted, and the administrator's review (hospital/emergency.py)

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-06 10:00:00
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "emergency_access",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("patient_id", sa.Integer(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("alerted_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("reviewed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("reviewed_by_user_id", sa.Integer(), nullable=True),
        sa.Column("review_note", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["patient_id"], ["patient.id"], name=op.f("fk_emergency_access_patient_id_patient")),
        sa.ForeignKeyConstraint(["reviewed_by_user_id"], ["user_account.id"],
                                name=op.f("fk_emergency_access_reviewed_by_user_id_user_account")),
        sa.ForeignKeyConstraint(["user_id"], ["user_account.id"], name=op.f("fk_emergency_access_user_id_user_account")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_emergency_access")),
    )
    with op.batch_alter_table("emergency_access", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_emergency_access_patient_id"), ["patient_id"], unique=False)
        batch_op.create_index("ix_emergency_access_user_expires", ["user_id", "expires_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("emergency_access", schema=None) as batch_op:
        batch_op.drop_index("ix_emergency_access_user_expires")
        batch_op.drop_index(batch_op.f("ix_emergency_access_patient_id"))
    op.drop_table("emergency_access")
