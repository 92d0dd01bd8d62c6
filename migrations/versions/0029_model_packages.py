"""model_package: partner AI model packages, every version kept with its checks and decision;
model_routing_rule: which package runs on which studies

Revision ID: 0029
Revises: 0028
Create Date: 2026-12-03 23:30:00
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0029"
down_revision: str | None = "0028"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "model_package",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=80), nullable=False),
        sa.Column("version", sa.String(length=40), nullable=False),
        sa.Column("partner_organization_id", sa.Integer(), nullable=False),
        sa.Column("submitted_by_user_id", sa.Integer(), nullable=False),
        sa.Column("manifest", sa.JSON(), nullable=False),
        sa.Column("package_sha256", sa.String(length=64), nullable=False),
        sa.Column("storage_path", sa.String(length=400), nullable=False),
        sa.Column("size_bytes", sa.Integer(), nullable=False),
        sa.Column("output_kind", sa.String(length=32), nullable=False),
        sa.Column("price_minor", sa.Integer(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("partner_share_bp", sa.Integer(), nullable=False),
        sa.Column("status", sa.Enum("submitted", "checks_failed", "awaiting_approval", "approved", "rejected",
                                    "retired", name="packagestatus", native_enum=False, length=32), nullable=False),
        sa.Column("check_report", sa.JSON(), nullable=False),
        sa.Column("submitted_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("checked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("decided_by_user_id", sa.Integer(), nullable=True),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("decision_reason", sa.Text(), nullable=True),
        sa.Column("retired_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["partner_organization_id"], ["organization.id"]),
        sa.ForeignKeyConstraint(["submitted_by_user_id"], ["user_account.id"]),
        sa.ForeignKeyConstraint(["decided_by_user_id"], ["user_account.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name", "version"),
    )
    op.create_index("ix_model_package_partner_organization_id", "model_package", ["partner_organization_id"])
    op.create_table(
        "model_routing_rule",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("package_name", sa.String(length=80), nullable=False),
        sa.Column("modality", sa.String(length=16), nullable=False),
        sa.Column("body_part", sa.String(length=16), nullable=True),
        sa.Column("reason_contains", sa.String(length=200), nullable=True),
        sa.Column("centre_id", sa.Integer(), nullable=True),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("created_by_user_id", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["centre_id"], ["organization.id"]),
        sa.ForeignKeyConstraint(["created_by_user_id"], ["user_account.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_model_routing_rule_package_name", "model_routing_rule", ["package_name"])


def downgrade() -> None:
    op.drop_index("ix_model_routing_rule_package_name", table_name="model_routing_rule")
    op.drop_table("model_routing_rule")
    op.drop_index("ix_model_package_partner_organization_id", table_name="model_package")
    op.drop_table("model_package")
