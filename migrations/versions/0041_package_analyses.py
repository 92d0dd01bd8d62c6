"""package_analysis: each partner model package's run on a study; findings marked with the run
they came from (with a class label or a segmented volume); charges marked with the package and
partner they pay

Revision ID: 0041
Revises: 0040
Create Date: 2026-12-04 15:00:00
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0041"
down_revision: str | None = "0040"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "package_analysis",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("study_id", sa.Integer(), nullable=False),
        sa.Column("report_id", sa.Integer(), nullable=False),
        sa.Column("model_package_id", sa.Integer(), nullable=False),
        sa.Column("status", sa.Enum("queued", "running", "completed", "failed", "not_applicable",
                                    name="analysisstatus", native_enum=False, length=32), nullable=False),
        sa.Column("outputs", sa.JSON(), nullable=False),
        sa.Column("seconds", sa.Float(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["study_id"], ["imaging_study.id"]),
        sa.ForeignKeyConstraint(["report_id"], ["diagnostic_report.id"]),
        sa.ForeignKeyConstraint(["model_package_id"], ["model_package.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("study_id", "model_package_id"),
    )
    op.create_index("ix_package_analysis_study_id", "package_analysis", ["study_id"])
    op.create_index("ix_package_analysis_report_id", "package_analysis", ["report_id"])
    op.create_index("ix_package_analysis_model_package_id", "package_analysis", ["model_package_id"])
    with op.batch_alter_table("finding") as batch:
        batch.add_column(sa.Column("package_analysis_id", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("label", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("volume_mm3", sa.Float(), nullable=True))
        batch.create_foreign_key("fk_finding_package_analysis_id_package_analysis", "package_analysis",
                                 ["package_analysis_id"], ["id"])
        batch.create_index("ix_finding_package_analysis_id", ["package_analysis_id"])
    with op.batch_alter_table("charge_item") as batch:
        batch.add_column(sa.Column("model_package_id", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("model_label", sa.String(length=130), nullable=True))
        batch.add_column(sa.Column("partner_organization_id", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("partner_share_bp", sa.Integer(), nullable=True))
        batch.create_foreign_key("fk_charge_item_model_package_id_model_package", "model_package",
                                 ["model_package_id"], ["id"])
        batch.create_foreign_key("fk_charge_item_partner_organization_id_organization", "organization",
                                 ["partner_organization_id"], ["id"])
        batch.create_index("ix_charge_item_partner_organization_id", ["partner_organization_id"])


def downgrade() -> None:
    with op.batch_alter_table("charge_item") as batch:
        batch.drop_index("ix_charge_item_partner_organization_id")
        batch.drop_constraint("fk_charge_item_partner_organization_id_organization", type_="foreignkey")
        batch.drop_constraint("fk_charge_item_model_package_id_model_package", type_="foreignkey")
        batch.drop_column("partner_share_bp")
        batch.drop_column("partner_organization_id")
        batch.drop_column("model_label")
        batch.drop_column("model_package_id")
    with op.batch_alter_table("finding") as batch:
        batch.drop_index("ix_finding_package_analysis_id")
        batch.drop_constraint("fk_finding_package_analysis_id_package_analysis", type_="foreignkey")
        batch.drop_column("volume_mm3")
        batch.drop_column("label")
        batch.drop_column("package_analysis_id")
    op.drop_index("ix_package_analysis_model_package_id", table_name="package_analysis")
    op.drop_index("ix_package_analysis_report_id", table_name="package_analysis")
    op.drop_index("ix_package_analysis_study_id", table_name="package_analysis")
    op.drop_table("package_analysis")
