"""A referral's whole path, for the people who follow it: sent, accepted, booked, images received,
AI read, signed, consultation.

This is the clinician's (and the patient's) view of the closed loop. It lives in the last stage
that sees every earlier one, and reads each through its public face. The steps after acceptance are
part of the patient's record: they are shown only to someone the record is open to (a clinician
whose care relationship has lapsed still sees their own order's status, nothing more), and showing
them is audited like any other read.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime

from flask import Blueprint, render_template, url_for
from flask.typing import ResponseReturnValue
from sqlalchemy import select
from sqlalchemy.orm import Session

from ai_services.public import AnalysisSummary, ReportSummary, analysis_of_study, reports_of_referral
from followup.models import Consultation
from followup.words import consultation_status, priority_word, template_words
from hospital.access import can_access_patient
from hospital.audit import record_access
from hospital.auth import current_user, require_roles
from hospital.db import request_session
from hospital.i18n import gettext as _
from hospital.i18n import status_word
from hospital.models import User
from imaging_orders.archive.public import StudyRef, studies_of_referral
from imaging_orders.public import AppointmentSummary, appointments_of_referral
from referrals.public import STATUS_WORDS, ReferralStatus, ReferralSummary, read_referral

logger = logging.getLogger(__name__)

bp = Blueprint("pathway", __name__, template_folder="templates")
bp.context_processor(template_words)

DONE, CURRENT, WAITING, STOPPED = "done", "current", "waiting", "stopped"


@dataclass(frozen=True)
class Step:
    name: str
    state: str  # done, current (the one the referral is at), waiting, stopped
    when: datetime | None = None
    detail: str = ""
    link: tuple[str, str] | None = None  # (label, url)


@dataclass(frozen=True)
class Pathway:
    referral: ReferralSummary
    status: str  # the one status word shown for the referral, e.g. "AI read: awaiting the radiologist"
    steps: tuple[Step, ...]
    record_open: bool  # False: the steps after acceptance are not shown to this reader
    appointments: tuple[AppointmentSummary, ...] = field(default=())
    timezone: str | None = None


def referral_pathway(session: Session, user: User, referral_id: int) -> Pathway:
    """The referral's path as `user` may see it (NotFound/Forbidden as for the referral itself)."""
    referral = read_referral(session, user, referral_id)
    steps = [Step(_("Sent"), DONE, referral.created_at, _("%(procedure)s (%(priority)s)", procedure=referral.procedure_description,
                                                       priority=priority_word(referral.priority)))]
    if referral.status is ReferralStatus.REJECTED:
        steps.append(Step(_("Rejected by the imaging centre"), STOPPED, detail=referral.status_reason or ""))
        return Pathway(referral, STATUS_WORDS[referral.status], tuple(steps), record_open=False)
    if referral.status is ReferralStatus.ACTIVE:
        steps.append(Step(_("Accepted"), CURRENT, detail=_("Waiting for the imaging centre to accept")))
        return _finish(referral, steps, STATUS_WORDS[referral.status], record_open=False)
    if referral.accession_number is None:  # cancelled by the clinician before the centre accepted it
        steps.append(Step(_("Cancelled"), STOPPED, detail=referral.status_reason or ""))
        return _finish(referral, steps, STATUS_WORDS[referral.status], record_open=False)
    record_open = can_access_patient(session, user, referral.patient_id)
    if not record_open:
        accepted = Step(_("Accepted"), DONE, detail=_("Accession %(number)s", number=referral.accession_number))
        return _finish(referral, [*steps, accepted], STATUS_WORDS[referral.status], record_open=False)
    appointments = appointments_of_referral(session, referral.referral_id)
    studies = studies_of_referral(session, referral.referral_id)
    reports = reports_of_referral(session, referral.referral_id)
    study = studies[0] if studies else None
    analysis = analysis_of_study(session, study.study_id) if study else None
    report = reports[-1] if reports else None
    consultation = session.scalar(select(Consultation).where(Consultation.report_id == report.report_id)) if report else None
    _audit(session, user, referral, appointments, studies, reports)
    steps.append(Step(_("Accepted"), DONE, detail=_("Accession %(number)s", number=referral.accession_number)))
    steps.append(_booking_step(referral, appointments))
    steps.append(_images_step(referral, study))
    steps.append(_ai_step(study, analysis))
    steps.append(_signed_step(report))
    steps.append(_consultation_step(consultation))
    if referral.status is ReferralStatus.CANCELLED:
        steps = [s for s in steps if s.state == DONE]
        steps.append(Step(_("Cancelled"), STOPPED, detail=referral.status_reason or ""))
        return _finish(referral, steps, STATUS_WORDS[referral.status], True, appointments)
    current = next((s for s in steps if s.state == CURRENT), None)
    status = _status_word(referral, current, analysis, report, consultation)
    return _finish(referral, steps, status, True, appointments)


def _finish(
    referral: ReferralSummary, steps: list[Step], status: str, record_open: bool,
    appointments: tuple[AppointmentSummary, ...] = (),
) -> Pathway:
    zone = next((a.centre_timezone for a in appointments if a.centre_timezone), None)
    return Pathway(referral, status, tuple(steps), record_open, appointments, zone)


def _booking_step(referral: ReferralSummary, appointments: tuple[AppointmentSummary, ...]) -> Step:
    live = [a for a in appointments if a.live]
    if live:
        booked = live[-1]
        where = f", {booked.room}" if booked.room else ""
        return Step(_("Booked"), DONE, booked.start, _("Appointment: %(status)s%(where)s", status=status_word(booked.status), where=where))
    if referral.status in (ReferralStatus.IN_PROGRESS, ReferralStatus.COMPLETED):
        return Step(_("Booked"), DONE, detail=_("Examined without a booked appointment"))
    return Step(_("Booked"), CURRENT, detail=_("Not booked yet: the patient or you can book a slot"),
                link=(_("Book a slot"), url_for("imaging_orders.appointments_page")))


def _images_step(referral: ReferralSummary, study: StudyRef | None) -> Step:
    if study is None:
        if referral.status is ReferralStatus.SCHEDULED:
            return Step(_("Images received"), CURRENT, detail=_("Expected once the patient has been examined"))
        return Step(_("Images received"), WAITING)
    if not study.complete:
        return Step(_("Images received"), CURRENT, study.received_at, _("Images arriving"))
    return Step(_("Images received"), DONE, study.completed_at or study.received_at)


def _ai_step(study: StudyRef | None, analysis: AnalysisSummary | None) -> Step:
    if study is None or not study.complete:
        return Step(_("AI read"), WAITING)
    if analysis is None or analysis.status in ("queued", "running"):
        if analysis and analysis.slices_total:
            return Step(_("AI read"), CURRENT, detail=_("AI analysis under way (%(done)s/%(total)s slices)",
                                                        done=analysis.slices_done, total=analysis.slices_total))
        return Step(_("AI read"), CURRENT, detail=_("AI analysis under way"))
    if analysis.status == "not_applicable":
        return Step(_("AI read"), DONE, analysis.finished_at,
                    _("AI not applicable: %(reason)s; a radiologist reads the images",
                      reason=analysis.not_applicable_reason or _("outside the model’s validated range")))
    if analysis.status == "failed":
        return Step(_("AI read"), DONE, analysis.finished_at, _("The AI analysis failed; a radiologist reads the images"))
    return Step(_("AI read"), DONE, analysis.finished_at, _("AI findings ready for the radiologist"))


def _signed_step(report: ReportSummary | None) -> Step:
    if report is None:
        return Step(_("Signed by a radiologist"), WAITING)
    link = (_("Open the report"), url_for("ai_services.report_page", report_id=report.report_id))
    if not report.signed:
        return Step(_("Signed by a radiologist"), CURRENT, detail=_("Draft: the radiologist has not signed it yet"))
    detail = _("Amended after signing") if report.status == "amended" else _("Final report")
    return Step(_("Signed by a radiologist"), DONE, report.signed_at, detail, link)


def _consultation_step(consultation: Consultation | None) -> Step:
    if consultation is None:
        return Step(_("Consultation"), WAITING)
    link = (_("Open the consultation"), url_for("followup.consultation_page", consultation_id=consultation.id))
    if consultation.status.value == "finished":
        return Step(_("Consultation"), DONE, consultation.ended_at, _("Finished"), link)
    return Step(_("Consultation"), CURRENT, consultation.created_at, consultation_status(consultation.status), link)


def _status_word(
    referral: ReferralSummary, current: Step | None, analysis: AnalysisSummary | None,
    report: ReportSummary | None, consultation: Consultation | None,
) -> str:
    if consultation is not None:
        return _("Consultation finished") if consultation.status.value == "finished" else _("Consultation open")
    if report is not None and report.signed:
        return _("Signed")
    if analysis is not None and analysis.status == "not_applicable":
        return _("Images received: AI not applicable, awaiting the radiologist")
    if analysis is not None and analysis.status == "failed":
        return _("Images received: awaiting the radiologist")
    if analysis is not None and analysis.status == "completed":
        return _("AI read: awaiting the radiologist")
    if current is not None and current.name == _("AI read"):  # the step names are in the reader's language
        return _("Images received: AI reading")
    return STATUS_WORDS[referral.status]


def _audit(
    session: Session, user: User, referral: ReferralSummary, appointments: tuple[AppointmentSummary, ...],
    studies: tuple[StudyRef, ...], reports: tuple[ReportSummary, ...],
) -> None:
    shown = ([("Appointment", a.appointment_id) for a in appointments] + [("ImagingStudy", s.study_id) for s in studies]
             + [("DiagnosticReport", r.report_id) for r in reports])
    for entity_type, entity_id in shown:
        record_access(session, user, "R", entity_type, entity_id, patient_id=referral.patient_id,
                      description=f"status on the page of referral {referral.referral_id}")


@bp.get("/referrals/<int:referral_id>")
@require_roles()
def referral_page(referral_id: int) -> ResponseReturnValue:
    session = request_session()
    user = current_user()
    pathway = referral_pathway(session, user, referral_id)
    zone = pathway.timezone or (user.organization.timezone if user.organization else None)
    return render_template("followup/referral.html", pathway=pathway, referral=pathway.referral, zone=zone)
