"""hl7_interface: HL7 v2 messages received and their ACKs, code mappings, placer order numbers,
results sent out (integration/models.py); patient.merged_into_id for ADT^A40 merges

Revision ID: 0022
Revises: 0021
Create Date: 2026-12-14 10:00:00
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0022"
# Written after 0019; the maintainer re-chains it behind whatever lands between.
down_revision: str | None = "0021"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _enum(*values: str, name: str) -> sa.Enum:
    return sa.Enum(*values, name=name, native_enum=False, length=32)


def upgrade() -> None:
    with op.batch_alter_table("patient", schema=None) as batch_op:
        batch_op.add_column(sa.Column("merged_into_id", sa.Integer(), nullable=True))
        batch_op.create_foreign_key(batch_op.f("fk_patient_merged_into_id_patient"), "patient", ["merged_into_id"], ["id"])

    op.create_table(
        "hl7_message",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("sending_facility", sa.String(length=227), nullable=False),
        sa.Column("sending_application", sa.String(length=227), nullable=False),
        sa.Column("control_id", sa.String(length=199), nullable=True),
        sa.Column("message_type", sa.String(length=20), nullable=True),
        sa.Column("status", _enum("processed", "error", "rejected", name="inboundstatus"), nullable=False),
        sa.Column("ack_code", sa.String(length=2), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("raw", sa.LargeBinary(), nullable=False),
        sa.Column("truncated", sa.Boolean(), nullable=False),
        sa.Column("ack", sa.LargeBinary(), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("replayed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("replay_count", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_hl7_message")),
        sa.UniqueConstraint("sending_facility", "control_id", name=op.f("uq_hl7_message_sending_facility_control_id")),
    )
    op.create_table(
        "hl7_code_map",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("kind", _enum("centre", "provider", name="codekind"), nullable=False),
        sa.Column("code", sa.String(length=227), nullable=False),
        sa.Column("target_id", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_hl7_code_map")),
        sa.UniqueConstraint("kind", "code", name=op.f("uq_hl7_code_map_kind_code")),
    )
    op.create_table(
        "hl7_placer_order",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("sending_facility", sa.String(length=227), nullable=False),
        sa.Column("placer_order_number", sa.String(length=199), nullable=False),
        sa.Column("referral_id", sa.Integer(), nullable=False),
        sa.Column("message_id", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["referral_id"], ["referral.id"], name=op.f("fk_hl7_placer_order_referral_id_referral")),
        sa.ForeignKeyConstraint(["message_id"], ["hl7_message.id"], name=op.f("fk_hl7_placer_order_message_id_hl7_message")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_hl7_placer_order")),
        sa.UniqueConstraint("referral_id", name=op.f("uq_hl7_placer_order_referral_id")),
        sa.UniqueConstraint("sending_facility", "placer_order_number",
                            name=op.f("uq_hl7_placer_order_sending_facility_placer_order_number")),
    )
    op.create_table(
        "hl7_outbound",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("report_id", sa.Integer(), nullable=False),
        sa.Column("occasion", sa.String(length=40), nullable=False),
        sa.Column("patient_id", sa.Integer(), nullable=False),
        sa.Column("destination", sa.String(length=200), nullable=False),
        sa.Column("control_id", sa.String(length=40), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("status", _enum("pending", "sent", "dead", name="outboundstatus"), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.String(length=400), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["report_id"], ["diagnostic_report.id"],
                                name=op.f("fk_hl7_outbound_report_id_diagnostic_report")),
        sa.ForeignKeyConstraint(["patient_id"], ["patient.id"], name=op.f("fk_hl7_outbound_patient_id_patient")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_hl7_outbound")),
        sa.UniqueConstraint("control_id", name=op.f("uq_hl7_outbound_control_id")),
        sa.UniqueConstraint("report_id", "occasion", "destination",
                            name=op.f("uq_hl7_outbound_report_id_occasion_destination")),
    )
    with op.batch_alter_table("hl7_outbound", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_hl7_outbound_report_id"), ["report_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_hl7_outbound_patient_id"), ["patient_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("hl7_outbound", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_hl7_outbound_patient_id"))
        batch_op.drop_index(batch_op.f("ix_hl7_outbound_report_id"))
    op.drop_table("hl7_outbound")
    op.drop_table("hl7_placer_order")
    op.drop_table("hl7_code_map")
    op.drop_table("hl7_message")
    with op.batch_alter_table("patient", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("fk_patient_merged_into_id_patient"), type_="foreignkey")
        batch_op.drop_column("merged_into_id")
