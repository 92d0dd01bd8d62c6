"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-23 13:34:42.688890
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0001'
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('job_record',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('handler', sa.String(length=200), nullable=False),
    sa.Column('queue', sa.String(length=40), nullable=False),
    sa.Column('event', sa.String(length=80), nullable=True),
    sa.Column('payload', sa.JSON(), nullable=False),
    sa.Column('status', sa.Enum('queued', 'running', 'done', 'failed', name='jobstatus', native_enum=False, length=32), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_job_record'))
    )
    with op.batch_alter_table('job_record', schema=None) as batch_op:
        batch_op.create_index('ix_job_record_status_created', ['status', 'created_at'], unique=False)

    op.create_table('model_version',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=80), nullable=False),
    sa.Column('version', sa.String(length=40), nullable=False),
    sa.Column('weights_path', sa.String(length=400), nullable=False),
    sa.Column('weights_sha256', sa.String(length=64), nullable=False),
    sa.Column('manifest', sa.JSON(), nullable=False),
    sa.Column('metrics', sa.JSON(), nullable=False),
    sa.Column('active', sa.Boolean(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_model_version')),
    sa.UniqueConstraint('name', 'version', name=op.f('uq_model_version_name_version'))
    )
    op.create_table('organization',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('kind', sa.Enum('imaging_centre', 'clinic', 'pharmacy', 'hospital', name='organizationkind', native_enum=False, length=32), nullable=False),
    sa.Column('ae_title', sa.String(length=16), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_organization')),
    sa.UniqueConstraint('ae_title', name=op.f('uq_organization_ae_title'))
    )
    op.create_table('patient',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('mrn', sa.String(length=64), nullable=False),
    sa.Column('family_name', sa.String(length=100), nullable=False),
    sa.Column('given_name', sa.String(length=100), nullable=False),
    sa.Column('birth_date', sa.Date(), nullable=True),
    sa.Column('gender', sa.String(length=16), nullable=False),
    sa.Column('phone', sa.String(length=40), nullable=True),
    sa.Column('email', sa.String(length=200), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_patient')),
    sa.UniqueConstraint('mrn', name=op.f('uq_patient_mrn'))
    )
    op.create_table('catalog_entry',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('code', sa.String(length=64), nullable=False),
    sa.Column('display', sa.String(length=200), nullable=False),
    sa.Column('service_line', sa.Enum('scan', 'ai-analysis', 'consultation', 'medication', name='serviceline', native_enum=False, length=32), nullable=False),
    sa.Column('organization_id', sa.Integer(), nullable=True),
    sa.Column('unit_price_minor', sa.Integer(), nullable=False),
    sa.Column('currency', sa.String(length=3), nullable=False),
    sa.Column('effective_from', sa.DateTime(timezone=True), nullable=False),
    sa.Column('effective_to', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['organization_id'], ['organization.id'], name=op.f('fk_catalog_entry_organization_id_organization')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_catalog_entry'))
    )
    with op.batch_alter_table('catalog_entry', schema=None) as batch_op:
        batch_op.create_index('ix_catalog_entry_code', ['code', 'organization_id', 'effective_from'], unique=False)

    op.create_table('invoice',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('patient_id', sa.Integer(), nullable=False),
    sa.Column('status', sa.Enum('issued', 'balanced', 'cancelled', name='invoicestatus', native_enum=False, length=32), nullable=False),
    sa.Column('currency', sa.String(length=3), nullable=False),
    sa.Column('total_minor', sa.Integer(), nullable=False),
    sa.Column('paid_minor', sa.Integer(), nullable=False),
    sa.Column('issued_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('period_start', sa.DateTime(timezone=True), nullable=True),
    sa.Column('period_end', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['patient_id'], ['patient.id'], name=op.f('fk_invoice_patient_id_patient')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_invoice'))
    )
    with op.batch_alter_table('invoice', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_invoice_patient_id'), ['patient_id'], unique=False)

    op.create_table('practitioner',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('family_name', sa.String(length=100), nullable=False),
    sa.Column('given_name', sa.String(length=100), nullable=False),
    sa.Column('organization_id', sa.Integer(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['organization_id'], ['organization.id'], name=op.f('fk_practitioner_organization_id_organization')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_practitioner'))
    )
    op.create_table('schedule',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('organization_id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=120), nullable=False),
    sa.Column('modality', sa.String(length=16), nullable=False),
    sa.Column('room', sa.String(length=60), nullable=False),
    sa.Column('station_ae_title', sa.String(length=16), nullable=False),
    sa.Column('active', sa.Boolean(), nullable=False),
    sa.ForeignKeyConstraint(['organization_id'], ['organization.id'], name=op.f('fk_schedule_organization_id_organization')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_schedule'))
    )
    with op.batch_alter_table('schedule', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_schedule_organization_id'), ['organization_id'], unique=False)

    op.create_table('charge_item',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('event_key', sa.String(length=120), nullable=False),
    sa.Column('patient_id', sa.Integer(), nullable=False),
    sa.Column('catalog_entry_id', sa.Integer(), nullable=False),
    sa.Column('organization_id', sa.Integer(), nullable=True),
    sa.Column('service_line', sa.Enum('scan', 'ai-analysis', 'consultation', 'medication', name='serviceline', native_enum=False, length=32), nullable=False),
    sa.Column('code', sa.String(length=64), nullable=False),
    sa.Column('display', sa.String(length=200), nullable=False),
    sa.Column('quantity', sa.Integer(), nullable=False),
    sa.Column('unit_price_minor', sa.Integer(), nullable=False),
    sa.Column('total_minor', sa.Integer(), nullable=False),
    sa.Column('currency', sa.String(length=3), nullable=False),
    sa.Column('service_reference', sa.String(length=120), nullable=False),
    sa.Column('ai_attributed', sa.Boolean(), nullable=False),
    sa.Column('status', sa.Enum('billable', 'billed', 'not-billable', name='chargestatus', native_enum=False, length=32), nullable=False),
    sa.Column('occurred_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('invoice_id', sa.Integer(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['catalog_entry_id'], ['catalog_entry.id'], name=op.f('fk_charge_item_catalog_entry_id_catalog_entry')),
    sa.ForeignKeyConstraint(['invoice_id'], ['invoice.id'], name=op.f('fk_charge_item_invoice_id_invoice')),
    sa.ForeignKeyConstraint(['organization_id'], ['organization.id'], name=op.f('fk_charge_item_organization_id_organization')),
    sa.ForeignKeyConstraint(['patient_id'], ['patient.id'], name=op.f('fk_charge_item_patient_id_patient')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_charge_item')),
    sa.UniqueConstraint('event_key', name=op.f('uq_charge_item_event_key'))
    )
    with op.batch_alter_table('charge_item', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_charge_item_invoice_id'), ['invoice_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_charge_item_patient_id'), ['patient_id'], unique=False)

    op.create_table('slot',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('schedule_id', sa.Integer(), nullable=False),
    sa.Column('start', sa.DateTime(timezone=True), nullable=False),
    sa.Column('end', sa.DateTime(timezone=True), nullable=False),
    sa.Column('status', sa.Enum('free', 'busy', 'busy-unavailable', name='slotstatus', native_enum=False, length=32), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['schedule_id'], ['schedule.id'], name=op.f('fk_slot_schedule_id_schedule')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_slot'))
    )
    with op.batch_alter_table('slot', schema=None) as batch_op:
        batch_op.create_index('ix_slot_schedule_start', ['schedule_id', 'start'], unique=False)

    op.create_table('user_account',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('username', sa.String(length=80), nullable=False),
    sa.Column('password_hash', sa.String(length=256), nullable=False),
    sa.Column('role', sa.Enum('clinician', 'patient', 'imaging_staff', 'radiologist', 'pharmacist', 'admin', name='role', native_enum=False, length=32), nullable=False),
    sa.Column('patient_id', sa.Integer(), nullable=True),
    sa.Column('practitioner_id', sa.Integer(), nullable=True),
    sa.Column('organization_id', sa.Integer(), nullable=True),
    sa.Column('active', sa.Boolean(), nullable=False),
    sa.Column('failed_logins', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['organization_id'], ['organization.id'], name=op.f('fk_user_account_organization_id_organization')),
    sa.ForeignKeyConstraint(['patient_id'], ['patient.id'], name=op.f('fk_user_account_patient_id_patient')),
    sa.ForeignKeyConstraint(['practitioner_id'], ['practitioner.id'], name=op.f('fk_user_account_practitioner_id_practitioner')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_user_account')),
    sa.UniqueConstraint('username', name=op.f('uq_user_account_username'))
    )
    op.create_table('api_token',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('token_sha256', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('revoked_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['user_id'], ['user_account.id'], name=op.f('fk_api_token_user_id_user_account')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_api_token')),
    sa.UniqueConstraint('token_sha256', name=op.f('uq_api_token_token_sha256'))
    )
    with op.batch_alter_table('api_token', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_api_token_user_id'), ['user_id'], unique=False)

    op.create_table('audit_event',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('recorded_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=True),
    sa.Column('action', sa.String(length=1), nullable=False),
    sa.Column('entity_type', sa.String(length=64), nullable=False),
    sa.Column('entity_id', sa.String(length=64), nullable=True),
    sa.Column('patient_id', sa.Integer(), nullable=True),
    sa.Column('outcome', sa.Integer(), nullable=False),
    sa.Column('description', sa.Text(), nullable=True),
    sa.Column('source', sa.String(length=32), nullable=False),
    sa.ForeignKeyConstraint(['patient_id'], ['patient.id'], name=op.f('fk_audit_event_patient_id_patient')),
    sa.ForeignKeyConstraint(['user_id'], ['user_account.id'], name=op.f('fk_audit_event_user_id_user_account')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_audit_event'))
    )
    with op.batch_alter_table('audit_event', schema=None) as batch_op:
        batch_op.create_index('ix_audit_event_patient_recorded', ['patient_id', 'recorded_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_audit_event_recorded_at'), ['recorded_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_audit_event_user_id'), ['user_id'], unique=False)

    op.create_table('referral',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('patient_id', sa.Integer(), nullable=False),
    sa.Column('requester_id', sa.Integer(), nullable=False),
    sa.Column('created_by_user_id', sa.Integer(), nullable=False),
    sa.Column('performer_organization_id', sa.Integer(), nullable=False),
    sa.Column('status', sa.Enum('active', 'accepted', 'rejected', 'scheduled', 'in-progress', 'completed', 'cancelled', name='referralstatus', native_enum=False, length=32), nullable=False),
    sa.Column('priority', sa.Enum('routine', 'urgent', 'asap', 'stat', name='priority', native_enum=False, length=32), nullable=False),
    sa.Column('modality', sa.String(length=16), nullable=False),
    sa.Column('body_part', sa.String(length=64), nullable=False),
    sa.Column('procedure_description', sa.String(length=200), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('accession_number', sa.String(length=16), nullable=True),
    sa.Column('replaces_referral_id', sa.Integer(), nullable=True),
    sa.Column('status_reason', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['created_by_user_id'], ['user_account.id'], name=op.f('fk_referral_created_by_user_id_user_account')),
    sa.ForeignKeyConstraint(['patient_id'], ['patient.id'], name=op.f('fk_referral_patient_id_patient')),
    sa.ForeignKeyConstraint(['performer_organization_id'], ['organization.id'], name=op.f('fk_referral_performer_organization_id_organization')),
    sa.ForeignKeyConstraint(['replaces_referral_id'], ['referral.id'], name=op.f('fk_referral_replaces_referral_id_referral')),
    sa.ForeignKeyConstraint(['requester_id'], ['practitioner.id'], name=op.f('fk_referral_requester_id_practitioner')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_referral')),
    sa.UniqueConstraint('accession_number', name=op.f('uq_referral_accession_number'))
    )
    with op.batch_alter_table('referral', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_referral_patient_id'), ['patient_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_referral_performer_organization_id'), ['performer_organization_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_referral_requester_id'), ['requester_id'], unique=False)

    op.create_table('appointment',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('slot_id', sa.Integer(), nullable=True),
    sa.Column('referral_id', sa.Integer(), nullable=True),
    sa.Column('patient_id', sa.Integer(), nullable=False),
    sa.Column('start', sa.DateTime(timezone=True), nullable=False),
    sa.Column('end', sa.DateTime(timezone=True), nullable=False),
    sa.Column('status', sa.Enum('booked', 'arrived', 'fulfilled', 'cancelled', 'noshow', name='appointmentstatus', native_enum=False, length=32), nullable=False),
    sa.Column('description', sa.String(length=200), nullable=False),
    sa.Column('booked_by_user_id', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['booked_by_user_id'], ['user_account.id'], name=op.f('fk_appointment_booked_by_user_id_user_account')),
    sa.ForeignKeyConstraint(['patient_id'], ['patient.id'], name=op.f('fk_appointment_patient_id_patient')),
    sa.ForeignKeyConstraint(['referral_id'], ['referral.id'], name=op.f('fk_appointment_referral_id_referral')),
    sa.ForeignKeyConstraint(['slot_id'], ['slot.id'], name=op.f('fk_appointment_slot_id_slot')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_appointment')),
    sa.UniqueConstraint('slot_id', name=op.f('uq_appointment_slot_id'))
    )
    with op.batch_alter_table('appointment', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_appointment_patient_id'), ['patient_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_appointment_referral_id'), ['referral_id'], unique=False)

    op.create_table('imaging_study',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('study_instance_uid', sa.String(length=64), nullable=False),
    sa.Column('accession_number', sa.String(length=16), nullable=True),
    sa.Column('referral_id', sa.Integer(), nullable=True),
    sa.Column('patient_id', sa.Integer(), nullable=True),
    sa.Column('organization_id', sa.Integer(), nullable=True),
    sa.Column('status', sa.Enum('registered', 'available', 'cancelled', name='studystatus', native_enum=False, length=32), nullable=False),
    sa.Column('dicom_patient_id', sa.String(length=64), nullable=True),
    sa.Column('dicom_patient_name', sa.String(length=200), nullable=True),
    sa.Column('description', sa.String(length=200), nullable=True),
    sa.Column('started', sa.DateTime(timezone=True), nullable=True),
    sa.Column('received_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('last_instance_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('completed_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['organization_id'], ['organization.id'], name=op.f('fk_imaging_study_organization_id_organization')),
    sa.ForeignKeyConstraint(['patient_id'], ['patient.id'], name=op.f('fk_imaging_study_patient_id_patient')),
    sa.ForeignKeyConstraint(['referral_id'], ['referral.id'], name=op.f('fk_imaging_study_referral_id_referral')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_imaging_study')),
    sa.UniqueConstraint('study_instance_uid', name=op.f('uq_imaging_study_study_instance_uid'))
    )
    with op.batch_alter_table('imaging_study', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_imaging_study_accession_number'), ['accession_number'], unique=False)
        batch_op.create_index(batch_op.f('ix_imaging_study_patient_id'), ['patient_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_imaging_study_referral_id'), ['referral_id'], unique=False)

    op.create_table('analysis_job',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('study_id', sa.Integer(), nullable=False),
    sa.Column('model_version_id', sa.Integer(), nullable=True),
    sa.Column('status', sa.Enum('queued', 'running', 'completed', 'failed', name='analysisstatus', native_enum=False, length=32), nullable=False),
    sa.Column('slices_done', sa.Integer(), nullable=False),
    sa.Column('slices_total', sa.Integer(), nullable=False),
    sa.Column('series_instance_uid', sa.String(length=64), nullable=True),
    sa.Column('slice_sop_instance_uids', sa.JSON(), nullable=False),
    sa.Column('pixel_spacing_mm', sa.JSON(), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['model_version_id'], ['model_version.id'], name=op.f('fk_analysis_job_model_version_id_model_version')),
    sa.ForeignKeyConstraint(['study_id'], ['imaging_study.id'], name=op.f('fk_analysis_job_study_id_imaging_study')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_analysis_job')),
    sa.UniqueConstraint('study_id', name=op.f('uq_analysis_job_study_id'))
    )
    op.create_table('imaging_series',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('study_id', sa.Integer(), nullable=False),
    sa.Column('series_instance_uid', sa.String(length=64), nullable=False),
    sa.Column('number', sa.Integer(), nullable=True),
    sa.Column('modality', sa.String(length=16), nullable=False),
    sa.Column('description', sa.String(length=200), nullable=True),
    sa.Column('body_part', sa.String(length=64), nullable=True),
    sa.ForeignKeyConstraint(['study_id'], ['imaging_study.id'], name=op.f('fk_imaging_series_study_id_imaging_study')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_imaging_series')),
    sa.UniqueConstraint('series_instance_uid', name=op.f('uq_imaging_series_series_instance_uid'))
    )
    with op.batch_alter_table('imaging_series', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_imaging_series_study_id'), ['study_id'], unique=False)

    op.create_table('diagnostic_report',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('study_id', sa.Integer(), nullable=False),
    sa.Column('patient_id', sa.Integer(), nullable=False),
    sa.Column('referral_id', sa.Integer(), nullable=True),
    sa.Column('analysis_job_id', sa.Integer(), nullable=True),
    sa.Column('status', sa.Enum('preliminary', 'final', 'amended', name='reportstatus', native_enum=False, length=32), nullable=False),
    sa.Column('conclusion', sa.Text(), nullable=False),
    sa.Column('issued_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('signed_by_user_id', sa.Integer(), nullable=True),
    sa.Column('signed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['analysis_job_id'], ['analysis_job.id'], name=op.f('fk_diagnostic_report_analysis_job_id_analysis_job')),
    sa.ForeignKeyConstraint(['patient_id'], ['patient.id'], name=op.f('fk_diagnostic_report_patient_id_patient')),
    sa.ForeignKeyConstraint(['referral_id'], ['referral.id'], name=op.f('fk_diagnostic_report_referral_id_referral')),
    sa.ForeignKeyConstraint(['signed_by_user_id'], ['user_account.id'], name=op.f('fk_diagnostic_report_signed_by_user_id_user_account')),
    sa.ForeignKeyConstraint(['study_id'], ['imaging_study.id'], name=op.f('fk_diagnostic_report_study_id_imaging_study')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_diagnostic_report')),
    sa.UniqueConstraint('study_id', name=op.f('uq_diagnostic_report_study_id'))
    )
    with op.batch_alter_table('diagnostic_report', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_diagnostic_report_patient_id'), ['patient_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_diagnostic_report_referral_id'), ['referral_id'], unique=False)

    op.create_table('imaging_instance',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('series_id', sa.Integer(), nullable=False),
    sa.Column('sop_instance_uid', sa.String(length=64), nullable=False),
    sa.Column('sop_class_uid', sa.String(length=64), nullable=False),
    sa.Column('transfer_syntax_uid', sa.String(length=64), nullable=False),
    sa.Column('number', sa.Integer(), nullable=True),
    sa.Column('path', sa.String(length=400), nullable=False),
    sa.Column('size_bytes', sa.Integer(), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('warnings', sa.JSON(), nullable=False),
    sa.Column('received_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['series_id'], ['imaging_series.id'], name=op.f('fk_imaging_instance_series_id_imaging_series')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_imaging_instance')),
    sa.UniqueConstraint('sop_instance_uid', name=op.f('uq_imaging_instance_sop_instance_uid'))
    )
    with op.batch_alter_table('imaging_instance', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_imaging_instance_series_id'), ['series_id'], unique=False)

    op.create_table('consultation',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('report_id', sa.Integer(), nullable=False),
    sa.Column('patient_id', sa.Integer(), nullable=False),
    sa.Column('practitioner_id', sa.Integer(), nullable=False),
    sa.Column('status', sa.Enum('planned', 'in-progress', 'finished', 'cancelled', name='consultationstatus', native_enum=False, length=32), nullable=False),
    sa.Column('priority', sa.String(length=16), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('note', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('ended_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['patient_id'], ['patient.id'], name=op.f('fk_consultation_patient_id_patient')),
    sa.ForeignKeyConstraint(['practitioner_id'], ['practitioner.id'], name=op.f('fk_consultation_practitioner_id_practitioner')),
    sa.ForeignKeyConstraint(['report_id'], ['diagnostic_report.id'], name=op.f('fk_consultation_report_id_diagnostic_report')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_consultation')),
    sa.UniqueConstraint('report_id', name=op.f('uq_consultation_report_id'))
    )
    with op.batch_alter_table('consultation', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_consultation_patient_id'), ['patient_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_consultation_practitioner_id'), ['practitioner_id'], unique=False)

    op.create_table('finding',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('report_id', sa.Integer(), nullable=False),
    sa.Column('patient_id', sa.Integer(), nullable=False),
    sa.Column('source', sa.Enum('ai', 'radiologist', name='findingsource', native_enum=False, length=32), nullable=False),
    sa.Column('model_version_id', sa.Integer(), nullable=True),
    sa.Column('sop_instance_uid', sa.String(length=64), nullable=False),
    sa.Column('slice_index', sa.Integer(), nullable=False),
    sa.Column('x0', sa.Integer(), nullable=False),
    sa.Column('y0', sa.Integer(), nullable=False),
    sa.Column('x1', sa.Integer(), nullable=False),
    sa.Column('y1', sa.Integer(), nullable=False),
    sa.Column('diameter_mm', sa.Float(), nullable=False),
    sa.Column('n_slices', sa.Integer(), nullable=False),
    sa.Column('confidence', sa.Float(), nullable=True),
    sa.Column('body_site', sa.String(length=64), nullable=False),
    sa.Column('review_status', sa.Enum('pending', 'accepted', 'rejected', 'edited', name='reviewstatus', native_enum=False, length=32), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['model_version_id'], ['model_version.id'], name=op.f('fk_finding_model_version_id_model_version')),
    sa.ForeignKeyConstraint(['patient_id'], ['patient.id'], name=op.f('fk_finding_patient_id_patient')),
    sa.ForeignKeyConstraint(['report_id'], ['diagnostic_report.id'], name=op.f('fk_finding_report_id_diagnostic_report')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_finding'))
    )
    with op.batch_alter_table('finding', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_finding_patient_id'), ['patient_id'], unique=False)
        batch_op.create_index('ix_finding_report', ['report_id'], unique=False)

    op.create_table('care_plan',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('consultation_id', sa.Integer(), nullable=False),
    sa.Column('patient_id', sa.Integer(), nullable=False),
    sa.Column('title', sa.String(length=200), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['consultation_id'], ['consultation.id'], name=op.f('fk_care_plan_consultation_id_consultation')),
    sa.ForeignKeyConstraint(['patient_id'], ['patient.id'], name=op.f('fk_care_plan_patient_id_patient')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_care_plan')),
    sa.UniqueConstraint('consultation_id', name=op.f('uq_care_plan_consultation_id'))
    )
    with op.batch_alter_table('care_plan', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_care_plan_patient_id'), ['patient_id'], unique=False)

    op.create_table('finding_review',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('finding_id', sa.Integer(), nullable=False),
    sa.Column('reviewer_user_id', sa.Integer(), nullable=False),
    sa.Column('decision', sa.Enum('pending', 'accepted', 'rejected', 'edited', name='reviewstatus', native_enum=False, length=32), nullable=False),
    sa.Column('previous', sa.JSON(), nullable=False),
    sa.Column('comment', sa.Text(), nullable=True),
    sa.Column('decided_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['finding_id'], ['finding.id'], name=op.f('fk_finding_review_finding_id_finding')),
    sa.ForeignKeyConstraint(['reviewer_user_id'], ['user_account.id'], name=op.f('fk_finding_review_reviewer_user_id_user_account')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_finding_review'))
    )
    with op.batch_alter_table('finding_review', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_finding_review_finding_id'), ['finding_id'], unique=False)

    op.create_table('medication_request',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('consultation_id', sa.Integer(), nullable=True),
    sa.Column('patient_id', sa.Integer(), nullable=False),
    sa.Column('prescriber_id', sa.Integer(), nullable=False),
    sa.Column('pharmacy_organization_id', sa.Integer(), nullable=True),
    sa.Column('medication_code', sa.String(length=64), nullable=False),
    sa.Column('medication_display', sa.String(length=200), nullable=False),
    sa.Column('dosage_text', sa.Text(), nullable=False),
    sa.Column('quantity', sa.Integer(), nullable=False),
    sa.Column('refills', sa.Integer(), nullable=False),
    sa.Column('status', sa.Enum('active', 'completed', 'cancelled', name='medicationrequeststatus', native_enum=False, length=32), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['consultation_id'], ['consultation.id'], name=op.f('fk_medication_request_consultation_id_consultation')),
    sa.ForeignKeyConstraint(['patient_id'], ['patient.id'], name=op.f('fk_medication_request_patient_id_patient')),
    sa.ForeignKeyConstraint(['pharmacy_organization_id'], ['organization.id'], name=op.f('fk_medication_request_pharmacy_organization_id_organization')),
    sa.ForeignKeyConstraint(['prescriber_id'], ['practitioner.id'], name=op.f('fk_medication_request_prescriber_id_practitioner')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_medication_request'))
    )
    with op.batch_alter_table('medication_request', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_medication_request_consultation_id'), ['consultation_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_medication_request_patient_id'), ['patient_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_medication_request_pharmacy_organization_id'), ['pharmacy_organization_id'], unique=False)

    op.create_table('followup_task',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('care_plan_id', sa.Integer(), nullable=False),
    sa.Column('patient_id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('description', sa.Text(), nullable=False),
    sa.Column('status', sa.Enum('requested', 'in-progress', 'completed', 'cancelled', name='taskstatus', native_enum=False, length=32), nullable=False),
    sa.Column('due_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('completed_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['care_plan_id'], ['care_plan.id'], name=op.f('fk_followup_task_care_plan_id_care_plan')),
    sa.ForeignKeyConstraint(['patient_id'], ['patient.id'], name=op.f('fk_followup_task_patient_id_patient')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_followup_task'))
    )
    with op.batch_alter_table('followup_task', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_followup_task_care_plan_id'), ['care_plan_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_followup_task_patient_id'), ['patient_id'], unique=False)

    op.create_table('medication_dispense',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('request_id', sa.Integer(), nullable=False),
    sa.Column('patient_id', sa.Integer(), nullable=False),
    sa.Column('quantity', sa.Integer(), nullable=False),
    sa.Column('dispensed_by_user_id', sa.Integer(), nullable=False),
    sa.Column('dispensed_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['dispensed_by_user_id'], ['user_account.id'], name=op.f('fk_medication_dispense_dispensed_by_user_id_user_account')),
    sa.ForeignKeyConstraint(['patient_id'], ['patient.id'], name=op.f('fk_medication_dispense_patient_id_patient')),
    sa.ForeignKeyConstraint(['request_id'], ['medication_request.id'], name=op.f('fk_medication_dispense_request_id_medication_request')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_medication_dispense'))
    )
    with op.batch_alter_table('medication_dispense', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_medication_dispense_patient_id'), ['patient_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_medication_dispense_request_id'), ['request_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('medication_dispense', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_medication_dispense_request_id'))
        batch_op.drop_index(batch_op.f('ix_medication_dispense_patient_id'))

    op.drop_table('medication_dispense')
    with op.batch_alter_table('followup_task', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_followup_task_patient_id'))
        batch_op.drop_index(batch_op.f('ix_followup_task_care_plan_id'))

    op.drop_table('followup_task')
    with op.batch_alter_table('medication_request', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_medication_request_pharmacy_organization_id'))
        batch_op.drop_index(batch_op.f('ix_medication_request_patient_id'))
        batch_op.drop_index(batch_op.f('ix_medication_request_consultation_id'))

    op.drop_table('medication_request')
    with op.batch_alter_table('finding_review', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_finding_review_finding_id'))

    op.drop_table('finding_review')
    with op.batch_alter_table('care_plan', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_care_plan_patient_id'))

    op.drop_table('care_plan')
    with op.batch_alter_table('finding', schema=None) as batch_op:
        batch_op.drop_index('ix_finding_report')
        batch_op.drop_index(batch_op.f('ix_finding_patient_id'))

    op.drop_table('finding')
    with op.batch_alter_table('consultation', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_consultation_practitioner_id'))
        batch_op.drop_index(batch_op.f('ix_consultation_patient_id'))

    op.drop_table('consultation')
    with op.batch_alter_table('imaging_instance', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_imaging_instance_series_id'))

    op.drop_table('imaging_instance')
    with op.batch_alter_table('diagnostic_report', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_diagnostic_report_referral_id'))
        batch_op.drop_index(batch_op.f('ix_diagnostic_report_patient_id'))

    op.drop_table('diagnostic_report')
    with op.batch_alter_table('imaging_series', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_imaging_series_study_id'))

    op.drop_table('imaging_series')
    op.drop_table('analysis_job')
    with op.batch_alter_table('imaging_study', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_imaging_study_referral_id'))
        batch_op.drop_index(batch_op.f('ix_imaging_study_patient_id'))
        batch_op.drop_index(batch_op.f('ix_imaging_study_accession_number'))

    op.drop_table('imaging_study')
    with op.batch_alter_table('appointment', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_appointment_referral_id'))
        batch_op.drop_index(batch_op.f('ix_appointment_patient_id'))

    op.drop_table('appointment')
    with op.batch_alter_table('referral', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_referral_requester_id'))
        batch_op.drop_index(batch_op.f('ix_referral_performer_organization_id'))
        batch_op.drop_index(batch_op.f('ix_referral_patient_id'))

    op.drop_table('referral')
    with op.batch_alter_table('audit_event', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_audit_event_user_id'))
        batch_op.drop_index(batch_op.f('ix_audit_event_recorded_at'))
        batch_op.drop_index('ix_audit_event_patient_recorded')

    op.drop_table('audit_event')
    with op.batch_alter_table('api_token', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_api_token_user_id'))

    op.drop_table('api_token')
    op.drop_table('user_account')
    with op.batch_alter_table('slot', schema=None) as batch_op:
        batch_op.drop_index('ix_slot_schedule_start')

    op.drop_table('slot')
    with op.batch_alter_table('charge_item', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_charge_item_patient_id'))
        batch_op.drop_index(batch_op.f('ix_charge_item_invoice_id'))

    op.drop_table('charge_item')
    with op.batch_alter_table('schedule', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_schedule_organization_id'))

    op.drop_table('schedule')
    op.drop_table('practitioner')
    with op.batch_alter_table('invoice', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_invoice_patient_id'))

    op.drop_table('invoice')
    with op.batch_alter_table('catalog_entry', schema=None) as batch_op:
        batch_op.drop_index('ix_catalog_entry_code')

    op.drop_table('catalog_entry')
    op.drop_table('patient')
    op.drop_table('organization')
    op.drop_table('model_version')
    with op.batch_alter_table('job_record', schema=None) as batch_op:
        batch_op.drop_index('ix_job_record_status_created')

    op.drop_table('job_record')
