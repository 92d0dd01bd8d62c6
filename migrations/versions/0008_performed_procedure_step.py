"""performed_procedure_step: what modalities report performing over MPPS (N-CREATE / N-SET)

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-24 10:00:00
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "performed_procedure_step",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("sop_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("appointment_id", sa.Integer(), nullable=True),
        sa.Column("referral_id", sa.Integer(), nullable=True),
        sa.Column("accession_number", sa.String(length=16), nullable=True),
        sa.Column(
            "status",
            sa.Enum("in-progress", "completed", "discontinued", name="performedstepstatus", native_enum=False, length=32),
            nullable=False,
        ),
        sa.Column("performed_station_ae_title", sa.String(length=16), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("discontinuation_reason", sa.String(length=200), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["appointment_id"], ["appointment.id"], name=op.f("fk_performed_procedure_step_appointment_id_appointment")
        ),
        sa.ForeignKeyConstraint(
            ["referral_id"], ["referral.id"], name=op.f("fk_performed_procedure_step_referral_id_referral")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_performed_procedure_step")),
        sa.UniqueConstraint("sop_instance_uid", name=op.f("uq_performed_procedure_step_sop_instance_uid")),
    )
    with op.batch_alter_table("performed_procedure_step", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_performed_procedure_step_appointment_id"), ["appointment_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_performed_procedure_step_referral_id"), ["referral_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("performed_procedure_step", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_performed_procedure_step_referral_id"))
        batch_op.drop_index(batch_op.f("ix_performed_procedure_step_appointment_id"))
    op.drop_table("performed_procedure_step")
