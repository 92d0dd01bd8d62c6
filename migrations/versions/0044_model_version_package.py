"""model_version.model_package_id: the package a detector version came in by (its submission,
checks, held-out evaluation and approval), when it came in as one

Revision ID: 0044
Revises: 0043
Create Date: 2026-12-04 21:00:00
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0044"
down_revision: str | None = "0043"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("model_version") as batch:
        batch.add_column(sa.Column("model_package_id", sa.Integer(), nullable=True))
        batch.create_foreign_key("fk_model_version_model_package_id_model_package", "model_package",
                                 ["model_package_id"], ["id"])
        batch.create_index("ix_model_version_model_package_id", ["model_package_id"], unique=True)


def downgrade() -> None:
    with op.batch_alter_table("model_version") as batch:
        batch.drop_index("ix_model_version_model_package_id")
        batch.drop_constraint("fk_model_version_model_package_id_model_package", type_="foreignkey")
        batch.drop_column("model_package_id")
