"""research_contribution: uploads by research contributors beside platform studies

Revision ID: 0038
Revises: 0034
Create Date: 2026-12-04 12:40:00
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0038"
# Rechained onto the latest migration when the branches land together.
down_revision: str | None = "0034"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("research_contribution") as batch:
        batch.add_column(sa.Column("source", sa.Enum("platform", "upload", name="contributionsource",
                                                     native_enum=False, length=32),
                                   nullable=False, server_default="platform"))
        batch.alter_column("study_id", existing_type=sa.Integer(), nullable=True)
        batch.alter_column("report_id", existing_type=sa.Integer(), nullable=True)
        batch.alter_column("patient_id", existing_type=sa.Integer(), nullable=True)
        batch.add_column(sa.Column("contributor_user_id", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("source_study_uid", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("consent_reference", sa.String(length=200), nullable=True))
        batch.add_column(sa.Column("withdrawn_at", sa.DateTime(timezone=True), nullable=True))
        batch.create_foreign_key("fk_research_contribution_contributor_user_id_user_account",
                                 "user_account", ["contributor_user_id"], ["id"])
        batch.create_index("ix_research_contribution_contributor_user_id", ["contributor_user_id"])
        batch.create_unique_constraint("uq_research_contribution_organization_id_source_study_uid",
                                       ["organization_id", "source_study_uid"])
    with op.batch_alter_table("research_contribution") as batch:
        batch.alter_column("source", server_default=None)


def downgrade() -> None:
    op.execute("DELETE FROM research_contribution WHERE source = 'upload'")
    with op.batch_alter_table("research_contribution") as batch:
        batch.drop_constraint("uq_research_contribution_organization_id_source_study_uid", type_="unique")
        batch.drop_index("ix_research_contribution_contributor_user_id")
        batch.drop_constraint("fk_research_contribution_contributor_user_id_user_account", type_="foreignkey")
        batch.drop_column("withdrawn_at")
        batch.drop_column("consent_reference")
        batch.drop_column("source_study_uid")
        batch.drop_column("contributor_user_id")
        batch.alter_column("patient_id", existing_type=sa.Integer(), nullable=False)
        batch.alter_column("report_id", existing_type=sa.Integer(), nullable=False)
        batch.alter_column("study_id", existing_type=sa.Integer(), nullable=False)
        batch.drop_column("source")
