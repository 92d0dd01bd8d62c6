"""fhir_subscription and fhir_subscription_notification: rest-hook FHIR subscriptions and the
numbered notifications owed to each

Revision ID: 0034
Revises: 0033
Create Date: 2026-12-04 12:30:00
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0034"
down_revision: str | None = "0033"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "fhir_subscription",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("owner_user_id", sa.Integer(), nullable=False),
        sa.Column("topic", sa.String(length=200), nullable=False),
        sa.Column("status", sa.Enum("requested", "active", "error", "off", name="subscriptionstatus",
                                    native_enum=False, length=32), nullable=False),
        sa.Column("reason", sa.String(length=500), nullable=False),
        sa.Column("filter_patient_id", sa.Integer(), nullable=True),
        sa.Column("endpoint", sa.String(length=500), nullable=False),
        sa.Column("headers", sa.JSON(), nullable=False),
        sa.Column("content", sa.String(length=20), nullable=False),
        sa.Column("heartbeat_seconds", sa.Integer(), nullable=True),
        sa.Column("end", sa.DateTime(timezone=True), nullable=True),
        sa.Column("events_since_start", sa.Integer(), nullable=False),
        sa.Column("consecutive_failures", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.String(length=400), nullable=True),
        sa.Column("last_sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["owner_user_id"], ["user_account.id"],
                                name=op.f("fk_fhir_subscription_owner_user_id_user_account")),
        sa.ForeignKeyConstraint(["filter_patient_id"], ["patient.id"],
                                name=op.f("fk_fhir_subscription_filter_patient_id_patient")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_fhir_subscription")),
    )
    op.create_index(op.f("ix_fhir_subscription_owner_user_id"), "fhir_subscription", ["owner_user_id"])
    op.create_table(
        "fhir_subscription_notification",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("subscription_id", sa.Integer(), nullable=False),
        sa.Column("event_number", sa.Integer(), nullable=False),
        sa.Column("occasion", sa.String(length=80), nullable=False),
        sa.Column("focus_type", sa.String(length=40), nullable=False),
        sa.Column("focus_id", sa.Integer(), nullable=False),
        sa.Column("patient_id", sa.Integer(), nullable=True),
        sa.Column("status", sa.Enum("pending", "sent", name="notificationstatus", native_enum=False, length=32),
                  nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_error", sa.String(length=400), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["subscription_id"], ["fhir_subscription.id"],
                                name=op.f("fk_fhir_subscription_notification_subscription_id_fhir_subscription")),
        sa.ForeignKeyConstraint(["patient_id"], ["patient.id"],
                                name=op.f("fk_fhir_subscription_notification_patient_id_patient")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_fhir_subscription_notification")),
        sa.UniqueConstraint("subscription_id", "event_number",
                            name=op.f("uq_fhir_subscription_notification_subscription_id_event_number")),
        sa.UniqueConstraint("subscription_id", "occasion",
                            name=op.f("uq_fhir_subscription_notification_subscription_id_occasion")),
    )
    op.create_index("ix_fhir_subscription_notification_due", "fhir_subscription_notification",
                    ["status", "next_attempt_at"])


def downgrade() -> None:
    op.drop_index("ix_fhir_subscription_notification_due", table_name="fhir_subscription_notification")
    op.drop_table("fhir_subscription_notification")
    op.drop_index(op.f("ix_fhir_subscription_owner_user_id"), table_name="fhir_subscription")
    op.drop_table("fhir_subscription")
