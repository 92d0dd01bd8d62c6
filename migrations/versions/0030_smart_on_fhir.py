"""SMART on FHIR: registered apps, authorization codes, refresh tokens, EHR launches, used client
assertions; api_token gains the app, scopes and launch patient of a SMART access token

Revision ID: 0030
Revises: 0029
Create Date: 2026-12-03 23:30:00
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0030"
down_revision: str | None = "0029"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "smart_client",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("client_id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("redirect_uris", sa.Text(), nullable=False),
        sa.Column("scopes", sa.Text(), nullable=False),
        sa.Column("jwks", sa.Text(), nullable=True),
        sa.Column("jwks_uri", sa.String(length=500), nullable=True),
        sa.Column("service_user_id", sa.Integer(), nullable=True),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["service_user_id"], ["user_account.id"],
                                name=op.f("fk_smart_client_service_user_id_user_account")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_smart_client")),
        sa.UniqueConstraint("client_id", name=op.f("uq_smart_client_client_id")),
    )
    op.create_table(
        "smart_authorization_code",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("code_sha256", sa.String(length=64), nullable=False),
        sa.Column("smart_client_id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("redirect_uri", sa.Text(), nullable=False),
        sa.Column("scope", sa.Text(), nullable=False),
        sa.Column("patient_id", sa.Integer(), nullable=True),
        sa.Column("code_challenge", sa.String(length=128), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("used_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["patient_id"], ["patient.id"], name=op.f("fk_smart_authorization_code_patient_id_patient")),
        sa.ForeignKeyConstraint(["smart_client_id"], ["smart_client.id"],
                                name=op.f("fk_smart_authorization_code_smart_client_id_smart_client")),
        sa.ForeignKeyConstraint(["user_id"], ["user_account.id"],
                                name=op.f("fk_smart_authorization_code_user_id_user_account")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_smart_authorization_code")),
        sa.UniqueConstraint("code_sha256", name=op.f("uq_smart_authorization_code_code_sha256")),
    )
    op.create_table(
        "smart_refresh_token",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("token_sha256", sa.String(length=64), nullable=False),
        sa.Column("smart_client_id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("scope", sa.Text(), nullable=False),
        sa.Column("patient_id", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["patient_id"], ["patient.id"], name=op.f("fk_smart_refresh_token_patient_id_patient")),
        sa.ForeignKeyConstraint(["smart_client_id"], ["smart_client.id"],
                                name=op.f("fk_smart_refresh_token_smart_client_id_smart_client")),
        sa.ForeignKeyConstraint(["user_id"], ["user_account.id"], name=op.f("fk_smart_refresh_token_user_id_user_account")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_smart_refresh_token")),
        sa.UniqueConstraint("token_sha256", name=op.f("uq_smart_refresh_token_token_sha256")),
    )
    op.create_index(op.f("ix_smart_refresh_token_smart_client_id"), "smart_refresh_token", ["smart_client_id"])
    op.create_index(op.f("ix_smart_refresh_token_user_id"), "smart_refresh_token", ["user_id"])
    op.create_table(
        "smart_launch",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("launch_sha256", sa.String(length=64), nullable=False),
        sa.Column("smart_client_id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("patient_id", sa.Integer(), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["patient_id"], ["patient.id"], name=op.f("fk_smart_launch_patient_id_patient")),
        sa.ForeignKeyConstraint(["smart_client_id"], ["smart_client.id"],
                                name=op.f("fk_smart_launch_smart_client_id_smart_client")),
        sa.ForeignKeyConstraint(["user_id"], ["user_account.id"], name=op.f("fk_smart_launch_user_id_user_account")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_smart_launch")),
        sa.UniqueConstraint("launch_sha256", name=op.f("uq_smart_launch_launch_sha256")),
    )
    op.create_table(
        "smart_assertion_use",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("smart_client_id", sa.Integer(), nullable=False),
        sa.Column("jti", sa.String(length=200), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["smart_client_id"], ["smart_client.id"],
                                name=op.f("fk_smart_assertion_use_smart_client_id_smart_client")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_smart_assertion_use")),
        sa.UniqueConstraint("smart_client_id", "jti", name=op.f("uq_smart_assertion_use_smart_client_id_jti")),
    )
    with op.batch_alter_table("api_token", schema=None) as batch_op:
        batch_op.add_column(sa.Column("smart_client_id", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("scope", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("patient_id", sa.Integer(), nullable=True))
        batch_op.create_foreign_key(batch_op.f("fk_api_token_smart_client_id_smart_client"), "smart_client",
                                    ["smart_client_id"], ["id"])
        batch_op.create_foreign_key(batch_op.f("fk_api_token_patient_id_patient"), "patient", ["patient_id"], ["id"])


def downgrade() -> None:
    with op.batch_alter_table("api_token", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("fk_api_token_patient_id_patient"), type_="foreignkey")
        batch_op.drop_constraint(batch_op.f("fk_api_token_smart_client_id_smart_client"), type_="foreignkey")
        batch_op.drop_column("patient_id")
        batch_op.drop_column("scope")
        batch_op.drop_column("smart_client_id")
    op.drop_table("smart_assertion_use")
    op.drop_table("smart_launch")
    op.drop_index(op.f("ix_smart_refresh_token_user_id"), table_name="smart_refresh_token")
    op.drop_index(op.f("ix_smart_refresh_token_smart_client_id"), table_name="smart_refresh_token")
    op.drop_table("smart_refresh_token")
    op.drop_table("smart_authorization_code")
    op.drop_table("smart_client")
