"""retention: rules per data class, legal holds, and audit checkpoints (archived audit rows may
then be deleted, and only those)

Revision ID: 0026
Revises: 0025
Create Date: 2026-12-03 23:20:00

Expand-only: new tables, and the audit trail's DELETE refusal narrowed to rows no checkpoint covers.
"""
from __future__ import annotations

import os
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0026"
down_revision: str | None = "0025"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

MESSAGE = "audit_event is append-only"
CHECKPOINT_MESSAGE = "audit_checkpoint is append-only"

# UPDATE and TRUNCATE stay refused; DELETE only of rows archived under a checkpoint.
PG_APPEND_ONLY = (
    "CREATE OR REPLACE FUNCTION audit_event_append_only() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
    "IF TG_OP = 'DELETE' AND OLD.id <= (SELECT COALESCE(MAX(up_to_event_id), 0) FROM audit_checkpoint) THEN "
    "RETURN OLD; END IF; "
    f"RAISE EXCEPTION '{MESSAGE}'; END $$"
)
PG_APPEND_ONLY_BEFORE = (
    f"CREATE OR REPLACE FUNCTION audit_event_append_only() RETURNS trigger LANGUAGE plpgsql AS "
    f"$$ BEGIN RAISE EXCEPTION '{MESSAGE}'; END $$"
)


def upgrade() -> None:
    op.create_table(
        "retention_rule",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("data_class", sa.String(length=32), nullable=False),
        sa.Column("keep_days", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_by_user_id", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(["updated_by_user_id"], ["user_account.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("data_class"),
    )
    op.create_table(
        "legal_hold",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("patient_id", sa.Integer(), nullable=True),
        sa.Column("study_instance_uid", sa.String(length=64), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("placed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("placed_by_user_id", sa.Integer(), nullable=True),
        sa.Column("released_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("released_by_user_id", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(["patient_id"], ["patient.id"]),
        sa.ForeignKeyConstraint(["placed_by_user_id"], ["user_account.id"]),
        sa.ForeignKeyConstraint(["released_by_user_id"], ["user_account.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_legal_hold_patient_id", "legal_hold", ["patient_id"])
    op.create_index("ix_legal_hold_study_instance_uid", "legal_hold", ["study_instance_uid"])
    op.create_table(
        "audit_checkpoint",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("first_event_id", sa.Integer(), nullable=False),
        sa.Column("up_to_event_id", sa.Integer(), nullable=False),
        sa.Column("rows", sa.Integer(), nullable=False),
        sa.Column("head_hash", sa.String(length=64), nullable=False),
        sa.Column("archive_name", sa.String(length=200), nullable=False),
        sa.Column("archive_sha256", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("up_to_event_id"),
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute(PG_APPEND_ONLY)
        op.execute(
            "CREATE FUNCTION audit_checkpoint_append_only() RETURNS trigger LANGUAGE plpgsql AS "
            f"$$ BEGIN RAISE EXCEPTION '{CHECKPOINT_MESSAGE}'; END $$"
        )
        op.execute(
            "CREATE TRIGGER audit_checkpoint_append_only BEFORE UPDATE OR DELETE ON audit_checkpoint "
            "FOR EACH ROW EXECUTE FUNCTION audit_checkpoint_append_only()"
        )
    else:
        op.execute("DROP TRIGGER IF EXISTS audit_event_no_delete")
        op.execute(
            "CREATE TRIGGER audit_event_no_delete BEFORE DELETE ON audit_event "
            "WHEN OLD.id > (SELECT COALESCE(MAX(up_to_event_id), 0) FROM audit_checkpoint) "
            f"BEGIN SELECT RAISE(ABORT, '{MESSAGE}'); END"
        )
        for action in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER audit_checkpoint_no_{action.lower()} BEFORE {action} ON audit_checkpoint "
                f"BEGIN SELECT RAISE(ABORT, '{CHECKPOINT_MESSAGE}'); END"
            )


def downgrade() -> None:
    if os.environ.get("HOSPITAL_ALLOW_AUDIT_DOWNGRADE") != "1":
        raise RuntimeError("refusing to remove the audit checkpoints; set HOSPITAL_ALLOW_AUDIT_DOWNGRADE=1 "
                           "to do it deliberately")
    if op.get_bind().dialect.name == "postgresql":
        op.execute(PG_APPEND_ONLY_BEFORE)
        op.execute("DROP TRIGGER IF EXISTS audit_checkpoint_append_only ON audit_checkpoint")
        op.execute("DROP FUNCTION IF EXISTS audit_checkpoint_append_only()")
    else:
        op.execute("DROP TRIGGER IF EXISTS audit_event_no_delete")
        op.execute(f"CREATE TRIGGER audit_event_no_delete BEFORE DELETE ON audit_event "
                   f"BEGIN SELECT RAISE(ABORT, '{MESSAGE}'); END")
    op.drop_table("audit_checkpoint")
    op.drop_index("ix_legal_hold_study_instance_uid", table_name="legal_hold")
    op.drop_index("ix_legal_hold_patient_id", table_name="legal_hold")
    op.drop_table("legal_hold")
    op.drop_table("retention_rule")
