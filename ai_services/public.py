"""The AI stage's public face: what later stages may use of it, and nothing else.

Reads come back as frozen summaries, never the stage's ORM rows. Its events (`AnalysisCompleted`,
`ReportSigned`, `ReportAmended`) are in `ai_services.events`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy.orm import Session

from ai_services.events import AnalysisCompleted, ReportAmended, ReportSigned
from ai_services.models import DiagnosticReport, FindingSource, ReportStatus, ReviewStatus

logger = logging.getLogger(__name__)

__all__ = ["AnalysisCompleted", "ReportAmended", "ReportFinding", "ReportSigned", "ReportSummary", "report_summary"]


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

    @property
    def kept_findings(self) -> tuple[ReportFinding, ...]:
        return tuple(f for f in self.findings if f.kept)

    @property
    def ai_finding_kept(self) -> bool:
        """An AI finding the radiologist kept: the care that follows counts as AI-enabled."""
        return any(f.from_ai and f.kept for f in self.findings)


def report_summary(session: Session, report_id: int) -> ReportSummary | None:
    report = session.get(DiagnosticReport, report_id)
    if report is None:
        return None
    return ReportSummary(
        report_id=report.id, study_id=report.study_id, patient_id=report.patient_id, referral_id=report.referral_id,
        signed=report.status is not ReportStatus.PRELIMINARY, conclusion=report.conclusion,
        findings=tuple(
            ReportFinding(f.id, f.source is FindingSource.AI, f.review_status is not ReviewStatus.REJECTED,
                          float(f.diameter_mm))
            for f in report.findings
        ),
    )
