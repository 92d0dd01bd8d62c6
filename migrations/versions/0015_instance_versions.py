"""instance_versions: a corrected re-send of a SOP instance is kept as a new version

`imaging_instance.version` counts the versions received under a SOP Instance UID (the row is the
newest); `imaging_instance_version` keeps each superseded version's file, size, digest and syntax.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-05 12:00:00
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("imaging_instance", schema=None) as batch_op:
        batch_op.add_column(sa.Column("version", sa.Integer(), server_default="1", nullable=False))
    op.create_table(
        "imaging_instance_version",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("instance_id", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("transfer_syntax_uid", sa.String(length=64), nullable=False),
        sa.Column("path", sa.String(length=400), nullable=False),
        sa.Column("size_bytes", sa.Integer(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("superseded_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["instance_id"], ["imaging_instance.id"],
                                name=op.f("fk_imaging_instance_version_instance_id_imaging_instance")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_imaging_instance_version")),
        sa.UniqueConstraint("instance_id", "version", name=op.f("uq_imaging_instance_version_instance_id_version")),
    )
    op.create_index(op.f("ix_imaging_instance_version_instance_id"), "imaging_instance_version", ["instance_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_imaging_instance_version_instance_id"), table_name="imaging_instance_version")
    op.drop_table("imaging_instance_version")
    with op.batch_alter_table("imaging_instance", schema=None) as batch_op:
        batch_op.drop_column("version")
