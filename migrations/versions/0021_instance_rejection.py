"""instance_rejection: IHE IOCM rejection notes received and the instances they withdrew
(imaging_orders/archive/rejection.py)

Revision ID: 0021
Revises: 0020
Create Date: 2026-12-12 10:00:00
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0021"
down_revision: str | None = "0020"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "instance_rejection",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("study_id", sa.Integer(), nullable=False),
        sa.Column("kos_sop_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("code_value", sa.String(length=16), nullable=False),
        sa.Column("coding_scheme", sa.String(length=16), nullable=False),
        sa.Column("code_meaning", sa.String(length=64), nullable=False),
        sa.Column("rejected_by", sa.String(length=80), nullable=False),
        sa.Column("rejected_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("withdrawn_count", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["study_id"], ["imaging_study.id"], name=op.f("fk_instance_rejection_study_id_imaging_study")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_instance_rejection")),
        sa.UniqueConstraint("kos_sop_instance_uid", name=op.f("uq_instance_rejection_kos_sop_instance_uid")),
    )
    with op.batch_alter_table("instance_rejection", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_instance_rejection_study_id"), ["study_id"], unique=False)
    with op.batch_alter_table("imaging_instance", schema=None) as batch_op:
        batch_op.add_column(sa.Column("rejection_id", sa.Integer(), nullable=True))
        batch_op.create_index(batch_op.f("ix_imaging_instance_rejection_id"), ["rejection_id"], unique=False)
        batch_op.create_foreign_key(
            batch_op.f("fk_imaging_instance_rejection_id_instance_rejection"), "instance_rejection",
            ["rejection_id"], ["id"],
        )


def downgrade() -> None:
    with op.batch_alter_table("imaging_instance", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("fk_imaging_instance_rejection_id_instance_rejection"), type_="foreignkey")
        batch_op.drop_index(batch_op.f("ix_imaging_instance_rejection_id"))
        batch_op.drop_column("rejection_id")
    with op.batch_alter_table("instance_rejection", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_instance_rejection_study_id"))
    op.drop_table("instance_rejection")
