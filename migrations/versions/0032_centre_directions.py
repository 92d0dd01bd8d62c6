"""centre_directions and examination_preparation: where an imaging centre is and how a patient
prepares for each kind of examination there, in Chinese and English

Revision ID: 0032
Revises: 0031
Create Date: 2026-12-04 06:10:00
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0032"
down_revision: str | None = "0031"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "centre_directions",
        sa.Column("organization_id", sa.Integer(), nullable=False),
        sa.Column("address_en", sa.String(length=300), nullable=False),
        sa.Column("address_zh", sa.String(length=300), nullable=False),
        sa.Column("map_url", sa.String(length=500), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["organization_id"], ["organization.id"]),
        sa.PrimaryKeyConstraint("organization_id"),
    )
    op.create_table(
        "examination_preparation",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("organization_id", sa.Integer(), nullable=False),
        sa.Column("modality", sa.String(length=16), nullable=False),
        sa.Column("instructions_en", sa.String(length=2000), nullable=False),
        sa.Column("instructions_zh", sa.String(length=2000), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["organization_id"], ["organization.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("organization_id", "modality", name="uq_examination_preparation_modality"),
    )
    op.create_index("ix_examination_preparation_organization_id", "examination_preparation", ["organization_id"])


def downgrade() -> None:
    op.drop_index("ix_examination_preparation_organization_id", table_name="examination_preparation")
    op.drop_table("examination_preparation")
    op.drop_table("centre_directions")
