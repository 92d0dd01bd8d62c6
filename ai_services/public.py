"""The AI stage's public face: what later stages may use of it, and nothing else.

Reads come back as frozen summaries, never the stage's ORM rows. Its events (`AnalysisCompleted`,
`ReportSigned`, `ReportAmended`) are in `ai_services.events`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from ai_services.events import AnalysisCompleted, ReportAmended, ReportSigned
from ai_services.models import AnalysisJob, DiagnosticReport, FindingSource, ReportStatus, ReviewStatus
from ai_services.report_pdf import REPORT_PDF_PATH

logger = logging.getLogger(__name__)

__all__ = [
    "AnalysisCompleted",
    "AnalysisSummary",
    "ReportAmended",
    "ReportFinding",
    "ReportSigned",
    "ReportSummary",
    "analysis_of_study",
    "report_summary",
    "reports_of_referral",
]


@dataclass(frozen=True)
class ReportFinding:
    finding_id: int
    from_ai: bool
    # Not rejected by the radiologist (accepted, edited or added by them, or not yet reviewed).
    kept: bool
    diameter_mm: float


@dataclass(frozen=True)
class ReportSummary:
    report_id: int
    study_id: int
    patient_id: int
    referral_id: int | None
    signed: bool
    conclusion: str
    findings: tuple[ReportFinding, ...]
    status: str = "preliminary"  # FHIR DiagnosticReport.status: preliminary, final, amended
    signed_at: datetime | None = None
    addenda: tuple[str, ...] = ()  # what radiologists added after signing, oldest first

    @property
    def kept_findings(self) -> tuple[ReportFinding, ...]:
        return tuple(f for f in self.findings if f.kept)

    @property
    def ai_finding_kept(self) -> bool:
        """An AI finding the radiologist kept: the care that follows counts as AI-enabled."""
        return any(f.from_ai and f.kept for f in self.findings)


@dataclass(frozen=True)
class AnalysisSummary:
    """The AI analysis of a study: its status (queued, running, completed, failed, not_applicable),
    progress, and why the model did not read it when it does not apply."""

    study_id: int
    status: str
    slices_done: int
    slices_total: int
    not_applicable_reason: str | None
    finished_at: datetime | None


def analysis_of_study(session: Session, study_id: int) -> AnalysisSummary | None:
    job = session.scalar(select(AnalysisJob).where(AnalysisJob.study_id == study_id))
    if job is None:
        return None
    return AnalysisSummary(
        study_id=study_id, status=job.status.value, slices_done=job.slices_done, slices_total=job.slices_total,
        not_applicable_reason=job.not_applicable_reason, finished_at=job.finished_at,
    )


def reports_of_referral(session: Session, referral_id: int) -> tuple[ReportSummary, ...]:
    """The reports written for the referral's studies, oldest first."""
    reports = session.scalars(
        select(DiagnosticReport).where(DiagnosticReport.referral_id == referral_id).order_by(DiagnosticReport.id)
    ).all()
    return tuple(_summary(report) for report in reports)


def report_summary(session: Session, report_id: int) -> ReportSummary | None:
    report = session.get(DiagnosticReport, report_id)
    return None if report is None else _summary(report)


def _summary(report: DiagnosticReport) -> ReportSummary:
    return ReportSummary(
        report_id=report.id, study_id=report.study_id, patient_id=report.patient_id, referral_id=report.referral_id,
        signed=report.status is not ReportStatus.PRELIMINARY, conclusion=report.conclusion,
        findings=tuple(
            ReportFinding(f.id, f.source is FindingSource.AI, f.review_status is not ReviewStatus.REJECTED,
                          float(f.diameter_mm))
            for f in report.findings
        ),
        status=report.status.value, signed_at=report.signed_at, addenda=tuple(a.text for a in report.addenda),
    )


@dataclass(frozen=True)
class ReviewedFinding:
    """A finding as a training label: where it is, what the radiologist decided, and its provenance
    (who decided, which model proposed it; None for a finding a radiologist added)."""

    finding_id: int
    sop_instance_uid: str  # the key slice
    slice_index: int
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels, inclusive-exclusive
    diameter_mm: float
    source: str  # ai | radiologist
    decision: str  # pending, accepted, rejected, edited (the latest review)
    reviewer_user_id: int | None
    decided_at: datetime | None
    model_version: str | None  # "name version"


def reviewed_findings(session: Session, report_id: int) -> tuple[ReviewedFinding, ...]:
    """The report's findings with their latest review, for the research database's labels."""
    report = session.get(DiagnosticReport, report_id)
    if report is None:
        return ()
    found = []
    # The platform's own reading; a partner model's findings are the partner's claims (and output).
    for f in (f for f in report.findings if f.package_analysis_id is None):
        last = f.reviews[-1] if f.reviews else None
        found.append(ReviewedFinding(
            finding_id=f.id, sop_instance_uid=f.sop_instance_uid, slice_index=f.slice_index,
            box=(f.x0, f.y0, f.x1, f.y1), diameter_mm=float(f.diameter_mm), source=f.source.value,
            decision=f.review_status.value, reviewer_user_id=last.reviewer_user_id if last else report.signed_by_user_id,
            decided_at=last.decided_at if last else report.signed_at,
            model_version=f.model_version.label if f.model_version else None,
        ))
    return tuple(found)


def report_pdf_path(report_id: int) -> str:
    """Where the signed report's PDF is served (after signing in; in the reader's language)."""
    return REPORT_PDF_PATH.replace("<int:report_id>", str(report_id))
