"""archive_value_lengths: header values in the image index are kept whole

The archive's study and series columns that hold header values (AccessionNumber, PatientID,
PatientName, descriptions, Modality, BodyPartExamined) were as long as their VR allows, or shorter,
so a value a sender made longer was cut and a query by the full value found nothing. They now allow
four times the VR maximum (imaging_orders.archive.models.header_text). Widening a VARCHAR needs no
table rewrite on PostgreSQL; the downgrade cuts longer values back to the old sizes.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-01 10:00:00
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# (table, column, old length, new length); new = VR maximum x 4.
_WIDENED = (
    ("imaging_study", "accession_number", 16, 64),  # SH 16
    ("imaging_study", "dicom_patient_id", 64, 256),  # LO 64
    ("imaging_study", "dicom_patient_name", 200, 776),  # PN 3 x 64 + 2
    ("imaging_study", "description", 200, 256),  # LO 64
    ("imaging_series", "modality", 16, 64),  # CS 16
    ("imaging_series", "description", 200, 256),  # LO 64
    ("imaging_series", "body_part", 64, 64),  # CS 16: already wide enough
)


def upgrade() -> None:
    for table in ("imaging_study", "imaging_series"):
        with op.batch_alter_table(table, schema=None) as batch_op:
            for _, column, old, new in (w for w in _WIDENED if w[0] == table and w[2] != w[3]):
                batch_op.alter_column(column, existing_type=sa.String(length=old), type_=sa.String(length=new))


def downgrade() -> None:
    for table in ("imaging_study", "imaging_series"):
        with op.batch_alter_table(table, schema=None) as batch_op:
            for _, column, old, new in (w for w in _WIDENED if w[0] == table and w[2] != w[3]):
                batch_op.alter_column(
                    column, existing_type=sa.String(length=new), type_=sa.String(length=old),
                    postgresql_using=f"left({column}, {old})",
                )
