"""Follow-up plans: templates of tasks, due dates on the patient's own calendar, repeat scans
that turn into referrals when due, and reminders.

Due dates are computed in the patient's time zone ("in 3 months, at 09:00 where the patient
lives") and stored as UTC, so a daylight-saving change between now and then moves nothing.
"""

from __future__ import annotations

import calendar
import logging
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import String, cast, literal, select, update
from sqlalchemy.orm import Session

from ai_services.public import report_summary
from followup.models import CarePlan, Consultation, FollowUpTask, TaskStatus
from followup.models import Notification as SentReminder
from hospital import clock
from hospital.audit import record_access
from hospital.clock import utcnow
from hospital.errors import Forbidden
from hospital.models import Notification, Patient, Role, User
from hospital.notifications import notify, notify_patient
from imaging_orders.public import accept_follow_up_referral
from referrals.public import Priority, ReferralRequest, create_referral, referral_summary

logger = logging.getLogger(__name__)

LOCAL_DUE_TIME = time(9, 0)
REMINDER_HORIZON = timedelta(days=3)
# A task's reminder is the notification with this event key and the task's id.
REMINDER_KEY_PREFIX = "follow-up-due:"


@dataclass(frozen=True)
class TaskTemplate:
    kind: str
    description: str
    months: int = 0
    days: int = 0


FOLLOW_UP_TEMPLATES: dict[str, tuple[TaskTemplate, ...]] = {
    "repeat-scan-3m": (TaskTemplate("repeat-scan", "Repeat the scan to check the finding(s)", months=3),),
    "repeat-scan-6m": (TaskTemplate("repeat-scan", "Repeat the scan to check the finding(s)", months=6),),
    "repeat-scan-12m": (TaskTemplate("repeat-scan", "Repeat the scan to check the finding(s)", months=12),),
    "lab-and-visit": (
        TaskTemplate("lab-test", "Blood tests before the review visit", days=7),
        TaskTemplate("visit", "Review visit with the clinician", days=14),
    ),
}


def patient_zone(patient: Patient) -> ZoneInfo:
    return clock.zone(patient.timezone)


def add_months(day: date, months: int) -> date:
    """Same day of the month `months` later, clamped to the month's end (31 Jan + 1 = 28/29 Feb)."""
    month_index = day.month - 1 + months
    year, month = day.year + month_index // 12, month_index % 12 + 1
    return date(year, month, min(day.day, calendar.monthrange(year, month)[1]))


def due_at(patient: Patient, start: datetime, *, months: int = 0, days: int = 0) -> datetime:
    """09:00 on the patient's calendar, `months` and `days` after `start`, as UTC."""
    zone = patient_zone(patient)
    local_day = add_months(start.astimezone(zone).date(), months) + timedelta(days=days)
    return datetime.combine(local_day, LOCAL_DUE_TIME, tzinfo=zone).astimezone(ZoneInfo("UTC"))


def add_tasks(session: Session, plan: CarePlan, templates: tuple[TaskTemplate, ...], start: datetime) -> list[FollowUpTask]:
    patient = session.get(Patient, plan.patient_id)
    assert patient is not None  # foreign key
    tasks = [
        FollowUpTask(care_plan_id=plan.id, patient_id=plan.patient_id, kind=t.kind, description=t.description,
                     due_at=due_at(patient, start, months=t.months, days=t.days))
        for t in templates
    ]
    session.add_all(tasks)
    session.flush()
    return tasks


def overdue_tasks(session: Session, user: User, now: datetime | None = None) -> list[FollowUpTask]:
    """Open tasks past their due date: a clinician's own patients', or a patient's own."""
    query = (
        select(FollowUpTask).join(CarePlan).join(Consultation)
        .where(FollowUpTask.status == TaskStatus.REQUESTED, FollowUpTask.due_at < (now or utcnow()))
        .order_by(FollowUpTask.due_at)
    )
    if user.role is Role.CLINICIAN:
        query = query.where(Consultation.practitioner_id == user.practitioner_id)
    elif user.role is Role.PATIENT:
        query = query.where(FollowUpTask.patient_id == user.patient_id)
    else:
        raise Forbidden("overdue tasks are listed for clinicians and patients")
    tasks = list(session.scalars(query))
    record_access(session, user, "E", "Task", None, description=f"overdue tasks ({len(tasks)})")
    return tasks


def open_due_repeat_scans(session: Session, now: datetime | None = None) -> list[int]:
    """Turn each repeat-scan task that has fallen due into a new, accepted referral, once."""
    now = now or utcnow()
    created: list[int] = []
    due = session.scalars(
        select(FollowUpTask.id).where(
            FollowUpTask.kind == "repeat-scan", FollowUpTask.status == TaskStatus.REQUESTED, FollowUpTask.due_at <= now
        )
    ).all()
    for task_id in due:
        # Claim the task first: of two schedulers running at once, only one wins the update.
        claimed = session.execute(
            update(FollowUpTask)
            .where(FollowUpTask.id == task_id, FollowUpTask.status == TaskStatus.REQUESTED)
            .values(status=TaskStatus.IN_PROGRESS)
            .execution_options(synchronize_session=False)
        ).rowcount  # type: ignore[attr-defined]
        if claimed != 1:
            continue
        task = session.get(FollowUpTask, task_id)
        assert task is not None
        session.refresh(task)
        consultation = task.care_plan.consultation
        clinician = session.scalar(select(User).where(
            User.practitioner_id == consultation.practitioner_id, User.role == Role.CLINICIAN, User.active.is_(True)))
        referral_id = order_repeat_scan(session, task, clinician) if clinician is not None else None
        if referral_id is None:
            logger.warning("repeat-scan task %s has no original referral or active clinician; left for a person", task_id)
            task.status = TaskStatus.REQUESTED
            continue
        created.append(referral_id)
        # The patient books it; the clinician knows it was ordered in their name.
        key = f"repeat-scan-due:{task.id}"
        notify_patient(session, task.patient_id, "repeat_scan_due", key, plan_id=task.care_plan_id)
        notify(session, [clinician], "repeat_scan_ordered", key, plan_id=task.care_plan_id)
        logger.info("repeat-scan task %s became referral %s", task_id, referral_id)
    return created


def order_repeat_scan(session: Session, task: FollowUpTask, clinician: User) -> int | None:
    """Make the repeat scan `task` asks for into an order at the centre of the first examination,
    requested by `clinician` and accepted there (the patient can book it at once); the task then
    carries the order and is in progress. None when there is no first referral to repeat."""
    consultation = task.care_plan.consultation
    report = report_summary(session, consultation.report_id)
    original = referral_summary(session, report.referral_id) if report and report.referral_id else None
    if original is None:
        return None
    referral = create_referral(session, clinician, ReferralRequest(
        patient_id=task.patient_id, performer_organization_id=original.performer_organization_id,
        modality=original.modality, body_part=original.body_part,
        procedure_description=original.procedure_description,
        reason=f"Follow-up of report {consultation.report_id}: {task.description}",
        priority=Priority.URGENT if consultation.priority == "urgent" else Priority.ROUTINE,
        # Months later the consultation may be long finished; the plan it agreed is the reason.
        access_reason=f"repeat scan planned in consultation {consultation.id} (task {task.id})",
    ), replaces_referral_id=original.referral_id)
    accept_follow_up_referral(session, referral.referral_id)
    task.referral_id = referral.referral_id
    task.status = TaskStatus.IN_PROGRESS
    return referral.referral_id


def send_due_reminders(session: Session, now: datetime | None = None) -> int:
    """Remind patients of tasks due within the horizon, once per task: in the app, and by mail
    where they have an address, in their language, with the due time on their calendar and no
    more (what the task is, is on their plan's page). Returns how many were told now."""
    now = now or utcnow()
    told_key = literal(REMINDER_KEY_PREFIX) + cast(FollowUpTask.id, String)
    tasks = session.scalars(
        select(FollowUpTask).where(
            FollowUpTask.status.in_([TaskStatus.REQUESTED, TaskStatus.IN_PROGRESS]),
            FollowUpTask.due_at <= now + REMINDER_HORIZON,
            ~select(Notification.id).where(Notification.event_key == told_key).exists(),
            # Reminded before the notification centre: kept in the stage's own table.
            ~select(SentReminder.id).where(SentReminder.task_id == FollowUpTask.id,
                                           SentReminder.kind == "task-due-reminder").exists(),
        ).order_by(FollowUpTask.id)
    ).all()
    told = 0
    for task in tasks:
        patient = session.get(Patient, task.patient_id)
        assert patient is not None  # foreign key
        told += len(notify_patient(session, task.patient_id, "follow_up_due",
                           f"{REMINDER_KEY_PREFIX}{task.id}", plan_id=task.care_plan_id,
                           due=task.due_at.isoformat(), timezone=patient.timezone))
    return told
