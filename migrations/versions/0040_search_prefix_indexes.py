"""indexes on lower(...) for the prefix and any-case searches: Patient family/given name (FHIR),
the study's PatientID and AccessionNumber (QIDO, C-FIND)

Revision ID: 0040
Revises: 0039
Create Date: 2026-12-04 13:30:00
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0040"
down_revision: str | None = "0039"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INDEXES = (
    ("ix_patient_family_name_lower", "patient", "family_name"),
    ("ix_patient_given_name_lower", "patient", "given_name"),
    ("ix_imaging_study_dicom_patient_id_lower", "imaging_study", "dicom_patient_id"),
    ("ix_imaging_study_accession_number_lower", "imaging_study", "accession_number"),
)


def upgrade() -> None:
    # text_pattern_ops lets PostgreSQL use the index for LIKE 'prefix%' whatever the collation.
    ops = " text_pattern_ops" if op.get_bind().dialect.name == "postgresql" else ""
    for name, table, column in INDEXES:
        op.create_index(name, table, [sa.text(f"lower({column}){ops}")])


def downgrade() -> None:
    for name, table, _column in INDEXES:
        op.drop_index(name, table_name=table)
