"""Referral tables: a clinician's order for an imaging examination (FHIR ServiceRequest)."""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import ForeignKey, String, Text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from hospital.clock import utcnow
from hospital.db import Base
from hospital.models import Organization, Patient, Practitioner, User, enum_column


class ReferralStatus(str, enum.Enum):
    """ServiceRequest.status values this workflow uses."""

    ACTIVE = "active"  # sent by the clinician, awaiting the imaging centre
    ACCEPTED = "accepted"  # accepted by the centre (FHIR: active, with an accession number)
    REJECTED = "rejected"  # FHIR: revoked
    SCHEDULED = "scheduled"  # FHIR: active, with a booked Appointment
    IN_PROGRESS = "in-progress"  # FHIR: active, images arriving
    COMPLETED = "completed"
    CANCELLED = "cancelled"  # FHIR: revoked


class Priority(str, enum.Enum):
    ROUTINE = "routine"
    URGENT = "urgent"
    ASAP = "asap"
    STAT = "stat"


class Referral(Base):
    __tablename__ = "referral"

    id: Mapped[int] = mapped_column(primary_key=True)
    patient_id: Mapped[int] = mapped_column(ForeignKey("patient.id"), index=True)
    requester_id: Mapped[int] = mapped_column(ForeignKey("practitioner.id"), index=True)
    created_by_user_id: Mapped[int] = mapped_column(ForeignKey("user_account.id"))
    performer_organization_id: Mapped[int] = mapped_column(ForeignKey("organization.id"), index=True)
    status: Mapped[ReferralStatus] = mapped_column(enum_column(ReferralStatus), default=ReferralStatus.ACTIVE)
    priority: Mapped[Priority] = mapped_column(enum_column(Priority), default=Priority.ROUTINE)
    modality: Mapped[str] = mapped_column(String(16))  # DICOM modality code, e.g. CT
    body_part: Mapped[str] = mapped_column(String(64))  # e.g. CHEST
    procedure_description: Mapped[str] = mapped_column(String(200))
    reason: Mapped[str] = mapped_column(Text)
    # Assigned by the imaging centre on acceptance; the key that matches DICOM images to the order.
    accession_number: Mapped[str | None] = mapped_column(String(16), unique=True)
    # Set when this referral was created from an earlier one (a follow-up repeat scan).
    replaces_referral_id: Mapped[int | None] = mapped_column(ForeignKey("referral.id"))
    status_reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    patient: Mapped[Patient] = relationship()
    requester: Mapped[Practitioner] = relationship()
    performer: Mapped[Organization] = relationship()
    created_by: Mapped[User] = relationship()
