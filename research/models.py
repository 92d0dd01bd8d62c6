"""The research stage's tables.

The de-identified copies (`research_instance`) carry research UIDs only; what they were made from
is in `research_uid_map`, a table of its own that never leaves the platform. A dataset version is
written once and never changed (the ORM refuses, and so does a database trigger); what happens to it
later (a patient withdrew) is recorded beside it in `dataset_version_mark`.
"""

from __future__ import annotations

import enum
import logging
from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, String, Text, UniqueConstraint, event
from sqlalchemy.orm import Mapped, Session, mapped_column

from hospital.clock import utcnow
from hospital.db import Base
from hospital.models import enum_column

logger = logging.getLogger(__name__)


class ConsentDecision(str, enum.Enum):
    PERMIT = "permit"  # my images may be used for research
    DENY = "deny"  # they may not (a first "no", or a withdrawal)


class ResearchConsent(Base):
    """One choice a patient made about research use of their images (FHIR Consent).

    Append-only: a new choice is a new row and the previous one gets `superseded_at`, so the
    history of what the patient said, and when, is kept. The latest row is what holds now."""

    __tablename__ = "research_consent"

    id: Mapped[int] = mapped_column(primary_key=True)
    patient_id: Mapped[int] = mapped_column(ForeignKey("patient.id"), index=True)
    decision: Mapped[ConsentDecision] = mapped_column(enum_column(ConsentDecision))
    recorded_at: Mapped[datetime] = mapped_column(default=utcnow)
    recorded_by_user_id: Mapped[int] = mapped_column(ForeignKey("user_account.id"))
    superseded_at: Mapped[datetime | None]


class ContributionSource(str, enum.Enum):
    PLATFORM = "platform"  # a signed report's study on this platform (the patient's own consent)
    UPLOAD = "upload"  # uploaded by a research contributor, under its institution's attestation


class Contribution(Base):
    """A study offered to the research database, with its labels.

    Either a platform study (a signed report's study, the radiologist's reviewed findings as labels
    with reviewer, decision and model version kept; the patient's Consent decides) or an upload by a
    `contributor` account (de-identified on arrival, the originals never kept; the contributor
    attests that consent was obtained, names where it is recorded, and may withdraw the upload).
    """

    __tablename__ = "research_contribution"
    __table_args__ = (UniqueConstraint("organization_id", "source_study_uid"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    source: Mapped[ContributionSource] = mapped_column(enum_column(ContributionSource),
                                                       default=ContributionSource.PLATFORM)
    study_id: Mapped[int | None] = mapped_column(ForeignKey("imaging_study.id"), unique=True)
    report_id: Mapped[int | None] = mapped_column(ForeignKey("diagnostic_report.id"))
    patient_id: Mapped[int | None] = mapped_column(ForeignKey("patient.id"), index=True)
    organization_id: Mapped[int | None] = mapped_column(ForeignKey("organization.id"))
    labels: Mapped[list[Any]] = mapped_column(default=list)
    contributed_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Set when its images were de-identified (done once, the first time a version could take it;
    # an upload on arrival).
    deidentified_at: Mapped[datetime | None]
    # An upload: who sent it, the study's UID at the source (a second upload of it is refused),
    # where the institution keeps the patient's consent, and when the contributor withdrew it.
    contributor_user_id: Mapped[int | None] = mapped_column(ForeignKey("user_account.id"), index=True)
    source_study_uid: Mapped[str | None] = mapped_column(String(64))
    consent_reference: Mapped[str | None] = mapped_column(String(200))
    withdrawn_at: Mapped[datetime | None]


class ResearchInstance(Base):
    """One de-identified copy of a contributed instance, or the reason it was kept out."""

    __tablename__ = "research_instance"

    id: Mapped[int] = mapped_column(primary_key=True)
    contribution_id: Mapped[int] = mapped_column(ForeignKey("research_contribution.id"), index=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)  # the research UID
    series_instance_uid: Mapped[str] = mapped_column(String(64))
    study_instance_uid: Mapped[str] = mapped_column(String(64))
    instance_number: Mapped[int | None]
    # Relative to RESEARCH_STORAGE_DIR; empty when kept out.
    path: Mapped[str] = mapped_column(String(400), default="")
    sha256: Mapped[str] = mapped_column(String(64), default="")
    # Why it is not in any dataset (burned-in annotation, not an image); NULL: usable.
    excluded_reason: Mapped[str | None] = mapped_column(Text)


class UidKind(str, enum.Enum):
    STUDY = "study"
    SERIES = "series"
    INSTANCE = "instance"


class ResearchUidMap(Base):
    """Original UID -> research UID, kept apart from the de-identified files and the manifests:
    whoever holds an export cannot go back to the patient without this table."""

    __tablename__ = "research_uid_map"
    __table_args__ = (UniqueConstraint("kind", "original_uid"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[UidKind] = mapped_column(enum_column(UidKind))
    original_uid: Mapped[str] = mapped_column(String(64))
    research_uid: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class DataUseAgreement(Base):
    """What a contributing institution agreed its images may be used for, under which licence.
    A version is exported only when every institution in it has one in force for its licence."""

    __tablename__ = "research_data_use_agreement"

    id: Mapped[int] = mapped_column(primary_key=True)
    organization_id: Mapped[int] = mapped_column(ForeignKey("organization.id"), index=True)
    licence: Mapped[str] = mapped_column(String(80))
    reference: Mapped[str] = mapped_column(String(200))  # the signed document's number
    valid_from: Mapped[datetime] = mapped_column(default=utcnow)
    valid_until: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]


class DatasetVersion(Base):
    """An immutable dataset version: its manifest (every instance's research UIDs, SHA-256 and
    labels, counts per institution and per label, the licence) and the manifest's own SHA-256."""

    __tablename__ = "dataset_version"

    id: Mapped[int] = mapped_column(primary_key=True)
    number: Mapped[int] = mapped_column(unique=True)
    licence: Mapped[str] = mapped_column(String(80))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    created_by: Mapped[str] = mapped_column(String(120))
    manifest: Mapped[dict[str, Any]] = mapped_column()
    manifest_sha256: Mapped[str] = mapped_column(String(64))


class DatasetVersionMark(Base):
    """Something learnt about a version after it was made, recorded beside it (the version itself
    never changes): a contribution in it whose patient has since withdrawn consent."""

    __tablename__ = "dataset_version_mark"
    __table_args__ = (UniqueConstraint("dataset_version_id", "contribution_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    dataset_version_id: Mapped[int] = mapped_column(ForeignKey("dataset_version.id"), index=True)
    contribution_id: Mapped[int] = mapped_column(ForeignKey("research_contribution.id"))
    reason: Mapped[str] = mapped_column(String(80))
    marked_at: Mapped[datetime] = mapped_column(default=utcnow)


class VersionIsImmutable(Exception):
    """Someone tried to change or delete a dataset version."""


@event.listens_for(Session, "before_flush")
def _refuse_version_changes(session: Session, _context: Any, _instances: Any) -> None:
    for row in (*session.dirty, *session.deleted):
        if isinstance(row, DatasetVersion) and (row in session.deleted or session.is_modified(row)):
            raise VersionIsImmutable(f"dataset version {row.number} is immutable")
