"""The radiologist's reading workspace: the reading list in clinical order, the context a report
is read in (the clinician's question and priority, the patient's prior reports), the preview of
what a signature will record, and addenda to a signed report.

The review itself (accept, reject, edit, add, sign) is `ai_services.service`; this module adds
what the reader needs around it. The referral is the referrals stage's record, read here only
through `referrals.public`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from ai_services.events import ReportAmended
from ai_services.models import DiagnosticReport, Finding, ReportAddendum, ReportStatus, ReviewStatus
from ai_services.service import (
    get_report,
    radiologist_report,
    reading_list,
    signing_conclusion,
    undecided_findings_message,
    unfinished_package_runs,
    unfinished_runs_message,
    urgency,
)
from hospital.access import patient_filter
from hospital.audit import record_access
from hospital.clock import utcnow
from hospital.errors import Conflict, Forbidden, InvalidInput
from hospital.i18n import format_number
from hospital.i18n import gettext as _
from hospital.jobs import publish
from hospital.models import Role, User
from hospital.notifications import notify, notify_patient, practitioner_users
from referrals.public import Priority, ReferralSummary, referral_summaries, referral_summary

logger = logging.getLogger(__name__)

# Clinical priority of the order (FHIR ServiceRequest.priority), most pressing first.
PRIORITY_ORDER = (Priority.STAT, Priority.ASAP, Priority.URGENT, Priority.ROUTINE)
MAX_ADDENDUM_CHARS = 10_000


@dataclass(frozen=True)
class ReadingContext:
    """A report with what the clinician asked: the order's examination, question and priority."""

    report: DiagnosticReport
    referral: ReferralSummary | None

    @property
    def priority(self) -> Priority:
        return self.referral.priority if self.referral else Priority.ROUTINE

    @property
    def examination(self) -> str:
        return self.referral.procedure_description if self.referral else ""

    @property
    def clinical_question(self) -> str:
        return self.referral.reason if self.referral else ""

    @property
    def ai_urgency(self) -> float:
        return urgency(self.report)


def reading_context(session: Session, report: DiagnosticReport) -> ReadingContext:
    return ReadingContext(report, referral_summary(session, report.referral_id) if report.referral_id else None)


def reading_list_in_clinical_order(session: Session, user: User) -> list[ReadingContext]:
    """The reports waiting to be read (`reading_list`: access-checked and audited), the clinician's
    priority first (stat, asap, urgent, routine), then the AI's urgency, then the oldest first."""
    reports = reading_list(session, user)
    referrals = referral_summaries(session, (r.referral_id for r in reports if r.referral_id is not None))
    entries = [ReadingContext(r, referrals.get(r.referral_id) if r.referral_id else None) for r in reports]
    return sorted(entries, key=lambda e: (PRIORITY_ORDER.index(e.priority), -e.ai_urgency, e.report.issued_at))


def prior_reports(session: Session, user: User, report: DiagnosticReport) -> list[DiagnosticReport]:
    """The same patient's earlier reports that `user` may see, newest first (the reader has just
    opened `report`, so may see its patient; a patient sees only signed ones)."""
    query = select(DiagnosticReport).where(
        DiagnosticReport.patient_id == report.patient_id, DiagnosticReport.id != report.id,
        DiagnosticReport.issued_at < report.issued_at,
        patient_filter(user, DiagnosticReport.patient_id, "DiagnosticReport"),
    )
    if user.role is Role.PATIENT:
        query = query.where(DiagnosticReport.status != ReportStatus.PRELIMINARY)
    priors = list(session.scalars(query.order_by(DiagnosticReport.issued_at.desc()).limit(20)))
    record_access(session, user, "E", "DiagnosticReport", None, patient_id=report.patient_id,
                  description=f"prior reports ({len(priors)}) of report {report.id}")
    return priors


def prior_to_compare(session: Session, user: User, report: DiagnosticReport, prior_id: int | None,
                     priors: list[DiagnosticReport]) -> DiagnosticReport | None:
    """The prior the reader asked to see beside this report: one of `priors`, opened (and audited)
    as a read of its own, else None."""
    if prior_id is None or prior_id not in {p.id for p in priors}:
        return None
    return get_report(session, user, prior_id)


@dataclass(frozen=True)
class SignPreview:
    """What a signature would record, shown before the radiologist confirms it."""

    report: DiagnosticReport
    conclusion: str
    kept: tuple[Finding, ...]
    rejected: tuple[Finding, ...]


def sign_preview(session: Session, user: User, report_id: int, conclusion: str | None) -> SignPreview:
    """The preview of `sign_report` (same checks, nothing changed: a partner model run past its
    wait is given up by the signature, not by the preview)."""
    report = radiologist_report(session, user, report_id)
    waiting, _overdue = unfinished_package_runs(session, report)
    if waiting:
        raise Conflict(unfinished_runs_message(waiting))
    pending = [f.id for f in report.findings if f.review_status is ReviewStatus.PENDING]
    if pending:
        raise Conflict(undecided_findings_message(pending))
    return SignPreview(
        report=report, conclusion=signing_conclusion(report, conclusion),
        kept=tuple(f for f in report.findings if f.review_status is not ReviewStatus.REJECTED),
        rejected=tuple(f for f in report.findings if f.review_status is ReviewStatus.REJECTED),
    )


def add_addendum(session: Session, user: User, report_id: int, text: str) -> ReportAddendum:
    """A radiologist amends a signed report: the addendum is kept beside the original conclusion
    (never over it), the report becomes `amended`, and `ReportAmended` is published (a new SR
    version, the referring clinician told; no new consultation and no new charge)."""
    if user.role is not Role.RADIOLOGIST:
        raise Forbidden(_("only a radiologist can amend a report"))
    body = (text or "").strip()
    if not body:
        raise InvalidInput(_("an addendum needs some text"))
    if len(body) > MAX_ADDENDUM_CHARS:
        raise InvalidInput(_("an addendum is at most %(count)s characters", count=format_number(MAX_ADDENDUM_CHARS)))
    report = get_report(session, user, report_id, action="U")
    if report.status is ReportStatus.PRELIMINARY:
        raise Conflict(_("report %(id)s is not signed yet; change it and sign it instead of amending it", id=report_id))
    addendum = ReportAddendum(report_id=report.id, patient_id=report.patient_id, author_user_id=user.id, text=body)
    session.add(addendum)
    report.status = ReportStatus.AMENDED
    report.updated_at = utcnow()
    session.flush()
    record_access(session, user, "U", "DiagnosticReport", report.id, patient_id=report.patient_id,
                  description=f"amended (addendum {addendum.id})")
    publish(session, ReportAmended(report_id=report.id, addendum_id=addendum.id, patient_id=report.patient_id,
                                   referral_id=report.referral_id))
    return addendum


def notify_report_signed(session: Session, report_id: int, patient_id: int, referral_id: int | None) -> int:
    """Tell the referring clinician and the patient that a report is signed: in the app, and by
    mail where they have an address; once each, however often the event is delivered. Returns
    how many were told now."""
    referral = referral_summary(session, referral_id) if referral_id is not None else None
    clinicians = practitioner_users(session, referral.requester_id) if referral is not None else []
    key = f"report-signed:{report_id}"
    told = notify(session, clinicians, "report_signed", key, report_id=report_id)
    told += notify_patient(session, patient_id, "report_ready", key, report_id=report_id)
    return len(told)


def notify_referrer_of_amendment(session: Session, addendum_id: int) -> int:
    """Tell the referring clinician and the patient that a report was amended: in the app, and by
    mail where they have an address; once each per addendum, however often the event is
    delivered, and without the addendum's text (it is on the report's page). Returns how many were
    told now."""
    addendum = session.get(ReportAddendum, addendum_id, with_for_update=True)
    if addendum is None:
        logger.info("addendum %s is gone; nobody to tell", addendum_id)
        return 0
    report = session.get(DiagnosticReport, addendum.report_id)
    assert report is not None  # foreign key
    referral = referral_summary(session, report.referral_id) if report.referral_id is not None else None
    clinicians = practitioner_users(session, referral.requester_id) if referral is not None else []
    key = f"report-amended:{addendum.id}"
    told = notify(session, clinicians, "report_amended", key, report_id=report.id)
    told += notify_patient(session, report.patient_id, "report_updated", key, report_id=report.id)
    if clinicians and addendum.referrer_notified_at is None:
        addendum.referrer_notified_at = utcnow()
    return len(told)
