"""Changing a follow-up plan after it was made: the clinician responsible for the consultation
adds tasks (from a template or written by hand), moves their due dates, rewords them, or cancels
them with a reason; the patient books the repeat scan their plan orders.

Who may change a plan is the domain's answer to "who holds this care relationship": the consulting
clinician, while the record is open to them. A finished consultation keeps its plan open to
change for as long as its care relationship lasts (`CARE_RELATIONSHIP_DAYS`): the plan is what
happens after the visit. A cancelled consultation's plan, or one whose relationship has ended, is
refused with a message saying so. Every change is audited (who, which task, what changed).

Pages, the JSON API and FHIR Task updates all come through here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.orm import Session

from followup.models import CarePlan, Consultation, ConsultationStatus, FollowUpTask, TaskStatus
from followup.planning import (
    FOLLOW_UP_TEMPLATES,
    LOCAL_DUE_TIME,
    TaskTemplate,
    due_at,
    order_repeat_scan,
    patient_zone,
)
from followup.words import TASK_KINDS, task_kind, task_status
from hospital.access import ensure_patient_access, relationship_cutoff
from hospital.audit import record_access
from hospital.clock import utcnow
from hospital.errors import Conflict, Forbidden, InvalidInput, NotFound
from hospital.i18n import format_number, lazy_gettext
from hospital.i18n import gettext as _
from hospital.models import Patient, Role, User
from imaging_orders.public import (
    AppointmentSummary,
    SlotOffer,
    appointments_of_referral,
    book_referral_slot,
    free_slots_for_referral,
)
from referrals.public import ReferralStatus, cancel_referral, referral_summary

logger = logging.getLogger(__name__)

# What the clinician picks from when adding a task; the words can be changed after.
PLAN_TASK_TEMPLATES: dict[str, TaskTemplate] = {
    "repeat-scan-3m": TaskTemplate("repeat-scan", "Repeat the scan in 3 months", months=3),
    "repeat-scan-6m": TaskTemplate("repeat-scan", "Repeat the scan in 6 months", months=6),
    "clinic-visit": TaskTemplate("visit", "Clinic visit with your clinician", days=14),
    "lab-test": TaskTemplate("lab-test", "Blood test at the clinic's laboratory", days=7),
}
TEMPLATE_LABELS = {
    "repeat-scan-3m": lazy_gettext("Repeat scan in 3 months"), "repeat-scan-6m": lazy_gettext("Repeat scan in 6 months"),
    "clinic-visit": lazy_gettext("Clinic visit in 2 weeks"), "lab-test": lazy_gettext("Lab test in 1 week"),
}
MAX_DETAILS = 2000
LATEST_DUE = timedelta(days=5 * 366)
OPEN_TASK = frozenset({TaskStatus.REQUESTED, TaskStatus.IN_PROGRESS})
# Slots for a repeat scan are offered from this long before its due date (and never before today).
BOOKING_LEAD = timedelta(days=14)


@dataclass(frozen=True)
class NewTask:
    """A task to add: from `template` (a PLAN_TASK_TEMPLATES key), or by hand (`template` None,
    then `kind` and `details` are required). `due_on` is a day on the patient's calendar; without
    it a template's interval from today is used."""

    template: str | None
    details: str = ""
    kind: str = "other"
    due_on: date | None = None


@dataclass(frozen=True)
class TaskChange:
    """What to change on a task; None leaves it as it is."""

    details: str | None = None
    due_on: date | None = None


def _relationship_ended(consultation: Consultation) -> bool:
    return (consultation.status is ConsultationStatus.FINISHED and consultation.ended_at is not None
            and consultation.ended_at < relationship_cutoff())


def _ensure_responsible(session: Session, user: User, consultation: Consultation, entity_type: str,
                        entity_id: int | None) -> None:
    owner = user.role is Role.CLINICIAN and user.practitioner_id == consultation.practitioner_id
    if owner and _relationship_ended(consultation):
        assert consultation.ended_at is not None
        raise Conflict(_("consultation %(id)s finished on %(day)s; the care relationship has ended, so its follow-up "
                         "plan can no longer be changed (a new referral starts a new one)", id=consultation.id,
                         day=consultation.ended_at.date().isoformat()))
    ensure_patient_access(session, user, consultation.patient_id, entity_type, entity_id, "U")
    if not owner:
        raise Forbidden(_("only the clinician responsible for this consultation can change its follow-up plan"))
    if consultation.status is ConsultationStatus.CANCELLED:
        raise Conflict(_("consultation %(id)s was cancelled: its follow-up plan cannot be changed", id=consultation.id))


def plan_to_change(session: Session, user: User, plan_id: int) -> CarePlan:
    """The care plan, if `user` may change it (see the module docstring)."""
    plan = session.get(CarePlan, plan_id)
    if plan is None:
        raise NotFound(_("care plan %(id)s does not exist", id=plan_id))
    _ensure_responsible(session, user, plan.consultation, "CarePlan", plan.id)
    return plan


def may_change_plan(session: Session, user: User, plan: CarePlan) -> bool:
    """Whether the page should offer `user` the plan's editing forms (no audit: nothing is done)."""
    consultation = plan.consultation
    return (user.role is Role.CLINICIAN and user.practitioner_id == consultation.practitioner_id
            and consultation.status is not ConsultationStatus.CANCELLED and not _relationship_ended(consultation))


def _task_to_change(session: Session, user: User, task_id: int) -> FollowUpTask:
    task = session.get(FollowUpTask, task_id)
    if task is None:
        raise NotFound(_("task %(id)s does not exist", id=task_id))
    _ensure_responsible(session, user, task.care_plan.consultation, "Task", task.id)
    if task.status not in OPEN_TASK:
        raise Conflict(_("task %(id)s is %(status)s: only an open task can be changed", id=task.id,
                         status=task_status(task.status).lower()))
    return task


def _details(text: str) -> str:
    details = " ".join(text.split())
    if not details:
        raise InvalidInput(_("a task needs its details (what the patient is to do)"))
    if len(details) > MAX_DETAILS:
        raise InvalidInput(_("a task's details are at most %(most)s characters, not %(given)s",
                             most=format_number(MAX_DETAILS), given=format_number(len(details))))
    return details


def _due(patient: Patient, day: date) -> datetime:
    """09:00 on `day` where the patient lives, as UTC; today at the earliest, five years at most."""
    zone = patient_zone(patient)
    today = utcnow().astimezone(zone).date()
    if day < today:
        raise InvalidInput(_("the due date %(day)s is in the past (today is %(today)s)", day=day.isoformat(),
                             today=today.isoformat()))
    if day > today + LATEST_DUE:
        raise InvalidInput(_("the due date %(day)s is more than five years ahead", day=day.isoformat()))
    return datetime.combine(day, LOCAL_DUE_TIME, tzinfo=zone).astimezone(ZoneInfo("UTC"))


def task_due_day(session: Session, task: FollowUpTask, instant: datetime) -> date:
    """The day `instant` falls on where the task's patient lives (a due date given as an instant)."""
    patient = session.get(Patient, task.patient_id)
    assert patient is not None  # foreign key
    return instant.astimezone(patient_zone(patient)).date()


def add_plan_task(session: Session, user: User, plan_id: int, new: NewTask) -> FollowUpTask:
    """Add a task to the plan. A repeat scan is ordered at once (at the first examination's centre,
    accepted there), so the patient can book it from their plan when slots open."""
    plan = plan_to_change(session, user, plan_id)
    patient = session.get(Patient, plan.patient_id)
    assert patient is not None  # foreign key
    if new.template is not None:
        template = PLAN_TASK_TEMPLATES.get(new.template)
        if template is None:
            raise InvalidInput(_("unknown task template %(given)s; choose one of %(known)s", given=repr(new.template),
                                 known=sorted(PLAN_TASK_TEMPLATES)))
        kind, details = template.kind, _details(new.details or template.description)
        due = _due(patient, new.due_on) if new.due_on else due_at(patient, utcnow(), months=template.months,
                                                                   days=template.days)
    else:
        if new.kind not in TASK_KINDS:
            raise InvalidInput(_("unknown task kind %(given)s; choose one of %(known)s", given=repr(new.kind),
                                 known=sorted(TASK_KINDS)))
        if new.due_on is None:
            raise InvalidInput(_("a task written by hand needs a due date"))
        kind, details, due = new.kind, _details(new.details), _due(patient, new.due_on)
    return _add_task(session, user, plan, kind, details, due, f" (template {new.template})" if new.template else "")


def _add_task(session: Session, user: User, plan: CarePlan, kind: str, details: str, due: datetime,
              origin: str) -> FollowUpTask:
    task = FollowUpTask(care_plan_id=plan.id, patient_id=plan.patient_id, kind=kind, description=details, due_at=due)
    session.add(task)
    session.flush()
    record_access(session, user, "C", "Task", task.id, patient_id=plan.patient_id,
                  description=f"added to care plan {plan.id}: {kind}, due {due.date().isoformat()}{origin}")
    if kind == "repeat-scan" and order_repeat_scan(session, task, user) is None:
        logger.info("repeat-scan task %s has no first referral to repeat; it is ordered by hand", task.id)
    return task


def apply_template(session: Session, user: User, consultation_id: int, template_key: str) -> list[FollowUpTask]:
    """Add a set of tasks at once (`FOLLOW_UP_TEMPLATES`, the API's `POST
    /api/consultations/<id>/plan`), with the same checks and audit as one task; a consultation
    without a plan gets one."""
    templates = FOLLOW_UP_TEMPLATES.get(template_key)
    if templates is None:
        raise InvalidInput(_("unknown follow-up template %(given)s; choose one of %(known)s", given=repr(template_key),
                             known=sorted(FOLLOW_UP_TEMPLATES)))
    consultation = session.get(Consultation, consultation_id)
    if consultation is None:
        raise InvalidInput(_("consultation %(id)s does not exist", id=consultation_id))
    plan = plan_of_consultation(session, consultation.id)
    _ensure_responsible(session, user, consultation, "CarePlan", plan.id if plan else None)
    if plan is None:
        plan = CarePlan(consultation_id=consultation.id, patient_id=consultation.patient_id, title="Follow-up plan")
        session.add(plan)
        session.flush()
    patient = session.get(Patient, plan.patient_id)
    assert patient is not None  # foreign key
    now = utcnow()
    return [_add_task(session, user, plan, t.kind, t.description, due_at(patient, now, months=t.months, days=t.days),
                      f" (template {template_key})") for t in templates]


def change_plan_task(session: Session, user: User, task_id: int, change: TaskChange) -> FollowUpTask:
    """Reword an open task or move its due date; changing nothing is refused (a form sent empty)."""
    task = _task_to_change(session, user, task_id)
    changed = []
    if change.details is not None:
        details = _details(change.details)
        if details != task.description:
            task.description = details
            changed.append("details")
    if change.due_on is not None:
        patient = session.get(Patient, task.patient_id)
        assert patient is not None
        due = _due(patient, change.due_on)
        if due != task.due_at:
            previous = task.due_at.date().isoformat() if task.due_at else "none"
            task.due_at = due
            changed.append(f"due {previous} -> {due.date().isoformat()}")
    if not changed:
        raise InvalidInput(_("nothing to change: give new details or a new due date"))
    record_access(session, user, "U", "Task", task.id, patient_id=task.patient_id,
                  description=f"changed: {', '.join(changed)}")
    # A planned repeat scan brought into the booking window is ordered now, so the patient can book
    # it (left alone, it would be ordered only on its due date).
    if (task.kind == "repeat-scan" and task.referral_id is None and task.status is TaskStatus.REQUESTED
            and task.due_at is not None and task.due_at - BOOKING_LEAD <= utcnow()):
        order_repeat_scan(session, task, user)
    return task


def cancel_plan_task(session: Session, user: User, task_id: int, reason: str) -> FollowUpTask:
    """Cancel an open task, with the reason the patient will read. A repeat scan's order is
    withdrawn with it; one already booked is refused (the appointment is cancelled first, so the
    slot goes back and the patient is not left with an appointment for nothing)."""
    task = _task_to_change(session, user, task_id)
    why = " ".join(reason.split())
    if not why:
        raise InvalidInput(_("say why the task is cancelled: the patient reads the reason"))
    if len(why) > MAX_DETAILS:
        raise InvalidInput(_("a reason is at most %(num)s characters", num=format_number(MAX_DETAILS)))
    if task.referral_id is not None:
        referral = referral_summary(session, task.referral_id)
        if referral is not None and referral.status is ReferralStatus.SCHEDULED:
            raise Conflict(_("the repeat scan is booked: cancel its appointment first, then the task"))
        if referral is not None and referral.status in (ReferralStatus.ACTIVE, ReferralStatus.ACCEPTED):
            cancel_referral(session, user, referral.referral_id, f"follow-up task cancelled: {why}")
    task.status = TaskStatus.CANCELLED
    task.status_reason = why
    task.completed_at = None
    record_access(session, user, "U", "Task", task.id, patient_id=task.patient_id, description="cancelled")
    return task


# ---------------------------------------------------------------------------------------------
# The patient's side: booking the repeat scan the plan ordered
# ---------------------------------------------------------------------------------------------


def _bookable_task(session: Session, user: User, task_id: int) -> FollowUpTask:
    task = session.get(FollowUpTask, task_id)
    if task is None:
        raise NotFound(_("task %(id)s does not exist", id=task_id))
    ensure_patient_access(session, user, task.patient_id, "Task", task.id, "U")
    if task.kind != "repeat-scan":
        raise InvalidInput(_("task %(id)s is a %(kind)s, not a repeat scan: there is nothing to book", id=task.id,
                             kind=task_kind(task.kind).lower()))
    if task.status not in OPEN_TASK:
        raise Conflict(_("task %(id)s is %(status)s: there is nothing to book", id=task.id,
                         status=task_status(task.status).lower()))
    if task.referral_id is None:
        raise Conflict(_("this repeat scan has not been ordered yet; your clinician will order it"))
    return task


def repeat_scan_slots(session: Session, user: User, task_id: int) -> tuple[SlotOffer, ...]:
    """Free slots for the repeat scan, from two weeks before it is due (none while it is far off)."""
    task = _bookable_task(session, user, task_id)
    assert task.referral_id is not None
    earliest = (task.due_at or utcnow()) - BOOKING_LEAD
    return tuple(s for s in free_slots_for_referral(session, task.referral_id) if s.start >= earliest)


def book_repeat_scan(session: Session, user: User, task_id: int, slot_id: int) -> AppointmentSummary:
    """Book the plan's repeat scan into `slot_id` (the patient, or whoever the booking service
    lets book the order). The slot must be one offered for the task, not one long before it is due."""
    task = _bookable_task(session, user, task_id)
    assert task.referral_id is not None
    earliest = (task.due_at or utcnow()) - BOOKING_LEAD
    if slot_id not in {s.slot_id for s in free_slots_for_referral(session, task.referral_id)
                       if s.start >= earliest}:
        raise Conflict(_("slot %(id)s is not offered for this repeat scan (taken, too early, or another scanner); "
                         "choose one of the times shown", id=slot_id))
    appointment = book_referral_slot(session, user, task.referral_id, slot_id)
    record_access(session, user, "U", "Task", task.id, patient_id=task.patient_id,
                  description=f"repeat scan booked: appointment {appointment.appointment_id}")
    return appointment


def task_appointments(session: Session, tasks: list[FollowUpTask]) -> dict[int, AppointmentSummary]:
    """The live appointment of each task that carries a booked order (the caller checked access)."""
    found = {}
    for task in tasks:
        if task.referral_id is not None:
            live = [a for a in appointments_of_referral(session, task.referral_id) if a.live]
            if live:
                found[task.id] = live[-1]
    return found


def plan_of_consultation(session: Session, consultation_id: int) -> CarePlan | None:
    return session.scalar(select(CarePlan).where(CarePlan.consultation_id == consultation_id))
