"""Imaging centre tables: schedules and slots, appointments, and the studies that arrive over
DICOM (ImagingStudy -> series -> instances), matched to referrals by AccessionNumber."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column, relationship

from hospital.clock import utcnow
from hospital.db import Base
from hospital.models import Organization, Patient, enum_column
from referrals.models import Referral


class Schedule(Base):
    """A bookable resource of a centre: one modality in one room (FHIR Schedule)."""

    __tablename__ = "schedule"

    id: Mapped[int] = mapped_column(primary_key=True)
    organization_id: Mapped[int] = mapped_column(ForeignKey("organization.id"), index=True)
    name: Mapped[str] = mapped_column(String(120))
    modality: Mapped[str] = mapped_column(String(16))
    room: Mapped[str] = mapped_column(String(60))
    # The AE title of the modality in this room (ScheduledStationAETitle in the worklist).
    station_ae_title: Mapped[str] = mapped_column(String(16))
    active: Mapped[bool] = mapped_column(default=True)

    organization: Mapped[Organization] = relationship()


class SlotStatus(str, enum.Enum):
    FREE = "free"
    BUSY = "busy"
    BLOCKED = "busy-unavailable"


class Slot(Base):
    __tablename__ = "slot"
    __table_args__ = (Index("ix_slot_schedule_start", "schedule_id", "start"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    schedule_id: Mapped[int] = mapped_column(ForeignKey("schedule.id"))
    start: Mapped[datetime]
    end: Mapped[datetime]
    status: Mapped[SlotStatus] = mapped_column(enum_column(SlotStatus), default=SlotStatus.FREE)
    # Optimistic lock: booking updates the slot only at the version it read.
    version: Mapped[int] = mapped_column(Integer, default=1)

    schedule: Mapped[Schedule] = relationship()
    __mapper_args__ = {"version_id_col": version}


class AppointmentStatus(str, enum.Enum):
    BOOKED = "booked"
    ARRIVED = "arrived"
    FULFILLED = "fulfilled"
    CANCELLED = "cancelled"
    NOSHOW = "noshow"


class Appointment(Base):
    __tablename__ = "appointment"

    id: Mapped[int] = mapped_column(primary_key=True)
    # Unique: a slot holds at most one live appointment; the database enforces it under races.
    slot_id: Mapped[int | None] = mapped_column(ForeignKey("slot.id"), unique=True)
    referral_id: Mapped[int | None] = mapped_column(ForeignKey("referral.id"), index=True)
    patient_id: Mapped[int] = mapped_column(ForeignKey("patient.id"), index=True)
    start: Mapped[datetime]
    end: Mapped[datetime]
    status: Mapped[AppointmentStatus] = mapped_column(enum_column(AppointmentStatus), default=AppointmentStatus.BOOKED)
    description: Mapped[str] = mapped_column(String(200))
    booked_by_user_id: Mapped[int] = mapped_column(ForeignKey("user_account.id"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    slot: Mapped[Slot | None] = relationship()
    referral: Mapped[Referral | None] = relationship()
    patient: Mapped[Patient] = relationship()


class StudyStatus(str, enum.Enum):
    REGISTERED = "registered"  # instances arriving
    AVAILABLE = "available"  # complete: all instances in, analysis may start
    CANCELLED = "cancelled"


class ImagingStudy(Base):
    __tablename__ = "imaging_study"

    id: Mapped[int] = mapped_column(primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    accession_number: Mapped[str | None] = mapped_column(String(16), index=True)
    # Null until matched: an unmatched study waits in the reconciliation queue, never dropped.
    referral_id: Mapped[int | None] = mapped_column(ForeignKey("referral.id"), index=True)
    patient_id: Mapped[int | None] = mapped_column(ForeignKey("patient.id"), index=True)
    organization_id: Mapped[int | None] = mapped_column(ForeignKey("organization.id"))
    status: Mapped[StudyStatus] = mapped_column(enum_column(StudyStatus), default=StudyStatus.REGISTERED)
    # What the images' headers said, kept for reconciliation.
    dicom_patient_id: Mapped[str | None] = mapped_column(String(64))
    dicom_patient_name: Mapped[str | None] = mapped_column(String(200))
    description: Mapped[str | None] = mapped_column(String(200))
    started: Mapped[datetime | None]
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_instance_at: Mapped[datetime] = mapped_column(default=utcnow)
    completed_at: Mapped[datetime | None]

    referral: Mapped[Referral | None] = relationship()
    patient: Mapped[Patient | None] = relationship()
    series: Mapped[list[ImagingSeries]] = relationship(back_populates="study", order_by="ImagingSeries.number")


class ImagingSeries(Base):
    __tablename__ = "imaging_series"

    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("imaging_study.id"), index=True)
    series_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    number: Mapped[int | None]
    modality: Mapped[str] = mapped_column(String(16))
    description: Mapped[str | None] = mapped_column(String(200))
    body_part: Mapped[str | None] = mapped_column(String(64))

    study: Mapped[ImagingStudy] = relationship(back_populates="series")
    instances: Mapped[list[ImagingInstance]] = relationship(
        back_populates="series", order_by="ImagingInstance.number"
    )


class ImagingInstance(Base):
    __tablename__ = "imaging_instance"

    id: Mapped[int] = mapped_column(primary_key=True)
    series_id: Mapped[int] = mapped_column(ForeignKey("imaging_series.id"), index=True)
    # Unique: the same SOP Instance sent twice is stored once.
    sop_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    transfer_syntax_uid: Mapped[str] = mapped_column(String(64))
    number: Mapped[int | None]
    # Path relative to DICOM_STORAGE_DIR.
    path: Mapped[str] = mapped_column(String(400))
    size_bytes: Mapped[int]
    sha256: Mapped[str] = mapped_column(String(64))
    warnings: Mapped[list[Any]] = mapped_column(default=list)
    received_at: Mapped[datetime] = mapped_column(default=utcnow)

    series: Mapped[ImagingSeries] = relationship(back_populates="instances")


class PerformedStepStatus(str, enum.Enum):
    """PerformedProcedureStepStatus (PS3.3 C.4.14), stored in lower case like the other enums."""

    IN_PROGRESS = "in-progress"
    COMPLETED = "completed"
    DISCONTINUED = "discontinued"


class PerformedProcedureStep(Base):
    """What a modality reported performing over MPPS (PS3.4 Annex F): one row per N-CREATE.

    `appointment_id` is NULL for an unscheduled step (the modality named no accession or step we
    know); the row is kept so staff can see it, and the modality was not failed for it.
    """

    __tablename__ = "performed_procedure_step"

    id: Mapped[int] = mapped_column(primary_key=True)
    # Unique: the Affected SOP Instance UID of the N-CREATE; a second create of it is a duplicate.
    sop_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    appointment_id: Mapped[int | None] = mapped_column(ForeignKey("appointment.id"), index=True)
    referral_id: Mapped[int | None] = mapped_column(ForeignKey("referral.id"), index=True)
    # What the modality sent, kept for reconciling an unscheduled step by hand.
    accession_number: Mapped[str | None] = mapped_column(String(16))
    status: Mapped[PerformedStepStatus] = mapped_column(
        enum_column(PerformedStepStatus), default=PerformedStepStatus.IN_PROGRESS
    )
    performed_station_ae_title: Mapped[str | None] = mapped_column(String(16))
    # When this node was told (N-CREATE / the final N-SET): the modality's own DA/TM are local and
    # carry no zone.
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    ended_at: Mapped[datetime | None]
    # "CodingScheme CodeValue: CodeMeaning" of PerformedProcedureStepDiscontinuationReasonCodeSequence.
    discontinuation_reason: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    appointment: Mapped[Appointment | None] = relationship()
