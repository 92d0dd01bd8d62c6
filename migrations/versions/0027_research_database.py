"""research_database: research consent, contributions, de-identified instances, the retained-UID
map, data-use agreements, immutable dataset versions and their marks (research/models.py)

Revision ID: 0027
Revises: 0026
Create Date: 2026-12-03 23:30:00
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0027"
down_revision: str | None = "0026"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _enum(*values: str, name: str) -> sa.Enum:
    return sa.Enum(*values, name=name, native_enum=False, length=32)


# A dataset version is written once: the database refuses to change or delete it, whoever asks.
IMMUTABLE_FUNCTION = """
CREATE FUNCTION dataset_version_is_immutable() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'dataset version % is immutable', OLD.number;
END;
$$ LANGUAGE plpgsql
"""
IMMUTABLE_TRIGGER = """
CREATE TRIGGER dataset_version_immutable BEFORE UPDATE OR DELETE ON dataset_version
FOR EACH ROW EXECUTE FUNCTION dataset_version_is_immutable()
"""


def upgrade() -> None:
    op.create_table(
        "research_consent",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("patient_id", sa.Integer(), nullable=False),
        sa.Column("decision", _enum("permit", "deny", name="consentdecision"), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("recorded_by_user_id", sa.Integer(), nullable=False),
        sa.Column("superseded_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["patient_id"], ["patient.id"], name=op.f("fk_research_consent_patient_id_patient")),
        sa.ForeignKeyConstraint(["recorded_by_user_id"], ["user_account.id"],
                                name=op.f("fk_research_consent_recorded_by_user_id_user_account")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_research_consent")),
    )
    op.create_index(op.f("ix_research_consent_patient_id"), "research_consent", ["patient_id"])
    op.create_table(
        "research_contribution",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("study_id", sa.Integer(), nullable=False),
        sa.Column("report_id", sa.Integer(), nullable=False),
        sa.Column("patient_id", sa.Integer(), nullable=False),
        sa.Column("organization_id", sa.Integer(), nullable=True),
        sa.Column("labels", sa.JSON(), nullable=False),
        sa.Column("contributed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("deidentified_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["study_id"], ["imaging_study.id"], name=op.f("fk_research_contribution_study_id_imaging_study")),
        sa.ForeignKeyConstraint(["report_id"], ["diagnostic_report.id"],
                                name=op.f("fk_research_contribution_report_id_diagnostic_report")),
        sa.ForeignKeyConstraint(["patient_id"], ["patient.id"], name=op.f("fk_research_contribution_patient_id_patient")),
        sa.ForeignKeyConstraint(["organization_id"], ["organization.id"],
                                name=op.f("fk_research_contribution_organization_id_organization")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_research_contribution")),
        sa.UniqueConstraint("study_id", name=op.f("uq_research_contribution_study_id")),
    )
    op.create_index(op.f("ix_research_contribution_patient_id"), "research_contribution", ["patient_id"])
    op.create_table(
        "research_instance",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("contribution_id", sa.Integer(), nullable=False),
        sa.Column("sop_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("series_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("study_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("instance_number", sa.Integer(), nullable=True),
        sa.Column("path", sa.String(length=400), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("excluded_reason", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["contribution_id"], ["research_contribution.id"],
                                name=op.f("fk_research_instance_contribution_id_research_contribution")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_research_instance")),
        sa.UniqueConstraint("sop_instance_uid", name=op.f("uq_research_instance_sop_instance_uid")),
    )
    op.create_index(op.f("ix_research_instance_contribution_id"), "research_instance", ["contribution_id"])
    op.create_table(
        "research_uid_map",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("kind", _enum("study", "series", "instance", name="uidkind"), nullable=False),
        sa.Column("original_uid", sa.String(length=64), nullable=False),
        sa.Column("research_uid", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_research_uid_map")),
        sa.UniqueConstraint("kind", "original_uid", name=op.f("uq_research_uid_map_kind_original_uid")),
        sa.UniqueConstraint("research_uid", name=op.f("uq_research_uid_map_research_uid")),
    )
    op.create_table(
        "research_data_use_agreement",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("organization_id", sa.Integer(), nullable=False),
        sa.Column("licence", sa.String(length=80), nullable=False),
        sa.Column("reference", sa.String(length=200), nullable=False),
        sa.Column("valid_from", sa.DateTime(timezone=True), nullable=False),
        sa.Column("valid_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["organization_id"], ["organization.id"],
                                name=op.f("fk_research_data_use_agreement_organization_id_organization")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_research_data_use_agreement")),
    )
    op.create_index(op.f("ix_research_data_use_agreement_organization_id"), "research_data_use_agreement",
                    ["organization_id"])
    op.create_table(
        "dataset_version",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("licence", sa.String(length=80), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(length=120), nullable=False),
        sa.Column("manifest", sa.JSON(), nullable=False),
        sa.Column("manifest_sha256", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dataset_version")),
        sa.UniqueConstraint("number", name=op.f("uq_dataset_version_number")),
    )
    op.create_table(
        "dataset_version_mark",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("dataset_version_id", sa.Integer(), nullable=False),
        sa.Column("contribution_id", sa.Integer(), nullable=False),
        sa.Column("reason", sa.String(length=80), nullable=False),
        sa.Column("marked_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["dataset_version_id"], ["dataset_version.id"],
                                name=op.f("fk_dataset_version_mark_dataset_version_id_dataset_version")),
        sa.ForeignKeyConstraint(["contribution_id"], ["research_contribution.id"],
                                name=op.f("fk_dataset_version_mark_contribution_id_research_contribution")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dataset_version_mark")),
        sa.UniqueConstraint("dataset_version_id", "contribution_id", name=op.f("uq_dataset_version_mark_dataset_version_id_contribution_id")),
    )
    op.create_index(op.f("ix_dataset_version_mark_dataset_version_id"), "dataset_version_mark", ["dataset_version_id"])
    if op.get_bind().dialect.name == "postgresql":
        op.execute(IMMUTABLE_FUNCTION)
        op.execute(IMMUTABLE_TRIGGER)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER dataset_version_immutable ON dataset_version")
        op.execute("DROP FUNCTION dataset_version_is_immutable()")
    op.drop_table("dataset_version_mark")
    op.drop_table("dataset_version")
    op.drop_table("research_data_use_agreement")
    op.drop_table("research_uid_map")
    op.drop_table("research_instance")
    op.drop_table("research_contribution")
    op.drop_table("research_consent")
