"""report_addendum: a radiologist's addenda to a signed report, kept beside the original
(the report becomes `amended`; ai_services.service.add_addendum)

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-10 10:00:00
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0020"
down_revision: str | None = "0019"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "report_addendum",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("report_id", sa.Integer(), nullable=False),
        sa.Column("patient_id", sa.Integer(), nullable=False),
        sa.Column("author_user_id", sa.Integer(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("referrer_notified_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["report_id"], ["diagnostic_report.id"],
                                name=op.f("fk_report_addendum_report_id_diagnostic_report")),
        sa.ForeignKeyConstraint(["patient_id"], ["patient.id"], name=op.f("fk_report_addendum_patient_id_patient")),
        sa.ForeignKeyConstraint(["author_user_id"], ["user_account.id"],
                                name=op.f("fk_report_addendum_author_user_id_user_account")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_report_addendum")),
    )
    with op.batch_alter_table("report_addendum", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_report_addendum_report_id"), ["report_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_report_addendum_patient_id"), ["patient_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("report_addendum", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_report_addendum_patient_id"))
        batch_op.drop_index(batch_op.f("ix_report_addendum_report_id"))
    op.drop_table("report_addendum")
