"""AI tables: model versions (the registry), analysis jobs with progress, findings, the
radiologist's decisions on them, and diagnostic reports."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import Float, ForeignKey, Index, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from ai_services.model_card import ModelCard, model_card_from_manifest
from hospital.clock import utcnow
from hospital.db import Base
from hospital.models import Organization, Patient, User, enum_column


class ModelStatus(str, enum.Enum):
    """Where a version stands: a retrained candidate is promoted (active) or refused (rejected);
    an active version is retired when another one is promoted."""

    CANDIDATE = "candidate"
    ACTIVE = "active"
    RETIRED = "retired"
    REJECTED = "rejected"


class ModelVersion(Base):
    """An immutable trained model version; exactly one per model name is active."""

    __tablename__ = "model_version"
    __table_args__ = (UniqueConstraint("name", "version"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(80))
    version: Mapped[str] = mapped_column(String(40))
    weights_path: Mapped[str] = mapped_column(String(400))
    weights_sha256: Mapped[str] = mapped_column(String(64))
    manifest: Mapped[dict[str, Any]] = mapped_column(default=dict)
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    active: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    status: Mapped[ModelStatus] = mapped_column(
        enum_column(ModelStatus), default=ModelStatus.CANDIDATE, server_default=ModelStatus.CANDIDATE.value
    )
    # Why a candidate was promoted or refused (the promotion rule's verdict, with the numbers).
    decision_reason: Mapped[str | None] = mapped_column(Text)
    # The version a retrained candidate was fine-tuned from.
    parent_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_version.id"))
    # The package this version came in by (submitted, checked, evaluated and approved like a
    # partner's: ai_services.detector_package); None for one registered from a file or retrained.
    model_package_id: Mapped[int | None] = mapped_column(ForeignKey("model_package.id"), index=True, unique=True)

    model_package: Mapped[ModelPackage | None] = relationship()

    @property
    def label(self) -> str:
        return f"{self.name} {self.version}"

    @property
    def card(self) -> ModelCard | None:
        """The model card from this version's manifest (None when it has none)."""
        return model_card_from_manifest(self.name, self.version, self.manifest)


class AnalysisStatus(str, enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    # The series is outside the model's validated range (ai_services.applicability): the model did
    # not read it, the radiologist reads it without AI findings, and no AI analysis is billed.
    NOT_APPLICABLE = "not_applicable"


class AnalysisJob(Base):
    """One AI analysis of one study. Unique per study: a rerun reuses and replaces, never adds."""

    __tablename__ = "analysis_job"

    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("imaging_study.id"), unique=True)
    model_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_version.id"))
    status: Mapped[AnalysisStatus] = mapped_column(enum_column(AnalysisStatus), default=AnalysisStatus.QUEUED)
    slices_done: Mapped[int] = mapped_column(default=0)
    slices_total: Mapped[int] = mapped_column(default=0)
    # The analysed series: its SOP Instance UIDs in slice order and (row, column) pixel spacing,
    # so findings can name their slice and sizes can be recomputed after an edit.
    series_instance_uid: Mapped[str | None] = mapped_column(String(64))
    slice_sop_instance_uids: Mapped[list[Any]] = mapped_column(default=list)
    pixel_spacing_mm: Mapped[list[Any]] = mapped_column(default=list)
    attempts: Mapped[int] = mapped_column(default=0)
    error: Mapped[str | None] = mapped_column(Text)
    # Why the model was not run, when it is NOT_APPLICABLE ("modality NM; the model reads CT only").
    not_applicable_reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]

    model_version: Mapped[ModelVersion | None] = relationship()


class ReportStatus(str, enum.Enum):
    PRELIMINARY = "preliminary"
    FINAL = "final"
    AMENDED = "amended"


class DiagnosticReport(Base):
    __tablename__ = "diagnostic_report"

    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("imaging_study.id"), unique=True)
    patient_id: Mapped[int] = mapped_column(ForeignKey("patient.id"), index=True)
    referral_id: Mapped[int | None] = mapped_column(ForeignKey("referral.id"), index=True)
    analysis_job_id: Mapped[int | None] = mapped_column(ForeignKey("analysis_job.id"))
    status: Mapped[ReportStatus] = mapped_column(enum_column(ReportStatus), default=ReportStatus.PRELIMINARY)
    conclusion: Mapped[str] = mapped_column(Text, default="")
    issued_at: Mapped[datetime] = mapped_column(default=utcnow)
    signed_by_user_id: Mapped[int | None] = mapped_column(ForeignKey("user_account.id"))
    signed_at: Mapped[datetime | None]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    patient: Mapped[Patient] = relationship()
    signed_by: Mapped[User | None] = relationship()
    analysis_job: Mapped[AnalysisJob | None] = relationship()
    findings: Mapped[list[Finding]] = relationship(back_populates="report", order_by="Finding.id")
    addenda: Mapped[list[ReportAddendum]] = relationship(order_by="ReportAddendum.id")
    # The partner models routed to the study (ai_services.package_runs), each with its findings.
    package_analyses: Mapped[list[PackageAnalysis]] = relationship(order_by="PackageAnalysis.id",
                                                                   viewonly=True)


class FindingSource(str, enum.Enum):
    AI = "ai"
    RADIOLOGIST = "radiologist"


class ReviewStatus(str, enum.Enum):
    PENDING = "pending"
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    EDITED = "edited"


class Finding(Base):
    """One suspected abnormality on one study, with its location on the key slice."""

    __tablename__ = "finding"
    __table_args__ = (Index("ix_finding_report", "report_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    report_id: Mapped[int] = mapped_column(ForeignKey("diagnostic_report.id"))
    patient_id: Mapped[int] = mapped_column(ForeignKey("patient.id"), index=True)
    source: Mapped[FindingSource] = mapped_column(enum_column(FindingSource))
    model_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_version.id"))
    sop_instance_uid: Mapped[str] = mapped_column(String(64))
    slice_index: Mapped[int]
    # Bounding box on the key slice, in pixel columns (x) and rows (y), inclusive-exclusive.
    x0: Mapped[int]
    y0: Mapped[int]
    x1: Mapped[int]
    y1: Mapped[int]
    diameter_mm: Mapped[float] = mapped_column(Float)
    n_slices: Mapped[int] = mapped_column(default=1)
    confidence: Mapped[float | None] = mapped_column(Float)
    body_site: Mapped[str] = mapped_column(String(64), default="chest")
    # Set when a partner model package made the finding (its run on this study), not the built-in
    # detector: what it said (a class label, a segmented volume) beside the box it is shown with.
    package_analysis_id: Mapped[int | None] = mapped_column(ForeignKey("package_analysis.id"), index=True)
    label: Mapped[str | None] = mapped_column(String(64))
    volume_mm3: Mapped[float | None] = mapped_column(Float)
    review_status: Mapped[ReviewStatus] = mapped_column(enum_column(ReviewStatus), default=ReviewStatus.PENDING)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    report: Mapped[DiagnosticReport] = relationship(back_populates="findings")
    model_version: Mapped[ModelVersion | None] = relationship()
    package_analysis: Mapped[PackageAnalysis | None] = relationship()
    reviews: Mapped[list[FindingReview]] = relationship(back_populates="finding", order_by="FindingReview.id")

    @property
    def kind(self) -> str:
        """How the finding is told: "classification" (a partner model's class for the study, its
        label and probability; its box is only the field the model saw, its diameter 0),
        "segmentation" (a region with its volume) or "area" (a sized area on a slice)."""
        if self.volume_mm3 is not None:
            return "segmentation"
        if self.label is not None and self.package_analysis_id is not None:
            return "classification"
        return "area"

    @property
    def package(self) -> ModelPackage | None:
        """The partner model package that made it (None: the built-in model or the radiologist)."""
        return self.package_analysis.model_package if self.package_analysis is not None else None


class FindingReview(Base):
    """One radiologist decision on a finding. Kept forever: they are the training labels."""

    __tablename__ = "finding_review"

    id: Mapped[int] = mapped_column(primary_key=True)
    finding_id: Mapped[int] = mapped_column(ForeignKey("finding.id"), index=True)
    reviewer_user_id: Mapped[int] = mapped_column(ForeignKey("user_account.id"))
    decision: Mapped[ReviewStatus] = mapped_column(enum_column(ReviewStatus))
    # The box before an edit, so the correction itself is a label.
    previous: Mapped[dict[str, Any]] = mapped_column(default=dict)
    comment: Mapped[str | None] = mapped_column(Text)
    decided_at: Mapped[datetime] = mapped_column(default=utcnow)

    finding: Mapped[Finding] = relationship(back_populates="reviews")


class ReportAddendum(Base):
    """Text a radiologist adds to a signed report. Kept beside the original, which is never
    overwritten: the report becomes `amended` and shows its conclusion and every addendum."""

    __tablename__ = "report_addendum"

    id: Mapped[int] = mapped_column(primary_key=True)
    report_id: Mapped[int] = mapped_column(ForeignKey("diagnostic_report.id"), index=True)
    patient_id: Mapped[int] = mapped_column(ForeignKey("patient.id"), index=True)
    author_user_id: Mapped[int] = mapped_column(ForeignKey("user_account.id"))
    text: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # When the referring clinician was told (once per addendum, however often the job runs).
    referrer_notified_at: Mapped[datetime | None]

    author: Mapped[User] = relationship()


class PackageStatus(str, enum.Enum):
    """A partner package's way to use: submitted (verified, checks queued), then checks_failed or
    awaiting_approval, then approved or rejected by an administrator; an approved one is retired
    when it should no longer run. No version is ever deleted."""

    SUBMITTED = "submitted"
    CHECKS_FAILED = "checks_failed"
    AWAITING_APPROVAL = "awaiting_approval"
    APPROVED = "approved"
    REJECTED = "rejected"
    RETIRED = "retired"


class ModelPackage(Base):
    """One version of a partner's model package (ai_services.packages), unpacked and kept at
    `storage_path` for as long as the platform runs, whatever its status."""

    __tablename__ = "model_package"
    __table_args__ = (UniqueConstraint("name", "version"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(80))
    version: Mapped[str] = mapped_column(String(40))
    partner_organization_id: Mapped[int] = mapped_column(ForeignKey("organization.id"), index=True)
    submitted_by_user_id: Mapped[int] = mapped_column(ForeignKey("user_account.id"))
    manifest: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # SHA-256 of the manifest as sent, which hashes every other file: the package's identity.
    package_sha256: Mapped[str] = mapped_column(String(64))
    storage_path: Mapped[str] = mapped_column(String(400))
    size_bytes: Mapped[int]
    output_kind: Mapped[str] = mapped_column(String(32))
    # The price and share as submitted (integer minor units, basis points), for billing by SQL.
    price_minor: Mapped[int]
    currency: Mapped[str] = mapped_column(String(3))
    partner_share_bp: Mapped[int]
    status: Mapped[PackageStatus] = mapped_column(enum_column(PackageStatus), default=PackageStatus.SUBMITTED)
    check_report: Mapped[dict[str, Any]] = mapped_column(default=dict)
    submitted_at: Mapped[datetime] = mapped_column(default=utcnow)
    checked_at: Mapped[datetime | None]
    decided_by_user_id: Mapped[int | None] = mapped_column(ForeignKey("user_account.id"))
    decided_at: Mapped[datetime | None]
    decision_reason: Mapped[str | None] = mapped_column(Text)
    retired_at: Mapped[datetime | None]

    partner_organization: Mapped[Organization] = relationship()

    @property
    def label(self) -> str:
        return f"{self.name} {self.version}"

    @property
    def intended_use(self) -> str:
        """The model card's words, as the partner declared and the administrator approved them."""
        return str(self.manifest.get("intended_use", ""))

    @property
    def validated_metrics(self) -> dict[str, float]:
        return {str(k): float(v) for k, v in sorted(dict(self.manifest.get("validated_metrics") or {}).items())}


class ModelRoutingRule(Base):
    """Which partner model runs on which studies: a study of this modality (and, when set, body
    part, centre, and a referral reason containing `reason_contains`) is read by the newest approved
    version of the package `package_name` whose manifest applies to it."""

    __tablename__ = "model_routing_rule"

    id: Mapped[int] = mapped_column(primary_key=True)
    package_name: Mapped[str] = mapped_column(String(80), index=True)
    modality: Mapped[str] = mapped_column(String(16))
    body_part: Mapped[str | None] = mapped_column(String(16))
    reason_contains: Mapped[str | None] = mapped_column(String(200))
    centre_id: Mapped[int | None] = mapped_column(ForeignKey("organization.id"))
    active: Mapped[bool] = mapped_column(default=True)
    created_by_user_id: Mapped[int] = mapped_column(ForeignKey("user_account.id"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class PackageAnalysis(Base):
    """One run of one approved partner package version on one study, into the study's report.

    Unique per (study, package version): a re-delivered event or a retried job finds the row and
    neither runs nor bills the package again. `outputs` keeps what the model returned (summarised:
    its class scores, its detections or segmented region) so the findings can be traced to it;
    `error` says in words why a run failed (over a limit, a crash), for staff."""

    __tablename__ = "package_analysis"
    __table_args__ = (UniqueConstraint("study_id", "model_package_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("imaging_study.id"), index=True)
    report_id: Mapped[int] = mapped_column(ForeignKey("diagnostic_report.id"), index=True)
    model_package_id: Mapped[int] = mapped_column(ForeignKey("model_package.id"), index=True)
    status: Mapped[AnalysisStatus] = mapped_column(enum_column(AnalysisStatus), default=AnalysisStatus.QUEUED)
    outputs: Mapped[dict[str, Any]] = mapped_column(default=dict)
    seconds: Mapped[float | None] = mapped_column(Float)
    error: Mapped[str | None] = mapped_column(Text)
    # How often the run was claimed (`package_runs.claim_package_run`): the claim's token, so the
    # late answer of an attempt a crashed-worker recovery gave up on is not recorded over the next.
    attempts: Mapped[int] = mapped_column(default=0, server_default="0")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]

    model_package: Mapped[ModelPackage] = relationship()
    findings: Mapped[list[Finding]] = relationship(order_by="Finding.id", viewonly=True)
