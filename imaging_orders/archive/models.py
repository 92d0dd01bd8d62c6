"""The archive's tables: the studies that arrive over DICOM (ImagingStudy -> series -> instances),
matched to referrals by AccessionNumber.

The archive package is the only writer of these rows and of the files they name; other stages read
them through `imaging_orders.archive.public` and store or remove their own derived instances
through its functions.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column, relationship

from hospital.clock import utcnow
from hospital.db import Base
from hospital.models import Patient, enum_column
from referrals.models import Referral


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
