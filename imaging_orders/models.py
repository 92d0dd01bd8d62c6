"""Imaging centre tables: schedules and slots, appointments, and the procedure steps modalities
report over MPPS. The studies that arrive are the archive's (`imaging_orders.archive.models`)."""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import ForeignKey, Index, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from hospital.clock import utcnow
from hospital.db import Base
from hospital.models import Organization, Patient, enum_column


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
    # A day's worklist (and every date-ranged look at the bookings) reads a range of starts in
    # (start, id) order: without this index each C-FIND read every appointment ever booked.
    __table_args__ = (Index("ix_appointment_start_id", "start", "id"),)

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
    patient: Mapped[Patient] = relationship()


class CentreDirections(Base):
    """How a patient finds an imaging centre: its street address in both languages and a map link.

    A table of this stage rather than columns on the core `organization`: only imaging centres
    have one, and only this stage's pages show it. No row means nothing has been written yet."""

    __tablename__ = "centre_directions"

    organization_id: Mapped[int] = mapped_column(ForeignKey("organization.id"), primary_key=True)
    address_en: Mapped[str] = mapped_column(String(300), default="")
    address_zh: Mapped[str] = mapped_column(String(300), default="")
    # A web map (Amap, Baidu, OpenStreetMap ...) opened in a new tab; only http(s) is stored.
    map_url: Mapped[str | None] = mapped_column(String(500))
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class ExaminationPreparation(Base):
    """What a patient does before an examination of one modality at one centre (fasting before a
    CT with contrast, metal off for MR), in both languages, as the centre's staff write it."""

    __tablename__ = "examination_preparation"
    __table_args__ = (UniqueConstraint("organization_id", "modality", name="uq_examination_preparation_modality"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    organization_id: Mapped[int] = mapped_column(ForeignKey("organization.id"), index=True)
    modality: Mapped[str] = mapped_column(String(16))
    instructions_en: Mapped[str] = mapped_column(String(2000), default="")
    instructions_zh: Mapped[str] = mapped_column(String(2000), default="")
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


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
