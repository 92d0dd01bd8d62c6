"""one_fulfilment_per_order: an order is fulfilled by one study, and told downstream once

`order_fulfilment` holds the one study that completed each order (primary key: the referral), so a
second study under the same AccessionNumber can never publish a second `StudyCompleted` (a second
analysis, a second scan charge). Orders already completed are backfilled with their first complete
study. `imaging_study.merged_into_id` records that staff merged a study into another one.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-05 10:00:00
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "order_fulfilment",
        sa.Column("referral_id", sa.Integer(), nullable=False),
        sa.Column("study_id", sa.Integer(), nullable=False),
        sa.Column("fulfilled_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["referral_id"], ["referral.id"], name=op.f("fk_order_fulfilment_referral_id_referral")),
        sa.ForeignKeyConstraint(["study_id"], ["imaging_study.id"], name=op.f("fk_order_fulfilment_study_id_imaging_study")),
        sa.PrimaryKeyConstraint("referral_id", name=op.f("pk_order_fulfilment")),
        sa.UniqueConstraint("study_id", name=op.f("uq_order_fulfilment_study_id")),
    )
    op.execute(
        "INSERT INTO order_fulfilment (referral_id, study_id, fulfilled_at) "
        "SELECT referral_id, MIN(id), MIN(COALESCE(completed_at, received_at)) FROM imaging_study "
        "WHERE referral_id IS NOT NULL AND status = 'available' GROUP BY referral_id"
    )
    with op.batch_alter_table("imaging_study", schema=None) as batch_op:
        batch_op.add_column(sa.Column("merged_into_id", sa.Integer(), nullable=True))
        batch_op.create_foreign_key(
            batch_op.f("fk_imaging_study_merged_into_id_imaging_study"), "imaging_study", ["merged_into_id"], ["id"]
        )


def downgrade() -> None:
    with op.batch_alter_table("imaging_study", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("fk_imaging_study_merged_into_id_imaging_study"), type_="foreignkey")
        batch_op.drop_column("merged_into_id")
    op.drop_table("order_fulfilment")
