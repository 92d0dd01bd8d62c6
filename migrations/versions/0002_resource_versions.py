"""resource versions: one row per version of a FHIR-visible record (vread, _history, ETag)

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23 13:46:15.368100
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0002'
down_revision: str | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('resource_version',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('resource_type', sa.String(length=64), nullable=False),
    sa.Column('resource_id', sa.Integer(), nullable=False),
    sa.Column('version_id', sa.Integer(), nullable=False),
    sa.Column('last_updated', sa.DateTime(timezone=True), nullable=False),
    sa.Column('method', sa.String(length=8), nullable=False),
    sa.Column('patient_id', sa.Integer(), nullable=True),
    sa.Column('resource', sa.JSON(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_resource_version')),
    sa.UniqueConstraint('resource_type', 'resource_id', 'version_id', name=op.f('uq_resource_version_resource_type_resource_id_version_id'))
    )
    with op.batch_alter_table('resource_version', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_resource_version_patient_id'), ['patient_id'], unique=False)
        batch_op.create_index('ix_resource_version_type_updated', ['resource_type', 'last_updated'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('resource_version', schema=None) as batch_op:
        batch_op.drop_index('ix_resource_version_type_updated')
        batch_op.drop_index(batch_op.f('ix_resource_version_patient_id'))

    op.drop_table('resource_version')
