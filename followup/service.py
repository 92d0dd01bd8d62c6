"""Care after a signed report: the consultation, the follow-up plan and prescriptions (the
pharmacy's side, dispensing and stock, is `followup.pharmacy`)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, and_, func, or_, select
from sqlalchemy.orm import Session

from ai_services.public import report_summary
from followup.events import ConsultationFinished
from followup.formulary import formulary_item
from followup.models import (
    CarePlan,
    Consultation,
    ConsultationStatus,
    FollowUpTask,
    MedicationRequest,
    Message,
    TaskStatus,
)
from followup.planning import TaskTemplate, add_tasks
from hospital.access import ensure_patient_access, patient_filter, relationship_cutoff
from hospital.audit import record_access
from hospital.clock import utcnow
from hospital.errors import Conflict, Forbidden, InvalidInput, NotFound
from hospital.events import iso_instant
from hospital.i18n import format_number
from hospital.i18n import gettext as _
from hospital.jobs import publish
from hospital.models import Organization, OrganizationKind, Practitioner, Role, User
from hospital.notifications import notify, patient_users, practitioner_users
from hospital.records import load_record
from referrals.public import referral_summary

logger = logging.getLogger(__name__)

# A confirmed finding at least this large makes the consultation urgent.
URGENT_DIAMETER_MM = 10.0


def open_consultation(session: Session, report_id: int) -> Consultation | None:
    """Open the consultation of a signed report, with its follow-up plan. Idempotent."""
    existing = session.scalar(select(Consultation).where(Consultation.report_id == report_id))
    if existing is not None:
        return existing
    report = report_summary(session, report_id)
    if report is None or not report.signed or report.referral_id is None:
        logger.info("report %s is gone, unsigned or has no referral; no consultation", report_id)
        return None
    referral = referral_summary(session, report.referral_id)
    assert referral is not None  # foreign key
    confirmed = report.kept_findings
    largest = max((f.diameter_mm for f in confirmed), default=0.0)
    urgent = largest >= URGENT_DIAMETER_MM
    consultation = Consultation(
        report_id=report.report_id, patient_id=report.patient_id, practitioner_id=referral.requester_id,
        priority="urgent" if urgent else "routine",
        reason=f"Discuss imaging report {report.report_id}: {report.conclusion}",
    )
    session.add(consultation)
    session.flush()
    plan = CarePlan(consultation_id=consultation.id, patient_id=report.patient_id, title=f"Follow-up of report {report.report_id}")
    session.add(plan)
    session.flush()
    visit = TaskTemplate("visit", "Virtual consultation with the referring clinician to discuss the imaging report",
                         days=2 if urgent else 14)
    repeat = TaskTemplate("repeat-scan", f"Repeat {referral.modality} {referral.body_part.lower()} to assess the "
                                         f"{len(confirmed)} finding(s)", months=3 if urgent else 6)
    add_tasks(session, plan, (visit, repeat) if confirmed else (visit,), utcnow())
    if urgent:
        notify(session, practitioner_users(session, consultation.practitioner_id), "urgent_consultation",
               f"consultation-urgent:{consultation.id}", consultation_id=consultation.id)
    logger.info("consultation %s opened for report %s (%s)", consultation.id, report.report_id, consultation.priority)
    return consultation


def send_message(session: Session, user: User, consultation_id: int, body: str) -> Message:
    """The consulting clinician or the patient writes in the consultation; the other is told (in
    the app, and by mail where they have an address)."""
    consultation = get_consultation(session, user, consultation_id, action="U")
    if user.role is Role.CLINICIAN and consultation.practitioner_id == user.practitioner_id:
        recipient_role = "patient"
    elif user.role is Role.PATIENT and user.patient_id == consultation.patient_id:
        recipient_role = "clinician"
    else:
        raise Forbidden(_("only the consulting clinician and the patient write in a consultation"))
    text = body.strip()
    if not text:
        raise InvalidInput(_("a message needs some text"))
    if len(text) > 10_000:
        raise InvalidInput(_("a message is at most %(num)s characters", num=format_number(10_000)))
    message = Message(consultation_id=consultation.id, patient_id=consultation.patient_id, sender_user_id=user.id,
                      recipient_role=recipient_role, body=text)
    session.add(message)
    session.flush()
    record_access(session, user, "C", "Communication", message.id, patient_id=consultation.patient_id)
    recipients = (patient_users(session, consultation.patient_id) if recipient_role == "patient"
                  else practitioner_users(session, consultation.practitioner_id))
    notify(session, recipients, "consultation_message", f"consultation-message:{message.id}",
           consultation_id=consultation.id)
    return message


def list_messages(session: Session, user: User, consultation_id: int) -> list[Message]:
    """The consultation's messages, oldest first; the reader's incoming ones become read."""
    consultation = get_consultation(session, user, consultation_id)
    messages = list(session.scalars(
        select(Message).where(Message.consultation_id == consultation.id).order_by(Message.sent_at, Message.id)))
    reader_role = "patient" if user.role is Role.PATIENT else "clinician"
    now = utcnow()
    for message in messages:
        if message.recipient_role == reader_role and message.read_at is None and (
            user.role is Role.PATIENT or consultation.practitioner_id == user.practitioner_id
        ):
            message.read_at = now
    return messages


def unread_message_counts(session: Session, user: User, consultation_ids: list[int]) -> dict[int, int]:
    """How many messages addressed to the reader are still unread, per consultation (none listed
    when none are unread). Only the parties of a consultation have messages addressed to them."""
    if not consultation_ids or user.role not in (Role.PATIENT, Role.CLINICIAN):
        return {}
    statement = _unread_for(user, select(Message.consultation_id, func.count())).where(
        Message.consultation_id.in_(consultation_ids)).group_by(Message.consultation_id)
    return {consultation_id: count for consultation_id, count in session.execute(statement)}


def unread_message_total(session: Session, user: User) -> int:
    """All messages addressed to the reader still unread, in one query: the badge on their menu link,
    drawn on every page they open."""
    if user.role not in (Role.PATIENT, Role.CLINICIAN):
        return 0
    return session.scalar(_unread_for(user, select(func.count()))) or 0


def _unread_for(user: User, statement: Select[Any]) -> Select[Any]:
    """Messages addressed to `user` as a party of the consultation, unread, in consultations their
    list shows them (a lapsed care relationship hides a consultation, and its count with it)."""
    reader_role = "patient" if user.role is Role.PATIENT else "clinician"
    statement = statement.select_from(Message).join(Consultation, Consultation.id == Message.consultation_id).where(
        Message.recipient_role == reader_role, Message.read_at.is_(None),
        patient_filter(user, Consultation.patient_id, "Encounter"))
    if user.role is Role.PATIENT:
        return statement.where(Consultation.patient_id == user.patient_id)
    return statement.where(Consultation.practitioner_id == user.practitioner_id)


def get_consultation(session: Session, user: User, consultation_id: int, action: str = "R") -> Consultation:
    return load_record(session, user, Consultation, consultation_id, entity_type="Encounter", noun="consultation",
                       action=action)


def list_consultations(session: Session, user: User) -> list[Consultation]:
    query = select(Consultation).where(patient_filter(user, Consultation.patient_id, "Encounter"))
    if user.role is Role.CLINICIAN:
        query = query.where(Consultation.practitioner_id == user.practitioner_id)
    found = list(session.scalars(query.order_by(Consultation.priority.desc(), Consultation.created_at.desc())))
    record_access(session, user, "E", "Encounter", None, description=f"list consultations ({len(found)})")
    return found


def _own_consultation(session: Session, user: User, consultation_id: int) -> Consultation:
    consultation = get_consultation(session, user, consultation_id, action="U")
    if user.role is not Role.CLINICIAN or consultation.practitioner_id != user.practitioner_id:
        raise Forbidden(_("only the consulting clinician can do this"))
    return consultation


def finish_consultation(session: Session, user: User, consultation_id: int, note: str) -> Consultation:
    """Record the visit note and close the consultation (a billable event)."""
    consultation = _own_consultation(session, user, consultation_id)
    if consultation.status is ConsultationStatus.FINISHED:
        return consultation
    if consultation.status is ConsultationStatus.CANCELLED:
        raise Conflict(_("a cancelled consultation cannot be finished"))
    if not note.strip():
        raise InvalidInput(_("a visit note is required to finish the consultation"))
    now = utcnow()
    consultation.status = ConsultationStatus.FINISHED
    consultation.note = note.strip()
    consultation.started_at = consultation.started_at or now
    consultation.ended_at = now
    for task in session.scalars(
        select(FollowUpTask).join(CarePlan).where(CarePlan.consultation_id == consultation.id, FollowUpTask.kind == "visit")
    ):
        task.status = TaskStatus.COMPLETED
        task.completed_at = now
    record_access(session, user, "U", "Encounter", consultation.id, patient_id=consultation.patient_id, description="finished")
    practitioner = session.get(Practitioner, consultation.practitioner_id)
    publish(session, ConsultationFinished(
        consultation_id=consultation.id, patient_id=consultation.patient_id,
        organization_id=practitioner.organization_id if practitioner else None,
        ended_at=iso_instant(consultation.ended_at), ai_attributed=opened_by_ai_finding(session, consultation),
    ))
    return consultation


def opened_by_ai_finding(session: Session, consultation: Consultation) -> bool:
    """Whether the report that opened `consultation` holds an AI finding the radiologist kept: the
    care that follows counts as AI-enabled revenue."""
    report = report_summary(session, consultation.report_id)
    return report is not None and report.ai_finding_kept


@dataclass(frozen=True)
class Prescription:
    """What a prescriber asks for; the medication is a formulary item's code (its name and code
    system come from the formulary)."""

    medication_code: str
    dosage_text: str
    quantity: int
    refills: int
    pharmacy_organization_id: int


# A prescription is written during the visit; a closed one is refused, not silently reopened.
CLOSED_CONSULTATION = frozenset({ConsultationStatus.FINISHED, ConsultationStatus.CANCELLED})


def prescribe(session: Session, user: User, consultation_id: int, prescription: Prescription) -> MedicationRequest:
    consultation = _own_consultation(session, user, consultation_id)
    if consultation.status in CLOSED_CONSULTATION:
        if consultation.status is ConsultationStatus.FINISHED:
            raise Conflict(_("consultation %(id)s is finished: prescribe in an open consultation", id=consultation.id))
        raise Conflict(_("consultation %(id)s is cancelled: prescribe in an open consultation", id=consultation.id))
    if prescription.quantity < 1 or prescription.refills < 0:
        raise InvalidInput(_("quantity must be at least 1 and refills not negative"))
    if not prescription.medication_code.strip() or not prescription.dosage_text.strip():
        raise InvalidInput(_("a medication from the formulary and dosage instructions are required"))
    item = formulary_item(session, prescription.medication_code)
    pharmacy = session.get(Organization, prescription.pharmacy_organization_id)
    if pharmacy is None or pharmacy.kind is not OrganizationKind.PHARMACY:
        raise InvalidInput(_("organization %(id)s is not a pharmacy", id=prescription.pharmacy_organization_id))
    assert user.practitioner_id is not None  # checked by _own_consultation
    request = MedicationRequest(
        consultation_id=consultation.id, patient_id=consultation.patient_id, prescriber_id=user.practitioner_id,
        pharmacy_organization_id=pharmacy.id, medication_code=item.code, medication_system=item.system,
        medication_display=item.display, dosage_text=prescription.dosage_text.strip(), quantity=prescription.quantity,
        refills=prescription.refills,
    )
    session.add(request)
    session.flush()
    record_access(session, user, "C", "MedicationRequest", request.id, patient_id=consultation.patient_id)
    return request


def consulted_patient_ids(user: User) -> Select[tuple[int]]:
    """Patient scope of a clinician: patients they hold an open consultation with, or one that
    finished within `CARE_RELATIONSHIP_DAYS`. A cancelled consultation opens nothing."""
    return select(Consultation.patient_id).where(
        Consultation.practitioner_id == user.practitioner_id,
        or_(Consultation.status.in_([ConsultationStatus.PLANNED, ConsultationStatus.IN_PROGRESS]),
            and_(Consultation.status == ConsultationStatus.FINISHED, Consultation.ended_at >= relationship_cutoff())),
    )


def pharmacy_patient_ids(user: User) -> Select[tuple[int]]:
    """Patient scope of a pharmacist: patients with prescriptions sent to their pharmacy."""
    return select(MedicationRequest.patient_id).where(MedicationRequest.pharmacy_organization_id == user.organization_id)


def prescriptions_for_consultation(session: Session, consultation_id: int) -> list[MedicationRequest]:
    """The prescriptions written in one consultation, oldest first (the caller has checked access)."""
    return list(session.scalars(
        select(MedicationRequest).where(MedicationRequest.consultation_id == consultation_id).order_by(MedicationRequest.id)
    ))


TASK_TRANSITIONS = {
    TaskStatus.REQUESTED: frozenset({TaskStatus.IN_PROGRESS, TaskStatus.COMPLETED, TaskStatus.CANCELLED}),
    TaskStatus.IN_PROGRESS: frozenset({TaskStatus.COMPLETED, TaskStatus.CANCELLED}),
}


def update_task_status(session: Session, user: User, task_id: int, status: TaskStatus) -> FollowUpTask:
    """Move a follow-up task on (started, done, cancelled); only the consulting clinician may.
    Setting the status it already has changes nothing."""
    task = session.get(FollowUpTask, task_id)
    if task is None:
        raise NotFound(f"task {task_id} does not exist")
    ensure_patient_access(session, user, task.patient_id, "Task", task_id, "U")
    consultation = task.care_plan.consultation
    if user.role is not Role.CLINICIAN or consultation.practitioner_id != user.practitioner_id:
        raise Forbidden("only the consulting clinician can update this task")
    if task.status is status:
        return task
    if status not in TASK_TRANSITIONS.get(task.status, frozenset()):
        raise Conflict(f"a task that is {task.status.value} cannot become {status.value}")
    task.status = status
    task.completed_at = utcnow() if status is TaskStatus.COMPLETED else None
    record_access(session, user, "U", "Task", task.id, patient_id=task.patient_id, description=status.value)
    return task
