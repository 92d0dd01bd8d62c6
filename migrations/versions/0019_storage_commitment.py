"""storage_commitment: Storage Commitment Push Model requests (PS3.4 Annex J), their result and how
far their N-EVENT-REPORT got (imaging_orders/archive/storage_commitment.py)

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-10 10:00:00
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0019"
down_revision: str | None = "0018"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "storage_commitment",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("transaction_uid", sa.String(length=64), nullable=False),
        sa.Column("calling_ae", sa.String(length=16), nullable=False),
        sa.Column("called_ae", sa.String(length=16), nullable=False),
        sa.Column("requested_sops", sa.JSON(), nullable=False),
        sa.Column("result", sa.JSON(), nullable=True),
        sa.Column("state", sa.Enum("requested", "queued", "delivered", "undeliverable", name="state",
                                   native_enum=False, length=32), nullable=False),
        sa.Column("requested_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("evaluated_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("delivery_attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.String(length=400), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_storage_commitment")),
        sa.UniqueConstraint("transaction_uid", name=op.f("uq_storage_commitment_transaction_uid")),
    )
    with op.batch_alter_table("storage_commitment", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_storage_commitment_state"), ["state"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("storage_commitment", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_storage_commitment_state"))
    op.drop_table("storage_commitment")
