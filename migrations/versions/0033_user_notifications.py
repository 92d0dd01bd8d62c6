"""user_notification: the in-app notification centre and its mail outbox; user_account.email

Revision ID: 0033
Revises: 0032
Create Date: 2026-12-04 06:10:00
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0033"
# Rechained onto 0032 when that migration lands beside this one.
down_revision: str | None = "0032"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("user_account") as batch:
        batch.add_column(sa.Column("email", sa.String(length=200), nullable=True))
    op.create_table(
        "user_notification",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=40), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("event_key", sa.String(length=120), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("read_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("mail_status", sa.Enum("none", "pending", "sent", name="mailstatus", native_enum=False, length=32),
                  nullable=False),
        sa.Column("mail_retry_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("mailed_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["user_id"], ["user_account.id"],
                                name=op.f("fk_user_notification_user_id_user_account")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_user_notification")),
        sa.UniqueConstraint("user_id", "event_key", name=op.f("uq_user_notification_user_id_event_key")),
    )
    op.create_index("ix_user_notification_user_read", "user_notification", ["user_id", "read_at"])
    op.create_index("ix_user_notification_mail", "user_notification", ["mail_status", "mail_retry_at"])


def downgrade() -> None:
    op.drop_index("ix_user_notification_mail", table_name="user_notification")
    op.drop_index("ix_user_notification_user_read", table_name="user_notification")
    op.drop_table("user_notification")
    with op.batch_alter_table("user_account") as batch:
        batch.drop_column("email")
