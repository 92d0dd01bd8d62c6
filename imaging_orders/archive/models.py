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

from sqlalchemy import ForeignKey, Index, String, UniqueConstraint, false, func
from sqlalchemy.orm import Mapped, mapped_column, relationship

from hospital.clock import utcnow
from hospital.db import Base
from hospital.models import Patient, enum_column

# PS3.5 Table 6.2-1 maximum lengths in characters (PN: 64 per component group, three groups).
VR_MAX_CHARACTERS = {"SH": 16, "LO": 64, "CS": 16, "PN": 64 * 3 + 2}
# Senders exceed those in the wild (a RIS's 21-character AccessionNumber, a long description). The
# index keeps such a value whole, so a query by the full value finds it: columns holding header
# values allow this many times their VR's maximum, and only a value longer still is cut (with a
# warning on the instance).
OVERLONG_ALLOWANCE = 4


def header_text(vr: str) -> String:
    """The column type for a header value of `vr`."""
    return String(VR_MAX_CHARACTERS[vr] * OVERLONG_ALLOWANCE)


class StudyStatus(str, enum.Enum):
    REGISTERED = "registered"  # instances arriving
    AVAILABLE = "available"  # complete: all instances in, analysis may start
    CANCELLED = "cancelled"


class ImagingStudy(Base):
    __tablename__ = "imaging_study"

    id: Mapped[int] = mapped_column(primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    accession_number: Mapped[str | None] = mapped_column(header_text("SH"), index=True)
    # Null until matched: an unmatched study waits in the reconciliation queue, never dropped.
    referral_id: Mapped[int | None] = mapped_column(ForeignKey("referral.id"), index=True)
    patient_id: Mapped[int | None] = mapped_column(ForeignKey("patient.id"), index=True)
    organization_id: Mapped[int | None] = mapped_column(ForeignKey("organization.id"))
    status: Mapped[StudyStatus] = mapped_column(enum_column(StudyStatus), default=StudyStatus.REGISTERED)
    # What the images' headers said, kept for reconciliation.
    dicom_patient_id: Mapped[str | None] = mapped_column(header_text("LO"))
    dicom_patient_name: Mapped[str | None] = mapped_column(header_text("PN"))
    description: Mapped[str | None] = mapped_column(header_text("LO"))
    started: Mapped[datetime | None]
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_instance_at: Mapped[datetime] = mapped_column(default=utcnow)
    completed_at: Mapped[datetime | None]
    # Set when staff merged this study into another one (its series moved there; it is cancelled).
    merged_into_id: Mapped[int | None] = mapped_column(ForeignKey("imaging_study.id"))

    patient: Mapped[Patient | None] = relationship()
    series: Mapped[list[ImagingSeries]] = relationship(back_populates="study", order_by="ImagingSeries.number")



# QIDO and C-FIND match PatientID and AccessionNumber case-insensitively with DICOM wildcards:
# `lower(column) LIKE pattern`, which these serve for exact values and prefixes.
Index("ix_imaging_study_dicom_patient_id_lower", func.lower(ImagingStudy.dicom_patient_id).label("patient_id_lower"),
      postgresql_ops={"patient_id_lower": "text_pattern_ops"})
Index("ix_imaging_study_accession_number_lower", func.lower(ImagingStudy.accession_number).label("accession_lower"),
      postgresql_ops={"accession_lower": "text_pattern_ops"})

class OrderFulfilment(Base):
    """The one study that fulfilled an order: one accession, one fulfilment.

    Written when the order's study completes, in the same transaction that publishes
    `StudyCompleted`; the primary key on the referral makes a second completion for the same order
    fail (even from a concurrent completer), so analysis and the scan charge happen at most once.
    """

    __tablename__ = "order_fulfilment"

    referral_id: Mapped[int] = mapped_column(ForeignKey("referral.id"), primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("imaging_study.id"), unique=True)
    fulfilled_at: Mapped[datetime] = mapped_column(default=utcnow)


class ImagingSeries(Base):
    __tablename__ = "imaging_series"

    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("imaging_study.id"), index=True)
    series_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    number: Mapped[int | None]
    modality: Mapped[str] = mapped_column(header_text("CS"))
    description: Mapped[str | None] = mapped_column(header_text("LO"))
    body_part: Mapped[str | None] = mapped_column(header_text("CS"))
    # Made by the platform from the study itself (the AI's SR and key images), not by the modality.
    derived: Mapped[bool] = mapped_column(default=False, server_default=false())

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
    # Versions received under this SOP Instance UID; earlier ones are in imaging_instance_version.
    version: Mapped[int] = mapped_column(default=1, server_default="1")
    # Set when a rejection note (IHE IOCM) withdrew the instance: kept on disk and in the index,
    # never again found or retrieved (`imaging_orders.archive.rejection`).
    rejection_id: Mapped[int | None] = mapped_column(ForeignKey("instance_rejection.id"), index=True)

    series: Mapped[ImagingSeries] = relationship(back_populates="instances")


class InstanceRejection(Base):
    """One IHE IOCM rejection note received: a Key Object Selection Document titled with a CID 7011
    code (113001 "Rejected for Quality Reasons", ...). The note itself is an instance of the study
    (`kos_sop_instance_uid`); the instances it withdrew point here (`ImagingInstance.rejection_id`).
    Rows are never deleted: this is the record of who withdrew what, when, and why."""

    __tablename__ = "instance_rejection"

    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("imaging_study.id"), index=True)
    kos_sop_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    code_value: Mapped[str] = mapped_column(String(16))
    coding_scheme: Mapped[str] = mapped_column(String(16))
    code_meaning: Mapped[str] = mapped_column(String(64))
    # The calling AE title (C-STORE) or "STOW-RS:<user id>".
    rejected_by: Mapped[str] = mapped_column(String(80))
    rejected_at: Mapped[datetime] = mapped_column(default=utcnow)
    # How many instances this note withdrew (ones already withdrawn by an earlier note not counted).
    withdrawn_count: Mapped[int] = mapped_column(default=0)
    # Set when an authorised user reverted the rejection: its instances are live again (and may be
    # re-sent); the row stays as the record that they once were withdrawn.
    reverted_at: Mapped[datetime | None]
    reverted_by: Mapped[str | None] = mapped_column(String(80))


class ImagingInstanceVersion(Base):
    """An earlier version of an instance, superseded by a re-send of the same SOP Instance UID
    with different content (a corrected PatientID, say). The instance row is the newest version;
    these rows keep the files of the ones before, so nothing a sender was told is kept is lost."""

    __tablename__ = "imaging_instance_version"
    __table_args__ = (UniqueConstraint("instance_id", "version"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    instance_id: Mapped[int] = mapped_column(ForeignKey("imaging_instance.id"), index=True)
    version: Mapped[int]  # 1 is the first received
    transfer_syntax_uid: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(String(400))  # relative to DICOM_STORAGE_DIR
    size_bytes: Mapped[int]
    sha256: Mapped[str] = mapped_column(String(64))
    received_at: Mapped[datetime]
    superseded_at: Mapped[datetime] = mapped_column(default=utcnow)


class StorageCommitment(Base):
    """One Storage Commitment request (PS3.4 Annex J, Push Model), recorded before the N-ACTION is
    answered so that a restart of the node does not lose it, and keyed by its Transaction UID so a
    repeated request finds the same row.

    `result` is what the archive found when it checked the instances (written once; a repeat is
    answered with the same result); `state` is how far the N-EVENT-REPORT that carries it got. The
    logic lives in `imaging_orders.archive.storage_commitment`.
    """

    __tablename__ = "storage_commitment"

    class State(str, enum.Enum):
        REQUESTED = "requested"  # recorded; the node offers the report on the requesting association
        QUEUED = "queued"  # handed to the job bus: a new association to the requester's AE
        DELIVERED = "delivered"  # the requester answered the N-EVENT-REPORT with success
        UNDELIVERABLE = "undeliverable"  # given up (logged and audited); the requester keeps its copies

    id: Mapped[int] = mapped_column(primary_key=True)
    transaction_uid: Mapped[str] = mapped_column(String(64), unique=True)
    calling_ae: Mapped[str] = mapped_column(String(16))  # the requester: whose centre, where to report
    called_ae: Mapped[str] = mapped_column(String(16))  # this node's AE title as the requester named it
    # [[SOP Class UID, SOP Instance UID], ...] as requested, in order.
    requested_sops: Mapped[list[Any]]
    # {"committed": [[class, instance], ...], "failed": [[class, instance, FailureReason], ...]}
    result: Mapped[dict[str, Any] | None]
    state: Mapped[State] = mapped_column(enum_column(State), default=State.REQUESTED, index=True)
    requested_at: Mapped[datetime] = mapped_column(default=utcnow)
    evaluated_at: Mapped[datetime | None]
    delivered_at: Mapped[datetime | None]
    delivery_attempts: Mapped[int] = mapped_column(default=0)
    last_error: Mapped[str | None] = mapped_column(String(400))
