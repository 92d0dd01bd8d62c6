"""model promotion: status, decision reason and parent of each model version

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24 10:00:00
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0004'
down_revision: str | None = '0003'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('model_version', schema=None) as batch_op:
        batch_op.add_column(sa.Column('status', sa.Enum('candidate', 'active', 'retired', 'rejected', name='modelstatus', native_enum=False, length=32), nullable=False, server_default='candidate'))
        batch_op.add_column(sa.Column('decision_reason', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('parent_version_id', sa.Integer(), nullable=True))
        batch_op.create_foreign_key(batch_op.f('fk_model_version_parent_version_id_model_version'), 'model_version', ['parent_version_id'], ['id'])
    # Existing rows: the active version is active; the others were superseded before this column.
    op.execute("UPDATE model_version SET status = 'active' WHERE active")
    op.execute("UPDATE model_version SET status = 'retired' WHERE NOT active")


def downgrade() -> None:
    with op.batch_alter_table('model_version', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('fk_model_version_parent_version_id_model_version'), type_='foreignkey')
        batch_op.drop_column('parent_version_id')
        batch_op.drop_column('decision_reason')
        batch_op.drop_column('status')
