"""formulary_and_stock_lots: the coded formulary (formulary_item), pharmacy stock kept per lot with
its expiry date (pharmacy_stock_lot replaces pharmacy_stock), and on a prescription the code
system of its item and the reason the pharmacy returned it (followup/pharmacy.py)

Existing stock becomes one lot per pharmacy and code, numbered "unrecorded", without an expiry
date (it was never recorded); a downgrade adds the lots of a code back into one row.

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-12 10:00:00
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0018"
down_revision: str | None = "0017"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "formulary_item",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("system", sa.String(length=100), nullable=False),
        sa.Column("code", sa.String(length=64), nullable=False),
        sa.Column("display", sa.String(length=200), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_formulary_item")),
        sa.UniqueConstraint("code", name=op.f("uq_formulary_item_code")),
    )
    op.create_table(
        "pharmacy_stock_lot",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("pharmacy_organization_id", sa.Integer(), nullable=False),
        sa.Column("medication_code", sa.String(length=64), nullable=False),
        sa.Column("lot_number", sa.String(length=64), nullable=False),
        sa.Column("expires_on", sa.Date(), nullable=True),
        sa.Column("quantity_on_hand", sa.Integer(), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["pharmacy_organization_id"], ["organization.id"],
                                name=op.f("fk_pharmacy_stock_lot_pharmacy_organization_id_organization")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_pharmacy_stock_lot")),
        sa.UniqueConstraint("pharmacy_organization_id", "medication_code", "lot_number",
                            name=op.f("uq_pharmacy_stock_lot_pharmacy_organization_id_medication_code_lot_number")),
    )
    op.execute(
        "INSERT INTO pharmacy_stock_lot (pharmacy_organization_id, medication_code, lot_number, expires_on, "
        "quantity_on_hand, received_at, updated_at) SELECT pharmacy_organization_id, medication_code, 'unrecorded', "
        "NULL, quantity_on_hand, updated_at, updated_at FROM pharmacy_stock"
    )
    op.drop_table("pharmacy_stock")
    with op.batch_alter_table("medication_request", schema=None) as batch_op:
        batch_op.add_column(sa.Column("medication_system", sa.String(length=100), nullable=True))
        batch_op.add_column(sa.Column("status_reason", sa.Text(), nullable=True))


def downgrade() -> None:
    # Before 0018 a prescription could not be on hold: one returned to its prescriber is not to be
    # dispensed, so it ends cancelled rather than back in the queue.
    op.execute("UPDATE medication_request SET status = 'cancelled' WHERE status = 'on-hold'")
    with op.batch_alter_table("medication_request", schema=None) as batch_op:
        batch_op.drop_column("status_reason")
        batch_op.drop_column("medication_system")
    op.create_table(
        "pharmacy_stock",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("pharmacy_organization_id", sa.Integer(), nullable=False),
        sa.Column("medication_code", sa.String(length=64), nullable=False),
        sa.Column("quantity_on_hand", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["pharmacy_organization_id"], ["organization.id"],
                                name=op.f("fk_pharmacy_stock_pharmacy_organization_id_organization")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_pharmacy_stock")),
        sa.UniqueConstraint("pharmacy_organization_id", "medication_code",
                            name=op.f("uq_pharmacy_stock_pharmacy_organization_id_medication_code")),
    )
    op.execute(
        "INSERT INTO pharmacy_stock (pharmacy_organization_id, medication_code, quantity_on_hand, updated_at) "
        "SELECT pharmacy_organization_id, medication_code, SUM(quantity_on_hand), MAX(updated_at) "
        "FROM pharmacy_stock_lot GROUP BY pharmacy_organization_id, medication_code"
    )
    op.drop_table("pharmacy_stock_lot")
    op.drop_table("formulary_item")
