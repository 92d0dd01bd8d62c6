"""billing coverage and payments; pharmacy stock; follow-up reminders, patient time zones, consultation messages

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23 13:54:38.022742
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0003'
down_revision: str | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('consultation_message',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('consultation_id', sa.Integer(), nullable=False),
    sa.Column('patient_id', sa.Integer(), nullable=False),
    sa.Column('sender_user_id', sa.Integer(), nullable=False),
    sa.Column('recipient_role', sa.String(length=16), nullable=False),
    sa.Column('body', sa.Text(), nullable=False),
    sa.Column('sent_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('read_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['consultation_id'], ['consultation.id'], name=op.f('fk_consultation_message_consultation_id_consultation')),
    sa.ForeignKeyConstraint(['patient_id'], ['patient.id'], name=op.f('fk_consultation_message_patient_id_patient')),
    sa.ForeignKeyConstraint(['sender_user_id'], ['user_account.id'], name=op.f('fk_consultation_message_sender_user_id_user_account')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_consultation_message'))
    )
    with op.batch_alter_table('consultation_message', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_consultation_message_consultation_id'), ['consultation_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_consultation_message_patient_id'), ['patient_id'], unique=False)
    with op.batch_alter_table('patient', schema=None) as batch_op:
        batch_op.add_column(sa.Column('timezone', sa.String(length=64), nullable=False, server_default='UTC'))
    with op.batch_alter_table('followup_task', schema=None) as batch_op:
        batch_op.add_column(sa.Column('referral_id', sa.Integer(), nullable=True))
        batch_op.create_foreign_key(batch_op.f('fk_followup_task_referral_id_referral'), 'referral', ['referral_id'], ['id'])
    op.create_table('notification',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('patient_id', sa.Integer(), nullable=False),
    sa.Column('task_id', sa.Integer(), nullable=True),
    sa.Column('kind', sa.String(length=40), nullable=False),
    sa.Column('channel', sa.String(length=16), nullable=False),
    sa.Column('recipient', sa.String(length=200), nullable=False),
    sa.Column('subject', sa.String(length=200), nullable=False),
    sa.Column('body', sa.Text(), nullable=False),
    sa.Column('sent_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['patient_id'], ['patient.id'], name=op.f('fk_notification_patient_id_patient')),
    sa.ForeignKeyConstraint(['task_id'], ['followup_task.id'], name=op.f('fk_notification_task_id_followup_task')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_notification')),
    sa.UniqueConstraint('task_id', 'kind', name=op.f('uq_notification_task_id_kind'))
    )
    with op.batch_alter_table('notification', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_notification_patient_id'), ['patient_id'], unique=False)
    op.create_table('pharmacy_stock',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('pharmacy_organization_id', sa.Integer(), nullable=False),
    sa.Column('medication_code', sa.String(length=64), nullable=False),
    sa.Column('quantity_on_hand', sa.Integer(), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['pharmacy_organization_id'], ['organization.id'], name=op.f('fk_pharmacy_stock_pharmacy_organization_id_organization')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_pharmacy_stock')),
    sa.UniqueConstraint('pharmacy_organization_id', 'medication_code', name=op.f('uq_pharmacy_stock_pharmacy_organization_id_medication_code'))
    )
    op.create_table('coverage',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('patient_id', sa.Integer(), nullable=False),
    sa.Column('payer_name', sa.String(length=200), nullable=False),
    sa.Column('member_id', sa.String(length=64), nullable=False),
    sa.Column('share_basis_points', sa.Integer(), nullable=False),
    sa.Column('active', sa.Boolean(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['patient_id'], ['patient.id'], name=op.f('fk_coverage_patient_id_patient')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_coverage'))
    )
    with op.batch_alter_table('coverage', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_coverage_patient_id'), ['patient_id'], unique=False)

    op.create_table('payment',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('invoice_id', sa.Integer(), nullable=False),
    sa.Column('payer', sa.Enum('patient', 'insurer', name='payer', native_enum=False, length=32), nullable=False),
    sa.Column('kind', sa.Enum('payment', 'refund', name='paymentkind', native_enum=False, length=32), nullable=False),
    sa.Column('amount_minor', sa.Integer(), nullable=False),
    sa.Column('currency', sa.String(length=3), nullable=False),
    sa.Column('idempotency_key', sa.String(length=120), nullable=False),
    sa.Column('reference', sa.String(length=200), nullable=True),
    sa.Column('recorded_by_user_id', sa.Integer(), nullable=False),
    sa.Column('received_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['invoice_id'], ['invoice.id'], name=op.f('fk_payment_invoice_id_invoice')),
    sa.ForeignKeyConstraint(['recorded_by_user_id'], ['user_account.id'], name=op.f('fk_payment_recorded_by_user_id_user_account')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_payment')),
    sa.UniqueConstraint('idempotency_key', name=op.f('uq_payment_idempotency_key'))
    )
    with op.batch_alter_table('payment', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_payment_invoice_id'), ['invoice_id'], unique=False)

    with op.batch_alter_table('invoice', schema=None) as batch_op:
        # Existing invoices predate insurance: the patient owes all of them.
        batch_op.add_column(sa.Column('insurer_share_minor', sa.Integer(), nullable=False, server_default='0'))
        batch_op.add_column(sa.Column('patient_share_minor', sa.Integer(), nullable=False, server_default='0'))
        batch_op.add_column(sa.Column('coverage_id', sa.Integer(), nullable=True))
        batch_op.create_foreign_key(batch_op.f('fk_invoice_coverage_id_coverage'), 'coverage', ['coverage_id'], ['id'])
    op.execute("UPDATE invoice SET patient_share_minor = total_minor")



def downgrade() -> None:
    with op.batch_alter_table('invoice', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('fk_invoice_coverage_id_coverage'), type_='foreignkey')
        batch_op.drop_column('coverage_id')
        batch_op.drop_column('patient_share_minor')
        batch_op.drop_column('insurer_share_minor')

    with op.batch_alter_table('payment', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_payment_invoice_id'))

    op.drop_table('payment')
    with op.batch_alter_table('coverage', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_coverage_patient_id'))

    op.drop_table('coverage')
    op.drop_table('pharmacy_stock')
    with op.batch_alter_table('consultation_message', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_consultation_message_patient_id'))
        batch_op.drop_index(batch_op.f('ix_consultation_message_consultation_id'))
    op.drop_table('consultation_message')
    with op.batch_alter_table('notification', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_notification_patient_id'))
    op.drop_table('notification')
    with op.batch_alter_table('followup_task', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('fk_followup_task_referral_id_referral'), type_='foreignkey')
        batch_op.drop_column('referral_id')
    with op.batch_alter_table('patient', schema=None) as batch_op:
        batch_op.drop_column('timezone')
